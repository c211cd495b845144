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

import time
from typing import TYPE_CHECKING

import structlog
import trio

from events.domain import ContainerState
from events.model import InvalidId, validate_id
from events.snapshot import write_snapshot
from supervisor import adopt
from supervisor.restore import StartupError, keep_snapshot_aside, load_state, to_reconcile
from supervisor.shims import exit_data, exit_of_task

if TYPE_CHECKING:
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
                record = exit_of_task(core.paths.root, cid, c.instance, c.pid)
                if record:
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
    # only a backlog replayed to its end says the log lost something: a shim that died
    # half-way left its answer stale and its last events unsent (never acknowledged)
    if link.replayed and await adopt.adopt_if_history_lost(core, now, link.first_state):
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
