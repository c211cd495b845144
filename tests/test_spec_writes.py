"""Where a start's file writes run (``supervisor.shims.FileWrites``): in the trio thread while
the disk is fast, in a worker thread for a cooldown once a write was slow."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import trio

from events import shim_api
from supervisor.shims import FileWrites


def test_writes_run_in_the_trio_thread_until_one_is_slow_then_in_a_thread(
        tmp_path: Path) -> None:
    writes = FileWrites(slow=0.02, cooldown=0.3)
    where: list[tuple[str, bool]] = []

    async def one(label: str, took: float) -> None:
        here = threading.get_ident()
        seen: list[int] = []

        def write() -> None:
            seen.append(threading.get_ident())
            shim_api.write_spec(tmp_path, {"id": "w", "instance": "w-1", "command": ["true"]})
            time.sleep(took)

        await writes.run(write)
        assert shim_api.read_spec(tmp_path)["instance"] == "w-1"
        where.append((label, seen == [here]))

    async def main() -> None:
        await one("fast", 0.0)
        await one("slow", 0.05)  # still inline: nothing was slow before it
        await one("after the slow one", 0.0)
        await trio.sleep(0.35)  # the cooldown passed
        await one("after the cooldown", 0.0)

    trio.run(main)
    assert where == [("fast", True), ("slow", True), ("after the slow one", False),
                     ("after the cooldown", True)]
    assert writes.inline == 3


def test_a_failed_write_raises_to_the_start_either_way(tmp_path: Path) -> None:
    writes = FileWrites(slow=10.0)

    def fail() -> None:
        raise FileNotFoundError(tmp_path / "gone")

    with pytest.raises(FileNotFoundError):
        trio.run(writes.run, fail)
    writes.slow_until = time.monotonic() + 60  # in a thread
    with pytest.raises(FileNotFoundError):
        trio.run(writes.run, fail)
