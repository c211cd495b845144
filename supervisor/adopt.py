"""Shims the log does not account for: adopted, ended, or left alone, never killed blindly.

The log is the daemon's memory of which shims it started. A live shim it does not know is one
of two things:

* the daemon started it and died before it recorded it (between the shim's start and the
  append of its ``container.create`` or ``task.create``): no one was told of it. Its task
  never ran (a ``start`` comes after the record), unless the shim started it itself, with
  its first request (``run``): then its task ran before any record, and the shim says so
  (``started_by_run``) until the daemon says the record is durable (``recorded``: the file
  ``run`` writes before it replies) or first acknowledges its events. Ending it kills
  nothing anyone was told of;
* the log lost the events that recorded it (an older copy of ``ROOT/events`` put back, a cut by
  ``--repair``): a container someone created, probably running. It must be *adopted*: its spec
  is in its directory (``spec.json``), its task's state in the shim (``state``), so the daemon
  records ``container.adopt`` with both and carries on as if it had never lost track of it
  (the shim's later events are deduplicated from the ``shim_seq`` the adoption names).

Which one it is (:func:`recorded_once`): a shim whose task was started by a ``start``
request was recorded once (that request is always sent after the record is durable); so was
a shim whose events the daemon acknowledged (a link acknowledges only the events of a shim
the log records, and it connects only once that record is durable), and a shim whose
``state`` says ``recorded``. Such a shim is adopted
whatever else is known. A shim whose task never ran, or ran only by its own first request
and never ``recorded`` nor acknowledged (a ``run`` the daemon died in), is ended, unless
the daemon was started with ``--repair`` (the operator says history may be lost): then it is
adopted too, and the user sees a ``created`` container in ``ps``. A live shim that does not
answer (stopped, wedged) is left running and reported; so is a directory with no live shim
(its files are a lost container's logs and exit, or the leftovers of an unacknowledged
create): the daemon never deletes what it cannot account for, except the directory of a
removal it recorded itself (``rm`` leaves :data:`REMOVING` in it before ``container.delete``)
and that of a ``run`` it died in whose shim died too (:func:`end_unrecorded_run`: the task
file the shim wrote before it let the task run says ``started_by_run``, and ``recorded`` does
not name its instance; that task, proven by its start time, is ended with its group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events import shim_api
from events.domain import ContainerState
from events.procfs import is_running, starttime
from supervisor.errors import ApiError
from supervisor.shims import (
    DEFAULT_PATH,
    call_shim,
    read_address,
    read_shim_file,
    read_task_record,
    remove_shim_dir,
    shim_alive,
    shim_dir,
)
from supervisor.spec import validate_spec

if TYPE_CHECKING:
    from pathlib import Path

    from supervisor.core import Core
    from supervisor.projection import Container, State
    from supervisor.spec import Spec

__all__ = ["REMOVING", "Outcome", "account_for", "adopt", "adopt_if_history_lost", "api_spec",
           "delete_lost_container", "end_unrecorded_run", "mark_removing", "never_ran",
           "ran_a_task", "recorded_once", "shim_state", "should_adopt"]

log = structlog.get_logger("supervisord.adopt")

CREATED, RUNNING = ContainerState.CREATED, ContainerState.RUNNING
RESTARTING, STOPPED = ContainerState.RESTARTING, ContainerState.STOPPED

#: Left in a container's directory by ``rm`` before it appends ``container.delete``: a
#: directory the log does not know that holds it is a removal the daemon recorded and did not
#: finish (it died before removing the directory), so recovery finishes it.
REMOVING = "removing"
#: How long a shim the daemon examines has to answer ``state``.
STATE_TIMEOUT = 5.0


class Outcome:
    """What :func:`account_for` did with a directory (for the log and the caller)."""

    ADOPTED = "adopted"
    ENDED = "ended"
    REMOVED = "removed"
    LEFT = "left alone"


def ran_a_task(state: dict[str, Any]) -> bool:
    """Did the shim's task ever run? (Its ``state``: status beyond ``created``, or an exit.)
    A shim whose task never ran was started by a daemon that died before recording it."""
    return state.get("status") != ContainerState.CREATED or state.get("exit") is not None


def recorded_once(state: dict[str, Any]) -> bool:
    """Was the shim whose ``state`` this is ever recorded in the log? Yes if a ``start``
    request started its task (status beyond ``created``, or an exit: the daemon sends
    ``start`` only once the task's record is durable), or, for a shim that started its task
    itself (``started_by_run``: ``run``'s one request), once the daemon said so: ``recorded``
    (``run`` writes the shim's instance into its directory once the record is durable, before
    it replies) or any of its events acknowledged (``acked``: its link acknowledges only after
    the record is durable)."""
    if state.get("started_by_run"):
        acked = state.get("acked")
        return state.get("recorded") is True or (isinstance(acked, int) and acked > 0)
    return ran_a_task(state)


def should_adopt(state: dict[str, Any], history_may_be_lost: bool) -> bool:
    """Adopt (rather than end) a live shim the log does not record: see the module."""
    return history_may_be_lost or recorded_once(state)


def api_spec(shim_spec: dict[str, Any]) -> Spec:
    """The API spec of a shim's ``spec.json`` (:func:`supervisor.shims.shim_spec` backwards),
    validated like a ``create``'s; ValueError when it is not usable."""
    env = dict(shim_spec.get("env") or {})
    if env.get("PATH") == DEFAULT_PATH:
        env.pop("PATH")  # the default the daemon adds; it adds it again
    limits = shim_spec.get("limits") or {}
    log_conf = shim_spec.get("log") or {}
    default_log = shim_api.SPEC_FIELDS["log"]
    raw: dict[str, Any] = {
        "name": shim_spec.get("id"), "command": shim_spec.get("command"), "env": env,
        "cwd": shim_spec.get("cwd"), "runtime": shim_spec.get("runtime") or "process",
        "rootfs": shim_spec.get("rootfs"), "bundle": shim_spec.get("bundle"),
        "init": bool(shim_spec.get("init")), "user": shim_spec.get("user"),
        "memory": limits.get("memory"), "cpus": limits.get("cpus"),
        "pids_limit": limits.get("pids"), "stop_signal": shim_spec.get("stop_signal"),
        "stop_timeout": shim_spec.get("stop_timeout"), "labels": shim_spec.get("labels") or {},
        "restart": shim_spec.get("restart"), "health": shim_spec.get("health"),
        "auto_remove": bool(shim_spec.get("auto_remove")),
    }
    if log_conf.get("max_size") != default_log["max_size"]:
        raw["log_max_size"] = log_conf.get("max_size")
    if log_conf.get("keep") != default_log["keep"]:
        raw["log_keep"] = log_conf.get("keep")
    for key in ("namespaces", "rlimits", "shim_group"):
        if shim_spec.get(key):
            raw[key] = shim_spec[key]
    try:
        return validate_spec(raw)
    except ApiError as exc:
        raise ValueError(exc.message) from None


def _read_spec(root: Path, cid: str) -> dict[str, Any]:
    data = read_shim_file(root, cid, shim_api.SPEC_FILE)
    if data is None:
        raise ValueError(f"{shim_dir(root, cid)}/{shim_api.SPEC_FILE} cannot be read")
    spec = json.loads(data)
    if not isinstance(spec, dict):
        raise ValueError(f"{shim_dir(root, cid)}/{shim_api.SPEC_FILE} is not a JSON object")
    return {**shim_api.SPEC_FIELDS, **spec}


async def shim_state(core: Core, cid: str) -> dict[str, Any] | None:
    """The ``state`` of the shim in ``cid``'s directory, or None when it does not answer."""
    with trio.move_on_after(STATE_TIMEOUT):
        try:
            state = await call_shim(core.root, cid, "state")
        except ApiError:
            return None
        return state if isinstance(state, dict) else None
    return None


async def adopt(core: Core, cid: str, state: dict[str, Any], reason: str, *,
                link: bool = True) -> bool:
    """Record ``container.adopt`` for the shim whose ``state`` reply this is, and (with
    ``link``) link it; False (and nothing recorded) when its directory's ``spec.json`` is not
    usable or the record changed meanwhile. The caller decided that it is to be adopted
    (:func:`should_adopt`); a link that adopts the shim it is connected to links nothing."""
    instance, seq = state.get("instance"), state.get("seq")
    if not isinstance(instance, str) or not isinstance(seq, int):
        log.warning("cannot adopt a shim: its state names no instance or seq", id=cid)
        return False
    try:
        spec = api_spec(await trio.to_thread.run_sync(_read_spec, core.root, cid))
    except (OSError, ValueError) as exc:
        log.error("cannot adopt a live shim: its spec.json is not usable; it is left running",
                  id=cid, instance=instance, error=str(exc))
        return False
    pid = state.get("pid")
    status = state.get("status")
    health = state.get("health") if isinstance(state.get("health"), dict) else None
    data: dict[str, Any] = {
        "spec": dict(spec), "instance": instance, "shim_seq": seq, "status": status,
        "pid": pid, "shim_pid": state.get("shim_pid"), "address": read_address(core.root, cid),
        "created_at": state.get("created_at"), "started_at": state.get("started_at"),
        "starttime": state.get("starttime") or (
            starttime(pid) if isinstance(pid, int) and status in ("created", "running")
            else None),
        "exit": state.get("exit"), "restart": state.get("restart"),
        "health": None if health is None else {"status": health.get("status"),
                                               "failing_streak": health.get("failing_streak")},
        "boot_id": core.boot_id, "reason": reason,
    }
    before = core.container(cid)
    if before is not None and before.seen.get(instance, 0) > seq:
        return False  # the record already holds later events of this shim: it is stale

    def unchanged(s: State) -> bool:
        return s.containers.get(cid) is before

    events = await core.guarded_append(cid, [("container.adopt", cid, data)], unchanged)
    if not events:
        return False
    log.warning("adopted a shim the log did not account for", id=cid, instance=instance,
                status=status, pid=pid, reason=reason)
    if link:
        core.shims.link(cid, instance)
    return True


async def account_for(core: Core, cid: str) -> str:
    """A directory under ``ROOT/shims`` whose container the log does not have (the caller
    holds the container's lock): adopt its live shim, end one whose task never ran, finish
    a removal the daemon recorded, or leave it alone. Returns the :class:`Outcome`."""
    root = core.root
    directory = shim_dir(root, cid)
    if os.path.islink(directory):
        log.warning("a symlink in the shims directory is not followed; left alone",
                    path=str(directory), target=os.readlink(directory))
        return Outcome.LEFT
    if not shim_alive(directory):
        if read_shim_file(root, cid, REMOVING) is not None:
            await trio.to_thread.run_sync(remove_shim_dir, root, cid)
            log.info("finished a removal the log recorded", id=cid)
            return Outcome.REMOVED
        if never_ran(root, cid):
            await trio.to_thread.run_sync(remove_shim_dir, root, cid)
            log.warning("removed the leftovers of a shim start the daemon died in (no shim, "
                        "no exit, no output: nothing ran there)", id=cid)
            return Outcome.REMOVED
        ended = await trio.to_thread.run_sync(end_unrecorded_run, root, cid)
        if ended is not None:
            await trio.to_thread.run_sync(remove_shim_dir, root, cid)
            log.warning("ended the task of a run the daemon died in before recording it, "
                        "whose shim is gone too (its task file names it; no one was told of "
                        "it), and removed its directory", id=cid, pid=ended[0],
                        was_running=ended[1])
            return Outcome.ENDED
        log.warning("a shim directory the log does not know, with no shim running in it: left "
                    "alone (its files are a lost container's; remove it once they are of no "
                    "use)", path=str(directory),
                    has_exit_file=read_shim_file(root, cid, shim_api.EXIT_FILE) is not None,
                    has_logs=os.path.exists(directory / shim_api.CONTAINER_LOG))
        return Outcome.LEFT
    state = await shim_state(core, cid)
    if state is None:
        log.error("a live shim the log does not know does not answer: left running (it is "
                  "not killed); see its shim.log, or end it by hand", path=str(directory))
        return Outcome.LEFT
    if should_adopt(state, core.config.repair):
        why = ("it was recorded once (its task was started by request, its run was marked "
               "recorded, or its events were acknowledged): the log lost that record"
               if recorded_once(state) else
               "started with --repair: the log may have lost its create")
        if await adopt(core, cid, state, why):
            return Outcome.ADOPTED
        return Outcome.LEFT
    what = await core.shims.end(cid)
    log.warning("ended a shim the log does not know whose task never ran, or ran only by its "
                "own start and was never marked recorded (a create or run the daemon died in "
                "before recording it: no one was told of it)", id=cid, action=what,
                started_by_run=bool(state.get("started_by_run")), status=state.get("status"))
    return Outcome.ENDED


def end_unrecorded_run(root: Path, cid: str) -> tuple[int, bool] | None:
    """``cid``'s directory (no shim alive in it, the log does not know it) is a ``run`` the
    daemon died in before recording it, if its task file says ``started_by_run`` and its
    ``recorded`` does not name that instance (``run`` writes it before it replies, after the
    record is durable): no one was told of that container, and no one can reach it now. Its
    task, if that pid is still the task (its start time: alive, or a zombie whose group is
    provably its own), is SIGKILLed with its process group. Returns ``(pid, was it still
    running)``, or None when the directory is not such a run (then it is left alone)."""
    directory = shim_dir(root, cid)
    record = read_task_record(root, cid)
    if record is None or record.get("started_by_run") is not True:
        return None
    instance = record.get("instance")
    if not isinstance(instance, str) or shim_api.read_recorded(directory) == instance:
        return None  # recorded once: a container the log lost, not an unrecorded run
    pid, started = record.get("pid"), record.get("starttime")
    if not isinstance(pid, int) or pid <= 1 or not isinstance(started, int):
        return None
    if starttime(pid) != started:
        return pid, False  # it ended (and was reaped): nothing of it to end
    running = is_running(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        # while the task (alive or a zombie) holds its pid, its group is its own
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    return pid, running


def never_ran(root: Path, cid: str) -> bool:
    """Does ``cid``'s directory (no shim alive in it) hold nothing a shim left: no pid file
    (a shim that ran and was killed cannot remove it), no exit file, no task file, no output?
    Then it is what a start the daemon died in leaves (a spec, a lock, an empty log), and
    removing it loses nothing."""
    directory = shim_dir(root, cid)
    for name in (shim_api.PID_FILE, shim_api.EXIT_FILE, shim_api.TASK_FILE):
        if os.path.lexists(directory / name):
            return False
    try:
        return os.lstat(directory / shim_api.CONTAINER_LOG).st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


async def adopt_if_history_lost(core: Core, c: Container, state: dict[str, Any] | None
                                ) -> bool:
    """Reconciliation, once the shim of ``c`` (the record's own instance) replayed its backlog:
    if the task its ``state`` (the link's first answer) describes still differs from the
    record in status or pid, events of this shim that were acknowledged are missing from the
    log (a cut kept its ``task.create`` and lost its ``task.start``, or its own restarts):
    adopt it as it is. Not when the record holds an event of this shim after that answer
    (the answer is stale then; :func:`adopt` checks again under the append lock)."""
    if state is None or state.get("instance") != c.instance:
        return False
    if c.stopped_by_user or c.gave_up:
        # final decisions the log kept: the shim may not have heard of them yet (a stop the
        # daemon died in, sent again by reconciliation) and reported events the projection
        # refused for that reason (its restart's task after the stop): not a lost history
        return False
    status, pid, seq = state.get("status"), state.get("pid"), state.get("seq")
    if not isinstance(seq, int) or c.seen.get(c.instance or "", 0) > seq:
        return False
    if status == c.state and (pid == c.pid or status not in (CREATED, RUNNING)):
        return False
    if status not in (CREATED, RUNNING, RESTARTING, STOPPED):
        return False
    return await adopt(core, c.id, state, f"its shim reports {status} (pid {pid}) where the "
                       f"log says {c.state} (pid {c.pid}): the log lost events of this shim "
                       "that were acknowledged", link=False)


def mark_removing(root: Path, cid: str) -> None:
    """Leave :data:`REMOVING` in ``cid``'s directory (blocking: in a thread). Not fsynced:
    after a power loss recovery meets a plain unknown directory, which it leaves alone."""
    directory = shim_dir(root, cid)
    if os.path.islink(directory) or not directory.is_dir():
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory / REMOVING, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        os.close(fd)


async def delete_lost_container(root: Path, c: Container) -> None:
    """Before ``rm`` removes a container of an OCI runtime whose shim is gone (killed): its
    runtime container, which that shim would have deleted at its task's exit, is deleted
    (``python -I -m shim cleanup``: the runtime's ``delete --force``, which also ends what
    the container still runs). Without it the runtime's state and cgroup stay, and a new
    container of the same name is refused by the runtime. Nothing to do (no process started)
    when a live shim holds the directory (it deletes its own) or the runtime has no state of
    the id under its root (``ROOT/runc``, ``ROOT/crun``: :func:`shim.oci.state_root`)."""
    runtime = str(c.spec.get("runtime") or "process")
    if runtime == "process" or shim_alive(shim_dir(root, c.id)):
        return
    base = os.path.basename(runtime)
    kind = "crun" if "crun" in base else "runc" if "runc" in base else base
    if not os.path.isdir(root / kind / c.id):
        return
    result = await trio.run_process(
        [sys.executable, "-I", "-m", "shim", "cleanup", "--root", str(root), "--id", c.id,
         "--runtime", runtime], capture_stdout=True, capture_stderr=True, check=False,
        stdin=b"")
    if result.returncode != 0:
        log.warning("could not delete the runtime container of a container whose shim was lost",
                    id=c.id, runtime=runtime,
                    error=result.stderr.decode(errors="replace").strip())
    else:
        log.info("deleted the runtime container of a container whose shim was lost", id=c.id,
                 runtime=runtime)
