"""Every state a crash can leave of the log and the snapshot opens without a human.

Drives the crash-state explorer (``tests/crash_explorer.py``, whose docstring describes the
model): process crashes and power losses after every recorded file operation of a workload
with appends, segment rolls, a restart, snapshots and compaction. ``TETHER_CRASH_STATES=N``
explores about N distinct states instead of the CI's few thousand.
"""

from __future__ import annotations

import logging
import os
import random

import pytest
import structlog
from crash_explorer import PAGE, DroppingRecorder, FsModel, Op, explore

STATES = int(os.environ.get("TETHER_CRASH_STATES", "2500"))


def test_every_crash_state_opens_with_every_acknowledged_event_and_nothing_else() -> None:
    # every torn tail cut logs a warning, every start-up an info line: thousands of them
    logging.disable(logging.WARNING)
    try:
        with structlog.testing.capture_logs():
            summary = explore(STATES, seed=int(os.environ.get("TETHER_CRASH_SEED", "1")))
    finally:
        logging.disable(logging.NOTSET)
    assert not summary.failures, "\n".join(summary.failures)
    print(f"{summary.states} distinct crash states of {summary.ops} operations: "
          f"{summary.tags}; {summary.recovery} of a second crash during recovery")
    assert summary.states >= STATES // 2
    assert summary.process and summary.power
    assert summary.recovery > 100  # a second crash while recovering from the first
    # it did reach what matters: torn batches cut (their bytes kept aside), whole batches that
    # were never acknowledged kept, a snapshot whose rename was not yet durable
    for tag in ("cut", "torn kept aside", "unacknowledged kept",
                "snapshot not yet durable, kept"):
        assert summary.tags.get(tag, 0) > 0, tag


def test_the_explorer_catches_a_log_that_does_not_sync() -> None:
    summary = explore(200, recorder_cls=DroppingRecorder, max_failures=1)
    assert summary.failures and "lost acknowledged events" in summary.failures[0]


def test_a_power_loss_can_leave_a_hole_followed_by_whole_pages() -> None:
    model = FsModel()
    for op in (Op("create", "f", 0), Op("write", ino=0, data=b"a" * PAGE), Op("sync", ino=0),
               Op("dirsync", "."), Op("write", ino=0, offset=PAGE, data=b"b" * 3 * PAGE)):
        model.apply(op)
    states = list(model.power_loss(4, random.Random(0), budget=1000))
    contents = {s.files["f"] for s in states}
    hole_then_data = b"a" * PAGE + bytes(PAGE) + b"b" * 2 * PAGE
    assert hole_then_data in contents
    assert b"a" * PAGE in contents  # the size not yet extended
    assert all(c.startswith(b"a" * PAGE) for c in contents)  # what was synced stays
    torn = [c for c in contents if len(c) == 4 * PAGE and 0 < c[PAGE : 2 * PAGE].count(b"b")
            < PAGE]
    assert torn, "no page torn inside"


@pytest.mark.parametrize("pending", [1, 3])
def test_a_power_loss_keeps_a_prefix_of_unsynced_directory_changes(pending: int) -> None:
    model = FsModel()
    ops = [Op("create", f"f{k}", k) for k in range(pending)]
    for op in ops:
        model.apply(op)
    names = {frozenset(s.files) for s in model.power_loss(0, random.Random(0), budget=10)}
    assert names == {frozenset(f"f{k}" for k in range(n)) for n in range(pending + 1)}
