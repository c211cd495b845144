"""The daemon's state and its owner: the projection, the log writer, subscribers, per-container
locks, the shims, and where recovery and snapshots stand.

Every service (API server, shim links, recovery, snapshots) goes through :class:`Core`'s
methods; none writes its fields. It holds the only mutable reference to the current
:class:`~supervisor.projection.State`, which is itself immutable, so a snapshot can be written
from a thread while the daemon goes on, and readers (``ps``) never see half an update.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio

from events import procfs
from events.domain import ContainerState, ErrorCode, EventType
from events.model import Event
from supervisor import adopt, projection
from supervisor.channel import acquire
from supervisor.errors import ApiError
from supervisor.logwriter import LogWriter
from supervisor.paths import Paths
from supervisor.registry import ShimRegistry
from supervisor.subscribers import Hub

if TYPE_CHECKING:
    from events.log import EventLog
    from supervisor.links import ShimLink
    from supervisor.projection import Container

__all__ = ["Config", "Core"]

log = structlog.get_logger("supervisord")

T = TypeVar("T")
Item = tuple[str, str, dict[str, Any]]

#: The events a shim reports (docs/design.md, sections 7 and 8); the others are the daemon's.
SHIM_TYPES = frozenset({
    EventType.TASK_CREATE, EventType.TASK_START, EventType.TASK_EXIT, EventType.TASK_OOM,
    EventType.TASK_EXEC_START, EventType.TASK_EXEC_EXIT, EventType.CONTAINER_RESTART,
    EventType.CONTAINER_GIVEUP, EventType.CONTAINER_HEALTH, EventType.SHIM_LOST})


class Config:
    """Daemon settings (the command line)."""

    def __init__(self, root: str | os.PathLike[str], *, socket: str | None = None,
                 repair: bool = False, group: str | None = None,
                 snapshot_every: int = 10_000, retain_events: int = 1_000_000,
                 subscriber_buffer: int = 10_000, reconcile_concurrency: int = 64,
                 segment_size: int = 64 * 2**20, shim_launcher: bool = True) -> None:
        self.paths = Paths.under(root, socket)
        self.repair = repair
        self.group = group
        self.snapshot_every = snapshot_every
        self.retain_events = retain_events
        self.subscriber_buffer = subscriber_buffer
        self.reconcile_concurrency = reconcile_concurrency
        self.segment_size = segment_size
        #: start shims through the preloaded launcher (else: a fresh interpreter each)
        self.shim_launcher = shim_launcher


class Core:
    """The daemon's state (see the module's docstring). It is the shim links' host
    (:class:`supervisor.links.LinkHost`) and owns the shim registry."""

    def __init__(self, config: Config, eventlog: EventLog, state: projection.State,
                 snapshot_seq: int, log_id: str | None = None) -> None:
        self.config = config
        self.paths = config.paths
        self.eventlog = eventlog
        self._state = state
        self._snapshot_seq = snapshot_seq
        self.hub = Hub(config.subscriber_buffer)
        self.writer = LogWriter(eventlog, self._on_commit)
        self.shims = ShimRegistry(config.paths.root, self,
                                  use_launcher=config.shim_launcher)
        self._started = time.monotonic()
        self._changed = trio.Event()
        self._locks: dict[str, trio.Lock] = {}
        self._append_locks: dict[str, trio.Lock] = {}
        #: containers recovered from the log that are not yet reconciled with their shim
        self._unreconciled: set[str] = set()
        self._reconciling = False
        self._since_snapshot = 0
        self._snapshot_due = trio.Event()
        self._shutdown = trio.Event()
        #: events the projection skipped since the start (logged one by one)
        self.skipped = 0
        #: ROOT/log_id (:mod:`supervisor.logid`): with a seq, names one event for good
        self.log_id = log_id
        #: this boot's id (:func:`events.procfs.boot_id`): a task created under another one
        #: ended with that boot
        self.boot_id = procfs.boot_id()
        self._on_shim_gone: Callable[[str, str], None] | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> projection.State:
        return self._state

    @property
    def root(self) -> Path:
        return self.paths.root

    def container(self, cid: str) -> Container | None:
        return self._state.containers.get(cid)

    def shown_state(self, c: Container) -> str:
        """What ``ps`` says: ``unknown`` until a recovered container is reconciled."""
        return ContainerState.UNKNOWN if c.id in self._unreconciled else c.state

    def uptime(self) -> float:
        return time.monotonic() - self._started

    async def wait_until(self, predicate: Callable[[projection.State], T | None]) -> T:
        """Wait until the projection satisfies ``predicate``; returns its (truthy) value."""
        while True:
            value = predicate(self._state)
            if value:
                return value
            await self._changed.wait()

    # -- the write path ----------------------------------------------------------------------

    def _on_commit(self, events: list[Event]) -> None:
        # one copy per batch: the intermediate states of a batch are never shown to anyone
        folder = projection.Folder(self._state)
        for event in events:
            reason = folder.apply(event)
            if reason is not None:
                self.skipped += 1
                log.warning("event skipped by the projection", seq=event.seq,
                            type=event.type, id=event.id, reason=reason)
        self._state = folder.state()
        self.hub.publish(events)
        self._changed.set()
        self._changed = trio.Event()
        self._since_snapshot += len(events)
        if self._since_snapshot >= self.config.snapshot_every:
            self._snapshot_due.set()

    async def append(self, items: Sequence[Item]) -> list[Event]:
        """Append durably; a full disk becomes ``no_space`` (nothing of ``items`` written).

        Under the append lock of each container the items name, so that a guarded append's
        check (:meth:`guarded_append`) still holds when its events are applied: a shim's
        restart cannot land after a stop by hand that was appended while it was checked."""
        locks = [self._append_locks.setdefault(cid, trio.Lock())
                 for cid in sorted({cid for _, cid, _ in items if cid})]
        for lock in locks:
            await acquire(lock)
        try:
            return await self._append(items)
        finally:
            for lock in reversed(locks):
                lock.release()

    async def _append(self, items: Sequence[Item]) -> list[Event]:
        try:
            return await self.writer.append(items)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("event log write failed: disk full", error=str(exc))
                raise ApiError(ErrorCode.NO_SPACE, "the event log cannot be written "
                               f"({exc.strerror}); nothing was changed: free space under "
                               f"{self.paths.events} and retry") from None
            log.error("event log write failed", error=str(exc))
            raise ApiError(ErrorCode.INTERNAL, f"the event log cannot be written: {exc}"
                           ) from None

    async def guarded_append(self, cid: str, items: Sequence[Item],
                             check: Callable[[projection.State], bool]) -> list[Event] | None:
        """Append unless ``check(state)`` is false, with the check and the append atomic with
        respect to other guarded appends of the same container (dedup without duplicates)."""
        lock = self._append_locks.setdefault(cid, trio.Lock())
        await acquire(lock)  # free: no scheduler round of its own (the append is one)
        try:
            if not check(self._state):
                return None
            return await self._append(items)
        finally:
            lock.release()

    async def append_shim_event(self, cid: str, etype: str, data: dict[str, Any]
                                ) -> list[Event] | None:
        """Append one event reported by a shim (or read from its exit file), exactly once.

        Deduplicated by ``(instance, shim_seq)``; an event whose lifecycle transition is not
        legal right now (the daemon already recorded it another way, e.g. ``task.start`` after
        the ``start`` command) is not appended either.
        """
        if etype not in SHIM_TYPES:
            log.warning("a shim reported an event only the daemon writes; dropped", id=cid,
                        type=etype)
            return None
        if etype == EventType.TASK_CREATE:
            data = {**data, "boot_id": self.boot_id}

        def new_and_legal(state: projection.State) -> bool:
            if projection.is_duplicate(state, cid, data):
                return False
            c = state.containers.get(cid)
            if c is None or (data.get("instance") and c.instance != data.get("instance")):
                return False
            if etype == EventType.TASK_CREATE:
                # the shim's next task after its own restart decision; a first task was
                # recorded by the daemon when it started the shim
                return c.state == ContainerState.RESTARTING
            if etype == EventType.CONTAINER_RESTART and (c.stopped_by_user or c.gave_up):
                return False  # the stop by hand came first: it is final
            if etype in projection.LIFECYCLE_TYPES:
                return (c.state, etype) in projection.TRANSITIONS
            return True

        return await self.guarded_append(cid, [(etype, cid, data)], new_and_legal)

    async def record_shim_event(self, cid: str, etype: str, data: dict[str, Any]
                                ) -> list[Event] | None:
        """:meth:`append_shim_event` for background tasks: a full disk is waited out, not
        raised. The shim keeps the event until it is acknowledged, so nothing is lost by
        waiting, and nobody is waiting on a reply that could carry the error."""
        delay = 0.1
        while True:
            try:
                return await self.append_shim_event(cid, etype, data)
            except ApiError as exc:
                log.warning("cannot record a shim event yet; retrying", id=cid, type=etype,
                            error=exc.message, retry_in=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- per-container locks -------------------------------------------------------------------

    def lock(self, cid: str) -> trio.Lock:
        """The per-container command lock: commands on one container run one at a time."""
        return self._locks.setdefault(cid, trio.Lock())

    def forget_locks(self, cid: str) -> None:
        """Drop a removed container's locks (unless someone still waits on them)."""
        lock = self._locks.get(cid)
        if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
            del self._locks[cid]
        alock = self._append_locks.get(cid)
        if alock is not None and not alock.locked():
            del self._append_locks[cid]

    # -- shims (the links' host) ---------------------------------------------------------------

    def link_ended(self, link: ShimLink) -> None:
        self.shims.link_ended(link)

    def on_shim_gone(self, handler: Callable[[str, str], None]) -> None:
        """Who decides once a shim is gone (:class:`supervisor.supervision.Supervision`)."""
        self._on_shim_gone = handler

    def shim_gone(self, cid: str, instance: str) -> None:
        if self._on_shim_gone is not None:
            self._on_shim_gone(cid, instance)

    @property
    def history_may_be_lost(self) -> bool:
        """Started with ``--repair``: the operator says acknowledged events may be gone, so a
        live shim the log does not know is adopted even if its task never ran
        (:mod:`supervisor.adopt`)."""
        return self.config.repair

    async def adopt_shim(self, cid: str, state: dict[str, Any], reason: str) -> bool:
        """Adopt the shim whose ``state`` this is, for the link connected to it
        (:func:`supervisor.adopt.adopt`, without a new link)."""
        return await adopt.adopt(self, cid, state, reason, link=False)

    # -- recovery ------------------------------------------------------------------------------

    @property
    def reconciling(self) -> bool:
        return self._reconciling

    def begin_reconciling(self, ids: Iterable[str]) -> None:
        """Recovery starts: these containers show ``unknown`` until :meth:`reconciled`."""
        self._unreconciled = set(ids)
        self._reconciling = True

    def reconciled(self, cid: str) -> None:
        self._unreconciled.discard(cid)

    def end_reconciling(self) -> None:
        self._unreconciled.clear()
        self._reconciling = False

    def unreconciled(self) -> list[str]:
        return sorted(self._unreconciled)

    # -- snapshots -----------------------------------------------------------------------------

    @property
    def snapshot_seq(self) -> int:
        """The seq the latest snapshot covers (0: none)."""
        return self._snapshot_seq

    async def snapshot_due(self) -> None:
        """Until ``snapshot_every`` events were appended since the last snapshot."""
        await self._snapshot_due.wait()
        self._snapshot_due = trio.Event()

    def snapshot_started(self) -> None:
        self._since_snapshot = 0

    def snapshot_written(self, seq: int) -> None:
        self._snapshot_seq = seq

    # -- shutting down -------------------------------------------------------------------------

    def request_shutdown(self) -> None:
        self._shutdown.set()

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    async def shutdown_requested(self) -> None:
        await self._shutdown.wait()
