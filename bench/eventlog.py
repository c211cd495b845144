"""Benchmark of the event log against the physical limits of this machine.

Run: ``.venv/bin/python bench/eventlog.py [--events 1000000] [--seconds 3] [--dir DIR]``.

Measures, in one run so the ratios are fair on a noisy shared machine:

* durable appends/s with 1, 8 and 64 concurrent appenders, each waiting for its event to be
  durable before sending the next, through the daemon's own group commit
  (``supervisor.logwriter.LogWriter``: trio tasks queue items under a lock shared with one
  writer thread, which makes everything queued when it is free one ``EventLog.append``, i.e.
  one fdatasync per batch, and hands the result back to the trio thread, which wakes the
  batch's callers);
* with ``--compare REF``: the same group-commit runs with ``supervisor/logwriter.py`` as it was
  at git ref REF, interleaved round by round with the current one (before/after in one run);
* replay of the whole log from seq 1 with ``EventLog.read`` (events/s);
* the limits: one fdatasync of a 128-byte append (median, p99), and a plain framed decode
  (length + crc + msgpack, no Event objects) of the same segment files.

The files live in a temp directory on the filesystem of /work (not tmpfs: fdatasync must reach
the disk for the numbers to mean anything).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from events.codec import BATCH_MAGIC, encode_header_v1, encode_records_v1
from events.log import HEADER_SIZE, EventLog
from supervisor.logwriter import LogWriter

GOAL_APPEND_64 = 100_000
GOAL_REPLAY = 500_000
ANCHOR_FSYNC = "125 us median, 175 us p99"
ANCHOR_GROUP = "370,000 records/s (1 fdatasync per 100 appends)"
ANCHOR_DECODE = "935,000 events/s (framed 1 M-event file, 1 MiB reads)"


def task_exit(i: int) -> tuple[str, str, dict]:
    return ("task.exit", f"web-{i % 50}",
            {"pid": 10_000 + i, "exit_status": i % 3, "signal": None,
             "exited_at": 1_795_830_000_000_000_000 + i, "shim_seq": i})


def writer_at(ref: str) -> type:
    """``LogWriter`` as ``supervisor/logwriter.py`` was at git ref ``ref``."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{ref}:supervisor/logwriter.py"], check=True,
                         capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    module = types.ModuleType(f"logwriter_{ref}")
    exec(compile(src, f"{ref}:supervisor/logwriter.py", "exec"), module.__dict__)
    return module.LogWriter  # type: ignore[no-any-return]  # (a module built at run time)


async def _group_commit(log: Any, appenders: int, seconds: float, writer_cls: type = LogWriter
                        ) -> tuple[int, int, float]:
    writer = writer_cls(log, lambda events: None)  # the daemon's own group commit
    count = 0
    stop_at = trio.current_time() + seconds

    async def appender(k: int) -> None:
        nonlocal count
        i = 0
        while trio.current_time() < stop_at:
            await writer.append([task_exit(k * 1_000_000 + i)])
            count += 1
            i += 1

    started = time.perf_counter()
    async with trio.open_nursery() as outer:
        await outer.start(writer.run)
        async with trio.open_nursery() as nursery:
            for k in range(appenders):
                nursery.start_soon(appender, k)
        elapsed = time.perf_counter() - started
        outer.cancel_scope.cancel()
    return count, writer.batches, elapsed


def bench_group_commit(base: Path, appenders: int, seconds: float, writer_cls: type = LogWriter
                       ) -> dict:
    root = base / f"gc{appenders}"
    log = EventLog.open(root)
    try:
        count, batches, elapsed = trio.run(_group_commit, log, appenders, seconds, writer_cls)
    finally:
        log.close()
    shutil.rmtree(root)
    return {"rate": count / elapsed, "batch": count / max(batches, 1)}


class _NoLog:
    """Stands in for the log to measure the trio writer alone (scheduler + thread handoff)."""

    def append(self, items: list) -> list:
        return items


def bench_writer_alone(appenders: int, seconds: float, writer_cls: type = LogWriter) -> float:
    count, _, elapsed = trio.run(_group_commit, _NoLog(), appenders, seconds, writer_cls)
    return count / elapsed


def build_log(root: Path, n: int) -> EventLog:
    log = EventLog.open(root)
    batch = 10_000
    for start in range(0, n, batch):
        log.append([task_exit(i) for i in range(start, min(n, start + batch))])
    return log


def build_v1_log(root: Path, n: int) -> None:
    """A format-1 log of ``n`` events in 64 MiB segments, as Tether before format 2 wrote it."""
    events_dir = root / "events"
    events_dir.mkdir(parents=True)
    seq, path, size, f = 0, None, 0, None
    try:
        for start in range(0, n, 10_000):
            if f is None or size >= 64 * 2**20:
                if f is not None:
                    f.close()
                path = events_dir / f"{seq + 1:020d}.seg"
                f = open(path, "wb")  # noqa: SIM115  (closed above or below)
                size = f.write(encode_header_v1(seq + 1))
            batch = [task_exit(i) for i in range(start, min(n, start + 10_000))]
            size += f.write(encode_records_v1(batch, seq, 1_795_830_000_000_000_000))
            seq += len(batch)
    finally:
        if f is not None:
            f.close()


def bench_replay(log: EventLog, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU-time rates: the machine is shared, CPU time shows our own cost."""
    rates, cpu_rates = [], []
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        n = 0
        for _ev in log.read(0):
            n += 1
        rates.append(n / (time.perf_counter() - started))
        cpu_rates.append(n / (time.process_time() - cpu))
        assert n == log.last_seq
    return rates, cpu_rates


def bench_batches(base: Path, batch: int, count: int) -> float:
    """append() of ``batch`` events back to back: the log's own ceiling, no scheduler."""
    root = base / f"batch{batch}"
    items = [task_exit(i) for i in range(batch)]
    with EventLog.open(root) as log:
        started = time.perf_counter()
        for _ in range(count):
            log.append(items)
        elapsed = time.perf_counter() - started
    shutil.rmtree(root)
    return batch * count / elapsed


def bench_plain_decode(paths: list[Path], repeats: int) -> list[float]:
    """The floor: read 1 MiB chunks, check each batch's header and salted crc, msgpack-decode
    its records; no Event objects, no seq checks (format 2, see events/codec.py)."""
    rates = []
    batch = struct.Struct(">4sIIIQ")
    for _ in range(repeats):
        started = time.perf_counter()
        n = 0
        for path in paths:
            with open(path, "rb", buffering=0) as f:
                (salt,) = struct.unpack_from(">I", f.read(HEADER_SIZE), 20)
                buf = b""
                while True:
                    chunk = f.read(1 << 20)
                    if not chunk:
                        break
                    buf = buf + chunk if buf else chunk
                    mv = memoryview(buf)
                    pos, end = 0, len(buf)
                    while pos + batch.size <= end:
                        magic, crc, length, _, _ = batch.unpack_from(buf, pos)
                        stop = pos + batch.size + length
                        if stop > end or magic != BATCH_MAGIC:  # (zeros written ahead)
                            break
                        if zlib.crc32(mv[pos + 8 : stop], salt) != crc:
                            raise ValueError("crc")
                        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=length + 1)
                        unpacker.feed(mv[pos + batch.size : stop])
                        for _rec in unpacker:
                            n += 1
                        pos = stop
                    buf = buf[pos:]
        rates.append(n / (time.perf_counter() - started))
    return rates


def bench_fdatasync(base: Path, count: int, ahead: bool = False) -> tuple[float, float]:
    """fdatasync after each 128-byte write: appending (the file grows), or ``ahead``: into
    zeros written (and synced) beforehand, as the log does."""
    path = base / "fsync.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    data = b"x" * 128
    times = []
    try:
        if ahead:
            os.pwrite(fd, bytes(128 * count), 0)
            os.fsync(fd)
        for i in range(count):
            os.pwrite(fd, data, i * 128)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events replayed")
    parser.add_argument("--seconds", type=float, default=3.0, help="per group-commit run")
    parser.add_argument("--repeats", type=int, default=3, help="replay/decode repetitions")
    parser.add_argument("--dir", default="/work", help="where the temp directory goes")
    parser.add_argument("--compare", metavar="REF", help="also run the LogWriter of git REF")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=args.dir))
    rows: list[tuple[str, str, str]] = []
    try:
        med, p99 = bench_fdatasync(base, 2000)
        rows.append(("fdatasync of a 128 B append (limit)",
                     f"{med * 1e6:.0f} us median, {p99 * 1e6:.0f} us p99", ANCHOR_FSYNC))
        med2, p99_2 = bench_fdatasync(base, 2000, ahead=True)
        rows.append(("fdatasync of a 128 B write into zeros",
                     f"{med2 * 1e6:.0f} us median, {p99_2 * 1e6:.0f} us p99",
                     "what the log pays: it writes zeros ahead"))
        writers: list[tuple[str, type]] = [("", LogWriter)]
        if args.compare:
            writers.insert(0, (f" [{args.compare}]", writer_at(args.compare)))
        for appenders in (1, 8, 64):
            for tag, cls in writers:  # interleaved: the machine's noise hits both alike
                r = bench_group_commit(base, appenders, args.seconds, cls)
                goal = f"goal >= {GOAL_APPEND_64:,}/s" if appenders == 64 else (
                    f"one at a time: ~{1 / med:,.0f}/s from fdatasync" if appenders == 1 else "")
                rows.append((f"durable appends, {appenders} appender(s){tag}",
                             f"{r['rate']:,.0f} events/s (batch {r['batch']:.1f})",
                             goal + ("; " if goal else "") + f"anchor {ANCHOR_GROUP}"))
        for tag, cls in writers:
            rate = bench_writer_alone(64, args.seconds, cls)
            rows.append((f"64 appenders, writer with a no-op log{tag}", f"{rate:,.0f} events/s",
                         "ceiling of trio tasks + the thread handoff alone"))
        rate = bench_batches(base, 64, 1000)
        rows.append(("append() of 64-event batches back to back", f"{rate:,.0f} events/s",
                     "the log alone, without the trio writer"))
        t0 = time.perf_counter()
        log = build_log(base / "replay", args.events)
        build = time.perf_counter() - t0
        rows.append((f"bulk append of {args.events:,} (10k per batch)",
                     f"{args.events / build:,.0f} events/s", f"anchor {ANCHOR_GROUP}"))
        try:
            replay, replay_cpu = bench_replay(log, args.repeats)
            paths = [p for _, p in log.segments()]
        finally:
            log.close()  # (cuts the zeros written ahead)
        plain = bench_plain_decode(paths, args.repeats)
        rows.append((f"replay read(0) of {args.events:,} events",
                     f"{statistics.median(replay):,.0f} events/s (best {max(replay):,.0f}; "
                     f"CPU time: {statistics.median(replay_cpu):,.0f})",
                     f"goal >= {GOAL_REPLAY:,}/s"))
        build_v1_log(base / "v1", args.events)
        with EventLog.open(base / "v1") as v1log:  # (goes on in a new format-2 segment)
            v1_replay, v1_cpu = bench_replay(v1log, args.repeats)
        rows.append((f"replay read(0) of {args.events:,} events, format 1",
                     f"{statistics.median(v1_replay):,.0f} events/s (best {max(v1_replay):,.0f};"
                     f" CPU time: {statistics.median(v1_cpu):,.0f})",
                     "a log written before format 2"))
        rows.append(("plain framed decode, same files (limit)",
                     f"{statistics.median(plain):,.0f} events/s (best {max(plain):,.0f})",
                     f"anchor {ANCHOR_DECODE}"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("what", "measured", "goal / anchor (ANCHORS.md)")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
