"""The daemon's group commit (supervisor.logwriter.LogWriter) over a real EventLog.

What callers rely on: their events come back durable *and* applied (on_commit ran), contiguous
and in order; concurrent callers share fdatasyncs; a cancelled caller still learns whether its
events were written; a failed write fails exactly that batch's callers; nothing queued is lost
when the writer stops.
"""

from __future__ import annotations

import errno
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import small_tmpfs

from events.log import EventLog, read_events
from events.model import Event
from supervisor.logwriter import LogWriter

Items = Sequence[tuple[str, str, dict[str, Any]]]


class FailingOnce:
    """The real log, except that its next append raises ``exc`` (the writer's policy on
    failure is what is tested; the log's own ENOSPC handling is in test_log_crash.py)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.exc: BaseException | None = None

    def append(self, items: Items) -> list[Event]:
        exc, self.exc = self.exc, None
        if exc is not None:
            raise exc
        return self.log.append(items)


class Gated:
    """The real log, except that each append first waits until the test opens the gate (so
    the test knows what arrived while a batch was being written); ``batches`` records the
    items of each append in the order the log got them."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.entered = threading.Semaphore(0)
        self.gate = threading.Semaphore(0)
        self.batches: list[list[str]] = []

    def append(self, items: Items) -> list[Event]:
        self.entered.release()
        self.gate.acquire()
        self.batches.append([eid for _, eid, _ in items])
        return self.log.append(items)


async def run_callers(writer: LogWriter, caller: Callable[[int], Awaitable[None]],
                      n: int) -> None:
    """Run *writer* while ``caller(0)`` ... ``caller(n - 1)`` run at once; stop it once they
    are all answered."""
    async with trio.open_nursery() as outer:
        await outer.start(writer.run)
        async with trio.open_nursery() as nursery:
            for k in range(n):
                nursery.start_soon(caller, k)
        outer.cancel_scope.cancel()


async def test_concurrent_callers_get_durable_applied_contiguous_events(root: Path) -> None:
    applied: list[Event] = []
    with EventLog.open(root) as log:
        writer = LogWriter(log, applied.extend)
        got: dict[int, list[list[Event]]] = {}

        async def caller(k: int) -> None:
            rng = random.Random(k)
            for i in range(5):
                n = rng.randint(1, 3)
                evs = await writer.append([("task.start", f"c{k}", {"i": i, "j": j})
                                           for j in range(n)])
                # durable and applied before the caller hears of it
                assert evs[-1].seq <= log.last_seq and evs[-1] in applied
                assert [e.seq for e in evs] == list(range(evs[0].seq, evs[0].seq + n))
                assert [(e.id, e.data) for e in evs] == [(f"c{k}", {"i": i, "j": j})
                                                         for j in range(n)]
                got.setdefault(k, []).append(evs)

        await run_callers(writer, caller, 40)
        assert [e.seq for e in applied] == list(range(1, log.last_seq + 1))
        assert writer.appended == log.last_seq == sum(len(b) for v in got.values() for b in v)
        assert writer.batches < 200  # 200 appends shared fdatasyncs
    assert list(read_events(root)) == applied


async def test_a_cancelled_caller_still_gets_its_answer(root: Path) -> None:
    with EventLog.open(root) as log:
        writer = LogWriter(log, lambda events: None)
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            reached = False
            with trio.CancelScope() as scope:
                scope.cancel()
                evs = await writer.append([("task.start", "c", {})])  # not interrupted
                assert evs[0].seq == log.last_seq == 1
                await trio.sleep(0)  # the cancellation lands at the next checkpoint
                reached = True
            assert scope.cancelled_caught and not reached
            outer.cancel_scope.cancel()


async def test_a_failed_write_fails_its_batch_only_and_the_writer_goes_on(root: Path) -> None:
    applied: list[Event] = []
    with EventLog.open(root) as log:
        failing = FailingOnce(log)
        writer = LogWriter(failing, applied.extend)  # type: ignore[arg-type]  # log-shaped
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            failing.exc = OSError(errno.ENOSPC, "No space left on device")
            outcomes: list[Any] = []

            async def caller() -> None:
                try:
                    outcomes.append(await writer.append([("task.start", "c", {})]))
                except OSError as exc:
                    outcomes.append(exc)

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(caller)
            assert all(isinstance(o, OSError) and o.errno == errno.ENOSPC for o in outcomes)
            assert applied == [] and log.last_seq == 0  # nothing of the batch applied
            evs = await writer.append([("task.start", "c", {})])
            assert evs[0].seq == 1 and applied == evs
            outer.cancel_scope.cancel()


async def test_a_bug_fails_its_callers_and_stops_the_writer(root: Path) -> None:
    with EventLog.open(root) as log:
        failing = FailingOnce(log)
        writer = LogWriter(failing, lambda events: None)  # type: ignore[arg-type]  # log-shaped
        failing.exc = KeyError("a bug")
        seen: list[BaseException] = []

        async def caller() -> None:
            try:
                await writer.append([("task.start", "c", {})])
            except KeyError as exc:
                seen.append(exc)

        with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
            async with trio.open_nursery() as outer:
                await outer.start(writer.run)
                outer.start_soon(caller)
        assert len(seen) == 1


async def test_on_commit_failing_wakes_the_callers_then_stops_the_writer(root: Path) -> None:
    def on_commit(events: list[Event]) -> None:
        raise ValueError("projection bug")

    with EventLog.open(root) as log:
        writer = LogWriter(log, on_commit)
        got: list[list[Event]] = []

        async def caller() -> None:
            got.append(await writer.append([("task.start", "c", {})]))

        with pytest.RaisesGroup(ValueError, flatten_subgroups=True):
            async with trio.open_nursery() as outer:
                await outer.start(writer.run)
                outer.start_soon(caller)
        assert [e.seq for e in got[0]] == [1]  # durable, so its caller was told


async def test_stopping_writes_everything_queued_then_refuses(root: Path) -> None:
    with EventLog.open(root) as log:
        writer = LogWriter(log, lambda events: None, max_batch=3)
        results: list[list[Event]] = []

        async def caller(k: int) -> None:
            results.append(await writer.append([("task.start", f"c{k}", {})] * 2))

        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            for k in range(10):
                outer.start_soon(caller, k)
            await trio.sleep(0)  # the callers have queued their items
            outer.cancel_scope.cancel()  # stop the writer with batches still queued
        assert sorted(e.seq for r in results for e in r) == list(range(1, 21))
        assert writer.batches == 10  # max_batch=3: one caller (two items) per batch
        with pytest.raises(RuntimeError, match="closed"):
            await writer.append([("task.start", "c", {})])
    assert [e.seq for e in read_events(root)] == list(range(1, 21))


async def test_on_write_sees_each_durable_batch_with_its_time_before_on_commit(root: Path
                                                                               ) -> None:
    calls: list[tuple[str, int, float]] = []
    with EventLog.open(root) as log:
        writer = LogWriter(log, lambda events: calls.append(("commit", len(events), 0.0)))
        writer.on_write = lambda events, took: calls.append(("write", len(events), took))
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(writer.append, [("task.start", "c", {})])
            outer.cancel_scope.cancel()
    assert [c[0] for c in calls] == ["write", "commit"] * writer.batches
    assert sum(n for kind, n, _ in calls if kind == "write") == 8
    assert all(took > 0 for kind, _, took in calls if kind == "write")


async def test_what_arrives_during_a_write_is_the_next_batch_in_order(root: Path) -> None:
    """One fdatasync for everyone who came while the previous one ran, in arrival order, and
    each caller gets exactly its own events (seqs and data)."""
    with EventLog.open(root) as log:
        gated = Gated(log)
        writer = LogWriter(gated, lambda events: None,  # type: ignore[arg-type]  # log-shaped
                           inline_max=0)  # the thread writes every batch
        got: dict[str, list[Event]] = {}

        async def caller(name: str, n: int) -> None:
            got[name] = await writer.append([("task.start", name, {"j": j}) for j in range(n)])

        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            outer.start_soon(caller, "first", 1)
            await trio.to_thread.run_sync(gated.entered.acquire)  # the thread is writing it
            async with trio.open_nursery() as nursery:
                for k in range(10):
                    nursery.start_soon(caller, f"c{k}", k % 3 + 1)
                    await trio.sleep(0)  # a known arrival order
                await trio.sleep(0.05)
                assert gated.batches == [] and got == {}  # nobody told before the write
                gated.gate.release()  # the first batch
                await trio.to_thread.run_sync(gated.entered.acquire)
                gated.gate.release()  # the second: all ten callers
            outer.cancel_scope.cancel()
        assert gated.batches == [["first"], [f"c{k}" for k in range(10) for _ in range(k % 3 + 1)]]
        assert writer.batches == 2
        seq = 1
        for name in ["first"] + [f"c{k}" for k in range(10)]:
            evs = got[name]
            assert [(e.seq, e.id, e.data) for e in evs] == [
                (seq + j, name, {"j": j}) for j in range(len(evs))]
            seq += len(evs)
    assert [e.seq for e in read_events(root)] == list(range(1, seq))


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path, "1m")


async def test_a_full_disk_answers_every_caller_and_changes_nothing(small_fs: Path) -> None:
    """On a real full disk: every caller of a failed batch gets ENOSPC, none of its events is
    applied or on disk, the callers of batches that fit get theirs, and once space is back
    the next append goes on from the last durable seq."""
    root = small_fs / "root"
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (256 * 1024))
    applied: list[Event] = []
    with EventLog.open(root, segment_size=64 * 1024) as log:
        writer = LogWriter(log, applied.extend)
        answers: list[list[Event] | OSError] = []

        async def caller(k: int) -> None:
            try:
                answers.append(await writer.append([("container.create", f"c{k}",
                                                      {"pad": "p" * 2000})] * 3))
            except OSError as exc:
                answers.append(exc)

        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            for _ in range(40):  # until the disk is full (1 MiB: a few rounds)
                async with trio.open_nursery() as nursery:
                    for k in range(16):
                        nursery.start_soon(caller, k)
                if any(isinstance(a, OSError) for a in answers):
                    break
            failed = [a for a in answers if isinstance(a, OSError)]
            assert failed and all(a.errno == errno.ENOSPC for a in failed)
            assert len(answers) % 16 == 0  # every caller was answered
            written = [e for a in answers if not isinstance(a, OSError) for e in a]
            assert sorted(e.seq for e in written) == [e.seq for e in applied]
            assert [e.seq for e in applied] == list(range(1, log.last_seq + 1))
            assert [e.seq for e in log.read()] == [e.seq for e in applied]  # nothing extra
            filler.unlink()
            more = await writer.append([("task.start", "c", {})])
            assert more[0].seq == log.last_seq == len(applied)
            outer.cancel_scope.cancel()


async def test_after_a_bug_unwritten_callers_get_an_error_not_a_hang(root: Path) -> None:
    with EventLog.open(root) as log:
        gated = Gated(log)
        writer = LogWriter(gated, lambda events: None,  # type: ignore[arg-type]  # log-shaped
                           inline_max=0)  # the thread writes every batch
        seen: list[BaseException] = []

        def broken(items: Items) -> list[Event]:
            gated.entered.release()
            gated.gate.acquire()
            raise KeyError("a bug")

        gated.append = broken  # type: ignore[method-assign]  # the first write is a bug

        async def caller() -> None:
            try:
                await writer.append([("task.start", "c", {})])
            except (KeyError, RuntimeError) as exc:
                seen.append(exc)

        with pytest.RaisesGroup(KeyError, flatten_subgroups=True):
            async with trio.open_nursery() as outer:
                await outer.start(writer.run)
                outer.start_soon(caller)
                await trio.to_thread.run_sync(gated.entered.acquire)
                for _ in range(3):  # queued behind the broken write
                    outer.start_soon(caller)
                await trio.sleep(0.01)
                gated.gate.release()
        assert [type(e) for e in seen] == [KeyError, RuntimeError, RuntimeError, RuntimeError]
        assert "nothing of this append was written" in str(seen[-1])
        assert log.last_seq == 0


class Threads:
    """The real log, recording which thread wrote each batch (and how many items), and, while
    ``slow`` is set, taking that many seconds more per write (a slow disk)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.writes: list[tuple[str, int]] = []
        self.slow = 0.0

    def append(self, items: Items) -> list[Event]:
        self.writes.append((threading.current_thread().name, len(items)))
        if self.slow:
            time.sleep(self.slow)
        return self.log.append(items)


async def test_a_lone_append_is_written_without_the_thread_and_applied_first(root: Path
                                                                            ) -> None:
    """An event alone (a task's exit) skips the two thread hand-offs; it is durable and
    applied before its caller hears of it, as any other."""
    applied: list[Event] = []
    with EventLog.open(root) as log:
        threads = Threads(log)
        writer = LogWriter(threads, applied.extend,  # type: ignore[arg-type]  # log-shaped
                           inline_max=10.0)  # the disk counts as fast however loaded
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            for k in range(3):
                evs = await writer.append([("task.exit", f"c{k}", {"k": k})])
                assert evs[0].seq == log.last_seq == k + 1 and applied[-1] == evs[0]
            outer.cancel_scope.cancel()
        assert threads.writes == [(threading.current_thread().name, 1)] * 3
        assert writer.inline == writer.batches == 3
    assert list(read_events(root)) == applied


async def test_appenders_woken_together_still_share_one_write_by_the_thread(root: Path
                                                                           ) -> None:
    with EventLog.open(root) as log:
        threads = Threads(log)
        writer = LogWriter(threads, lambda events: None)  # type: ignore[arg-type]
        got: list[list[Event]] = []

        async def caller(k: int) -> None:
            got.append(await writer.append([("task.start", f"c{k}", {})] * 2))

        await run_callers(writer, caller, 8)
        assert threads.writes == [("tether-log-writer", 16)] and writer.inline == 0
        assert sorted(e.seq for evs in got for e in evs) == list(range(1, 17))


async def test_while_the_disk_is_slow_every_write_goes_to_the_thread(root: Path) -> None:
    """The trio thread waits for a slow fdatasync at most once per cool-down: after a write
    that took ``inline_max`` or more, lone appends go to the thread, fast or not, until
    ``inline_cooldown`` has passed (a disk that stalled is likely to stall again)."""
    with EventLog.open(root) as log:
        threads = Threads(log)
        writer = LogWriter(threads, lambda events: None,  # type: ignore[arg-type]
                           inline_max=0.5,  # however loaded, a write takes less
                           inline_cooldown=1.5)
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            await writer.append([("task.exit", "a", {})])  # fast: here
            threads.slow = 0.6
            await writer.append([("task.exit", "b", {})])  # here, found slow
            await writer.append([("task.exit", "c", {})])  # so the thread's (slow again)
            threads.slow = 0.0
            await writer.append([("task.exit", "d", {})])  # fast, but within the cool-down
            await writer.append([("task.exit", "e", {})])  # the thread's still
            await trio.sleep(1.6)
            await writer.append([("task.exit", "f", {})])  # the cool-down passed: here
            outer.cancel_scope.cancel()
        here, thread = threading.current_thread().name, "tether-log-writer"
        assert [name for name, _ in threads.writes] == [here, here, thread, thread, thread,
                                                        here]


async def test_after_a_crowd_the_next_append_goes_to_the_thread_at_once(root: Path) -> None:
    """Appenders that come in crowds keep their pace: after a batch of several callers the
    next one goes to the thread without the extra yield; after a lone one, here again."""
    with EventLog.open(root) as log:
        threads = Threads(log)
        writer = LogWriter(threads, lambda events: None,  # type: ignore[arg-type]
                           inline_max=10.0)
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(writer.append, [("task.start", f"c{k}", {})])
            await writer.append([("task.exit", "a", {})])
            await writer.append([("task.exit", "b", {})])
            outer.cancel_scope.cancel()
        here = threading.current_thread().name
        assert threads.writes == [("tether-log-writer", 4), ("tether-log-writer", 1), (here, 1)]
