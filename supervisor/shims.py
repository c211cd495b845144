"""Starting shims and talking to them: the daemon's side of :mod:`events.shim_api`.

Plain functions of a root and a container id, no daemon state: :class:`supervisor.registry.
ShimRegistry` is what the daemon owns and calls them through. A shim is started from the
preloaded launcher (:mod:`supervisor.launcher`) when one is ready, else as ``python -I -m shim
start`` in a fresh interpreter; either way it is detached and outlives the daemon.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, cast

import structlog
import trio

from events import policy, shim_api, wire
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, ErrorCode, known
from events.procfs import is_running, process_table
from supervisor.channel import Closed, connect
from supervisor.diskpace import DiskPace
from supervisor.errors import ApiError
from supervisor.probe import shim_alive

if TYPE_CHECKING:
    from collections.abc import Callable

    from events.domain import ExitRecord, HealthSpec, RestartSpec
    from supervisor.spec import Spec

__all__ = ["SPEC_WRITES", "FileWrites", "Launcher", "Ready", "ShimSpec", "SymlinkedDir",
           "call_shim", "checked_shim_dir",
           "end_shim", "exit_data", "exit_of_task", "new_instance", "read_address",
           "read_exit_record", "read_shim_file", "read_task_record", "real_shim_dir",
           "remove_shim_dir", "shim_alive", "shim_call_timeout", "shim_spec", "spawn_shim",
           "start_failed"]

log = structlog.get_logger("supervisord.shims")

#: Default PATH for containers, as docker's.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: How long a start waits for the previous shim of the directory to finish exiting.
PREVIOUS_SHIM_GRACE = 5.0
#: How long a start whose launcher (or ``shim start``) died waits for the shim it forked to
#: answer or go away (longer than a shim stopped by an operator usually stays stopped).
LOST_STARTER_GRACE = 10.0


class FileWrites(DiskPace):
    """Where a start's few file system calls run (the shim directory's stale files, its spec):
    in the trio thread while the disk is fast, so that a start does not pay two thread
    hand-offs for them (a quarter of a millisecond each when idle, several under load); in a
    worker thread for *cooldown* seconds once a run took *slow* seconds or more, so that a disk
    that stalls stops the daemon's loop at most once per cooldown (the rule of the event log's
    lone appends too: :class:`supervisor.diskpace.DiskPace`)."""

    def __init__(self, slow: float = 0.002, cooldown: float = 30.0) -> None:
        super().__init__(slow, cooldown)
        self.inline = 0  # runs done in the trio thread (tests read it)

    async def run(self, write: Callable[[], None]) -> None:
        t = time.monotonic()
        try:
            if self.fast():
                self.inline += 1
                write()
            else:
                await trio.to_thread.run_sync(write)
        finally:
            self.took(time.monotonic() - t)


#: The daemon's (one per process: the disk is the same for every start).
SPEC_WRITES = FileWrites()


class Ready(TypedDict, total=False):
    """What a started shim reports (its ready line, or the launcher's reply)."""

    pid: int  # the shim's
    address: str
    task_pid: int
    created_at: int  # the shim's clock, unix ns
    # asked to start the task too (the single create-and-start request): one of
    started_at: int  # it runs the user's program (the shim's clock)
    exec_error: str  # the program could not be executed: its exit (127) is in the outbox


class ShimSpec(TypedDict, total=False):
    """The ``spec.json`` the daemon writes for a shim (:data:`events.shim_api.SPEC_FIELDS`)."""

    id: str
    instance: str
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    runtime: str
    rootfs: str | None
    bundle: str | None
    init: bool
    user: Any
    limits: dict[str, int | float]
    stop_signal: int
    stop_timeout: float
    labels: dict[str, str]
    restart: RestartSpec
    health: HealthSpec | None
    restart_attempt: int
    log: dict[str, int]
    namespaces: list[str]
    rlimits: dict[str, list[int]]
    shim_group: str


class Launcher(Protocol):
    """The fork server's face to :func:`spawn_shim` (:class:`supervisor.launcher.ShimLauncher`)."""

    @property
    def ready(self) -> bool: ...

    async def start(self, cid: str, start: bool = False) -> Ready | None: ...


class LauncherLost(Exception):
    """The launcher went away with a start in flight: the shim may or may not run."""


def new_instance() -> str:
    return secrets.token_hex(8)


def shim_spec(cid: str, instance: str, spec: Spec, attempt: int = 0) -> ShimSpec:
    """Translate an API spec (:class:`supervisor.spec.Spec`) to a shim spec. ``attempt``: the
    restarts in a row so far, when this shim carries on a crash loop another shim began (the
    daemon restarting a lost shim's container), so that ``on-failure:MAX`` counts them."""
    env = {"PATH": DEFAULT_PATH, **{str(k): str(v) for k, v in (spec.get("env") or {}).items()}}
    limits = {k: v for k, v in (("memory", spec.get("memory")), ("cpus", spec.get("cpus")),
                                ("pids", spec.get("pids_limit"))) if v is not None}
    out: ShimSpec = {
        "id": cid, "instance": instance, "command": list(spec["command"]), "env": env,
        "cwd": spec.get("cwd"), "runtime": spec.get("runtime") or "process",
        "rootfs": spec.get("rootfs"), "bundle": spec.get("bundle"),
        "init": bool(spec.get("init")), "user": spec.get("user"), "limits": limits,
        "stop_signal": spec.get("stop_signal") or DEFAULT_STOP_SIGNAL,
        "stop_timeout": spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
        "labels": spec.get("labels") or {},
        "restart": policy.restart_spec(spec.get("restart")),
        "health": spec.get("health"),
        "restart_attempt": attempt,
    }
    log_conf = dict(shim_api.SPEC_FIELDS["log"])
    if spec.get("log_max_size"):
        log_conf["max_size"] = int(spec.get("log_max_size") or 0)
    if spec.get("log_keep") is not None:
        log_conf["keep"] = int(spec.get("log_keep") or 0)
    out["log"] = log_conf
    if spec.get("namespaces"):
        out["namespaces"] = spec["namespaces"]
    if spec.get("rlimits"):
        out["rlimits"] = spec["rlimits"]
    if spec.get("shim_group"):  # the shim's starter reads it: a member of a shared shim
        out["shim_group"] = spec["shim_group"]
    return out


async def spawn_shim(root: Path, cid: str, instance: str, spec: Spec,
                     launcher: Launcher | None = None, attempt: int = 0, start: bool = False
                     ) -> Ready:
    """Write the shim spec and start the shim (through ``launcher`` when it is ready); its
    ready map. The shim directory must not hold a live shim. With ``start``, the shim starts
    the task too before it reports ready (``runc run``: one runtime process, and no ``start``
    call): the map then has ``started_at``, or ``exec_error``.

    On failure nothing is left: the shim's own start leaves nothing running, and a directory
    this call created is removed (a retry, or the next start, finds a clean slate).
    """
    directory = checked_shim_dir(root, cid)
    fresh = not os.path.lexists(directory)
    try:
        return await _spawn(root, cid, directory, instance, spec, launcher, attempt, start)
    except BaseException:
        if fresh:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(remove_shim_dir, root, cid)
        raise


async def _spawn(root: Path, cid: str, directory: Path, instance: str, spec: Spec,
                 launcher: Launcher | None, attempt: int, start: bool) -> Ready:
    # A shim that was just deleted (restart) replies, removes its socket and exits: until it
    # has, it holds the directory's lock and a new shim would be refused. Wait for it (bounded:
    # past that, the new shim's start says clearly that another shim runs).
    deadline = trio.current_time() + PREVIOUS_SHIM_GRACE
    while shim_alive(directory) and trio.current_time() < deadline:
        await trio.sleep(0.002)

    def prepare() -> None:
        directory.mkdir(parents=True, exist_ok=True)
        checked_shim_dir(root, cid)  # made by someone else meanwhile: still never a symlink
        for stale in (shim_api.EXIT_FILE, shim_api.ADDRESS_FILE, shim_api.PID_FILE,
                      shim_api.RECORDED_FILE):
            with contextlib.suppress(FileNotFoundError):
                (directory / stale).unlink()
        shim_api.write_spec(directory, dict(shim_spec(cid, instance, spec, attempt)))

    try:
        await SPEC_WRITES.run(prepare)
    except OSError as exc:
        raise _os_error("writing the shim spec", directory, exc) from None
    began = time.perf_counter()
    why = "no launcher" if launcher is None else "launcher not ready"
    if launcher is not None and launcher.ready:
        ready: Ready | None
        try:
            ready = await launcher.start(cid, start)
        except LauncherLost as exc:  # it may have started the shim: find out before retrying
            log.warning("the shim launcher went away during a start", id=cid, error=str(exc))
            ready = await _adopt_after_lost_launcher(root, cid, directory, instance, start)
            why = "launcher lost"
        else:
            why = "launcher error"
        if ready is not None:
            log.info("shim started", id=cid, via="launcher", pid=ready.get("pid"),
                     ms=round((time.perf_counter() - began) * 1e3, 1))
            return ready
    try:
        ready = await _spawn_fresh(root, cid, start)
    except StarterKilled as exc:  # its shim may run (ready told to no one): as a lost launcher
        log.warning("shim start was killed during a start", id=cid, error=str(exc))
        found = await _adopt_after_lost_launcher(root, cid, directory, instance, start)
        if found is None:
            raise start_failed(f"{shim_api.NO_READY}: {exc}") from None
        ready = found
    log.info("shim started", id=cid, via="fresh interpreter", reason=why, pid=ready.get("pid"),
             ms=round((time.perf_counter() - began) * 1e3, 1))
    return ready


async def _spawn_fresh(root: Path, cid: str, start: bool = False) -> Ready:
    """``python -I -m shim start`` (``--run`` with ``start``): a whole new interpreter (the
    fallback of the launcher)."""
    # Absolute interpreter, isolated mode: never a PATH lookup, never the caller's env.
    argv = [sys.executable, "-I", "-m", "shim", "start", "--root", str(root), "--id", cid,
            *(["--run"] if start else [])]
    result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                    check=False, stdin=b"")
    if result.returncode < 0:
        raise StarterKilled(f"shim start was killed by signal {-result.returncode}")
    if result.returncode != 0:
        reason = result.stderr.decode(errors="replace").strip() or f"exit {result.returncode}"
        raise start_failed(reason)
    try:
        ready = json.loads(result.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ApiError(ErrorCode.INTERNAL, f"shim start printed {result.stdout!r}, not a "
                       "ready line") from None
    if not isinstance(ready, dict):
        raise ApiError(ErrorCode.INTERNAL, f"shim start printed {ready!r}, not a ready map")
    return cast(Ready, ready)  # the shim's ready map, checked where it is used


class StarterKilled(Exception):
    """``shim start`` died of a signal: the shim it forked may run, ready told to no one."""


def start_failed(reason: str) -> ApiError:
    """The error of a shim that could not start its container (the same on both paths): a
    full disk is ``no_space`` and a shim killed or wedged before it reported is
    ``unavailable`` (both pass: nothing was started or recorded, try again); what the shim
    reported of the spec (a bad cwd, rootfs or user) is ``invalid``."""
    if "No space left" in reason:
        code = ErrorCode.NO_SPACE
    elif shim_api.NO_READY in reason or shim_api.CHILD_LOST in reason:
        code = ErrorCode.UNAVAILABLE
    else:
        code = ErrorCode.INVALID
    return ApiError(code, f"the shim could not start the container: {reason}")


async def _adopt_after_lost_launcher(root: Path, cid: str, directory: Path, instance: str,
                                     start: bool = False) -> Ready | None:
    """After the launcher (or ``shim start``) died with our start in flight: the shim it forked
    either reported ready before (it runs: adopt it, its ready map from ``state``) or finds its
    ready pipe closed and aborts (its lock is freed: return None, start afresh). With
    ``start``, a shim that reported ready had started its task, or knows why it could not.

    A shim that has not yet taken its directory's lock (stopped just after its fork) is found
    by its command line: until it is gone, a fresh shim would race it for the lock. One that
    neither answers nor goes away in time is SIGKILLed: its start was never recorded, so no
    one was told of its task (``outcome`` of ``shim start`` does the same to a silent shim).
    """
    deadline = trio.current_time() + LOST_STARTER_GRACE
    while trio.current_time() < deadline:
        try:
            state = await call_shim(root, cid, "state")
        except ApiError:
            state = None
        if isinstance(state, dict) and state.get("instance") == instance:
            address = read_address(root, cid)
            if address and state.get("shim_pid") and state.get("pid"):
                log.info("adopted a shim the lost launcher had started", id=cid)
                ready: Ready = {"pid": state["shim_pid"], "address": address,
                                "task_pid": state["pid"]}
                if isinstance(state.get("created_at"), int):
                    ready["created_at"] = state["created_at"]
                if start:
                    exec_error = state.get("exec_error")
                    if isinstance(exec_error, dict):
                        ready["exec_error"] = (f"{exec_error.get('message')} (errno "
                                               f"{exec_error.get('errno')})")
                    elif isinstance(state.get("started_at"), int):
                        ready["started_at"] = state["started_at"]
                return ready
        if not shim_alive(directory) and not await trio.to_thread.run_sync(
                starting_shims, root, cid):
            return None
        await trio.sleep(0.02)
    strays = await trio.to_thread.run_sync(starting_shims, root, cid)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    log.warning("ended a shim the lost launcher had started: it neither answered nor went "
                "away", id=cid, pids=strays)
    raise ApiError(ErrorCode.UNAVAILABLE, f"the shim launcher died while starting {cid} and "
                   "its shim neither answered nor went away (ended); retry the start")


def starting_shims(root: Path, cid: str) -> list[int]:
    """Pids of the shims of ``cid`` under ``root`` found by their command line (the launcher
    titles its shims as ``shim start`` does), not their children that have not exec'd yet."""
    title = f" -m shim start --root {root} --id {cid}"
    table = process_table()
    shims = {pid for pid, (_, cmd) in table.items()
             if cmd.rstrip().removesuffix(" --run").endswith(title)}
    return [pid for pid in shims if table[pid][0] not in shims]


def _os_error(what: str, path: Path, exc: OSError) -> ApiError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ApiError(ErrorCode.NO_SPACE, f"{what} in {path} failed: {exc.strerror}; free "
                        "space and retry (nothing was changed)")
    return ApiError(ErrorCode.INTERNAL, f"{what} in {path} failed: {exc}")


def shim_dir(root: Path, cid: str) -> Path:
    """``ROOT/shims/ID`` for an id the daemon already validated at its edge
    (:func:`events.shim_api.shim_dir` validates it again: this is on every call's path)."""
    return root / "shims" / cid


class SymlinkedDir(ApiError):
    """``ROOT/shims`` or ``ROOT/shims/ID`` is a symlink: the daemon never goes through one
    (its writes, reads, removals and calls would land outside ROOT, on someone else's files)."""

    def __init__(self, path: Path) -> None:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        super().__init__(ErrorCode.CONFLICT, f"{path} is a symlink (to {target}), where the "
                         "daemon expects a directory of its own; it never follows one there. "
                         "Remove the symlink (`rm` the link, not its target) and retry")
        self.path = path


def checked_shim_dir(root: Path, cid: str) -> Path:
    """``ROOT/shims/ID``, or :class:`SymlinkedDir` when it or ``ROOT/shims`` is a symlink.
    The directory need not exist (callers handle that as they did)."""
    shims = root / "shims"
    directory = shims / cid
    for path in (shims, directory):
        if os.path.islink(path):
            raise SymlinkedDir(path)
    return directory


def real_shim_dir(root: Path, cid: str) -> Path | None:
    """``ROOT/shims/ID`` when it is a directory of its own, else None (missing, or a symlink
    there or at ``ROOT/shims``, which is logged): for the readers of its files (logs, tail,
    clear), which then behave as for a container without logs."""
    try:
        directory = checked_shim_dir(root, cid)
    except SymlinkedDir as exc:
        log.warning("not following a symlink in the shims directory", id=cid, error=exc.message)
        return None
    return directory if directory.is_dir() else None


def read_shim_file(root: Path, cid: str, name: str) -> bytes | None:
    """A small file of ``ROOT/shims/ID``, or None: never through a symlink (the directory,
    ``ROOT/shims`` or the file itself), so a planted link never makes the daemon read, or
    connect to, what someone else chose."""
    try:
        dfd = os.open(shim_dir(root, cid), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                      | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.path.islink(os.path.join(root, "shims")):
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        with open(fd, "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None
    finally:
        os.close(dfd)


def read_address(root: Path, cid: str) -> str | None:
    data = read_shim_file(root, cid, shim_api.ADDRESS_FILE)
    try:
        return None if data is None else data.decode().strip()
    except UnicodeDecodeError:
        return None


def read_exit_record(root: Path, cid: str) -> dict[str, Any] | None:
    """The shim's exit file (:func:`events.shim_api.read_exit_file`), never through a
    symlink; None when there is none or it is not a JSON object."""
    return _read_record(root, cid, shim_api.EXIT_FILE)


def exit_of_task(root: Path, cid: str, instance: str | None, pid: int | None
                 ) -> dict[str, Any] | None:
    """The exit file's record when it is the exit of the task the log knows (that instance,
    that pid): the file holds only the shim's latest task's exit, and a later task's must not
    be recorded as the end of an earlier one."""
    record = read_exit_record(root, cid)
    if record and record.get("instance") == instance and record.get("pid") in (None, pid):
        return record
    return None


def read_task_record(root: Path, cid: str) -> dict[str, Any] | None:
    """The shim's task file (:func:`events.shim_api.read_task_file`), never through a
    symlink; None when there is none or it is not a JSON object."""
    return _read_record(root, cid, shim_api.TASK_FILE)


def _read_record(root: Path, cid: str, name: str) -> dict[str, Any] | None:
    data = read_shim_file(root, cid, name)
    try:
        record = None if data is None else json.loads(data)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def remove_shim_dir(root: Path, cid: str) -> None:
    """Remove ``ROOT/shims/ID`` (blocking: call it in a thread). A symlink there is unlinked
    itself, never followed: its target is someone else's."""
    directory = shim_dir(root, cid)
    if os.path.islink(directory):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory)
        return
    if os.path.islink(root / "shims"):
        return
    shutil.rmtree(directory, ignore_errors=True)


def shim_call_timeout(method: str) -> float | None:
    """How long a call may take: none for the ones that wait for the task (its stop timeout is
    the shim's to enforce); a shim that takes longer for anything else is wedged."""
    return None if method in ("stop", "wait", "delete") else 10.0


def remote_api_error(exc: wire.RemoteError) -> ApiError:
    """A shim's error reply, passed on to our caller."""
    if known(ErrorCode, exc.code):
        return ApiError(ErrorCode(exc.code), exc.message)
    return ApiError(ErrorCode.INTERNAL, f"{exc.code}: {exc.message}")


async def call_shim(root: Path, cid: str, method: str, **params: Any) -> Any:
    """One request on a fresh connection (so a long ``stop`` never blocks anything else),
    sent in the hello's write: one round trip less per call.

    ``unavailable`` when the shim cannot be reached; the shim's own errors pass through.
    """
    address = read_address(root, cid)
    if address is None:
        raise ApiError(ErrorCode.UNAVAILABLE, f"container {cid} has no shim address")
    try:
        chan = await connect(address, "supervisor", then=[(method, params, False)])
    except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
        raise ApiError(ErrorCode.UNAVAILABLE, f"the shim of {cid} cannot be reached: {exc}"
                       ) from None
    try:
        timeout = shim_call_timeout(method)
        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            return (await chan.next_event())[1]
    except wire.RemoteError as exc:
        raise remote_api_error(exc) from None
    except (Closed, trio.TooSlowError, wire.ProtocolError) as exc:
        raise ApiError(ErrorCode.UNAVAILABLE, f"the shim of {cid} went away during {method}: "
                       f"{exc}") from None
    finally:
        await chan.aclose()


async def end_shim(root: Path, cid: str, *, remove: bool = True) -> str:
    """End whatever runs in ``ROOT/shims/ID`` (delete with force; kill by pid if it does not
    answer) and, with ``remove``, remove the directory (else its logs stay). Returns what was
    done, for the log. A deleted shim replies before it exits: it is waited for (bounded by
    :data:`PREVIOUS_SHIM_GRACE`), so that a caller told "nothing was changed" (a start whose
    record could not be appended) finds nothing of it running, and the directory is not
    removed under a shim still cleaning up in it."""
    what = "removed an empty shim directory"
    try:
        await call_shim(root, cid, "delete", force=True)
        what = "deleted a live shim (its task killed)"
        directory = shim_dir(root, cid)
        with trio.move_on_after(PREVIOUS_SHIM_GRACE):
            while shim_alive(directory):
                await trio.sleep(0.002)
    except ApiError:
        try:
            pid = int(read_shim_file(root, cid, shim_api.PID_FILE) or b"")
        except ValueError:
            pid = 0
        if is_running(pid) and shim_alive(shim_dir(root, cid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            what = f"killed an unresponsive shim (pid {pid})"
    if remove:
        await trio.to_thread.run_sync(remove_shim_dir, root, cid)
    return what


def exit_data(record: ExitRecord | dict[str, Any]) -> dict[str, Any]:
    """The ``task.exit`` data of a shim's exit record (its exit file, or a reply)."""
    return {k: record.get(k) for k in ("pid", "exit_status", "signal", "exited_at",
                                       "shim_seq", "instance")}
