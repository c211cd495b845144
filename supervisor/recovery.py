"""Start-up: rebuild the state (snapshot + replay), then reconcile it with the shims on disk.

Reconciliation, per container (concurrently, at most ``reconcile_concurrency`` at a time, so
1,000 containers take about as long as the slowest 64-wide wave, not 1,000 round trips in a
row); ``created``, ``running`` and ``restarting`` ones show ``unknown`` in ``ps`` until done:

1. its exit file, if it holds this task's exit, is appended (deduplicated by shim_seq: the
   shim may also still have it in its outbox);
2. a task created in another boot ended with it: :class:`~supervisor.supervision.Supervision`
   records its end and applies the policy (docker's rules after a reboot); nothing is linked;
3. a ``created`` or ``running`` container's shim is linked; a live shim replays every event it
   has not had acknowledged; a shim that cannot be reached gives ``shim.lost`` (unless already
   recorded) and the container's pid is watched through a pidfd; its end is recorded as
   ``task.exit`` with ``exit_status`` None and a ``reason``. A stop by hand the daemon died
   in is sent again; a restart's task it died before starting is started;
4. a ``restarting`` or ``stopped`` container's live shim is linked (it decides, or it waits for
   its last events to be acknowledged before it exits); without one, the daemon carries out a
   recorded restart, or makes the decision no shim made.

Shim directories the log does not know are accounted for by :mod:`supervisor.adopt`: a live
shim whose task ran is adopted (``container.adopt``: the log lost its record), one whose task
never ran is ended (a start the daemon died in before recording it: no one was told of it),
an unfinished removal the daemon recorded is finished, and anything else is left alone and
reported. The daemon log says which.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import structlog
import trio

from events.domain import ContainerState
from events.durable import fsync_dir
from events.log import EventLog
from events.model import InvalidId, validate_id
from events.snapshot import CorruptSnapshot, read_snapshot, write_snapshot
from supervisor import adopt, projection
from supervisor.shims import exit_data, read_exit_record

if TYPE_CHECKING:
    from pathlib import Path

    from supervisor.core import Core
    from supervisor.projection import Container
    from supervisor.supervision import Supervision

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
RESTARTING = ContainerState.RESTARTING

__all__ = ["StartupError", "keep_snapshot_aside", "load_state", "reconcile_all", "snapshotter",
           "to_reconcile", "write_snapshot_now"]

log = structlog.get_logger("supervisord.recovery")

CATCH_UP_TIMEOUT = 5.0


class StartupError(Exception):
    """A reason to refuse to start, with what to do about it."""


def load_state(eventlog: EventLog, *, repair: bool = False) -> tuple[projection.State, int]:
    """``(state, snapshot_seq)`` from the snapshot (if usable) plus the log after it.

    A snapshot whose seq is after the log's last one proves that acknowledged events are gone
    (no crash produces it: docs/design.md section 4): :class:`StartupError`, and the snapshot
    is left as it is, the evidence. With ``repair`` (the operator accepts the loss) it is kept
    aside under another name (:func:`keep_snapshot_aside`) and the state is rebuilt from the
    log alone; reconciliation then adopts the live shims the log lost (:mod:`supervisor.adopt`).
    """
    t0 = time.monotonic()
    state = projection.State()
    snapshot_seq = 0
    try:
        snap = read_snapshot(eventlog.root)
    except CorruptSnapshot as exc:
        log.warning("snapshot unusable; replaying the whole log", error=str(exc))
        snap = None
    if snap is not None:
        seq, data = snap
        try:
            candidate = projection.State.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("snapshot unreadable; replaying the whole log", error=str(exc))
        else:
            if seq > eventlog.last_seq:
                if not repair:
                    raise StartupError(_ahead_message(eventlog, seq))
                kept = keep_snapshot_aside(eventlog.root, seq)
                log.error("the snapshot is ahead of the log: events were lost; --repair "
                          "rebuilds the state from the log alone and adopts the live shims "
                          "the log lost", snapshot_seq=seq, last_seq=eventlog.last_seq,
                          snapshot_kept_as=str(kept))
            else:
                state, snapshot_seq = candidate, seq
    if state.last_seq + 1 < eventlog.first_seq:
        raise StartupError(
            f"the event log starts at seq {eventlog.first_seq} (older segments were compacted) "
            f"but the usable snapshot ends at {state.last_seq}: the state cannot be rebuilt. "
            f"Restore {eventlog.root}/snapshot from a backup.")
    replayed = skipped = 0
    folder = projection.Folder(state)
    for event in eventlog.read(state.last_seq):
        reason = folder.apply(event)
        replayed += 1
        if reason is not None:
            skipped += 1
            log.warning("event skipped during replay", seq=event.seq, type=event.type,
                        id=event.id, reason=reason)
    state = folder.state()
    log.info("state rebuilt", snapshot_seq=snapshot_seq, replayed=replayed, skipped=skipped,
             last_seq=state.last_seq, containers=len(state.containers),
             seconds=round(time.monotonic() - t0, 3))
    return state, snapshot_seq


def _ahead_message(eventlog: EventLog, seq: int) -> str:
    return (f"the event log ends at seq {eventlog.last_seq} but {eventlog.root}/snapshot "
            f"covers up to seq {seq}: acknowledged events {eventlog.last_seq + 1}-{seq} are "
            "missing from the log (an older copy of it put back, or a cut). Nothing was "
            f"changed. Either put back the {eventlog.root}/events that goes with the snapshot, "
            "or start once with --repair: the state is then rebuilt from the log alone, the "
            "snapshot kept aside as snapshot.ahead-of-log.SEQ, and the containers the log "
            "lost that still run are adopted from their shims (their stopped ones stay "
            "unlisted, their files under shims/)")


def keep_snapshot_aside(root: Path, seq: int) -> Path:
    """Rename ``ROOT/snapshot`` to ``ROOT/snapshot.ahead-of-log.SEQ`` (never over an existing
    file), durably: the next snapshot must not overwrite the evidence of what was lost."""
    base = root / f"snapshot.ahead-of-log.{seq}"
    target, n = base, 0
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.{n}")
    os.rename(root / "snapshot", target)
    fsync_dir(root)
    return target


def to_reconcile(state: projection.State) -> list[str]:
    """The containers ``ps`` shows ``unknown`` until they are reconciled: those whose task may
    still run, or whose restart may be under way."""
    return [cid for cid, c in state.containers.items()
            if c.state in (CREATED, RUNNING, RESTARTING)]


async def reconcile_all(core: Core, supervision: Supervision,
                        previous_boot: str | None) -> None:
    """Reconcile every container, then account for the shim directories the log does not
    know; ``status`` says ``reconciling`` until this returns. ``previous_boot``: the boot id
    the daemon that ran before recorded (for tasks whose own ``task.create`` has none)."""
    t0 = time.monotonic()
    ids = list(core.state.containers)
    limiter = trio.CapacityLimiter(core.config.reconcile_concurrency)
    try:
        async with trio.open_nursery() as nursery:
            for cid in ids:
                nursery.start_soon(_reconcile_one, core, supervision, previous_boot, cid,
                                   limiter)
        await _account_for_unknown_shims(core)
    finally:
        core.end_reconciling()
    log.info("reconciled", containers=len(ids), seconds=round(time.monotonic() - t0, 3))


async def _reconcile_one(core: Core, supervision: Supervision, previous_boot: str | None,
                         cid: str, limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        try:
            c = core.container(cid)
            if c is None or c.instance is None:
                return
            if c.state in (CREATED, RUNNING) and not core.shims.alive(cid):
                # The shim is gone: its exit file is all there is. Only when it is the exit of
                # the task the log knows: a live shim replays its backlog instead, and the file
                # holds only its latest task's exit (recorded ahead of the backlog, it would
                # make the link drop the earlier exit and restart as already seen). A small
                # local file: reading it inline is cheaper than a thread hop each.
                record = read_exit_record(core.paths.root, cid)
                if record and record.get("instance") == c.instance and \
                        record.get("pid") in (None, c.pid):
                    await core.record_shim_event(cid, "task.exit", exit_data(record))
                c = core.container(cid)
            if c is None:
                return
            if supervision.rebooted(c, previous_boot):
                await supervision.recover(cid, previous_boot)
            elif c.state in (CREATED, RUNNING) or core.shims.alive(cid):
                await _link(core, supervision, c)
            else:
                await supervision.recover(cid, previous_boot)
        except Exception as exc:  # one container's trouble must not stop the others
            log.exception("reconciliation failed", id=cid, error=repr(exc))
        finally:
            core.reconciled(cid)


async def _link(core: Core, supervision: Supervision, c: Container) -> None:
    """Link the container's shim and wait for its backlog; then finish what the daemon was
    doing when it died (a stop by hand, the start of a restart's task)."""
    assert c.instance is not None
    link = core.shims.link(c.id, c.instance)
    with trio.move_on_after(CATCH_UP_TIMEOUT) as scope:
        await link.caught_up.wait()
    if scope.cancelled_caught:
        log.warning("shim did not replay its backlog in time", id=c.id)
    now = core.container(c.id)
    if now is None or link.gone.is_set():
        return  # the link found the shim gone: it recorded that, and supervision decides
    if not scope.cancelled_caught and await adopt.adopt_if_history_lost(core, now,
                                                                         link.first_state):
        now = core.container(c.id)
        if now is None:
            return
    if now.stopped_by_user:
        supervision.resend_stop(c.id)  # cheap when it is stopped: the shim answers at once
    elif now.state == CREATED and now.autostart:
        supervision.finish_start(c.id)


async def _account_for_unknown_shims(core: Core) -> None:
    """Every entry of ``ROOT/shims`` the log has no container for: adopted, ended, finished
    or left alone by :func:`supervisor.adopt.account_for` (never killed blindly)."""
    shims = core.paths.shims
    try:
        names = [p.name for p in shims.iterdir()]
    except FileNotFoundError:
        return
    outcomes: dict[str, list[str]] = {}
    for name in names:
        try:
            validate_id(name)
        except InvalidId:
            log.warning("ignoring a foreign entry in the shims directory", name=name)
            continue
        if core.container(name) is not None:
            continue
        async with core.lock(name):
            if core.container(name) is not None:
                continue
            try:
                outcome = await adopt.account_for(core, name)
            except Exception as exc:  # one directory's trouble must not stop the others
                log.exception("accounting for a shim directory failed; left alone", id=name,
                              error=repr(exc))
                outcome = adopt.Outcome.LEFT
            outcomes.setdefault(outcome, []).append(name)
    if outcomes:
        log.warning("shim directories the log does not know", **{
            k.replace(" ", "_"): sorted(v) for k, v in outcomes.items()})


async def write_snapshot_now(core: Core) -> None:
    state = core.state
    if state.last_seq <= core.snapshot_seq:
        return
    core.snapshot_started()
    data = state.to_dict()  # immutable state: safe to serialize from a thread
    await trio.to_thread.run_sync(write_snapshot, core.paths.root, state.last_seq, data)
    core.snapshot_written(state.last_seq)
    keep_from = min(core.snapshot_seq + 1,
                    max(1, state.last_seq - core.config.retain_events + 1))
    removed = await trio.to_thread.run_sync(core.eventlog.compact, keep_from)
    log.info("snapshot written", seq=state.last_seq, compacted_segments=len(removed))


async def snapshotter(core: Core) -> None:
    """Write a snapshot every ``snapshot_every`` events, off the hot path (a thread)."""
    while True:
        await core.snapshot_due()
        try:
            await write_snapshot_now(core)
        except OSError as exc:
            log.error("snapshot failed; will retry", error=str(exc))
            await trio.sleep(1)
