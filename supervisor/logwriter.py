"""The only writer of the event log: group commit in a worker thread.

Callers ``await writer.append(items)``; items that arrive while a batch is being written form
the next batch, so N concurrent commands share one fdatasync instead of paying N (about 125 µs
each here). A caller is woken only after its events are durable *and* applied to the
projection, so whatever it replies is already true on disk and in ``ps``.

The shape is chosen for many concurrent callers: a caller costs one list entry in the batch
it joined and one park/reschedule of its task, nothing else. Its wait cannot be cancelled
(``wait_task_rescheduled`` whose abort is refused, the effect of a shielded cancel scope
without its cost): a caller cancelled mid-write must not leave without knowing whether its
events became durable, so a cancellation is delivered at its next checkpoint instead.

One long-lived thread writes the batches (``EventLog.append``: encode, write, fdatasync) and
hands each result back through the trio token; the completion, in the trio thread, runs
``on_commit`` and wakes the batch's callers directly with their slice of the events, then
hands the thread the next batch if one filled meanwhile. The writer task only starts the
thread when work arrives while it is idle, and on shutdown waits until everything queued is
written. Order is kept: one thread, one batch at a time, completions run in order.

If the write fails (a full disk), ``EventLog.append`` has cut the log back to its last good
record; every caller of that batch gets the ``OSError`` and nothing of the batch is applied or
published. The writer itself keeps running, so the next command succeeds once space returns.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import outcome
import trio

from events.model import Event

if TYPE_CHECKING:
    from events.log import EventLog

__all__ = ["LogWriter"]

Item = tuple[str, str, dict[str, Any]]

_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait = trio.lowlevel.wait_task_rescheduled


def _refuse_abort(_: Callable[[], None]) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _Batch:
    """Items of one future ``EventLog.append`` and who waits for which slice of them."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.waiters: list[tuple[trio.lowlevel.Task, int, int]] = []


class LogWriter:
    """Serializes appends; ``on_commit(events)`` runs in the trio thread after each batch."""

    def __init__(self, log: EventLog, on_commit: Callable[[list[Event]], None],
                 max_batch: int = 4096) -> None:
        self.log = log
        self.on_commit = on_commit
        self.max_batch = max_batch
        self._batches: deque[_Batch] = deque()  # filled by append, written in order
        self._busy = False  # a batch is with the thread
        self._jobs: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakeup = trio.Event()  # work arrived while the thread was idle, or a failure
        self._settled = trio.Event()  # a batch completed
        self._fatal: BaseException | None = None
        self._closed = False
        self.batches = 0
        self.appended = 0
        #: called with each durable batch and the seconds it took to write and fdatasync
        #: (``/metrics``), in the trio thread, before ``on_commit``
        self.on_write: Callable[[list[Event], float], None] | None = None

    async def append(self, items: Sequence[Item]) -> list[Event]:
        """Append ``(type, id, data)`` items atomically; return them as durable events.

        Raises ``OSError`` (e.g. ENOSPC) if they could not be written; then none of them is.
        """
        if self._closed:
            raise RuntimeError("the log writer is closed")
        batches = self._batches
        n = len(items)
        if not batches or (batches[-1].items and len(batches[-1].items) + n > self.max_batch):
            batches.append(_Batch())
        batch = batches[-1]
        start = len(batch.items)
        batch.items.extend(items)
        batch.waiters.append((_current_task(), start, start + n))
        if not self._busy:
            self._wakeup.set()  # the writer hands it over at the end of this round
        events: list[Event] = await _wait(_refuse_abort)
        return events

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Write batches until cancelled; everything queued by then is still written.

        A failure that is not an ``OSError`` (a bug, or ``on_commit`` raising) is raised here
        once the batch's callers have been told.
        """
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._work, name="tether-log-writer", daemon=True)
        thread.start()
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                if self._fatal is not None:
                    raise self._fatal
                if not self._busy and self._batches:
                    self._submit()
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                while (self._busy or self._batches) and self._fatal is None:
                    if not self._busy:
                        self._submit()
                    self._settled = trio.Event()
                    await self._settled.wait()
                self._jobs.put(None)
                await trio.to_thread.run_sync(thread.join)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._batches or self._busy:
            await trio.sleep(0.001)

    def _submit(self) -> None:
        self._busy = True
        self._jobs.put(self._batches.popleft())

    def _work(self) -> None:
        """The writer thread: one batch at a time, each result back to the trio thread."""
        append = self.log.append
        clock = time.perf_counter
        assert self._token is not None
        run_soon = self._token.run_sync_soon
        while True:
            batch = self._jobs.get()
            if batch is None:
                return
            result: outcome.Outcome[list[Event]]
            began = clock()
            try:
                result = outcome.Value(append(batch.items))
            except BaseException as exc:  # handed to the trio thread, which decides
                result = outcome.Error(exc)
            run_soon(self._complete, batch, result, clock() - began)

    def _complete(self, batch: _Batch, result: outcome.Outcome[list[Event]], took: float
                  ) -> None:
        """In the trio thread, in order: apply, wake the batch's callers, start the next."""
        self._busy = False
        self._settled.set()
        if isinstance(result, outcome.Error):
            exc = result.error
            for task, _, _ in batch.waiters:
                _reschedule(task, outcome.Error(exc))
            if not isinstance(exc, OSError):  # a bug: fail loudly, keep the daemon honest
                self._fail_later(exc)
                return
        else:
            events = result.unwrap()
            self.batches += 1
            self.appended += len(events)
            # both run, even if one fails: the batch is durable whatever a hook does
            if self.on_write is not None:
                try:
                    self.on_write(events, took)
                except BaseException as exc:  # raised by run(), after the callers are woken
                    self._fail_later(exc)
            try:
                self.on_commit(events)
            except BaseException as exc:  # likewise
                self._fail_later(exc)
            value = outcome.Value
            for task, start, end in batch.waiters:
                _reschedule(task, value(events[start:end]))
            if self._fatal is not None:
                return
        if self._batches and not self._closed:
            self._submit()  # it filled while this one was written
        elif self._batches:
            self._wakeup.set()

    def _fail_later(self, exc: BaseException) -> None:
        """Have run() raise ``exc`` (the first such failure wins)."""
        if self._fatal is None:
            self._fatal = exc
        self._wakeup.set()
