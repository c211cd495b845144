"""The snapshot: round trip, atomic replacement under a crash, damage detection."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from events.log import CorruptSnapshot, read_snapshot, write_snapshot
from events.snapshot import SnapshotVersionError, snapshot_path

STATE = {"containers": {"web": {"state": "running", "pid": 42, "out": b"\x00\xff"}},
         "shim_seqs": {"web": 7}, "list": [1, 2, 3], 5: "int keys too"}


def test_absent_snapshot_is_none(root: Path) -> None:
    assert read_snapshot(root) is None


def test_round_trip_and_replace(root: Path) -> None:
    write_snapshot(root, 10, STATE)
    assert read_snapshot(root) == (10, STATE)
    write_snapshot(root, 20, {"x": 1})
    assert read_snapshot(root) == (20, {"x": 1})
    assert [p.name for p in root.iterdir()] == ["snapshot"]  # no temp file left


def test_leftover_temp_file_is_ignored_and_cleaned(root: Path) -> None:
    write_snapshot(root, 3, STATE)
    (root / "snapshot.tmp.99999").write_bytes(b"half a snapsh")  # a crash mid-write
    assert read_snapshot(root) == (3, STATE)
    write_snapshot(root, 4, STATE)
    assert not (root / "snapshot.tmp.99999").exists()
    assert read_snapshot(root) == (4, STATE)


def test_every_damage_is_reported_with_the_path(root: Path) -> None:
    write_snapshot(root, 9, STATE)
    good = snapshot_path(root).read_bytes()
    rng = random.Random(3)
    damaged_versions = [good[:n] for n in (0, 5, 20, len(good) - 1)]
    damaged_versions += [good + b"x"]
    for _ in range(30):
        b = bytearray(good)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        damaged_versions.append(bytes(b))
    for data in damaged_versions:
        snapshot_path(root).write_bytes(data)
        with pytest.raises(CorruptSnapshot) as info:
            read_snapshot(root)
        assert info.value.path == str(snapshot_path(root))
        assert str(snapshot_path(root)) in str(info.value)


def test_newer_snapshot_version_is_refused(root: Path) -> None:
    write_snapshot(root, 1, {})
    data = bytearray(snapshot_path(root).read_bytes())
    data[8:12] = (9).to_bytes(4, "big")
    snapshot_path(root).write_bytes(data)
    with pytest.raises(SnapshotVersionError, match="version 9"):
        read_snapshot(root)


WRITER = r"""
import sys
from events.snapshot import read_snapshot, write_snapshot
root = sys.argv[1]
n = read_snapshot(root)[0]
print("ready", flush=True)
while True:
    n += 1
    write_snapshot(root, n, {"n": n, "blob": b"z" * 3_000_000})
"""


def test_killed_mid_write_leaves_a_whole_snapshot(root: Path) -> None:
    write_snapshot(root, 0, {"n": 0})
    rng = random.Random(5)
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)],
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        got = read_snapshot(root)
        assert got is not None
        seq, state = got
        assert state["n"] == seq
        assert seq == 0 or state["blob"] == b"z" * 3_000_000
        assert seq >= last  # never an older snapshot than one that was already whole
        last = seq
