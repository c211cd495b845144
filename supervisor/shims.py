"""Starting shims, talking to them, and turning what they report into durable events.

One :class:`ShimLink` task per live shim holds a single connection with an ``events`` stream:
each event the shim reports is appended (deduplicated by ``(instance, shim_seq)``) and only
then acknowledged on the same connection, so a crash anywhere in between re-delivers it and the
projection's memory of shim seqs makes the second delivery a no-op.

When the connection ends without our asking (the shim was SIGKILLed, or crashed), the shim's
exit file decides: if it holds this instance's exit, that exit is appended; otherwise the
daemon appends ``shim.lost`` and watches the container's pid through a pidfd so that its end
is still recorded (as ``task.exit`` with ``exit_status`` None and a ``reason``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events import shim_api, wire
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT
from events.procfs import is_running, starttime
from supervisor.channel import Channel, Closed, connect
from supervisor.errors import ApiError

if TYPE_CHECKING:
    from supervisor.core import Core

__all__ = ["ShimLauncher", "ShimLink", "call_shim", "end_shim", "new_instance",
           "shim_call_timeout", "spawn_shim", "watch_lost_task"]

log = structlog.get_logger("supervisord.shims")

#: Default PATH for containers, as docker's.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def new_instance() -> str:
    return secrets.token_hex(8)


def shim_spec(cid: str, instance: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Translate an API spec (supervisor.protocol.SPEC_PARAMS) to a shim spec (SPEC_FIELDS)."""
    env = {"PATH": DEFAULT_PATH, **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}}
    limits = {k: v for k, v in (("memory", spec.get("memory")), ("cpus", spec.get("cpus")),
                                ("pids", spec.get("pids_limit"))) if v is not None}
    out: dict[str, Any] = {
        "id": cid, "instance": instance, "command": list(spec["command"]), "env": env,
        "cwd": spec.get("cwd"), "runtime": spec.get("runtime") or "process",
        "rootfs": spec.get("rootfs"), "bundle": spec.get("bundle"),
        "init": bool(spec.get("init")), "user": spec.get("user"), "limits": limits,
        "stop_signal": spec.get("stop_signal") or DEFAULT_STOP_SIGNAL,
        "stop_timeout": spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        "labels": spec.get("labels") or {},
    }
    log_conf = dict(shim_api.SPEC_FIELDS["log"])
    if spec.get("log_max_size"):
        log_conf["max_size"] = int(spec["log_max_size"])
    if spec.get("log_keep") is not None:
        log_conf["keep"] = int(spec["log_keep"])
    out["log"] = log_conf
    for key in ("namespaces", "rlimits"):
        if spec.get(key):
            out[key] = spec[key]
    return out


async def spawn_shim(root: Path, cid: str, instance: str, spec: dict[str, Any]
                     ) -> dict[str, Any]:
    """Write the shim spec and start ``python -I -m shim start``; returns its ready map
    ``{"pid", "address", "task_pid"}``. The shim directory must not hold a live shim.

    On failure nothing is left: the shim's own start leaves nothing running, and a directory
    this call created is removed (a retry, or the next start, finds a clean slate).
    """
    directory = shim_api.shim_dir(root, cid)
    fresh = not directory.exists()
    try:
        return await _spawn(root, cid, directory, instance, spec)
    except BaseException:
        if fresh:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    lambda: shutil.rmtree(directory, ignore_errors=True))
        raise


async def _spawn(root: Path, cid: str, directory: Path, instance: str, spec: dict[str, Any]
                 ) -> dict[str, Any]:
    # A shim that was just deleted (restart) replies, removes its socket and exits: until it
    # has, it holds the directory's lock and a new shim would be refused. Wait for it (bounded:
    # past that, the new shim's start says clearly that another shim runs).
    deadline = trio.current_time() + PREVIOUS_SHIM_GRACE
    while _locked(directory / SHIM_LOCK) and trio.current_time() < deadline:
        await trio.sleep(0.002)
    def prepare() -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in (shim_api.EXIT_FILE, shim_api.ADDRESS_FILE, shim_api.PID_FILE):
            with contextlib.suppress(FileNotFoundError):
                (directory / stale).unlink()
        shim_api.write_spec(directory, shim_spec(cid, instance, spec))

    try:  # file system calls (a hung disk must not stall the daemon): in a thread
        await trio.to_thread.run_sync(prepare)
    except OSError as exc:
        raise _os_error("writing the shim spec", directory, exc) from None
    began = time.perf_counter()
    launcher = _launchers.get(str(root))
    why = "no launcher" if launcher is None else "launcher not ready"
    if launcher is not None and launcher.ready:
        try:
            ready = await launcher.start(cid)
        except LauncherLost as exc:  # it may have started the shim: find out before retrying
            log.warning("the shim launcher went away during a start", id=cid, error=str(exc))
            ready = await _adopt_after_lost_launcher(root, cid, directory, instance)
            why = "launcher lost"
        else:
            why = "launcher error"
        if ready is not None:
            log.info("shim started", id=cid, via="launcher", pid=ready.get("pid"),
                     ms=round((time.perf_counter() - began) * 1e3, 1))
            return ready
    ready = await _spawn_fresh(root, cid)
    log.info("shim started", id=cid, via="fresh interpreter", reason=why, pid=ready.get("pid"),
             ms=round((time.perf_counter() - began) * 1e3, 1))
    return ready


async def _spawn_fresh(root: Path, cid: str) -> dict[str, Any]:
    """``python -I -m shim start``: a whole new interpreter (the fallback of the launcher)."""
    # Absolute interpreter, isolated mode: never a PATH lookup, never the caller's env.
    argv = [sys.executable, "-I", "-m", "shim", "start", "--root", str(root), "--id", cid]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                    check=False, stdin=b"")
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise _start_failed(reason)
    try:
        ready = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ApiError("internal", f"shim start printed {result.stdout!r}, not a ready line"
                       ) from None
    return dict(ready)


def _start_failed(reason: str) -> ApiError:
    """The error of a shim that could not start its container (the same on both paths)."""
    code = "no_space" if "No space left" in reason else "invalid"
    return ApiError(code, f"the shim could not start the container: {reason}")


#: The lock a live shim holds on its directory (shim/osutil.py; the daemon imports no shim code).
SHIM_LOCK = "shim.lock"
#: How long a start waits for the previous shim of the directory to finish exiting.
PREVIOUS_SHIM_GRACE = 5.0


async def _adopt_after_lost_launcher(root: Path, cid: str, directory: Path, instance: str
                                     ) -> dict[str, Any] | None:
    """After the launcher died with our start in flight: the shim it forked either reported
    ready before (it runs: adopt it, its ready map from ``state``) or finds its ready pipe
    closed and aborts (its lock is freed: return None, start afresh)."""
    deadline = trio.current_time() + 10
    while trio.current_time() < deadline:
        try:
            state = await call_shim(root, cid, "state")
        except ApiError:
            state = None
        if isinstance(state, dict) and state.get("instance") == instance:
            address = read_address(root, cid)
            if address and state.get("shim_pid") and state.get("pid"):
                log.info("adopted a shim the lost launcher had started", id=cid)
                return {"pid": state["shim_pid"], "address": address, "task_pid": state["pid"]}
        if not _locked(directory / SHIM_LOCK):
            return None
        await trio.sleep(0.02)
    raise ApiError("internal", f"the shim launcher died while starting {cid} and its shim "
                   "neither answered nor went away; retry the start")


def _locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the lock if we got it
    return False


class LauncherLost(Exception):
    """The launcher went away with a start in flight: the shim may or may not run."""


#: The running launcher of each root (one per daemon; a dict so tests may run several).
_launchers: dict[str, ShimLauncher] = {}


class ShimLauncher:
    """supervisord's fork server for shims (:mod:`shim.launcher`), one child process.

    :meth:`run` (a task of the daemon's nursery) starts ``python -I -m shim launcher`` on a
    socketpair, serves the replies of :meth:`start`, and starts it again if it dies (after a
    back-off from 0.1 s doubling to 5 s, reset once it lived 10 s). Until its hello arrives,
    and whenever it is gone, :func:`spawn_shim` uses ``shim start`` in a fresh interpreter:
    the launcher is an optimisation, never a dependency. When the daemon stops, closing the
    channel makes the launcher exit; when the daemon is SIGKILLed, EOF and its
    ``PR_SET_PDEATHSIG`` do. Shims it started are not its children and keep running.

    The process is spawned by ``subprocess.Popen`` on the trio thread, not by
    ``trio.run_process``: that forks in a worker thread, and ``PR_SET_PDEATHSIG`` fires when
    the *thread* that forked exits (trio retires idle workers), which would kill the launcher.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid: int | None = None
        self.chan: Channel | None = None
        self.ready = False
        self.launches = 0  # processes started (1 + restarts)
        self._next_rid = 1
        self._waiting: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}

    def argv(self, fd: int) -> list[str]:
        # the padding leaves room in the argv area for each shim's own command line
        return [sys.executable, "-I", "-m", "shim", "launcher", "--root", str(self.root),
                "--fd", str(fd), "--title-space", "_" * 72]

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        _launchers[str(self.root)] = self
        task_status.started()
        delay = 0.1
        try:
            while True:
                began = trio.current_time()
                try:
                    await self._run_once()
                except Exception as exc:  # never take the daemon down: fall back, retry
                    log.exception("shim launcher failed", error=repr(exc))
                if trio.current_time() - began > 10:
                    delay = 0.1
                log.warning("shim launcher gone; shims start in a fresh interpreter until it "
                            "is back", retry_in=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        finally:
            if _launchers.get(str(self.root)) is self:
                del _launchers[str(self.root)]

    async def _run_once(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # its own process group: a Ctrl-C or a `kill -- -PGID` meant for the daemon must
            # not end the launcher under it (the daemon ends it, by closing the channel)
            proc = subprocess.Popen(self.argv(theirs.fileno()), pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    process_group=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.launches += 1
        self.pid = proc.pid
        pidfd = os.pidfd_open(proc.pid)
        chan = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        began = time.perf_counter()
        try:
            async with trio.open_nursery() as nursery:
                async def watch_exit() -> None:
                    await trio.lowlevel.wait_readable(pidfd)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_exit)
                # Closed is caught in here, not around the nursery: the nursery would wrap it
                # in an ExceptionGroup that the except clause does not match
                try:
                    await self._serve_replies(chan, proc.pid, began)
                except (Closed, wire.ProtocolError) as exc:
                    log.warning("shim launcher channel closed", pid=proc.pid, error=str(exc))
                    nursery.cancel_scope.cancel()
        finally:
            self.ready = False
            self.chan = None
            for event, _ in self._waiting.values():
                event.set()  # no message: LauncherLost
            with trio.CancelScope(shield=True):
                await chan.aclose()  # EOF: the launcher leaves
                with trio.move_on_after(1):
                    await trio.lowlevel.wait_readable(pidfd)
                if proc.poll() is None:
                    proc.kill()
                code = proc.wait()
                os.close(pidfd)
                self.pid = None
                log.info("shim launcher exited", pid=proc.pid, returncode=code)

    async def _serve_replies(self, chan: Channel, pid: int, began: float) -> None:
        hello = await chan.recv()
        if not isinstance(hello.get("hello"), dict):
            raise wire.ProtocolError(f"the launcher said {hello!r}, not hello")
        self.chan = chan
        self.ready = True
        log.info("shim launcher ready", pid=pid, ms=round((time.perf_counter() - began) * 1e3, 1))
        while True:
            message = await chan.recv()
            waiter = self._waiting.get(message.get("id"))  # type: ignore[arg-type]
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()

    async def start(self, cid: str) -> dict[str, Any] | None:
        """Start the shim of *cid*: its ready map; None if the launcher cannot (fall back);
        :class:`ApiError` if the shim could not start the container (as ``shim start``);
        :class:`LauncherLost` if the launcher went away meanwhile.

        Shielded from cancellation: a start takes milliseconds, and a caller that left must
        not leave behind a shim that nobody recorded.
        """
        chan = self.chan
        if chan is None:
            return None
        rid = self._next_rid
        self._next_rid += 1
        event, box = trio.Event(), []
        self._waiting[rid] = (event, box)
        try:
            with trio.CancelScope(shield=True):
                try:
                    await chan.send(wire.request(rid, "start", {"id": cid}))
                except Closed as exc:
                    raise LauncherLost(str(exc)) from None
                with trio.move_on_after(READY_TIMEOUT + 5):
                    await event.wait()
        finally:
            del self._waiting[rid]
        if not box:
            raise LauncherLost("no reply")
        message = box[0]
        if "result" in message and isinstance(message["result"], dict):
            return dict(message["result"])
        error = message.get("error") or {}
        if error.get("code") == "start_failed":
            raise _start_failed(str(error.get("message")))
        log.warning("the shim launcher could not start a shim", id=cid, error=error)
        return None


#: supervisord's bound on a launcher's reply (the shim's own ready timeout is 30 s).
READY_TIMEOUT = 30.0


def _os_error(what: str, path: Path, exc: OSError) -> ApiError:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError("no_space", f"{what} in {path} failed: {exc.strerror}; free space "
                        "and retry (nothing was changed)")
    return ApiError("internal", f"{what} in {path} failed: {exc}")


def read_address(root: Path, cid: str) -> str | None:
    try:
        return (shim_api.shim_dir(root, cid) / shim_api.ADDRESS_FILE).read_text().strip()
    except OSError:
        return None


def shim_call_timeout(method: str) -> float | None:
    return None if method in ("stop", "wait", "delete") else 10.0


async def call_shim(root: Path, cid: str, method: str, **params: Any) -> Any:
    """One request on a fresh connection (so a long ``stop`` never blocks anything else).

    The request goes in the hello's write: one round trip less (a ``state`` call 0.45 -> 0.35 ms).
    ``unavailable`` when the shim cannot be reached; the shim's own errors pass through.
    """
    address = read_address(root, cid)
    if address is None:
        raise ApiError("unavailable", f"container {cid} has no shim address")
    try:
        chan = await connect(address, "supervisor", then=[wire.request(1, method, params)])
    except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
        raise ApiError("unavailable", f"the shim of {cid} cannot be reached: {exc}") from None
    try:
        timeout = shim_call_timeout(method)
        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            while True:
                response = wire.response_to(1, await chan.recv())
                if response is not None and response[0] == "result":
                    return response[1]
    except wire.RemoteError as exc:
        raise ApiError(exc.code, exc.message) from None
    except (Closed, trio.TooSlowError, wire.ProtocolError) as exc:
        raise ApiError("unavailable", f"the shim of {cid} went away during {method}: {exc}"
                       ) from None
    finally:
        await chan.aclose()


async def end_shim(root: Path, cid: str) -> str:
    """End whatever runs in ``ROOT/shims/ID`` (delete with force; kill by pid if it does not
    answer) and remove the directory. Returns what was done, for the log."""
    directory = shim_api.shim_dir(root, cid)
    what = "removed an empty shim directory"
    try:
        await call_shim(root, cid, "delete", force=True)
        what = "deleted a live shim (its task killed)"
    except ApiError:
        try:
            pid = int((directory / shim_api.PID_FILE).read_text())
        except (OSError, ValueError):
            pid = 0
        if is_running(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            what = f"killed an unresponsive shim (pid {pid})"
    await trio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))
    return what


async def watch_lost_task(core: Core, cid: str, instance: str, pid: int | None,
                          started: int | None = None) -> None:
    """The shim is gone but its container may not be: record the container's end when it
    comes, via a pidfd (no polling, no race with pid reuse once the pidfd is open).

    ``started`` (the task's start time when the loss was recorded) guards against a pid that
    was reused while the daemon was down: another process with that pid is not our task.
    """
    fd: int | None = None
    if pid and is_running(pid):
        try:
            fd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            fd = None
        if fd is not None and started is not None and starttime(pid) != started:
            log.info("the pid of a lost task was reused: the task is gone", id=cid, pid=pid)
            os.close(fd)
            fd = None
    try:
        if fd is not None:
            log.info("watching the task of a lost shim", id=cid, pid=pid)
            await trio.lowlevel.wait_readable(fd)
    finally:
        if fd is not None:
            os.close(fd)
    # the exit file may have appeared meanwhile (the shim died after writing it): prefer it
    record = shim_api.read_exit_file(shim_api.shim_dir(core.paths.root, cid))
    if record and record.get("instance") == instance:
        await core.record_shim_event(cid, "task.exit", exit_data(record))
        return
    await core.record_shim_event(cid, "task.exit", {
        "pid": pid, "exit_status": None, "signal": None, "exited_at": time.time_ns(),
        "instance": instance, "reason": "shim lost: the task ended, its status is unknown"})


def exit_data(record: dict[str, Any]) -> dict[str, Any]:
    data = {k: record.get(k) for k in ("pid", "exit_status", "signal", "exited_at",
                                       "shim_seq", "instance")}
    if record.get("reason"):  # e.g. exec_failed: ... (the shim's exit record)
        data["reason"] = record["reason"]
    return data


class ShimLink:
    """The daemon's connection to one shim (one task in the core nursery).

    ``caught_up`` is set once everything the shim had not had acknowledged when we connected
    is durable (or once the shim turned out to be dead and that is recorded): recovery shows a
    container as ``unknown`` until then.
    """

    def __init__(self, core: Core, cid: str, instance: str) -> None:
        self.core = core
        self.cid = cid
        self.instance = instance
        self.closing = False  # we asked the shim to go (delete): its EOF is expected
        self.caught_up = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.gone = trio.Event()

    async def run(self) -> None:
        """Consume the shim's events until it goes away; then record what is known.

        A bug met on the way is logged and the link retried a second later: it must neither
        take the daemon down nor leave the shim's events unconsumed.
        """
        try:
            with self.cancel_scope:
                while True:
                    try:
                        await self._run_once()
                        return
                    except Exception as exc:
                        log.exception("shim link failed; retrying", id=self.cid,
                                      error=repr(exc))
                        await trio.sleep(1)
                        c = self.core.state.containers.get(self.cid)
                        if self.closing or c is None or c["instance"] != self.instance:
                            return
        finally:
            if self.core.links.get(self.cid) is self:
                del self.core.links[self.cid]
            self.caught_up.set()
            self.gone.set()

    async def _run_once(self) -> None:
        chan: Channel | None = None
        address = read_address(self.core.paths.root, self.cid)
        try:
            if address is None:
                raise OSError("no address file")
            # ``state`` first: its seq/acked tell how much backlog ``events`` replays
            chan = await connect(address, "supervisor", then=[
                wire.request(1, "state", {}), wire.request(2, "events", {})])
        except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
            log.info("shim unreachable", id=self.cid, error=str(exc))
        if chan is not None:
            try:
                await self._consume(chan)
            finally:
                await chan.aclose()
        if not self.closing:
            await self._shim_gone()

    async def _consume(self, chan: Channel) -> None:
        """Requests 1 (``state``) and 2 (``events``) were sent with the hello."""
        next_rid = 3
        target: int | None = None
        try:
            while True:
                message = await chan.recv()
                rid = message.get("id")
                if rid == 1:
                    result = message.get("result") or {}
                    seq, acked = result.get("seq", 0), result.get("acked", 0)
                    target = seq if isinstance(seq, int) and seq > (acked or 0) else 0
                    if target == 0:
                        self.caught_up.set()
                    continue
                if rid != 2:
                    continue  # replies to our acks
                if "error" in message or message.get("end"):
                    return
                item = message.get("item")
                if not isinstance(item, dict):
                    continue
                seq = item.get("seq")
                etype = item.get("type")
                if not isinstance(seq, int) or not isinstance(etype, str):
                    log.warning("malformed shim event", id=self.cid, item=item)
                    continue
                data = dict(item.get("data") or {})
                data["shim_seq"] = seq
                data["instance"] = self.instance
                await self.core.record_shim_event(self.cid, etype, data)
                await chan.send(wire.request(next_rid, "ack", {"seq": seq}))
                next_rid += 1
                if target is not None and seq >= target:
                    self.caught_up.set()
        except (Closed, wire.ProtocolError):
            return

    async def _shim_gone(self) -> None:
        """The connection ended (or never came) without a delete: exit file or shim.lost."""
        core = self.core
        cid = self.cid
        c = core.state.containers.get(cid)
        if c is None or c["instance"] != self.instance:
            return
        record = shim_api.read_exit_file(shim_api.shim_dir(core.paths.root, cid))
        if record and record.get("instance") == self.instance:
            await core.record_shim_event(cid, "task.exit", exit_data(record))
            return
        c = core.state.containers.get(cid)
        if c is None or c["state"] == "stopped" or c["instance"] != self.instance:
            return
        pid = c["pid"]
        started = c.get("lost_starttime")
        if not c["lost"]:
            alive = is_running(pid)
            started = starttime(pid) if alive else None
            log.warning("shim lost", id=cid, pid=pid, task_alive=alive)
            await core.record_shim_event(cid, "shim.lost", {
                "reason": "the shim's connection closed and it left no exit file",
                "instance": self.instance, "pid": pid, "task_alive": alive,
                "task_starttime": started, "state": c["state"]})
        self.caught_up.set()
        await watch_lost_task(core, cid, self.instance, pid, started)


def start_link(core: Core, cid: str, instance: str) -> ShimLink:
    """Start (in the core nursery) the link task of a shim; replaces any previous link."""
    assert core.nursery is not None
    old = core.links.get(cid)
    if old is not None:
        old.closing = True
        old.cancel_scope.cancel()
    link = ShimLink(core, cid, instance)
    core.links[cid] = link
    core.nursery.start_soon(link.run)
    return link
