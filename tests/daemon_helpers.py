"""A real supervisord process for tests: start, call, kill -9, restart, clean up everything.

The fixtures ``daemon`` and ``daemon_factory`` live in ``conftest.py`` (no import needed)::

    def test_something(daemon):          # a started daemon on the test's root
        daemon.call("ps", all=True)
        daemon.kill9(); daemon.start()

Every fixture-made daemon is stopped at teardown and every process whose command line names
the root (the daemon, its shims, their containers and descendants) is killed by pid and
waited for, so the conftest leak guard stays green even when a test fails half-way. So are
the *lost tasks*: a task whose shim was killed is reparented to pytest (the subreaper) and
names no root; it is found through the root's log (:func:`lost_tasks`). One the log says
ended or removed is a leak the product should have prevented: the fixture fails the test
with it (after ending it), unless the test is marked ``allow_leaks``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import _proc_table, kill_and_wait, processes_naming, reap_adopted_orphans

from events import wire
from events.procfs import read_stat
from events.rpc import BlockingConnection
from events.segment import read_events

# the fixtures (``daemon``, ``daemon_factory``) are conftest's: tests take them as arguments
__all__ = ["CTL", "Daemon", "ctl", "lost_tasks", "ok"]

REPO = Path(__file__).resolve().parent.parent


class Daemon:
    """One supervisord on ``root``; ``start()`` returns once the socket answers ``status``."""

    def __init__(self, root: str | os.PathLike[str], *args: str,
                 stderr_path: str | os.PathLike[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.args = list(args)
        self.socket = (self.args[self.args.index("--socket") + 1] if "--socket" in self.args
                       else str(self.root / "supervisord.sock"))
        self.stderr_path = Path(stderr_path or self.root.parent / f"{self.root.name}.stderr")
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def command(self) -> list[str]:
        return [sys.executable, "-m", "supervisor.daemon", "--root", str(self.root),
                "--log-format", "json", *self.args]

    def start(self, timeout: float = 15.0, expect_fail: bool = False) -> Daemon:
        """Start the daemon and wait until ``status`` answers (or, with ``expect_fail``, exits)."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.starts += 1
        err = open(self.stderr_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env, cwd=REPO)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                if expect_fail:
                    return self
                raise RuntimeError(f"supervisord exited with {code}:\n{self.stderr()[-4000:]}")
            if not expect_fail:
                with contextlib.suppress(OSError, wire.ProtocolError, wire.RemoteError), \
                        BlockingConnection(self.socket, timeout=2) as conn:
                    conn.call("status")
                    return self
            if time.monotonic() > deadline:
                if expect_fail:
                    raise RuntimeError("supervisord was expected to fail but kept running")
                raise TimeoutError(f"supervisord did not answer in {timeout}s:\n"
                                   f"{self.stderr()[-4000:]}")
            time.sleep(0.01)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the daemon (only the daemon: shims and containers must survive it)."""
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code. SIGKILL if it does not stop in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def restart(self, kill: bool = False) -> Daemon:
        """Stop (SIGTERM, or SIGKILL with ``kill``) and start again on the same root."""
        if kill:
            self.kill9()
        else:
            self.stop()
        return self.start()

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- API -----------------------------------------------------------------------------------

    def connect(self, timeout: float | None = 30.0) -> BlockingConnection:
        return BlockingConnection(self.socket, timeout=timeout)

    def call(self, method: str, *, io_timeout: float | None = 30.0, **params: Any) -> Any:
        """One request on a fresh connection; an error reply raises ``wire.RemoteError``.

        Every keyword is a param of the method (``timeout`` is ``stop``'s grace time);
        ``io_timeout`` bounds the socket operations.
        """
        with self.connect(io_timeout) as conn:
            return conn.call(method, **params)

    def stream(self, method: str, *, io_timeout: float | None = 30.0, **params: Any
               ) -> list[Any]:
        """All items of a stream that ends (e.g. ``events`` without ``follow``)."""
        with self.connect(io_timeout) as conn:
            return list(conn.stream(method, **params))

    def run(self, *command: str, **spec: Any) -> str:
        """``run`` a container; returns its id."""
        return self.call("run", spec={"command": list(command), **spec})["id"]

    def ps(self, all: bool = True) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.call("ps", all=all)}

    def reconciled(self, timeout: float = 10.0) -> Daemon:
        """Wait until the daemon has reconciled every container after its start (``ps`` shows
        ``unknown`` until then, by design)."""
        self.wait_for(lambda: self.call("status")["reconciling"] is False, timeout)
        return self

    def wait_for(self, predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
        """Poll ``predicate()`` until it is truthy; returns its value or raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met in {timeout}s; last value {value!r}")
            time.sleep(interval)

    def wait_for_line(self, cid: str, line: str, timeout: float = 10.0) -> None:
        """Until container *cid* printed *line* (e.g. that its signal trap is set)."""
        wanted = line.encode()  # log lines travel as bytes
        self.wait_for(lambda: wanted in [i["line"] for i in self.stream("logs", id=cid)], timeout)

    # -- cleanup -------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Kill the daemon and every shim/container under the root, by pid, and wait for them;
        then the lost tasks (:func:`lost_tasks`) and what the runtimes (runc, crun) still hold
        under the root. Returns the leaks: the lost tasks' processes the log says ended or
        removed (each described)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # A child the daemon forked just before its kill may be inside execve (its command
        # line reads empty for that moment): scan again until a scan finds nobody. (Such a
        # launcher would leave by itself, on its parent's death, a moment later.)
        for attempt in range(5):
            found = processes_naming(str(self.root))
            if found:
                kill_and_wait(found)
            elif attempt:
                break
            time.sleep(0.03)
        lost, leaks = lost_tasks(self.root)
        kill_and_wait(lost)
        self._delete_runtime_containers()
        reap_adopted_orphans()
        return leaks

    def _delete_runtime_containers(self) -> None:
        """``delete --force`` what runc/crun still hold under the root (a lost shim's
        container: its processes are in its pid namespace and cgroup)."""
        for kind in ("runc", "crun"):
            state = self.root / kind
            if not state.is_dir() or not os.listdir(state):
                continue
            from shim.oci import OciCli, OCIError

            with contextlib.suppress(OCIError):
                rt = OciCli(kind, state, os.devnull)
                for name in os.listdir(state):
                    with contextlib.suppress(OCIError):
                        rt.delete(name, force=True, missing_ok=True)


def lost_tasks(root: str | os.PathLike[str]) -> tuple[list[int], list[str]]:
    """The processes of tasks whose shim was killed, and which of them are leaks.

    Such a task (and what it started) is reparented to pytest, the subreaper, and names no
    root; its shim made it the leader of its own session (the process runtime's ``setsid``),
    so its session id is the task's pid, which the root's log records (``task.create``,
    ``container.adopt``). Found: the sessions of those pids that hold a process whose parent
    is this pytest (a reparented one, so the pid is that task's, not a reused one: a session
    id stays taken while the session lives), and every process in them. A leak: one whose task
    the log says ended (``task.exit``) or whose container it says removed: the product should
    have ended it. ``([pids], [leaks described])``; nothing when the log cannot be read."""
    tasks: dict[int, str] = {}  # task pid -> container id
    ended: set[int] = set()
    removed: set[str] = set()
    try:
        for event in read_events(root):
            pid = event.data.get("pid")
            if event.type in ("task.create", "container.adopt") and isinstance(pid, int) \
                    and pid > 1:
                tasks[pid] = event.id
                ended.discard(pid)
                removed.discard(event.id)
            elif event.type == "task.exit" and isinstance(pid, int):
                ended.add(pid)
            elif event.type == "container.delete":
                removed.add(event.id)
    except Exception:  # a test's deliberately broken log (any error): nothing to find
        return [], []
    me = os.getpid()
    table = _proc_table()
    stats = {pid: read_stat(pid) for pid in table if pid != me}
    sessions = {s.session for s in stats.values()
                if s is not None and s.ppid == me and s.session in tasks and s.state not in "ZX"}
    pids = [pid for pid, s in stats.items() if s is not None and s.session in sessions
            and s.state not in "ZX"]
    leaks = []
    for pid in pids:
        sid = stats[pid].session  # type: ignore[union-attr]  # None was filtered out
        if sid in ended or tasks[sid] in removed:
            said = "removed" if tasks[sid] in removed else "ended"
            leaks.append(f"pid {pid} ({table[pid][1].strip()}) of container {tasks[sid]}'s "
                         f"task {sid}, which the log says {said}")
    return pids, leaks


#: The real ``supervisorctl`` of this venv (its console script), as a user runs it.
_SCRIPT = Path(sys.executable).parent / "supervisorctl"
CTL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "supervisor.ctl"]


def ctl(d: Daemon, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``supervisorctl --root ROOT ARGV...`` as a separate process; its completed result."""
    return subprocess.run([*CTL, "--root", str(d.root), *argv], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def ok(d: Daemon, *argv: str) -> str:
    """:func:`ctl` that must succeed; its stdout."""
    proc = ctl(d, *argv)
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr)
    return proc.stdout
