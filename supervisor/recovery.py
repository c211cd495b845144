"""Start-up: rebuild the state (snapshot + replay), then reconcile it with the shims on disk.

Reconciliation, per container the log says is ``created`` or ``running`` (concurrently, at most
``reconcile_concurrency`` at a time, so 1,000 containers take about as long as the slowest
64-wide wave, not 1,000 round trips in a row):

1. its exit file, if it holds this task's exit, is appended (deduplicated by shim_seq: the
   shim may also still have it in its outbox);
2. a link to the shim is started; a live shim replays every event it has not had
   acknowledged, and the container stays ``unknown`` in ``ps`` until that backlog is durable;
3. a shim that cannot be reached gives ``shim.lost`` (unless already recorded) and the
   container's pid is watched through a pidfd; its end is recorded as ``task.exit`` with
   ``exit_status`` None and a ``reason``.

Shim directories the log does not know (a crash between starting a shim and recording
``container.create``, or between recording ``container.delete`` and removing the directory)
are ended: their create was never acknowledged, so no one expects them. The daemon log says so.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
import trio

from events import shim_api
from events.domain import ContainerState
from events.log import EventLog
from events.model import InvalidId, validate_id
from events.snapshot import CorruptSnapshot, read_snapshot, write_snapshot
from supervisor import projection
from supervisor.shims import exit_data

if TYPE_CHECKING:
    from supervisor.core import Core

__all__ = ["StartupError", "load_state", "reconcile_all", "snapshotter", "to_reconcile",
           "write_snapshot_now"]

log = structlog.get_logger("supervisord.recovery")

CATCH_UP_TIMEOUT = 5.0


class StartupError(Exception):
    """A reason to refuse to start, with what to do about it."""


def load_state(eventlog: EventLog) -> tuple[projection.State, int]:
    """``(state, snapshot_seq)`` from the snapshot (if usable) plus the log after it."""
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
                log.warning("snapshot is ahead of the log; ignoring it", snapshot_seq=seq,
                            last_seq=eventlog.last_seq)
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


def to_reconcile(state: projection.State) -> list[str]:
    """The containers whose task may still run: those recovery reconciles."""
    return [cid for cid, c in state.containers.items()
            if c.state in (ContainerState.CREATED, ContainerState.RUNNING)]


async def reconcile_all(core: Core) -> None:
    """Reconcile every container :meth:`Core.begin_reconciling` named, then end the shims the
    log does not know; ``status`` says ``reconciling`` until this returns."""
    t0 = time.monotonic()
    ids = core.unreconciled()
    limiter = trio.CapacityLimiter(core.config.reconcile_concurrency)
    try:
        async with trio.open_nursery() as nursery:
            for cid in ids:
                nursery.start_soon(_reconcile_one, core, cid, limiter)
        await _end_unknown_shims(core)
    finally:
        core.end_reconciling()
    log.info("reconciled", containers=len(ids), seconds=round(time.monotonic() - t0, 3))


async def _reconcile_one(core: Core, cid: str, limiter: trio.CapacityLimiter) -> None:
    async with limiter:
        try:
            c = core.container(cid)
            if c is None or c.state == ContainerState.STOPPED or c.instance is None:
                return
            instance = c.instance
            # a small local file: reading it inline is cheaper than a thread hop per container
            record = shim_api.read_exit_file(shim_api.shim_dir(core.paths.root, cid))
            if record and record.get("instance") == instance:
                await core.record_shim_event(cid, "task.exit", exit_data(record))
            link = core.shims.link(cid, instance)
            with trio.move_on_after(CATCH_UP_TIMEOUT) as scope:
                await link.caught_up.wait()
            if scope.cancelled_caught:
                log.warning("shim did not replay its backlog in time", id=cid)
        except Exception as exc:  # one container's trouble must not stop the others
            log.exception("reconciliation failed", id=cid, error=repr(exc))
        finally:
            core.reconciled(cid)


async def _end_unknown_shims(core: Core) -> None:
    shims = core.paths.shims
    try:
        names = [p.name for p in shims.iterdir()]
    except FileNotFoundError:
        return
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
            what = await core.shims.end(name)
            log.warning("ended a shim the log does not know (its create was never "
                        "acknowledged, or its delete was)", id=name, action=what)


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
