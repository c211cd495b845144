"""The only writer of the event log: group commit in a worker thread.

Callers ``await writer.append(items)``; items that arrive while a batch is being written form
the next batch, so N concurrent commands share one fdatasync instead of paying N (about 125 µs
each here). A caller is woken only after its events are durable *and* applied to the
projection, so whatever it replies is already true on disk and in ``ps``.

If the write fails (a full disk), ``EventLog.append`` has cut the log back to its last good
record; every caller of that batch gets the ``OSError`` and nothing of the batch is applied or
published. The writer itself keeps running, so the next command succeeds once space returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from events.model import Event

if TYPE_CHECKING:
    from events.log import EventLog

__all__ = ["LogWriter"]

Item = tuple[str, str, dict[str, Any]]


class _Pending:
    __slots__ = ("done", "error", "events", "items")

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = items
        self.done = trio.Event()
        self.events: list[Event] = []
        self.error: BaseException | None = None


class LogWriter:
    """Serializes appends; ``on_commit(events)`` runs in the trio thread after each batch."""

    def __init__(self, log: EventLog, on_commit: Callable[[list[Event]], None],
                 max_batch: int = 4096) -> None:
        self.log = log
        self.on_commit = on_commit
        self.max_batch = max_batch
        self._queue: list[_Pending] = []
        self._wakeup = trio.Event()
        self._closed = False
        self.batches = 0
        self.appended = 0
        #: called with each durable batch and the seconds it took to write and fdatasync
        #: (``/metrics``)
        self.on_write: Callable[[list[Event], float], None] | None = None

    async def append(self, items: Sequence[Item]) -> list[Event]:
        """Append ``(type, id, data)`` items atomically; return them as durable events.

        Raises ``OSError`` (e.g. ENOSPC) if they could not be written; then none of them is.
        """
        if self._closed:
            raise RuntimeError("the log writer is closed")
        pending = _Pending(items)
        self._queue.append(pending)
        self._wakeup.set()
        # Shielded: a caller cancelled mid-write must not leave without knowing whether its
        # events became durable (the writer finishes the batch either way).
        with trio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.events

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Write batches until cancelled; a batch in flight is always finished."""
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._queue:
                    await self._write_batch()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                while self._queue:
                    await self._write_batch()

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._queue:
            await trio.sleep(0.001)

    async def _write_batch(self) -> None:
        batch: list[_Pending] = []
        count = 0
        while self._queue and (not batch or count + len(self._queue[0].items) <= self.max_batch):
            p = self._queue.pop(0)
            batch.append(p)
            count += len(p.items)
        flat = [item for p in batch for item in p.items]

        def write() -> tuple[list[Event], float]:
            began = time.perf_counter()
            written = self.log.append(flat)
            return written, time.perf_counter() - began

        try:
            with trio.CancelScope(shield=True):
                events, took = await trio.to_thread.run_sync(write)
        except OSError as exc:
            for p in batch:
                p.error = exc
                p.done.set()
            return
        except BaseException as exc:  # a bug: fail the callers loudly, keep the daemon honest
            for p in batch:
                p.error = exc
                p.done.set()
            raise
        self.batches += 1
        self.appended += len(events)
        if self.on_write is not None:
            self.on_write(events, took)
        try:
            self.on_commit(events)
        finally:
            pos = 0
            for p in batch:
                p.events = events[pos : pos + len(p.items)]
                pos += len(p.items)
                p.done.set()
