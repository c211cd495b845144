"""The daemon's group commit (supervisor.logwriter.LogWriter) over a real EventLog.

What callers rely on: their events come back durable *and* applied (on_commit ran), contiguous
and in order; concurrent callers share fdatasyncs; a cancelled caller still learns whether its
events were written; a failed write fails exactly that batch's callers; nothing queued is lost
when the writer stops.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

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

        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            async with trio.open_nursery() as nursery:
                for k in range(40):
                    nursery.start_soon(caller, k)
            outer.cancel_scope.cancel()
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
