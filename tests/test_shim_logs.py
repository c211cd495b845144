"""The CRI log writer on its own: format, partial lines, rotation, a full disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from shim.logs import CriLog, rfc3339nano

RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$")


def records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for line in path.read_bytes().splitlines():
        match = RECORD.match(line)
        assert match, line
        out.append(match.groups())
    return out


def test_rfc3339nano() -> None:
    assert rfc3339nano(1_700_000_000_000_000_001) == b"2023-11-14T22:13:20.000000001Z"


def test_lines_split_across_reads_and_streams(tmp_path: Path) -> None:
    log = CriLog(str(tmp_path / "c.log"), 1 << 20, 3, max_line=8)
    log.feed(b"stdout", b"hel")
    log.feed(b"stderr", b"oops\n")
    log.feed(b"stdout", b"lo\nworld\n\n")
    log.feed(b"stdout", b"0123456789abcdefXY\n")  # over max_line: P pieces, then F
    log.feed(b"stderr", b"no newline at EOF")
    log.close()
    assert [(s, t, x) for s, t, x in records(tmp_path / "c.log")] == [
        (b"stderr", b"F", b"oops"),
        (b"stdout", b"F", b"hello"),
        (b"stdout", b"F", b"world"),
        (b"stdout", b"F", b""),
        (b"stdout", b"P", b"01234567"),
        (b"stdout", b"P", b"89abcdef"),
        (b"stdout", b"F", b"XY"),
        (b"stderr", b"P", b"no newli"),
        (b"stderr", b"P", b"ne at EO"),
        (b"stderr", b"P", b"F"),
    ]


def test_rotation_renames_and_keeps_at_most_keep_files(tmp_path: Path) -> None:
    path = tmp_path / "c.log"
    log = CriLog(str(path), 4096, 2)
    with open(path, "rb") as reader:  # a `logs -f` reader keeps its file: never truncated
        for n in range(1000):
            log.feed(b"stdout", b"line %d\n" % n)
        log.close()
        assert reader.read().startswith(b"20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.log", "c.log.1", "c.log.2"]
    kept = [int(x.split()[1]) for f in ("c.log.2", "c.log.1", "c.log")
            for _, _, x in records(tmp_path / f)]
    assert kept == list(range(kept[0], 1000))  # the newest lines, in order, none missing
    assert all(os.path.getsize(tmp_path / f) <= 4096 for f in ("c.log.2", "c.log.1", "c.log"))


def test_keep_zero_unlinks_instead_of_truncating(tmp_path: Path) -> None:
    log = CriLog(str(tmp_path / "c.log"), 4096, 0)
    for n in range(500):
        log.feed(b"stdout", b"%d\n" % n)
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["c.log"]
    assert records(tmp_path / "c.log")[-1][2] == b"499"


def test_a_full_disk_drops_and_counts_lines(tmp_path: Path) -> None:
    warnings = []
    log = CriLog(str(tmp_path / "c.log"), 1 << 20, 1,
                 warn=lambda event, **kw: warnings.append(event))
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    os.dup2(full, log._fd)
    os.close(full)
    log.feed(b"stdout", b"a\nb\nc\n")
    log.feed(b"stdout", b"d\n")
    assert (log.dropped_lines, log.written_lines) == (4, 0)
    assert warnings == ["log_write_failed"]  # once, not per line
    log.close()
