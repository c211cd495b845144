"""A full disk under ROOT (issue 10, item 6): ``start`` tells the truth.

The task starts in its shim before the daemon appends ``task.start``; when that append fails
(ENOSPC), the task is running and cannot be undone cleanly (its exit would need a record too).
So ``start`` answers ``no_space`` saying the container started, with its pid, and that its
start is recorded once space returns: the shim keeps ``task.start`` and the exit in its outbox
(in memory; the exit file too once it can be written) and delivers them then, exactly once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import small_tmpfs

from events import wire


@pytest.fixture
def small_root(tmp_path: Path) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path, ROOT_SIZE)


#: ROOT's size: smaller than the log's preallocation (512 KiB written ahead), which then
#: gives up at the first append and grows the segment as it goes; room for a few shims.
ROOT_SIZE = "400k"
#: Bytes left in the log's last page once the disk is full: fewer than a ``task.start``
#: record takes, more than a pid's encoding can vary by.
SLACK = 24
PAGE = 4096


def _log_size(d) -> int:
    return max(p.stat().st_size for p in (d.root / "events").iterdir() if p.is_file())


def _leave_little_slack(d, slack: int) -> None:
    """Create a padding container whose events end the log ``slack`` bytes before a page
    boundary, so the next append needs a page a full disk does not have (a tmpfs allocates
    by page: a small append into the last page's slack would succeed)."""
    def grow(name: str, pad: int) -> int:
        before = _log_size(d)
        d.call("create", spec={"command": ["true"], "name": name, "labels": {"p": "x" * pad}})
        return _log_size(d) - before

    base = grow("pad0", 1000) - 1000  # the events' size without the label's text
    pad = (-(_log_size(d) + base + slack)) % PAGE
    pad += PAGE if pad < 300 else 0  # the same msgpack string header as the probe's
    assert grow("pad1", pad) == base + pad
    assert PAGE - _log_size(d) % PAGE == slack


def _fill(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "wb", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@pytest.mark.parametrize("kill_daemon", [False, True], ids=["daemon-lives", "daemon-kill9"])
def test_start_on_a_full_disk_says_the_task_started_and_records_it_once_later(
        daemon_factory, small_root: Path, tmp_path: Path, kill_daemon: bool) -> None:
    """With ``daemon-kill9`` the daemon is SIGKILLed while the disk is full and started again
    once it is not: the shim's outbox still delivers the start and the exit, once each."""
    d = daemon_factory(root_dir=small_root / "root")
    mark = tmp_path / "ran"
    d.call("create", spec={"command": ["sh", "-c", f"touch {mark}; sleep 1; exit 3"],
                           "name": "c"})
    _leave_little_slack(d, SLACK)
    seq = d.call("status")["last_seq"]
    fill = small_root / "fill"
    _fill(fill)
    try:
        with pytest.raises(wire.RemoteError) as err:
            d.call("start", id="c")
        assert err.value.code == "no_space", err.value
        message = err.value.message
        assert "container c started (pid " in message, message
        assert "nothing was changed" not in message, message
        d.wait_for(mark.exists)  # it did run: the error said so
        assert d.call("status")["last_seq"] == seq  # and nothing could be recorded
        assert d.running() and d.ps()["c"]["state"] == "created"
        if kill_daemon:
            d.kill9()
    finally:
        fill.unlink()
    if kill_daemon:
        d.start().reconciled()
    # space is back: the shim's outbox delivers the start and the exit, once each
    row = d.wait_for(lambda: (r := d.ps().get("c")) and r["state"] == "stopped" and r,
                     timeout=30)
    assert row["exit_status"] == 3, row
    types = [e["type"] for e in d.stream("events", since=seq) if e["id"] == "c"]
    assert types.count("task.start") == 1 and types.count("task.exit") == 1, types
    assert types.index("task.start") < types.index("task.exit"), types
    seqs = [e["seq"] for e in d.stream("events")]
    assert seqs == list(range(1, len(seqs) + 1))
