"""The log under real failures: a writer SIGKILLed mid-append, and a full disk."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import small_tmpfs

from events.log import EventLog, verify

# The child appends batches forever and prints the last seq of each batch once append() has
# returned, i.e. once the batch is durable: those are the acknowledged events.
WRITER = r"""
import random, sys
from events.log import EventLog
root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
log = EventLog.open(root, segment_size=rng.choice([2000, 8000, 1 << 20]))
sys.stdout.write(f"open {log.last_seq}\n"); sys.stdout.flush()
while True:
    n = rng.randint(1, 20)
    evs = log.append([("task.exit", "c%d" % i, {"pad": "x" * rng.randint(0, 300)})
                      for i in range(n)])
    sys.stdout.write(f"{evs[-1].seq}\n"); sys.stdout.flush()
"""


def _read_lines(proc: subprocess.Popen, deadline: float) -> list[str]:
    """Read until the pipe closes (the child died) or the deadline passes."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out.decode().splitlines()


def test_sigkill_mid_append_loses_nothing_acknowledged(root: Path) -> None:
    rng = random.Random(1234)
    acked = 0
    started = time.monotonic()
    rounds = 50
    for rnd in range(rounds):
        seed = str(rng.randrange(1 << 30))
        # unbuffered: the first line is read with readline, the rest straight from the fd
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), seed],
                                stdout=subprocess.PIPE, bufsize=0)
        try:
            # wait for the child to be appending, then kill it at a random moment
            first = _read_lines_until_open(proc)
            assert first is not None, "writer did not start"
            opened_at = int(first.split()[1])
            assert opened_at >= acked, f"round {rnd}: reopened at {opened_at} < acked {acked}"
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            lines = _read_lines(proc, time.monotonic() + 5)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        seqs = [int(x) for x in lines if x.strip().isdigit()]
        if seqs:
            acked = max(acked, seqs[-1])
        with EventLog.open(root) as log:
            assert log.last_seq >= acked, f"round {rnd}: lost acknowledged events"
            got = [e.seq for e in log.read()]
            assert got == list(range(1, log.last_seq + 1))
    assert acked > rounds  # the writer did make progress
    assert verify(root).ok
    print(f"{rounds} kill rounds in {time.monotonic() - started:.1f} s, {acked} events acked")


def _read_lines_until_open(proc: subprocess.Popen) -> str | None:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    return line if line.startswith("open ") else None


# -- full disk ----------------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    yield from small_tmpfs(tmp_path, "1m")


def test_full_disk_fails_the_batch_cleanly_and_recovers(small_fs: Path, caplog) -> None:
    root = small_fs / "root"
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (256 * 1024))
    log = EventLog.open(root, segment_size=64 * 1024)
    acked = []
    rng = random.Random(7)
    try:
        with pytest.raises(OSError) as info:
            for _ in range(10_000):
                batch = [("container.create", f"c{i}", {"spec": "s" * rng.randint(100, 3000)})
                         for i in range(rng.randint(1, 30))]
                acked += log.append(batch)
        assert info.value.errno == errno.ENOSPC
        assert log.last_seq == len(acked) > 0
        with pytest.raises(OSError):  # still full: fails again, still cleanly
            log.append([("task.oom", "c", {"pad": "p" * 50_000})])
        assert log.last_seq == len(acked)
        log.close()
        report = verify(root)
        assert report.ok and not report.warnings  # the failed batch was cut, not left torn
        with caplog.at_level(logging.WARNING, logger="tether.events.log"):
            log = EventLog.open(root, segment_size=64 * 1024)
        assert "torn" not in caplog.text
        assert list(log.read()) == acked  # no corruption, nothing lost, nothing extra
        filler.unlink()
        more = log.append([("task.start", "c", {"pid": 1})] * 5)
        assert [e.seq for e in more] == list(range(len(acked) + 1, len(acked) + 6))
        acked += more
        log.close()
        log = EventLog.open(root, segment_size=64 * 1024)
        assert list(log.read()) == acked
    finally:
        log.close()
