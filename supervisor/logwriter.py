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

The batches are handed over without a trio task in between. ``append`` adds to the newest
queued batch under a lock shared with one long-lived thread, and wakes that thread if it
sleeps; the thread takes the oldest batch whenever it is free (``EventLog.append``: encode,
write, fdatasync) and hands each result back through the trio token. The thread holds no lock
while it writes, so everything appended meanwhile gathers into the next batch, which it takes
as soon as the write returns, before the trio thread has even seen the result. The
completion, in the trio thread and in write order, runs ``on_commit`` and wakes the batch's
callers directly with their slice of the events: one wakeup per caller, none per batch.
(Under the GIL the woken thread mostly runs once the trio thread goes idle, so callers woken
together, and appending in the same scheduler round, land in one batch.)

A lone append is written in the trio thread itself, without the thread: when the writer is
idle, the caller first yields once (everyone woken in the same scheduler round joins its
batch), and if it is then still alone, with nothing in flight, it writes and applies the batch
itself. Two thread hand-offs (the writer thread's wake-up, then the trio thread's) cost more
than the fdatasync of one small record on a fast disk, and an event alone is the common case: a
task's exit on its way to the subscribers. The trio thread then waits for that fdatasync
instead of serving, so this is done only while the disk is fast: no write took ``inline_max``
seconds or more in the last ``inline_cooldown`` seconds (a disk that stalls once is likely to
stall again: one stall stops the trio thread at most once per cool-down, and the writer thread
takes every write meanwhile, so ``ps`` and the subscribers are served while the disk is slow).
And only after a lone batch: appenders that come in crowds (a batch of several callers) go
straight to the thread, without the extra yield. Everything else above holds for it: durable,
then applied, then the caller told; one ``on_write`` and ``on_commit`` per batch, in write
order (nothing is in flight when it is written).

If the write fails (a full disk), ``EventLog.append`` has cut the log back to its last good
record; every caller of that batch gets the ``OSError`` and nothing of the batch is applied or
published. The writer itself keeps running, so the next command succeeds once space returns.
Any other failure (a bug, ``on_commit`` raising) is raised by :meth:`LogWriter.run`; callers
whose batches were not written by then get a ``RuntimeError`` instead of waiting forever.
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
from supervisor.diskpace import DiskPace

if TYPE_CHECKING:
    from events.log import EventLog

__all__ = ["LogWriter"]

Item = tuple[str, str, dict[str, Any]]

_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait = trio.lowlevel.wait_task_rescheduled
_yield = trio.lowlevel.cancel_shielded_checkpoint
#: A lone append is written in the trio thread while no write took this long or more ...
INLINE_MAX = 0.002
#: ... for this long.
INLINE_COOLDOWN = 30.0


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
                 max_batch: int = 4096, inline_max: float = INLINE_MAX,
                 inline_cooldown: float = INLINE_COOLDOWN) -> None:
        self.log = log
        self.on_commit = on_commit
        self.max_batch = max_batch
        #: a lone append is written in the trio thread while the disk is fast: no write took
        #: inline_max seconds or more in the last inline_cooldown (inline_max 0: never)
        self._pace = DiskPace(inline_max, inline_cooldown)
        # shared with the thread, under _lock: the queued batches (oldest first), whether
        # the thread sleeps (then the next append wakes it), whether it must end
        self._lock = threading.Lock()
        self._batches: deque[_Batch] = deque()
        self._idle = True
        self._stop = False
        self._kick: queue.SimpleQueue[None] = queue.SimpleQueue()
        # trio thread only
        self._waiting = 0  # callers not answered yet
        self._token: trio.lowlevel.TrioToken | None = None
        self._wakeup = trio.Event()  # a failure that run() must raise
        self._settled = trio.Event()  # a batch completed
        self._fatal: BaseException | None = None
        self._closed = False
        self._lone = True  # the last batch had one caller (else the next goes to the thread)
        self.batches = 0
        self.appended = 0
        self.inline = 0  # batches written in the trio thread
        #: called with each durable batch and the seconds it took to write and fdatasync
        #: (``/metrics``), in the trio thread, before ``on_commit``
        self.on_write: Callable[[list[Event], float], None] | None = None

    async def append(self, items: Sequence[Item]) -> list[Event]:
        """Append ``(type, id, data)`` items atomically; return them as durable events.

        Raises ``OSError`` (e.g. ENOSPC) if they could not be written; then none of them is.
        """
        if self._closed:
            raise RuntimeError("the log writer is closed")
        n = len(items)
        task = _current_task()
        with self._lock:
            batches = self._batches
            if not batches or (batches[-1].items and len(batches[-1].items) + n > self.max_batch):
                batches.append(_Batch())
            batch = batches[-1]
            start = len(batch.items)
            batch.items.extend(items)
            batch.waiters.append((task, start, start + n))
            kick, self._idle = self._idle, False
        self._waiting += 1
        if kick:  # the thread sleeps and nothing is queued: it is ours to start, or not
            if self._lone and self._pace.slow > 0 and self._pace.fast():
                await _yield()  # those woken with us append in this round: they join
                if self._waiting == 1 and not self._stop:  # alone, nothing in flight
                    events = self._write_here(batch)
                    # the subscribers woken by on_commit run first, as after the thread's
                    # write (there the callers are woken after them): a caller's next step
                    # (a shim's ack) is not what anyone waits for
                    await _yield()
                    return events
            self._kick.put(None)
        woken: list[Event] = await _wait(_refuse_abort)
        return woken

    def _write_here(self, batch: _Batch) -> list[Event]:
        """Write the one batch queued, whose one caller is us, in the trio thread."""
        with self._lock:
            self._batches.remove(batch)
        began = time.perf_counter()
        try:
            result: outcome.Outcome[list[Event]] = outcome.Value(self.log.append(batch.items))
        except BaseException as exc:  # told to us, as the thread would have
            result = outcome.Error(exc)
        took = time.perf_counter() - began
        with self._lock:
            self._idle = True  # nothing was queued meanwhile: this thread did not run
        self.inline += 1
        result = self._apply(batch, result, took)
        if isinstance(result, outcome.Error):
            raise result.error
        assert isinstance(result, outcome.Value)
        events: list[Event] = result.value
        return events

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Let the thread write batches until cancelled; everything queued by then is still
        written.

        A failure that is not an ``OSError`` (a bug, or ``on_commit`` raising) is raised here
        once the batch's callers have been told.
        """
        self._token = trio.lowlevel.current_trio_token()
        thread = threading.Thread(target=self._work, name="tether-log-writer", daemon=True)
        thread.start()
        task_status.started()
        try:
            await self._wakeup.wait()
            assert self._fatal is not None
            raise self._fatal
        finally:
            self._closed = True
            with trio.CancelScope(shield=True):
                while self._waiting and self._fatal is None:
                    self._settled = trio.Event()
                    await self._settled.wait()
                with self._lock:
                    self._stop = True
                    left, self._batches = self._batches, deque()
                self._kick.put(None)
                await trio.to_thread.run_sync(thread.join)
                if left:  # after a failure: these were never written
                    self._answer_unwritten(left)

    async def flush(self) -> None:
        """Wait until everything queued so far is written."""
        while self._waiting:
            await trio.sleep(0.001)

    def _work(self) -> None:
        """The writer thread: the oldest batch whenever it is free, each result back to the
        trio thread (whose callbacks run in the order they were handed over)."""
        append = self.log.append
        clock = time.perf_counter
        lock = self._lock
        assert self._token is not None
        run_soon = self._token.run_sync_soon
        while True:
            self._kick.get()
            while True:
                with lock:
                    if self._stop:
                        return
                    if not self._batches:
                        self._idle = True
                        break
                    batch = self._batches.popleft()
                result: outcome.Outcome[list[Event]]
                began = clock()
                try:
                    result = outcome.Value(append(batch.items))
                except BaseException as exc:  # handed to the trio thread, which decides
                    result = outcome.Error(exc)
                run_soon(self._complete, batch, result, clock() - began)
                if isinstance(result, outcome.Error) and not isinstance(result.error, OSError):
                    with lock:  # a bug: write nothing more; run() answers the rest
                        self._stop = True
                    return

    def _complete(self, batch: _Batch, result: outcome.Outcome[list[Event]], took: float
                  ) -> None:
        """In the trio thread, in write order: apply, then wake the batch's callers."""
        result = self._apply(batch, result, took)
        if isinstance(result, outcome.Error):
            for task, _, _ in batch.waiters:
                _reschedule(task, outcome.Error(result.error))
            return
        assert isinstance(result, outcome.Value)
        events = result.value
        value = outcome.Value
        for task, start, end in batch.waiters:
            _reschedule(task, value(events[start:end]))

    def _apply(self, batch: _Batch, result: outcome.Outcome[list[Event]], took: float
               ) -> outcome.Outcome[list[Event]]:
        """A written (or failed) batch, in the trio thread: counted, applied; what its callers
        are to be told."""
        self._waiting -= len(batch.waiters)
        self._settled.set()
        self._pace.took(took)
        self._lone = len(batch.waiters) == 1
        if isinstance(result, outcome.Error):
            exc = result.error
            if not isinstance(exc, OSError):  # a bug: fail loudly, keep the daemon honest
                self._fail_later(exc)
            return result
        assert isinstance(result, outcome.Value)
        events = result.value
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
        return result

    def _answer_unwritten(self, left: deque[_Batch]) -> None:
        error = RuntimeError(f"the log writer stopped ({self._fatal!r}); nothing of this "
                             "append was written")
        for batch in left:
            self._waiting -= len(batch.waiters)
            for task, _, _ in batch.waiters:
                _reschedule(task, outcome.Error(error))

    def _fail_later(self, exc: BaseException) -> None:
        """Have run() raise ``exc`` (the first such failure wins); the thread takes no more
        batches."""
        if self._fatal is None:
            self._fatal = exc
        with self._lock:
            self._stop = True
        self._kick.put(None)
        self._wakeup.set()
