"""The daemon's shared state: the projection, the log writer, subscribers, per-container locks.

Every service (API server, shim links, recovery, snapshots) goes through :class:`Core`, which
holds the only mutable reference to the current :class:`~supervisor.projection.State`. The
state object itself is immutable, so a snapshot can be written from a thread while the daemon
goes on, and readers (``ps``) never see half an update.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events.model import Event
from supervisor import projection
from supervisor.errors import ApiError
from supervisor.logwriter import LogWriter
from supervisor.paths import Paths
from supervisor.subscribers import Hub

if TYPE_CHECKING:
    from events.log import EventLog
    from supervisor.shims import ShimLink

__all__ = ["Config", "Core"]

log = structlog.get_logger("supervisord")


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
    def __init__(self, config: Config, eventlog: EventLog, state: projection.State,
                 snapshot_seq: int) -> None:
        self.config = config
        self.paths = config.paths
        self.eventlog = eventlog
        self.state = state
        self.snapshot_seq = snapshot_seq
        self.hub = Hub(config.subscriber_buffer)
        self.writer = LogWriter(eventlog, self._on_commit)
        self.started_monotonic = time.monotonic()
        self._changed = trio.Event()
        self._locks: dict[str, trio.Lock] = {}
        self._append_locks: dict[str, trio.Lock] = {}
        #: containers recovered from the log that are not yet reconciled with their shim
        self.unreconciled: set[str] = set()
        self.reconciling = False
        self.links: dict[str, ShimLink] = {}
        self.since_snapshot = 0
        self.snapshot_wanted = trio.Event()
        self.skipped = 0
        self.nursery: trio.Nursery | None = None  # where shim links and watchers live
        self.shutdown_requested = trio.Event()
        self.log_id: str | None = None  # ROOT/log_id (supervisor/logid.py), set at start-up

    # -- the write path ----------------------------------------------------------------------

    def _on_commit(self, events: list[Event]) -> None:
        # one copy per batch: the intermediate states of a batch are never shown to anyone
        state = self.state
        state = projection.State(state.last_seq, dict(state.containers), state.daemon)
        for event in events:
            state, reason = projection.step(state, event, owned=True)
            if reason is not None:
                self.skipped += 1
                log.warning("event skipped by the projection", seq=event.seq,
                            type=event.type, id=event.id, reason=reason)
        self.state = state
        self.hub.publish(events)
        self._changed.set()
        self._changed = trio.Event()
        self.since_snapshot += len(events)
        if self.since_snapshot >= self.config.snapshot_every:
            self.snapshot_wanted.set()

    async def append(self, items: Sequence[tuple[str, str, dict[str, Any]]]) -> list[Event]:
        """Append durably; a full disk becomes ``no_space`` (nothing of ``items`` written)."""
        try:
            return await self.writer.append(items)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("event log write failed: disk full", error=str(exc))
                raise ApiError("no_space", f"the event log cannot be written ({exc.strerror}); "
                               "nothing was changed: free space under "
                               f"{self.paths.events} and retry") from None
            log.error("event log write failed", error=str(exc))
            raise ApiError("internal", f"the event log cannot be written: {exc}") from None

    async def guarded_append(self, cid: str, items: Sequence[tuple[str, str, dict[str, Any]]],
                             check: Callable[[projection.State], bool]) -> list[Event] | None:
        """Append unless ``check(state)`` is false, with the check and the append atomic with
        respect to other guarded appends of the same container (dedup without duplicates)."""
        lock = self._append_locks.setdefault(cid, trio.Lock())
        async with lock:
            if not check(self.state):
                return None
            return await self.append(items)

    async def append_shim_event(self, cid: str, etype: str, data: dict[str, Any]
                                ) -> list[Event] | None:
        """Append one event reported by a shim (or read from its exit file), exactly once.

        Deduplicated by ``(instance, shim_seq)``; an event whose lifecycle transition is not
        legal right now (the daemon already recorded it another way, e.g. ``task.start`` after
        the ``start`` command) is not appended either.
        """
        def new_and_legal(state: projection.State) -> bool:
            if projection.is_duplicate(state, cid, data):
                return False
            c = state.containers.get(cid)
            if c is None or (data.get("instance") and c["instance"] != data.get("instance")):
                return False
            if etype == "task.create":  # the daemon recorded this task when it created it
                return False
            if etype in projection.LIFECYCLE_TYPES:
                return (c["state"], etype) in projection.TRANSITIONS
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

    # -- reading -----------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[projection.State], Any]) -> Any:
        """Wait until the projection satisfies ``predicate``; returns its value."""
        while True:
            value = predicate(self.state)
            if value:
                return value
            await self._changed.wait()

    def lock(self, cid: str) -> trio.Lock:
        """The per-container command lock: commands on one container run one at a time."""
        return self._locks.setdefault(cid, trio.Lock())

    def forget_locks(self, cid: str) -> None:
        lock = self._locks.get(cid)
        if lock is not None and not lock.locked() and not lock.statistics().tasks_waiting:
            del self._locks[cid]
        alock = self._append_locks.get(cid)
        if alock is not None and not alock.locked():
            del self._append_locks[cid]

    def shown_state(self, c: dict[str, Any]) -> str:
        return "unknown" if c["id"] in self.unreconciled else c["state"]

    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic
