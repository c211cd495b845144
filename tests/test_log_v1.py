"""Format-1 segments (Tether before format 2) stay readable, recoverable and repairable.

``tests/data/v1-log`` was written by the format-1 writer itself (the commit before format 2):
three segments, nine appends of two events. The other cases build format-1 segments with
:func:`events.codec.encode_records_v1`, checked here to write exactly what that writer wrote.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from events import codec
from events.log import CorruptLog, EventLog, read_events, repair, segment_name, verify
from events.model import Event

FIXTURE = Path(__file__).parent / "data" / "v1-log"
T0 = 1_795_830_000_123_456_789


def fixture_items(i: int) -> list[tuple[str, str, dict]]:
    return [("task.exit", f"c{i}", {"exit_status": i, "raw": b"\xff\x00", "msg": "two words"}),
            ("task.start", f"c{i}", {"pid": 100 + i})]


def fixture_events() -> list[Event]:
    out: list[Event] = []
    for i in range(9):
        for etype, eid, data in fixture_items(i):
            out.append(Event(len(out) + 1, T0 + i, etype, eid, data))
    return out


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURE, root / "events")
    return root


def v1_segment(first: int, evs: list[tuple[str, str, dict]]) -> bytes:
    return codec.encode_header_v1(first) + codec.encode_records_v1(evs, first - 1, T0)


def test_the_test_encoder_writes_what_the_format_1_writer_wrote() -> None:
    data = (FIXTURE / segment_name(1)).read_bytes()
    rebuilt = codec.encode_header_v1(1) + b"".join(
        codec.encode_records_v1(fixture_items(i), 2 * i, T0 + i) for i in range(4))
    assert rebuilt == data


def test_format_1_reads_verifies_and_dumps(v1_root: Path) -> None:
    assert list(read_events(v1_root)) == fixture_events()
    assert [e.seq for e in read_events(v1_root, 11)] == list(range(12, 19))
    report = verify(v1_root)
    assert report.ok and not report.warnings and (report.records, report.last_seq) == (18, 18)
    res = subprocess.run([sys.executable, "-m", "events", "dump", str(v1_root)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 18


def test_a_log_of_format_1_goes_on_in_a_format_2_segment(v1_root: Path) -> None:
    with EventLog.open(v1_root, segment_size=600) as log:
        assert log.last_seq == 18
        assert list(log.read()) == fixture_events()
        new = log.append([("task.start", "c9", {"pid": 9})])
        assert new[0].seq == 19
        names = [p.name for _, p in log.segments()]
    assert names == [segment_name(s) for s in (1, 9, 17, 19)]
    head = (v1_root / "events" / segment_name(19)).read_bytes()[:12]
    assert struct.unpack(">8sI", head) == (codec.MAGIC, 2)
    assert (v1_root / "events" / segment_name(17)).read_bytes() == \
        (FIXTURE / segment_name(17)).read_bytes()  # old segments are never rewritten
    with EventLog.open(v1_root) as log:
        assert list(log.read()) == [*fixture_events(), *new]
    assert verify(v1_root).ok


def test_an_empty_format_1_segment_is_replaced_by_a_format_2_one(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / segment_name(1)).write_bytes(codec.encode_header_v1(1))
    with EventLog.open(tmp_path) as log:
        assert log.last_seq == 0 and log.segments() == [(1, tmp_path / "events" /
                                                             segment_name(1))]
        log.append([("a", "", {})])
    data = (tmp_path / "events" / segment_name(1)).read_bytes()
    assert struct.unpack_from(">I", data, 8) == (2,)
    assert [e.seq for e in read_events(tmp_path)] == [1]
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == [segment_name(1), "LOCK"]


def test_format_1_torn_tail_is_cut_record_by_record(tmp_path: Path) -> None:
    items = [("task.exit", "c", {"n": i}) for i in range(4)]
    data = v1_segment(1, items)
    last = len(v1_segment(1, items[:3]))
    for cut in range(last, len(data)):
        root = tmp_path / f"cut{cut}"
        (root / "events").mkdir(parents=True)
        (root / "events" / segment_name(1)).write_bytes(data[:cut] + bytes(100))
        with EventLog.open(root) as log:
            assert [e.seq for e in log.read()] == [1, 2, 3]
            assert log.append([("x", "", {})])[0].seq == 4


def test_format_1_damage_before_a_valid_record_is_refused_and_repaired(v1_root: Path) -> None:
    path = v1_root / "events" / segment_name(9)
    data = bytearray(path.read_bytes())
    data[codec.HEADER_SIZE_V1 + 12] ^= 1  # first record of the middle segment
    path.write_bytes(data)
    with EventLog.open(v1_root) as log, pytest.raises(CorruptLog) as info:
        list(log.read())
    assert (info.value.path, info.value.offset) == (str(path), codec.HEADER_SIZE_V1)
    report = verify(v1_root)
    assert not report.ok and report.problems[0].offset == codec.HEADER_SIZE_V1
    assert repair(v1_root).last_seq == 8
    with EventLog.open(v1_root) as log:
        assert list(log.read()) == fixture_events()[:8]
        assert log.append([("x", "", {})])[0].seq == 9
    assert verify(v1_root).ok
