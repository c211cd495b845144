"""The event log on real files: round trips, torn tails, corruption, versions, compaction.

Format 2 (what the log writes); ``test_log_v1.py`` covers reading format-1 segments. Past 500
lines because each section (round trips, torn tails, zeros written ahead, corruption, versions,
compaction) shares the same few helpers for building and damaging segments.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import codec
from events.log import (
    HEADER_SIZE,
    MAGIC,
    CorruptLog,
    EventLog,
    LogBusy,
    LogVersionError,
    read_events,
    repair,
    segment_name,
    verify,
)
from events.model import Event

T0 = 1_700_000_000_000_000_000


def items(n: int, start: int = 0) -> list[tuple[str, str, dict]]:
    return [("task.exit", f"c{(start + i) % 7}", {"pid": start + i, "exit_status": i % 3,
                                                  "blob": b"\x00\xff" * (i % 5)})
            for i in range(n)]


def seg_path(root: Path, first: int = 1) -> Path:
    return root / "events" / segment_name(first)


def frame_offsets(data: bytes) -> list[int]:
    """Start offsets of every batch of a clean segment's bytes."""
    offsets, pos = [], HEADER_SIZE
    while pos < len(data):
        offsets.append(pos)
        assert data[pos : pos + 4] == codec.BATCH_MAGIC
        (length,) = struct.unpack_from(">I", data, pos + 8)
        pos += codec.BATCH_HEADER + length
    assert pos == len(data)
    return offsets


def salt_of(data: bytes) -> int:
    return struct.unpack_from(">I", data, 20)[0]


def test_empty_log(root: Path) -> None:
    with EventLog.open(root) as log:
        assert log.last_seq == 0
        assert list(log.read()) == []
        assert log.segments() == [(1, seg_path(root))]
        assert log.append([]) == []
    with EventLog.open(root) as log:
        assert log.last_seq == 0


def test_append_returns_events_and_reads_back(root: Path) -> None:
    with EventLog.open(root) as log:
        evs = log.append([("supervisor.start", "", {"pid": 1}), ("task.start", "web", {})],
                         time_ns=T0)
        assert evs == [Event(1, T0, "supervisor.start", "", {"pid": 1}),
                       Event(2, T0, "task.start", "web", {})]
        assert log.last_seq == 2
        more = log.append([("task.exit", "web", {"exit_status": 0})])
        assert more[0].seq == 3 and more[0].time > T0
        assert list(log.read()) == evs + more
        assert list(log.read(2)) == more
        assert list(log.read(3)) == []
    with EventLog.open(root) as log:
        assert list(log.read()) == evs + more


def test_invalid_items_write_nothing(root: Path) -> None:
    with EventLog.open(root) as log:
        log.append(items(2))
        bads = [[("", "x", {})], [("t", 1, {})], [("t", "x", [])], [("t", "x", {"o": object()})]]
        for bad in bads:
            with pytest.raises((ValueError, TypeError)):
                log.append(items(1) + bad)
        assert log.last_seq == 2
        log.append(items(1))
        assert [e.seq for e in log.read()] == [1, 2, 3]


def test_one_writer_per_root(root: Path) -> None:
    with EventLog.open(root), pytest.raises(LogBusy, match="another process"):
        EventLog.open(root)
    EventLog.open(root).close()  # released on close


def test_concurrent_appenders_get_gap_free_seqs(root: Path) -> None:
    with EventLog.open(root, segment_size=4096) as log:
        def worker(k: int) -> None:
            for i in range(20):
                log.append(items(3, k * 100 + i))
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [e.seq for e in log.read()] == list(range(1, 241))


def test_readers_in_threads_while_appending_and_rolling(root: Path) -> None:
    with EventLog.open(root, segment_size=1500) as log:
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader() -> None:
            try:
                while not stop.is_set():
                    since = log.last_seq // 2
                    seqs = [e.seq for e in log.read(since)]
                    assert seqs == list(range(since + 1, since + 1 + len(seqs)))
                    assert since + len(seqs) <= log.last_seq
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        try:
            for i in range(150):
                log.append(items(i % 5 + 1, i))
        finally:
            stop.set()
            for t in readers:
                t.join()
        assert not errors, errors
        assert len(log.segments()) > 10
        assert [e.seq for e in log.read()] == list(range(1, log.last_seq + 1))


def test_read_is_bounded_at_call_time(root: Path) -> None:
    with EventLog.open(root, segment_size=512) as log:
        log.append(items(5))
        it = log.read(2)
        log.append(items(20))
        assert [e.seq for e in it] == [3, 4, 5]
        assert [e.seq for e in log.read(2)] == list(range(3, 26))


def test_rolls_into_segments_named_by_first_seq(root: Path) -> None:
    with EventLog.open(root, segment_size=600) as log:
        for i in range(30):
            log.append(items(2, i))
        segs = log.segments()
        assert len(segs) > 3
        assert [p.name for _, p in segs] == sorted(p.name for _, p in segs)
        for first, path in segs:
            assert path.name == segment_name(first)
            assert next(read_events(root, first - 1)).seq == first
        for since in (0, 1, 17, 33, 59, 60):
            assert [e.seq for e in log.read(since)] == list(range(since + 1, 61))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_replay_across_chunk_boundaries(root: Path, monkeypatch, chunk: int) -> None:
    import events.segment
    monkeypatch.setattr(events.segment, "CHUNK", chunk)
    with EventLog.open(root, segment_size=2000) as log:
        evs = []
        for i in range(15):
            evs += log.append(items(i % 4 + 1, i))
        for since in range(len(evs) + 1):
            assert list(log.read(since)) == evs[since:]


def test_record_larger_than_a_read_chunk(root: Path) -> None:
    big = {"blob": os.urandom(3 * 1024 * 1024)}
    with EventLog.open(root) as log:
        evs = log.append([("a", "", {}), ("container.create", "c", big), ("b", "", {})])
        assert list(log.read()) == evs
        assert list(log.read(1)) == evs[1:]
    with EventLog.open(root) as log:
        assert list(log.read()) == evs


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 12)),
    st.tuples(st.just("reopen"), st.integers(0, 0)),
    st.tuples(st.just("read"), st.integers(0, 200)),
    st.tuples(st.just("compact"), st.integers(0, 200)),
), max_size=25), segment_size=st.sampled_from([1, 200, 700, 1 << 20]))
def test_any_sequence_of_operations_keeps_exactly_what_was_appended(
        tmp_path: Path, ops: list[tuple[str, int]], segment_size: int) -> None:
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        root = Path(d)
        log = EventLog.open(root, segment_size=segment_size)
        appended: list[Event] = []
        kept_from = 1
        try:
            for op, n in ops:
                if op == "append":
                    appended += log.append(items(n, len(appended)), time_ns=T0 + len(appended))
                elif op == "reopen":
                    log.close()
                    log = EventLog.open(root, segment_size=segment_size)
                elif op == "compact":
                    before = log.first_seq
                    log.compact(n)
                    assert log.first_seq <= max(n, before)  # nothing >= n was deleted
                    kept_from = log.first_seq
                else:
                    since = max(n, kept_from - 1)
                    assert list(log.read(since)) == appended[since:]
                assert log.last_seq == len(appended)
            assert list(log.read(log.first_seq - 1)) == appended[log.first_seq - 1:]
            assert [e.seq for e in log.read(log.first_seq - 1)] == list(
                range(log.first_seq, len(appended) + 1))
        finally:
            log.close()


# -- torn tails ---------------------------------------------------------------------------------


def _write_log(root: Path, n: int) -> tuple[bytes, list[Event]]:
    """``n`` appends of one event each: one batch per event."""
    with EventLog.open(root) as log:
        evs = [log.append(items(1, i), time_ns=T0)[0] for i in range(n)]
    return seg_path(root).read_bytes(), evs


def test_torn_tail_at_every_offset_of_the_last_records(tmp_path: Path, caplog) -> None:
    data, evs = _write_log(tmp_path / "orig", 8)
    offsets = frame_offsets(data)
    for cut in range(offsets[-3], len(data)):
        root = tmp_path / f"cut{cut}"
        (root / "events").mkdir(parents=True)
        seg_path(root).write_bytes(data[:cut])
        whole = sum(1 for o in [*offsets[1:], len(data)] if o <= cut)
        with EventLog.open(root) as log:
            assert log.last_seq == whole, cut
            assert list(log.read()) == evs[:whole]
            assert seg_path(root).stat().st_size == ([*offsets, len(data)])[whole]
            assert log.append(items(1))[0].seq == whole + 1  # and the log goes on from there


def test_torn_tail_is_logged(tmp_path: Path, caplog) -> None:
    data, _ = _write_log(tmp_path, 3)
    seg_path(tmp_path).write_bytes(data[:-5])
    with caplog.at_level(logging.WARNING, logger="tether.events.log"), \
            EventLog.open(tmp_path) as log:
        assert log.last_seq == 2
    assert "torn tail" in caplog.text and "byte offset" in caplog.text


@pytest.mark.parametrize("garbage", [b"\x00" * 100, os.urandom(333), b"\x00\x00\x00\x05abc"])
def test_garbage_after_the_last_record_is_cut(root: Path, garbage: bytes) -> None:
    data, evs = _write_log(root, 4)
    seg_path(root).write_bytes(data + garbage)
    with EventLog.open(root) as log:
        assert list(log.read()) == evs
    assert seg_path(root).read_bytes() == data


def test_partial_header_of_a_new_last_segment_is_torn(root: Path) -> None:
    with EventLog.open(root, segment_size=1) as log:
        evs = log.append(items(2)) + log.append(items(2))
    assert len(list((root / "events").glob("*.seg"))) == 2
    (root / "events" / segment_name(5)).write_bytes(MAGIC[:5])  # crash while creating it
    with EventLog.open(root, segment_size=1) as log:
        assert list(log.read()) == evs
        assert log.append(items(1))[0].seq == 5
    # and a lone segment with an empty header is rewritten
    other = root / "other"
    (other / "events").mkdir(parents=True)
    seg_path(other).write_bytes(b"")
    with EventLog.open(other) as log:
        assert log.last_seq == 0
        log.append(items(1))
    assert verify(other).ok


def test_damaged_last_header_with_nothing_valid_after_is_moved_aside(root: Path) -> None:
    with EventLog.open(root, segment_size=1) as log:
        evs = log.append(items(2)) + log.append(items(2))
    last = root / "events" / segment_name(3)
    last.write_bytes(b"\x13" * (HEADER_SIZE + 40))
    with EventLog.open(root, segment_size=1) as log:
        assert list(log.read()) == evs[:2]
    assert (root / "events" / (segment_name(3) + ".broken")).read_bytes() == \
        b"\x13" * (HEADER_SIZE + 40)


def _big_batch(n: int) -> list[tuple[str, str, dict]]:
    return [("container.create", f"c{i}", {"spec": {"pad": "p" * 900, "n": i}}) for i in range(n)]


def test_power_loss_hole_in_the_last_batch_is_cut_not_corruption(root: Path, caplog) -> None:
    # What a power cut leaves of the one batch whose fdatasync had not returned: its pages
    # reached the disk in any order, so a page in the middle is still zeros (the space
    # written ahead) while whole records with the following seqs sit after it.
    with EventLog.open(root) as log:
        acked = log.append(items(3), time_ns=T0)
        log.append(_big_batch(20), time_ns=T0)  # ~19 KiB: several pages
    data = seg_path(root).read_bytes()
    offsets = frame_offsets(data)
    hole = (offsets[1] // 4096 + 2) * 4096
    assert hole + 4096 < len(data)
    torn = data[:hole] + bytes(4096) + data[hole + 4096 :]
    seg_path(root).write_bytes(torn)
    report = verify(root)
    assert report.ok and report.warnings and "torn tail" in report.warnings[0].what
    with caplog.at_level(logging.WARNING, logger="tether.events.log"), \
            EventLog.open(root) as log:
        assert list(log.read()) == acked  # no --repair needed, nothing acknowledged lost
        assert log.append(items(1))[0].seq == 4  # seq 4 was never acknowledged: reused
    assert "torn tail" in caplog.text and "claims seqs 4..23" in caplog.text
    kept = seg_path(root).with_name(seg_path(root).name + ".torn")
    assert kept.read_bytes() == torn[offsets[1] :]  # the evidence


def test_any_damage_in_the_last_batch_is_cut_and_kept(root: Path) -> None:
    # The stated limit: a flipped bit in the last batch looks exactly like a torn write, so it
    # is cut too; if that batch had been acknowledged, the .torn file is its only copy.
    data, evs = _write_log(root, 3)
    offsets = frame_offsets(data)
    for pos in (offsets[2], offsets[2] + 6, len(data) - 1):
        damaged = bytearray(data)
        damaged[pos] ^= 0x01
        seg_path(root).write_bytes(damaged)
        for old in (root / "events").glob("*.torn*"):
            old.unlink()
        with EventLog.open(root) as log:
            assert list(log.read()) == evs[:2]
        assert seg_path(root).with_name(seg_path(root).name + ".torn").read_bytes() == \
            bytes(damaged[offsets[2] :])


def test_damage_before_a_valid_batch_is_refused_whatever_it_is(root: Path) -> None:
    data, _ = _write_log(root, 3)
    offsets = frame_offsets(data)
    for start in (offsets[1], offsets[1] + 8, offsets[1] + 30):
        damaged = bytearray(data)
        damaged[start : offsets[2]] = bytes(offsets[2] - start)  # a hole, then a whole batch
        seg_path(root).write_bytes(damaged)
        with pytest.raises(CorruptLog) as info:
            EventLog.open(root)
        assert info.value.offset == offsets[1]
        assert seg_path(root).read_bytes() == damaged  # nothing was cut


def test_a_batch_inside_an_event_is_not_taken_for_a_later_batch(root: Path) -> None:
    # A user can put any bytes in an event (a label, an env value): even a perfect copy of a
    # batch frame with the next seq. Batch CRCs are seeded with the segment's random salt, so
    # such a copy never validates in this segment, and a torn last batch that carries one is
    # still cut, not refused.
    other = root / "other"
    with EventLog.open(other) as log:
        log.append(items(2))
        log.append(items(1))
    forged = seg_path(other).read_bytes()
    forged = forged[frame_offsets(forged)[1] :]  # a whole batch of seq 3
    with EventLog.open(root) as log:
        acked = log.append(items(2), time_ns=T0)
        log.append([("container.update", "c", {"label": forged})], time_ns=T0)
    data = seg_path(root).read_bytes()
    offsets = frame_offsets(data)
    torn = bytearray(data)
    torn[offsets[1] : offsets[1] + 4] = bytes(4)  # the last batch's header never got there
    seg_path(root).write_bytes(torn)
    with EventLog.open(root) as log:
        assert list(log.read()) == acked


def test_every_segment_has_its_own_salt(root: Path) -> None:
    with EventLog.open(root, segment_size=1) as log:
        for i in range(4):
            log.append(items(1, i))
        salts = {salt_of(p.read_bytes()) for _, p in log.segments()}
    assert len(salts) == 4


# -- space written ahead -----------------------------------------------------------------------


def test_zeros_written_ahead_are_invisible(tmp_path: Path, caplog) -> None:
    root = tmp_path / "r"
    with caplog.at_level(logging.WARNING, logger="tether.events.log"):
        log = EventLog.open(root)
        try:
            evs = log.append(items(3), time_ns=T0)
            size = seg_path(root).stat().st_size
            data = seg_path(root).read_bytes()
            end = HEADER_SIZE + sum(codec.BATCH_HEADER + n for n in _lengths(data, 1))
            assert size > end and not data[end:].strip(b"\0")  # written ahead, zeros
            assert list(read_events(root)) == evs  # offline reader, log open: no warning
            report = verify(root)
            assert report.ok and not report.warnings and report.last_seq == 3
            # a crash now leaves the zeros: a copy of the files opens cleanly
            copy = tmp_path / "copy"
            (copy / "events").mkdir(parents=True)
            seg_path(copy).write_bytes(data)
        finally:
            log.close()
        assert seg_path(root).stat().st_size == end  # cut on close
        with EventLog.open(copy) as log2:
            assert list(log2.read()) == evs
            assert seg_path(copy).stat().st_size == end  # cut on open
            assert log2.append(items(1))[0].seq == 4
    assert caplog.text == ""


def _lengths(data: bytes, n: int) -> list[int]:
    """Body lengths of the first ``n`` batches."""
    pos, out = HEADER_SIZE, []
    for _ in range(n):
        (length,) = struct.unpack_from(">I", data, pos + 8)
        out.append(length)
        pos += codec.BATCH_HEADER + length
    return out


def test_closed_segments_end_at_their_last_record(root: Path) -> None:
    with EventLog.open(root, segment_size=2000) as log:
        for i in range(40):
            log.append(items(2, i))
        for _, path in log.segments()[:-1]:
            frame_offsets(path.read_bytes())  # parses to the exact end: no zeros after
        assert [e.seq for e in log.read(5)] == list(range(6, 81))


def test_torn_record_inside_the_zeros_is_a_torn_tail(root: Path, caplog) -> None:
    data, evs = _write_log(root, 4)
    offsets = frame_offsets(data)
    torn = data[: offsets[3] + 11] + bytes(5000)  # the last record half-written, then zeros
    seg_path(root).write_bytes(torn)
    with caplog.at_level(logging.WARNING, logger="tether.events.log"), \
            EventLog.open(root) as log:
        assert list(log.read()) == evs[:3]
    assert "torn tail" in caplog.text
    assert seg_path(root).read_bytes() == data[: offsets[3]]


def test_zeros_after_a_closed_segment_do_not_hide_a_gap(root: Path) -> None:
    with EventLog.open(root, segment_size=600) as log:
        evs = []
        for i in range(12):
            evs += log.append(items(2, i))
        segs = log.segments()
    first = segs[0][1]
    data = first.read_bytes()
    first.write_bytes(data + bytes(300))  # zeros after a closed segment: still its end
    assert list(read_events(root)) == evs
    assert verify(root).ok
    offsets = frame_offsets(data)
    first.write_bytes(data[: offsets[-1]] + bytes(300))  # its last record zeroed: a gap
    with pytest.raises(CorruptLog, match="gap"):
        list(read_events(root))
    assert not verify(root).ok


# -- corruption ---------------------------------------------------------------------------------


def test_flipped_byte_in_any_earlier_record_is_corruption(tmp_path: Path) -> None:
    data, _ = _write_log(tmp_path / "orig", 5)
    offsets = frame_offsets(data)
    for pos in range(offsets[0], offsets[-1]):  # every byte of every record but the last
        rec = max(i for i, o in enumerate(offsets) if o <= pos)
        root = tmp_path / f"flip{pos}"
        (root / "events").mkdir(parents=True)
        damaged = bytearray(data)
        damaged[pos] ^= 0x40
        seg_path(root).write_bytes(damaged)
        with pytest.raises(CorruptLog) as info:
            EventLog.open(root).close()
        assert info.value.path == str(seg_path(root))
        assert info.value.offset == offsets[rec], pos
        assert f"byte offset {offsets[rec]}" in str(info.value)
        assert "repair" in str(info.value)
        assert seg_path(root).read_bytes() == damaged  # nothing was cut
        report = verify(root)
        assert not report.ok and report.problems[0].offset == offsets[rec]


def test_damaged_length_field_does_not_pass_for_a_torn_tail(root: Path) -> None:
    data, _ = _write_log(root, 6)
    offsets = frame_offsets(data)
    damaged = bytearray(data)
    struct.pack_into(">I", damaged, offsets[2] + 8, len(data))  # "runs past the end of the file"
    seg_path(root).write_bytes(damaged)
    with pytest.raises(CorruptLog) as info:
        EventLog.open(root)
    assert info.value.offset == offsets[2]


def test_gap_in_seqs_is_corruption(root: Path) -> None:
    data, _ = _write_log(root, 5)
    offsets = frame_offsets(data)
    seg_path(root).write_bytes(data[: offsets[2]] + data[offsets[3]:])  # record 3 missing
    with pytest.raises(CorruptLog, match="batch of seq 4 where 3 was expected") as info:
        EventLog.open(root)
    assert info.value.offset == offsets[2]


def test_duplicate_inside_a_valid_batch_is_caught_by_read_and_verify(root: Path) -> None:
    # seqs 1, 2, 2, 4 in one batch whose header and CRC are right: the quick scan on open
    # checks frames, not records; replay and verify decode every record and refuse it.
    with EventLog.open(root) as log:
        evs = log.append([("task.start", "c", {"pid": i}) for i in range(4)], time_ns=T0)
    data = seg_path(root).read_bytes()
    records = [ev.to_record() for ev in evs]
    records[2]["seq"] = 2
    body = b"".join(msgpack.packb(r, use_bin_type=True) for r in records)
    tail = struct.pack(">IIQ", len(body), 4, 1)
    crc = zlib.crc32(body, zlib.crc32(tail, salt_of(data)))
    seg_path(root).write_bytes(data[:HEADER_SIZE] + codec.BATCH_MAGIC
                               + struct.pack(">I", crc) + tail + body)
    with EventLog.open(root) as log:
        got = []
        with pytest.raises(CorruptLog, match="seq 2 where 3 was expected") as info:
            for ev in log.read():
                got.append(ev)
        assert got == evs[:2] and info.value.offset == HEADER_SIZE
    report = verify(root)
    assert not report.ok and report.problems[0].offset == HEADER_SIZE
    assert "seq 2 where 3" in report.problems[0].what


def test_corruption_in_an_earlier_segment_is_found_by_read_and_verify(root: Path) -> None:
    with EventLog.open(root, segment_size=300) as log:
        for i in range(10):
            log.append(items(3, i))
    first, path = log.segments()[1]
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 12] ^= 1
    path.write_bytes(data)
    with EventLog.open(root, segment_size=300) as log:  # only the last segment is scanned
        with pytest.raises(CorruptLog) as info:
            list(log.read())
        assert info.value.path == str(path) and info.value.offset == HEADER_SIZE
        got = []
        with pytest.raises(CorruptLog):
            for ev in log.read():
                got.append(ev.seq)
        assert got == list(range(1, first))  # everything before the damage, then the error
        assert [e.seq for e in log.read(log.segments()[2][0] - 1)][-1] == 30
    report = verify(root)
    assert not report.ok
    assert (report.problems[0].path, report.problems[0].offset) == (path, HEADER_SIZE)


@pytest.mark.parametrize("field", [0, 5, 10, 14, 20, 30])  # magic, crc, length, count, seq, body
def test_replay_yields_everything_before_damage_in_mid_segment(root: Path, field: int) -> None:
    with EventLog.open(root, segment_size=1200) as log:
        evs = []
        for i in range(12):
            evs += log.append(items(2, i))
        assert len(log.segments()) > 1
    path = seg_path(root)
    data = bytearray(path.read_bytes())
    offsets = frame_offsets(bytes(data))
    data[offsets[4] + field] ^= 0x08
    path.write_bytes(data)
    log = EventLog.open(root)  # only the last segment is checked on open
    try:
        for reader in (log.read, lambda: read_events(root)):
            got = []
            with pytest.raises(CorruptLog) as info:
                for ev in reader():
                    got.append(ev)
            assert got == evs[:8]  # four batches of two
            assert (info.value.path, info.value.offset) == (str(path), offsets[4])
    finally:
        log.close()


def test_missing_segment_is_a_gap(root: Path) -> None:
    with EventLog.open(root, segment_size=300) as log:
        for i in range(10):
            log.append(items(3, i))
        segs = log.segments()
    segs[1][1].unlink()
    report = verify(root)
    assert not report.ok and "gap" in report.problems[0].what
    with EventLog.open(root, segment_size=300) as log, pytest.raises(CorruptLog, match="gap"):
        list(log.read())


def test_repair_keeps_a_gap_free_prefix_and_the_cut_bytes(root: Path) -> None:
    with EventLog.open(root, segment_size=400) as log:
        evs = []
        for i in range(12):
            evs += log.append(items(2, i), time_ns=T0)
        segs = log.segments()
    first, path = segs[1]
    data = path.read_bytes()
    offsets = frame_offsets(data)
    damaged = bytearray(data)
    damaged[offsets[1] + 10] ^= 0xFF
    path.write_bytes(damaged)
    report = repair(root)
    assert report.cut is not None and report.cut.offset == offsets[1]
    assert report.last_seq == first + 1  # the segment's first batch (two events) is kept
    assert path.read_bytes() == data[: offsets[1]]
    broken = path.with_name(path.name + ".broken")
    assert broken.read_bytes() == bytes(damaged[offsets[1]:])
    for _, later in segs[2:]:
        assert not later.exists() and later.with_name(later.name + ".broken").exists()
    assert verify(root).ok
    with EventLog.open(root) as log:
        assert list(log.read()) == evs[: first + 1]
        assert log.append(items(1))[0].seq == first + 2
    assert not repair(root).changed


def test_open_with_repair(root: Path) -> None:
    data, evs = _write_log(root, 4)
    offsets = frame_offsets(data)
    damaged = bytearray(data)
    damaged[offsets[1] + 9] ^= 1
    seg_path(root).write_bytes(damaged)
    with pytest.raises(CorruptLog):
        EventLog.open(root)
    with EventLog.open(root, repair=True) as log:
        assert list(log.read()) == evs[:1]


def test_repair_of_a_damaged_first_header_keeps_numbering(root: Path) -> None:
    data, _ = _write_log(root, 3)
    seg_path(root).write_bytes(b"XXXX" + data[4:])
    assert not verify(root).ok
    report = repair(root)
    assert report.changed and report.last_seq == 0
    with EventLog.open(root) as log:
        assert log.last_seq == 0 and log.append(items(1))[0].seq == 1


# -- versions -----------------------------------------------------------------------------------


def test_segment_of_a_newer_version_is_refused(root: Path) -> None:
    data, _ = _write_log(root, 2)
    newer = bytearray(data)
    struct.pack_into(">I", newer, 8, 7)
    seg_path(root).write_bytes(newer)
    for attempt in (lambda: EventLog.open(root), lambda: verify(root),
                    lambda: list(read_events(root))):
        with pytest.raises(LogVersionError) as info:
            attempt()
        assert info.value.path == str(seg_path(root)) and info.value.version == 7
        assert "version 7" in str(info.value) and "Upgrade" in str(info.value)


def test_newer_version_in_an_older_segment_is_refused_on_open(root: Path) -> None:
    with EventLog.open(root, segment_size=1) as log:
        log.append(items(1))
        log.append(items(1))
    data = bytearray(seg_path(root).read_bytes())
    struct.pack_into(">I", data, 8, 3)
    seg_path(root).write_bytes(data)
    with pytest.raises(LogVersionError, match="version 3"):
        EventLog.open(root)


# -- compaction ---------------------------------------------------------------------------------


def test_compaction_keeps_what_is_needed(root: Path) -> None:
    with EventLog.open(root, segment_size=300) as log:
        evs = []
        for i in range(20):
            evs += log.append(items(3, i))
        segs = log.segments()
        for keep in (1, 5, 17, 18, 44, 60, 61, 1000):
            deleted = log.compact(keep)
            for p in deleted:
                assert not p.exists()
            assert log.segments()[-1] == segs[-1]  # never the active segment
            start = min(keep, log.segments()[-1][0])
            assert log.first_seq <= start
            assert list(log.read(start - 1)) == evs[start - 1:]
        assert log.segments() == segs[-1:]
        evs += log.append(items(1))
    with EventLog.open(root, segment_size=300) as log:
        assert list(log.read(log.first_seq - 1)) == evs[log.first_seq - 1:]
        assert log.last_seq == 61
