"""Start real shims for tests, and end every process they started, even when a test fails.

:class:`Shims` writes a spec, runs ``python -I -m shim start`` exactly as supervisord will, and
at teardown SIGKILLs each shim, its container and every descendant of either (found in /proc by
pid, never by name), waits for them, and removes a fallback socket outside the root.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import kill_and_wait, reap_adopted_orphans

from events import shim_api
from events.rpc import BlockingConnection

ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}


def start_command(root: Path, cid: str, run: bool = False) -> list[str]:
    """``shim start`` (``run``: with ``--run``, the first task started too)."""
    return [sys.executable, "-I", "-m", "shim", "start", "--root", str(root), "--id", cid,
            *(["--run"] if run else [])]


def children_of(pid: int) -> list[int]:
    """Direct children of *pid* (from /proc/PID/task/*/children)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
    return out


def tree(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        p = stack.pop()
        found.append(p)
        stack += children_of(p)
    return found


def cmdline(pid: int) -> bytes:
    """The process's command line (NUL-separated), empty once it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone."""
    try:
        return int(proc_stat(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].decode().split()


def sig_ignored(pid: int) -> int:
    """The mask of signals *pid* ignores (SigIgn in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))


class ShimHandle:
    def __init__(self, root: Path, cid: str, ready: dict[str, Any]) -> None:
        self.root = root
        self.id = cid
        self.dir = shim_api.shim_dir(root, cid)
        self.ready = ready
        self.pid: int = ready["pid"]
        self.address: str = ready["address"]
        self.task_pid: int = ready["task_pid"]

    def connect(self, role: str = "supervisor", timeout: float = 10.0) -> BlockingConnection:
        return BlockingConnection(self.address, role=role, timeout=timeout)

    def call(self, method: str, **params: Any) -> Any:
        with self.connect() as conn:
            return conn.call(method, **params)

    def exit_record(self, timeout: float = 10.0) -> dict[str, Any]:
        """The exit file, polled until it exists."""
        deadline = time.monotonic() + timeout
        while (record := shim_api.read_exit_file(self.dir)) is None:
            assert time.monotonic() < deadline, "no exit file"
            time.sleep(0.005)
        return record

    def wait_gone(self, timeout: float = 10.0) -> None:
        """Wait until the shim process has exited (reaping it: pytest is the subreaper)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, os.WNOHANG)
            if not os.path.exists(f"/proc/{self.pid}"):
                return
            time.sleep(0.005)
        raise AssertionError(f"shim {self.pid} still alive")

    def log_lines(self) -> list[str]:
        """Every CRI record of container.log and its rotated files, oldest first."""
        files = sorted(self.dir.glob(shim_api.CONTAINER_LOG + ".*"),
                       key=lambda p: -int(p.suffix[1:]))
        lines: list[str] = []
        for path in [*files, self.dir / shim_api.CONTAINER_LOG]:
            if path.exists():
                lines += path.read_text().splitlines()
        return lines


class Shims:
    """Factory fixture object: ``start(command, **spec)`` -> :class:`ShimHandle`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ShimHandle] = []
        self.pids: dict[int, int | None] = {}  # pid -> its start time, to survive pid reuse
        self._n = 0
        self.cgroups: list[str] = []  # what a shim (or runc for it) may have made

    def write_spec(self, cid: str | None = None, **spec: Any) -> str:
        self._n += 1
        cid = cid or f"c{self._n}"
        directory = shim_api.shim_dir(self.root, cid)
        directory.mkdir(parents=True, exist_ok=True)
        spec.setdefault("env", ENV)
        spec.setdefault("instance", f"{cid}-i{self._n}")
        shim_api.write_spec(directory, {"id": cid, **spec})
        self.cgroups.append(f"tether/{cid}-{spec['instance']}")
        return cid

    def run_start(self, cid: str, run: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(start_command(self.root, cid, run), capture_output=True,
                              text=True, timeout=30)
        if proc.returncode == 0:
            self._track(json.loads(proc.stdout)["pid"])
        return proc

    def start(self, command: list[str] | str, cid: str | None = None, run: bool = False,
              **spec: Any) -> ShimHandle:
        """A shim (``run``: its task started too; its ready map in ``handle.ready``)."""
        if isinstance(command, str):
            command = ["sh", "-c", command]
        cid = self.write_spec(cid, command=command, **spec)
        proc = self.run_start(cid, run)
        assert proc.returncode == 0, f"shim start failed: {proc.stderr}"
        handle = ShimHandle(self.root, cid, json.loads(proc.stdout))
        self.started.append(handle)
        self._track(handle.task_pid)
        return handle

    def adopt(self, ready: dict[str, Any], cid: str) -> ShimHandle:
        handle = ShimHandle(self.root, cid, ready)
        self.started.append(handle)
        self._track(handle.pid)
        self._track(handle.task_pid)
        return handle

    def _track(self, pid: int) -> None:
        self.pids.setdefault(pid, start_time(pid))

    def cleanup(self) -> None:
        """SIGKILL every tracked process still alive *as itself* (pid_max is 32768 here and
        other suites fork a lot: a pid seen earlier may be someone else's by now), with its
        descendants, and wait for them."""
        pids: list[int] = []
        for pid, started in self.pids.items():
            if started is not None and start_time(pid) == started:
                pids += [p for p in tree(pid) if p not in pids]
        kill_and_wait(pids)
        reap_adopted_orphans()
        self._cleanup_runtimes()
        for handle in self.started:
            if not handle.address.startswith(str(self.root)):
                with contextlib.suppress(OSError):
                    os.unlink(handle.address)


    def _cleanup_runtimes(self) -> None:
        """What a killed shim could not clean: runc/crun state under the root (``delete
        --force``) and the cgroups of this factory's containers (deepest first)."""
        for kind in ("runc", "crun"):
            state = self.root / kind
            if not state.is_dir():
                continue
            from shim.oci import OciCli, OCIError

            with contextlib.suppress(OCIError):
                rt = OciCli(kind, state, self.root / f"{kind}-cleanup.log")
                for name in os.listdir(state):
                    with contextlib.suppress(OCIError):
                        rt.delete(name, force=True, missing_ok=True)
        if self.cgroups:
            from oci_helpers import remove_cgroup_tree

            for name in self.cgroups:
                remove_cgroup_tree(name)


def leftover_cgroups(name: str) -> list[str]:
    """Directories of cgroup *name* (``tether/ID-INSTANCE``) still present anywhere."""
    from oci_helpers import cgroup_dirs

    return cgroup_dirs(name)


def no_shim_processes(root: Path) -> bool:
    """True when no process names *root* on its command line (the shims of this root)."""
    from conftest import processes_naming

    return not processes_naming(str(root))


class EventReader:
    """Plays the daemon's side of the event stream: one ``events`` stream, every item kept in
    :attr:`items`, each acknowledged at once (on the same connection) when *ack*."""

    def __init__(self, shim: ShimHandle, ack: bool = True) -> None:
        self.conn = shim.connect()
        self.ack = ack
        self.rid = self.conn.send_request("events")
        self.items: list[dict[str, Any]] = []
        self.ended = False  # the shim ended the stream (it exited)

    def until(self, predicate: Any, timeout: float = 15.0, what: str = "events"
              ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not predicate(self.items):
            left = deadline - time.monotonic()
            assert left > 0 and not self.ended, f"timed out waiting for {what}: {self.types()}"
            self.conn.settimeout(left)
            try:
                message = self.conn.recv()
            except TimeoutError:
                continue
            except ConnectionError:
                self.ended = True
                continue
            if message.get("id") != self.rid:
                continue
            if message.get("end"):
                self.ended = True
            elif "item" in message:
                self.items.append(message["item"])
                if self.ack:
                    try:
                        self.conn.send_request("ack", {"seq": message["item"]["seq"]})
                    except OSError:  # the shim is gone: what was read stays read
                        self.ended = True
        return self.items

    def count(self, etype: str) -> int:
        return sum(1 for e in self.items if e["type"] == etype)

    def types(self) -> list[str]:
        return [e["type"] for e in self.items]

    def of(self, etype: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.items if e["type"] == etype]

    def close(self) -> None:
        self.conn.close()


def poll(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate()`` until it is truthy; return its value, fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return value
