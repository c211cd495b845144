"""The CRI log writer on its own: format, partial lines, rotation, a full disk."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from events.timefmt import rfc3339_bytes
from shim.logs import CriLog

RECORD = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z (stdout|stderr) (F|P) (.*)$",
                    re.DOTALL)


def records(path: Path) -> list[tuple[bytes, bytes, bytes]]:
    out = []
    for line in path.read_bytes().split(b"\n")[:-1]:  # records end in \n; \r is text
        match = RECORD.match(line)
        assert match, line
        out.append(match.groups())
    return out


def test_rfc3339_bytes() -> None:
    assert rfc3339_bytes(1_700_000_000_000_000_001) == b"2023-11-14T22:13:20.000000001Z"


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


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40) | st.sampled_from([b"\n", b"ab\ncd", b"\n\n"]),
                       max_size=20),
       max_line=st.integers(1, 12), max_size=st.sampled_from([4096, 1 << 20]))
def test_any_split_of_the_output_reads_back_whole(tmp_path_factory, chunks, max_line,
                                                  max_size) -> None:
    """Joining P pieces up to each F gives back exactly the lines written, however the
    output was cut into reads, with every record at most max_line long."""
    directory = tmp_path_factory.mktemp("prop")
    log = CriLog(str(directory / "c.log"), max_size, 1000, max_line=max_line)
    for chunk in chunks:
        log.feed(b"stdout", chunk)
    log.close()
    files = sorted(directory.glob("c.log.*"), key=lambda p: -int(p.suffix[1:]))
    text, current = [], b""
    for path in [*files, directory / "c.log"]:
        for _, tag, piece in records(path):
            assert len(piece) <= max_line
            current += piece
            if tag == b"F":
                text.append(current)
                current = b""
    data = b"".join(chunks)
    expected = data.split(b"\n")
    tail = expected.pop()
    assert text == expected
    assert current == tail  # the unfinished line, written as P pieces at close
