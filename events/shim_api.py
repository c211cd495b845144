"""The contract between supervisord and a shim: files on disk, socket methods, event shapes.

supervisord never imports shim code and the shim never imports supervisor code; both import this
module, so the contract lives in exactly one place.

Files in ``ROOT/shims/ID/`` (see :func:`shim_dir`):

``spec.json``       the container spec (:data:`SPEC_FIELDS`), written by supervisord before it
                    starts the shim (atomically, not fsynced: only that shim reads it, and the
                    spec's durable copy is the ``container.create`` event). JSON so an operator
                    can read it.
``shim.pid``        the shim's pid, written atomically (not fsynced: no shim outlives a power
                    loss; the durable record is the daemon's ``task.create``) before ready.
``address``         the path of the shim's socket (may be a short fallback path outside the
                    directory when ``ROOT`` is deep: unix socket paths are limited to 107 bytes).
``exit``            the latest task's exit record (:func:`write_exit_file`; its ``shim_seq`` is the
                    seq of its ``task.exit`` event, so a reader deduplicates it), written
                    atomically *before* anyone is told of the exit: a SIGKILLed shim leaves a
                    whole file or none, and a restart overwrites it only with the next exit.
``container.log``   the container's output in CRI format, rotated to ``container.log.1`` ... .
``shim.log``        the shim's own diagnostics, one JSON object per line (rotated to
                    ``shim.log.1`` at 4 MB).
``recorded``        the instance of the shim whose ``run`` supervisord recorded, written by
                    supervisord once that record is durable and before ``run`` replies
                    (:func:`write_recorded`; not fsynced: only live shims are judged by it).

Starting: ``sys.executable -I -m shim start --root ROOT --id ID``. The command returns once the
shim is ready (socket bound, pid and address written, container process created and waiting for
``start``) and prints one JSON line ``{"pid": SHIM_PID, "address": PATH, "task_pid": PID,
"created_at": NS}``; on failure it exits 1 with the reason on stderr and leaves nothing running.
``... -m shim start ... --run`` is the same with the first task started too before ready (one
request: supervisord's ``run``): the map adds ``"started_at": NS``, or ``"exec_error": TEXT``
when the command could not be executed (its exit, 127, recorded and in the outbox). Such a
shim's ``state`` says ``started_by_run``: its task ran before any record of it was durable, so
until its first ``ack`` (supervisord acknowledges a shim's events only once a record of the
shim is durable) or until ``recorded`` names its instance (``run`` writes it once the record
is durable, before it replies; ``state`` reports ``recorded``) it is an unacknowledged run,
which supervisord's start-up ends rather than adopts.

The fast path, used by supervisord whenever it is up: ``sys.executable -I -m shim launcher
--root ROOT --fd N`` is a fork server that supervisord owns (it exits with the daemon; the shims
it started do not). It has imported everything a shim needs and called ``gc.freeze()``, so a
shim forked from it is ready in ~7 ms instead of ~50 and shares most of its memory. Over the
socketpair fd N (:mod:`events.wire` framing) it answers ``start {id, start}`` (``start`` true:
as ``--run``) with the same ready map, or error ``start_failed`` with the text ``shim start``
would print. A launched shim goes through the same double fork and ``setsid`` (never a child of
the launcher or the daemon) and rewrites its command line to ``... -m shim start --root ROOT
--id ID``, so ``ps`` shows it like any other.

Socket: the wire protocol of :mod:`events.wire`. The caller's hello has role ``"supervisor"``
(or ``"client"``); the shim answers with role ``"shim"`` and ``id``, ``instance``, ``pid``.
Methods (see :data:`METHODS`):

``state``               -> ``{id, instance, pid, status, exit, exec_error, restart, health,
                           orphans_reaped, shim_pid, seq, acked, started_by_run, recorded,
                           runtime, execs, log}``; ``started_by_run``: the first task was
                           started by the shim's own start (``--run``), not by a ``start``
                           request; ``recorded``: so started, and :data:`RECORDED_FILE` names
                           this shim's instance (supervisord recorded the run);
                           ``status``: ``created``, ``running``, ``stopped`` or ``restarting``
                           (waiting out a back-off); ``exit``: the latest task's exit record;
                           ``restart``: ``{policy, attempt, start_at, gave_up, final}``;
                           ``health``: ``{status, failing_streak, log}`` (``log``: the last 5
                           results ``{start, end, exit_code, output}``) or None
``start``               -> ``{"pid": n, "started_at": ns}``; ``exec_failed`` error if the
                           command cannot be executed (the task then exits with status 127)
``kill {signal, all}``  -> ``None``; ``all`` signals every process of the container. A signal
                           and nothing more: the exit that follows goes to the restart policy
``stop {timeout, signal}`` -> the exit record, once the task has exited. First makes the shim
                           *final* (stopped by hand: no policy restart follows; a pending
                           back-off is cancelled and the last exit record answered at once),
                           then sends ``signal``, waits ``timeout`` seconds (finite, at most a
                           week, else ``invalid``), then SIGKILL; the stop completes even if the
                           caller disconnects.
``wait``                -> the exit record, once the current task has exited (at once when none
                           runs)
``events``              -> a stream of ``{"seq", "type", "data"}`` items: first every event not yet
                           acknowledged, then live ones. Ends (end frame) only when the shim exits.
``ack {seq}``           -> ``None``; events with ``seq <= seq`` are never sent again
``delete {force}``      -> the exit record; refused (``conflict``) while the task runs unless
                           ``force`` (kill, wait). Final, like ``stop``. After replying, the shim
                           removes its socket and exits; its directory (exit file, logs) stays for
                           supervisord to remove.
``shutdown``            -> ``None``; the shim exits, leaving a running container behind only
                           with ``force``; used for cleanup.
``exec {exec_id, command, env, cwd}``
                        -> a stream: another process in the running container. ``exec_id``
                           (caller-chosen, a container-id-like string, unique per container),
                           ``command`` (argv), ``env`` (default: the container's env), ``cwd``
                           (default: the container's). Items ``{"stream": "stdout"|"stderr",
                           "data": bytes}`` as output arrives, then one ``{"exit_status": n,
                           "signal": s}`` (n = code or 128 + s), then the end frame. Errors:
                           ``conflict`` (task not running, ``exec_id`` used before),
                           ``invalid``, ``exec_failed`` (the runtime's words), ``unavailable``
                           (the shim exited before the process). The output is not logged.

Events (``{"seq", "type", "data"}``; every one stays in the outbox until acked; ``seq`` is the
shim's own sequence, one for its whole life, across the successive tasks it runs):
``task.create`` {pid, shim_pid, address, instance, created_at}, ``task.start`` {pid,
started_at}, ``task.oom`` {} (the kernel OOM-killed a process of the container; always before
the ``task.exit`` it caused), ``task.exit`` {pid, exit_status, signal, exited_at},
``task.exec.start`` {exec_id, pid}, ``task.exec.exit`` {exec_id, pid, exit_status, signal,
exited_at}, ``container.restart`` {attempt, delay, reason, by: "shim", start_at} (the policy
restarts the container: ``task.create`` and ``task.start`` of the next task follow),
``container.giveup`` {attempts, reason, exit_status}, ``container.health`` {status,
failing_streak, exit_code, output} (on change only). Times are unix nanoseconds of the shim's
clock. A policy restart's events come in this order: ``task.exit``, ``container.restart``,
``task.create``, ``task.start``.

The shim's life: it lives as long as its container can run again by itself. Once the container
is stopped for good (policy ``no``, a success under ``on-failure``, given up, stopped by hand)
and every event is acknowledged, it kills what is left of the container, removes its socket,
``address`` and ``shim.pid``, and exits; ``exit``, ``spec.json``, ``container.log*`` and
``shim.log`` stay. While nobody acknowledges (the daemon is down) it waits.

A shim refuses to start (``shim start`` fails, nothing written) when ``ROOT/shims`` or
``ROOT/shims/ID``, or a file it would write into there, is a symlink.

A shared shim (spec ``shim_group``, :mod:`shim.group`): the containers of one group share one
process, each with its own directory, lock, socket, ``address`` and instance; ``shim.pid``
names the group's process. The starter (``shim start`` or the launcher's ``start``, unchanged)
reads ``shim_group`` from ``spec.json`` (:func:`read_group`) and joins the live group or starts
it. A member that ends removes its ``shim.pid`` and ``address`` first (the pid is the group's).

Signals: a shim ignores SIGTERM, SIGINT and SIGHUP (logged in ``shim.log``): only ``delete``,
``shutdown``, its own end (above) or SIGKILL end it, so a signal sent to "everything" never
orphans a container.
"""

from __future__ import annotations

import json
import os

from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT
from events.durable import fsync_dir, write_atomic
from events.ids import validate_id

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the shim ~8 ms
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

__all__ = [
    "ADDRESS_FILE",
    "CONTAINER_LOG",
    "EXIT_FILE",
    "METHODS",
    "PID_FILE",
    "RECORDED_FILE",
    "SHIM_LOG",
    "SPEC_FIELDS",
    "SPEC_FILE",
    "TASK_FILE",
    "exit_status_of",
    "fsync_dir",
    "read_exit_file",
    "read_group",
    "read_recorded",
    "read_spec",
    "read_task_file",
    "shim_dir",
    "shim_path",
    "write_atomic",
    "write_exit_file",
    "write_recorded",
    "write_spec",
    "write_task_file",
]

SPEC_FILE = "spec.json"
PID_FILE = "shim.pid"
ADDRESS_FILE = "address"
EXIT_FILE = "exit"
#: The task a shim started on its own (a policy restart), written before its ``task.start``
#: is published: what a daemon finds of a task whose events the shim never delivered.
TASK_FILE = "task"
CONTAINER_LOG = "container.log"
SHIM_LOG = "shim.log"
#: flock'ed by the shim for its whole life: one shim per container, and the sign it lives
LOCK_FILE = "shim.lock"
#: supervisord's ``run`` writes the shim's instance here once the run's record is durable and
#: before it replies (:func:`write_recorded`): the shim's ``state`` reports ``recorded`` when
#: it names its own instance, so a start-up whose log lost the record adopts the run.
RECORDED_FILE = "recorded"

#: What a start says of a shim that neither reported ready nor an error (killed, or wedged
#: past the ready timeout): nothing was started, so the daemon answers ``unavailable`` (try
#: again), not a refusal of the request.
NO_READY = "the shim did not report ready"
#: The same for the container's first process killed before it reported (a signal, not an
#: error of the spec: an error is reported with its stage and errno).
CHILD_LOST = "the child died during setup"

#: The seq of a new shim's first event: its first task's ``task.create``.
FIRST_SEQ = 1

METHODS = frozenset({"state", "start", "kill", "stop", "wait", "events", "ack", "delete",
                     "shutdown", "exec"})

#: Spec fields and their defaults. ``id`` and ``instance`` are required; ``instance`` is new for
#: every shim of a container (``start``/``restart`` by command make a new shim), so shim sequence
#: numbers never collide; the successive tasks of one shim share its instance and its sequence.
SPEC_FIELDS: dict[str, Any] = {
    "id": None,
    "instance": None,
    "command": [],            # argv; command[0] is looked up in env PATH
    "env": {},                # the container's whole environment
    "cwd": None,              # working directory (process runtime: None = "/")
    "runtime": "process",     # "process", "runc", "crun", or a path to a runc-compatible binary
    "rootfs": None,           # OCI: a root filesystem to generate config.json for
    "bundle": None,           # OCI: a bundle directory with config.json
    "init": False,            # run a real init (tini) as pid 1
    "user": None,             # {"uid": n, "gid": n}
    "rlimits": {},            # {"nofile": [soft, hard], ...}
    "namespaces": [],         # process runtime as root: ["pid", "mount", "uts", "ipc", "net"]
    "limits": {},             # {"memory": bytes, "cpus": float, "pids": n}
    "log": {"max_size": 16 * 1024 * 1024, "keep": 3},
    "stop_signal": DEFAULT_STOP_SIGNAL,
    "stop_timeout": DEFAULT_STOP_TIMEOUT,
    "labels": {},
    "restart": None,          # events.policy.restart_spec: None is policy "no"
    "health": None,           # events.policy.health_spec: None is no health check
    "restart_attempt": 0,     # restarts in a row so far (a shim carrying on a lost shim's loop)
    "shim_group": None,       # a member of this shared shim (shim/group.py); None: its own
}


def shim_dir(root: str | os.PathLike[str], container_id: str) -> Path:
    """``ROOT/shims/ID``, after validating the id so it can never escape ``ROOT/shims``."""
    from pathlib import Path  # lazily: the shim's start-up pays for every import (ready time)

    return Path(shim_path(root, container_id))


def shim_path(root: str | os.PathLike[str], container_id: str) -> str:
    """:func:`shim_dir` as a string, for the shim itself: without :mod:`pathlib`, whose code
    and objects every launcher-forked shim would otherwise touch (pages it then owns)."""
    return os.path.join(os.fspath(root), "shims", validate_id(container_id))


def write_spec(directory: str | os.PathLike[str], spec: dict[str, Any]) -> None:
    full = {**SPEC_FIELDS, **spec}
    validate_id(full["id"])
    if not isinstance(full["instance"], str) or not full["instance"]:
        raise ValueError("spec needs a non-empty 'instance'")
    write_atomic(os.path.join(directory, SPEC_FILE), json.dumps(full, indent=1).encode(),
                 durable=False)


def read_spec(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The spec with every field present (defaults filled in for fields an older writer lacked)."""
    path = os.path.join(directory, SPEC_FILE)
    try:  # never through a symlink: the shim would run what someone else's file says
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP
            raise OSError(exc.errno, f"{path} is a symlink; refusing to read it") from None
        raise
    with open(fd, "rb") as f:
        spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError(f"{directory}/{SPEC_FILE} does not hold a JSON object")
    return {**SPEC_FIELDS, **spec}


def read_group(directory: str | os.PathLike[str]) -> str | None:
    """The ``shim_group`` of the spec in *directory*: the shared shim its container joins, or
    None (a shim of its own; also when the spec cannot be read: the start then says why)."""
    try:
        group = read_spec(directory).get("shim_group")
    except (OSError, ValueError):
        return None
    return group if isinstance(group, str) and group else None


def exit_status_of(wait_status: int) -> tuple[int, int]:
    """``(exit_status, signal)`` from a ``waitpid`` status: the code, or 128 + signal."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return 128 + sig, sig
    return os.WEXITSTATUS(wait_status), 0


def write_exit_file(directory: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Durably record an exit: ``pid, exit_status, signal, exited_at, shim_seq, instance``."""
    write_atomic(os.path.join(directory, EXIT_FILE), json.dumps(record).encode())


def read_exit_file(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The exit record, or None when the task has not exited (or the shim never got to it)."""
    try:
        with open(os.path.join(directory, EXIT_FILE), "rb") as f:
            record: dict[str, Any] = json.load(f)
            return record
    except FileNotFoundError:
        return None


def write_task_file(directory: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """``{instance, shim_seq, pid, starttime, attempt, started_by_run}`` of a task the shim
    restarted by itself, or of a ``run``'s first task before it is let run (``shim_seq``: its
    ``task.create``'s). Atomic, not fsynced: a power loss ends the task too. A shim SIGKILLed
    before it delivered that task's events leaves this trace, so the daemon accounts for the
    task instead of starting a second one (docs/design.md, section 8), or ends a run's task
    that no one was told of (``started_by_run``, no ``recorded``: :mod:`supervisor.adopt`)."""
    write_atomic(os.path.join(directory, TASK_FILE), json.dumps(record).encode(),
                 durable=False)


def write_recorded(directory: str | os.PathLike[str], instance: str) -> None:
    """Say in *directory* that the run of the shim *instance* is recorded (:data:`RECORDED_FILE`).

    Not atomic and not fsynced, on purpose: only an exact match of the instance counts, so a
    write cut short (a kill -9) never says more than nothing; and only a live shim is ever
    judged by it, while a power loss ends every shim with the page cache."""
    path = os.path.join(directory, RECORDED_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        os.write(fd, instance.encode())
    finally:
        os.close(fd)


def read_recorded(directory: str | os.PathLike[str], dir_fd: int | None = None) -> str | None:
    """The instance :func:`write_recorded` wrote in *directory* (with *dir_fd*, relative to
    it), or None (none, or unreadable; never through a symlink)."""
    path = RECORDED_FILE if dir_fd is not None else os.path.join(directory, RECORDED_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.read(fd, 256).decode(errors="replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_task_file(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The task file's record, or None (none written, or not a JSON object)."""
    try:
        with open(os.path.join(directory, TASK_FILE), "rb") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
