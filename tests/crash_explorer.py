"""A crash-state explorer for the event log and the snapshot (in the manner of ALICE, OSDI '14).

1. **Record.** A scripted workload runs the real :class:`events.log.EventLog` and
   :func:`events.snapshot.write_snapshot` against a real directory, with every file change going
   through a :class:`Recorder` (an :class:`events.fileio.FileIO`): creates, writes, truncates,
   fdatasyncs/fsyncs, renames, unlinks, directory fsyncs. The workload marks when each
   ``append`` returned (its events are acknowledged) and when each snapshot became durable.
2. **Generate.** A model of a file system replays the trace and, after every operation, yields
   every state a crash could leave:

   * a *process crash*: everything written survives (the page cache does); the write in
     progress may have reached it only in part (a prefix, page by page);
   * a *power loss*: what was made durable (``fdatasync``/``fsync`` of a file, ``fsync`` of a
     directory for its entries) survives; of everything since, any subset of the 4 KiB pages
     written (in any order), each page possibly torn (only some of its 512-byte sectors, or a
     sector cut inside), the file's size at any size it had since its last sync, and of each
     directory's unsynced entry changes any prefix (journalled file systems keep their order).

3. **Check.** Each distinct state is written to a fresh real directory and opened the way the
   daemon starts: :meth:`EventLog.open` (no ``repair``), :func:`read_snapshot`, then
   :func:`supervisor.recovery.load_state`. It must open without a human, hold every
   acknowledged event, hold nothing that was not appended (a prefix of what was appended, cut
   at a batch boundary: an append is all or nothing), have a snapshot that is whole, not older
   than the last durable one and not ahead of the log (a log that ends before its snapshot is
   refused by the recovery rule: a crash alone must never produce one), and take a new append.

Run more states than CI does: ``.venv/bin/python tests/crash_explorer.py --states 50000`` (or
``TETHER_CRASH_STATES=50000`` for the pytest module).

One module past 500 lines on purpose: it is a tool that runs as a script too, and its four parts
(recording, the file-system model, the checks, the driver) only make sense read together.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack

from events.fileio import FileIO
from events.log import EventLog
from events.model import Event
from events.snapshot import CorruptSnapshot, read_snapshot, write_snapshot
from supervisor import projection, recovery

PAGE = 4096
SECTOR = 512


# -- recording ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One recorded call. ``path``: relative to the root; ``ino``: the file it acted on."""

    kind: str  # create, write, truncate, sync, dirsync, rename, unlink, mkdir, ack, snapshot
    path: str = ""
    ino: int = -1
    offset: int = 0
    data: bytes = b""
    dst: str = ""
    seq: int = 0  # ack: last acknowledged seq; snapshot: its seq


class Recorder(FileIO):
    """A real FileIO that also records every change it makes, by file (inode) and path."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ops: list[Op] = []
        self._fd_ino: dict[int, int] = {}
        self._path_ino: dict[str, int] = {}
        self._inos = itertools.count()

    def rel(self, path: str | os.PathLike[str]) -> str:
        return os.path.relpath(os.fspath(path), self.base)

    def open(self, path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
        rel = self.rel(path)
        existed = rel in self._path_ino
        fd = os.open(path, flags, mode)
        if not existed:
            assert flags & os.O_CREAT, f"{rel}: opened a file the recorder never saw created"
            ino = next(self._inos)
            self._path_ino[rel] = ino
            self.ops.append(Op("create", rel, ino))
        ino = self._path_ino[rel]
        self._fd_ino[fd] = ino
        if flags & os.O_TRUNC:
            self.ops.append(Op("truncate", rel, ino, offset=0))
        return fd

    def close(self, fd: int) -> None:
        os.close(fd)
        del self._fd_ino[fd]

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> int:
        n = os.pwrite(fd, data, offset)
        self.ops.append(Op("write", "", self._fd_ino[fd], offset, bytes(data[:n])))
        return n

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        self.ops.append(Op("truncate", "", self._fd_ino[fd], offset=size))

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.ops.append(Op("sync", "", self._fd_ino[fd]))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.ops.append(Op("sync", "", self._fd_ino[fd]))

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        os.rename(src, dst)
        s, d = self.rel(src), self.rel(dst)
        self._path_ino[d] = self._path_ino.pop(s)
        self.ops.append(Op("rename", s, dst=d))

    def unlink(self, path: str | os.PathLike[str]) -> None:
        os.unlink(path)
        rel = self.rel(path)
        del self._path_ino[rel]
        self.ops.append(Op("unlink", rel))

    def mkdir(self, path: str | os.PathLike[str]) -> None:
        super().mkdir(path)
        self.ops.append(Op("mkdir", self.rel(path)))

    def fsync_dir(self, path: str | os.PathLike[str]) -> None:
        super().fsync_dir(path)
        self.ops.append(Op("dirsync", self.rel(path)))

    def mark(self, kind: str, seq: int) -> None:
        self.ops.append(Op(kind, seq=seq))

    def adopt(self, rel: str) -> int:
        """A file that was there before recording started; returns its inode number."""
        ino = next(self._inos)
        self._path_ino[rel] = ino
        return ino


class DroppingRecorder(Recorder):
    """A broken FileIO for the explorer's own test: it never syncs data (nor records it)."""

    def fdatasync(self, fd: int) -> None:
        pass


# -- the workload -------------------------------------------------------------------------------


@dataclass
class Trace:
    ops: list[Op]
    appended: list[Event]  # every event append() returned, in order
    batch_ends: set[int]  # last seq of every append (and 0)
    snapshots: dict[int, Any]  # seq -> the state written with it
    segment_size: int


_LIFECYCLE = ("container.create", "task.create", "task.start", "task.exit", "container.delete")


def _items(rng: random.Random, n: int, counter: itertools.count[int]
           ) -> list[tuple[str, str, dict[str, Any]]]:
    """Container lifecycles, five containers interleaved; some events span several pages."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    for _ in range(n):
        k = next(counter)
        cid = f"c{k % 5}"
        etype = _LIFECYCLE[k // 5 % 5]
        data: dict[str, Any] = {"pid": 1000 + k}
        if etype == "container.create":
            data = {"spec": {"command": ["sleep", str(k)],
                             "pad": "x" * rng.choice([10, 200, 1500, 5000])}}
        elif etype == "task.exit":
            data["exit_status"] = k % 3
        out.append((etype, cid, data))
    return out


def record_workload(base: Path, seed: int, batches: int, recorder_cls: type[Recorder] = Recorder
                    ) -> Trace:
    """Run the scripted workload in ``base`` (empty) and return what it did."""
    rng = random.Random(seed)
    rec = recorder_cls(base)
    segment_size = rng.choice([6000, 12000])
    counter = itertools.count()
    appended: list[Event] = []
    batch_ends = {0}
    snapshots: dict[int, Any] = {}
    log = EventLog.open(base, segment_size=segment_size, io=rec)
    since_snapshot = 0
    try:
        for b in range(batches):
            evs = log.append(_items(rng, rng.choice([1, 1, 2, 3, 7, 12]), counter))
            rec.mark("ack", evs[-1].seq)
            appended += evs
            batch_ends.add(evs[-1].seq)
            since_snapshot += len(evs)
            if since_snapshot >= 20:  # as the daemon's snapshotter: snapshot, then compact
                since_snapshot = 0
                seq = log.last_seq
                state = projection.fold(appended[:seq]).to_dict()
                write_snapshot(base, seq, state, io=rec)
                snapshots[seq] = msgpack.unpackb(msgpack.packb(state), strict_map_key=False)
                rec.mark("snapshot", seq)
                log.compact(min(seq + 1, max(1, seq - rng.choice([0, 10, 40]) + 1)))
            if b == batches // 2:  # a clean restart in the middle
                log.close()
                log = EventLog.open(base, segment_size=segment_size, io=rec)
    finally:
        log.close()
    return Trace(rec.ops, appended, batch_ends, snapshots, segment_size)


# -- the file-system model ------------------------------------------------------------------------


@dataclass
class _Inode:
    durable: bytes = b""
    volatile: bytearray = field(default_factory=bytearray)
    sizes: list[int] = field(default_factory=list)  # sizes since the last sync
    last_write: tuple[int, int] | None = None  # (offset, length) of the op just applied


@dataclass
class CrashState:
    after: int  # index of the last operation applied
    kind: str  # "process" or "power"
    files: dict[str, bytes]
    dirs: frozenset[str]
    written: int = 0  # the highest seq appended (written, maybe not synced) by then

    def key(self) -> bytes:
        h = hashlib.sha256()
        for d in sorted(self.dirs):
            h.update(b"d" + d.encode() + b"\0")
        for name in sorted(self.files):
            h.update(b"f" + name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.digest()


class FsModel:
    """Durable and volatile views of the files a trace touched."""

    def __init__(self) -> None:
        self.inodes: dict[int, _Inode] = {}
        self.durable_ns: dict[str, int] = {}
        self.volatile_ns: dict[str, int] = {}
        self.durable_dirs: set[str] = {"."}
        self.volatile_dirs: set[str] = {"."}
        self.pending: dict[str, list[Op]] = {}  # parent dir -> entry changes not yet synced

    def adopt(self, rel: str, ino: int, data: bytes) -> None:
        """A file already on disk, durably, before the trace starts."""
        self.inodes[ino] = _Inode(durable=data, volatile=bytearray(data))
        self.durable_ns[rel] = self.volatile_ns[rel] = ino

    def apply(self, op: Op) -> None:
        for ino in self.inodes.values():
            ino.last_write = None
        if op.kind == "create":
            self.inodes[op.ino] = _Inode()
            self._dirop(op)
        elif op.kind in ("rename", "unlink", "mkdir"):
            self._dirop(op)
        elif op.kind == "write":
            node = self.inodes[op.ino]
            end = op.offset + len(op.data)
            if len(node.volatile) < end:
                node.volatile.extend(bytes(end - len(node.volatile)))
            node.volatile[op.offset : end] = op.data
            node.sizes.append(len(node.volatile))
            node.last_write = (op.offset, len(op.data))
        elif op.kind == "truncate":
            node = self.inodes[op.ino]
            size = op.offset
            if size < len(node.volatile):
                del node.volatile[size:]
            else:
                node.volatile.extend(bytes(size - len(node.volatile)))
            node.sizes.append(size)
        elif op.kind == "sync":
            node = self.inodes[op.ino]
            node.durable = bytes(node.volatile)
            node.sizes = []
        elif op.kind == "dirsync":
            d = os.path.normpath(op.path)
            for pending in self.pending.pop(d, []):
                _apply_dirop(self.durable_ns, self.durable_dirs, pending)

    def _dirop(self, op: Op) -> None:
        _apply_dirop(self.volatile_ns, self.volatile_dirs, op)
        parent = os.path.dirname(op.path) or "."
        self.pending.setdefault(parent, []).append(op)

    # -- states

    def process_crash(self, after: int) -> Iterator[CrashState]:
        files = {p: bytes(self.inodes[i].volatile) for p, i in self.volatile_ns.items()}
        yield CrashState(after, "process", files, frozenset(self.volatile_dirs))
        for path, ino in self.volatile_ns.items():  # the write in progress, in part
            node = self.inodes[ino]
            if node.last_write is None:
                continue
            off, length = node.last_write
            for cut in range(_next_page(off), off + length, PAGE):
                partial = bytearray(node.volatile)
                partial[cut : off + length] = bytes(off + length - cut)
                yield CrashState(after, "process", {**files, path: bytes(partial)},
                                 frozenset(self.volatile_dirs))

    def power_loss(self, after: int, rng: random.Random, budget: int) -> Iterator[CrashState]:
        """States a power cut now could leave: up to ``budget`` per namespace choice."""
        for ns, dirs in self._namespaces():
            per_file: dict[str, list[bytes]] = {}
            for path, ino in ns.items():
                per_file[path] = list(self._contents(self.inodes[ino], rng, budget))
            names = list(per_file)
            combos = 1
            for name in names:
                combos *= len(per_file[name])
            if combos <= budget:
                choices: Iterator[tuple[bytes, ...]] = itertools.product(
                    *(per_file[n] for n in names))
            else:
                choices = (tuple(rng.choice(per_file[n]) for n in names) for _ in range(budget))
            for contents in choices:
                yield CrashState(after, "power", dict(zip(names, contents, strict=True)), dirs)

    def _namespaces(self) -> Iterator[tuple[dict[str, int], frozenset[str]]]:
        """Durable entries plus any prefix of each directory's unsynced changes."""
        parents = sorted(self.pending)
        for lengths in itertools.product(*(range(len(self.pending[p]) + 1) for p in parents)):
            ns = dict(self.durable_ns)
            dirs = set(self.durable_dirs)
            for parent, n in zip(parents, lengths, strict=True):
                for op in self.pending[parent][:n]:
                    _apply_dirop(ns, dirs, op)
            visible = {p: i for p, i in ns.items() if (os.path.dirname(p) or ".") in dirs}
            yield visible, frozenset(dirs)

    def _contents(self, node: _Inode, rng: random.Random, budget: int) -> Iterator[bytes]:
        """Possible contents of one file after a power loss (see the module docstring)."""
        new = bytes(node.volatile)
        if not node.sizes:
            yield new
            return
        old = node.durable
        sizes = sorted({len(old), *node.sizes})
        top = max(sizes)
        old_p = old + bytes(top - len(old))
        new_p = new + old_p[len(new):] if len(new) < top else new
        pages = [p for p in range(0, top, PAGE) if old_p[p : p + PAGE] != new_p[p : p + PAGE]]

        def build(size: int, chosen: dict[int, bytes]) -> bytes:
            buf = bytearray(old_p)
            for p, content in chosen.items():
                buf[p : p + len(content)] = content
            return bytes(buf[:size])

        variants: list[dict[int, bytes]] = []
        if len(pages) <= 6:
            for mask in range(1 << len(pages)):
                variants.append({p: new_p[p : p + PAGE] for k, p in enumerate(pages)
                                 if mask >> k & 1})
        else:
            variants.append({})
            variants.append({p: new_p[p : p + PAGE] for p in pages})
            for _ in range(32):
                variants.append({p: new_p[p : p + PAGE] for p in pages if rng.random() < 0.5})
        # torn pages: some sectors of one page, or a sector cut inside, the other pages new
        for p in pages:
            for _ in range(3):
                page = bytearray(old_p[p : p + PAGE])
                for s in range(0, PAGE, SECTOR):
                    if rng.random() < 0.5:
                        page[s : s + SECTOR] = new_p[p + s : p + s + SECTOR]
                variants.append({**{q: new_p[q : q + PAGE] for q in pages}, p: bytes(page)})
            s = rng.randrange(0, PAGE, SECTOR)
            cut = rng.randrange(1, SECTOR)
            page = bytearray(new_p[p : p + PAGE])
            page[s + cut : s + SECTOR] = old_p[p + s + cut : p + s + SECTOR]
            variants.append({**{q: new_p[q : q + PAGE] for q in pages}, p: bytes(page)})
        rng.shuffle(variants)
        seen: set[bytes] = set()
        for size in sizes:
            for chosen in variants[:budget]:
                data = build(size, chosen)
                digest = hashlib.sha256(data).digest()
                if digest not in seen:
                    seen.add(digest)
                    yield data


def _apply_dirop(ns: dict[str, int], dirs: set[str], op: Op) -> None:
    if op.kind == "create":
        ns[op.path] = op.ino
    elif op.kind == "unlink":
        ns.pop(op.path, None)
    elif op.kind == "rename":
        if op.path in ns:
            ns[op.dst] = ns.pop(op.path)
    elif op.kind == "mkdir":
        dirs.add(op.path)


def _next_page(offset: int) -> int:
    return (offset // PAGE + 1) * PAGE


# -- checking -----------------------------------------------------------------------------------


@dataclass
class Expect:
    acked: int  # last acknowledged seq
    durable_snapshot: int  # seq of the last snapshot whose rename was made durable (0: none)


def expectations(trace: Trace) -> list[Expect]:
    """What every state after op ``i`` must satisfy."""
    out = []
    acked = durable_snap = 0
    written_snap = 0
    for op in trace.ops:
        if op.kind == "ack":
            acked = op.seq
        elif op.kind == "snapshot":
            written_snap = op.seq
        if op.kind == "snapshot":
            durable_snap = written_snap  # write_snapshot returned: rename + dir fsync done
        out.append(Expect(acked, durable_snap))
    return out


def check_state(state: CrashState, trace: Trace, expect: Expect, workdir: Path) -> set[str]:
    """Open ``state`` the way the daemon starts; AssertionError says what went wrong.

    Returns tags of what the state exercised (for the explorer's own coverage check).
    """
    tags: set[str] = set()
    root = workdir / "root"
    root.mkdir()
    for d in state.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, data in state.files.items():
        (root / name).write_bytes(data)
    try:
        snap = read_snapshot(root)
    except CorruptSnapshot as exc:
        raise AssertionError(f"the snapshot is damaged: {exc}") from None
    written = _written_seq(state, trace)
    log = EventLog.open(root, segment_size=trace.segment_size)  # no repair: no human
    try:
        last = log.last_seq
        if last < written:
            tags.add("cut")  # a torn tail was cut
        if last > expect.acked:
            tags.add("unacknowledged kept")  # a whole batch whose sync had not returned
        if any(name.endswith(".torn") for name in os.listdir(root / "events")):
            tags.add("torn kept aside")
        assert last >= expect.acked, f"lost acknowledged events: last seq {last} < {expect.acked}"
        assert last in trace.batch_ends, f"the log ends inside a batch, at seq {last}"
        first = log.first_seq
        got = list(log.read(first - 1))
        assert got == trace.appended[first - 1 : last], "events differ from what was appended"
        snap_seq = 0
        if snap is not None:
            snap_seq, snap_state = snap
            assert trace.snapshots.get(snap_seq) == snap_state, f"snapshot {snap_seq} is wrong"
            assert snap_seq <= last, (f"the log ends at {last}, before its snapshot at "
                                      f"{snap_seq}: refused by the recovery rule")
        if snap_seq > expect.durable_snapshot:
            tags.add("snapshot not yet durable, kept")
        assert snap_seq >= expect.durable_snapshot, (
            f"snapshot {snap_seq} older than the durable one ({expect.durable_snapshot})")
        assert first <= snap_seq + 1, f"compacted to {first} past the snapshot at {snap_seq}"
        rebuilt, _ = recovery.load_state(log)  # the daemon's own start-up
        assert rebuilt.last_seq == last
        want = projection.fold(trace.appended[:last])
        assert rebuilt.containers == want.containers, "the rebuilt state differs"
        new = log.append([("supervisor.start", "", {"pid": 1})])
        assert new[0].seq == last + 1
    finally:
        log.close()
    with EventLog.open(root, segment_size=trace.segment_size) as log:
        assert log.last_seq == last + 1
    return tags


def _written_seq(state: CrashState, trace: Trace) -> int:
    """The highest seq whose record bytes were written before this crash point."""
    return state.written




# -- driving ------------------------------------------------------------------------------------


@dataclass
class Summary:
    ops: int = 0
    states: int = 0  # distinct states checked
    generated: int = 0
    process: int = 0
    power: int = 0
    recovery: int = 0  # distinct states of a crash during recovery (and the first append)
    failures: list[str] = field(default_factory=list)
    tags: dict[str, int] = field(default_factory=dict)  # what the states exercised


def explore(states: int, seed: int = 1, recorder_cls: type[Recorder] = Recorder,
            max_failures: int = 5) -> Summary:
    """Record a workload sized for ``states`` distinct crash states and check them all."""
    rng = random.Random(seed)
    summary = Summary()
    # Scratch space only: the states are built and checked there, nothing relies on its fsyncs,
    # so a tmpfs (where fsync costs nothing) makes thousands of states quick.
    scratch = os.environ.get("TETHER_CRASH_DIR") or (
        "/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    tmp = Path(tempfile.mkdtemp(prefix="tether-crash-", dir=scratch))
    try:
        batches = max(20, states // 9)
        trace = record_workload(tmp / "record", seed, batches, recorder_cls)
        summary.ops = len(trace.ops)
        expects = expectations(trace)
        budget = 48
        recovery_share = 0.05  # of the states whose recovery cuts or keeps an unsynced tail
        model = FsModel()
        seen: set[bytes] = set()
        writes = _append_writes(trace)
        written = 0
        for i, op in enumerate(trace.ops):
            model.apply(op)
            written = writes.get(i, written)
            if op.kind in ("ack", "snapshot"):
                continue  # the same files as after the previous operation
            candidates = itertools.chain(model.process_crash(i),
                                         model.power_loss(i, rng, budget))
            for state in candidates:
                state.written = written
                summary.generated += 1
                key = state.key()
                if key in seen:
                    continue
                seen.add(key)
                summary.states += 1
                setattr(summary, state.kind, getattr(summary, state.kind) + 1)
                work = tmp / f"s{summary.states}"
                work.mkdir()
                try:
                    tags = check_state(state, trace, expects[i], work)
                    for tag in tags:
                        summary.tags[tag] = summary.tags.get(tag, 0) + 1
                    if tags & {"cut", "unacknowledged kept"} and rng.random() < recovery_share:
                        again = tmp / f"r{summary.states}"
                        again.mkdir()
                        _check_recovery_crashes(state, trace, expects[i], again, rng, seen,
                                                summary, max_failures)
                except Exception as exc:
                    summary.failures.append(f"after op {i} ({op.kind} {op.path}), "
                                            f"{state.kind} crash: {type(exc).__name__}: {exc}")
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                if len(summary.failures) >= max_failures:
                    return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _check_recovery_crashes(state: CrashState, trace: Trace, expect: Expect, workdir: Path,
                            rng: random.Random, seen: set[bytes], summary: Summary,
                            max_failures: int) -> None:
    states = explore_recovery(state, trace, expect, workdir / "record", rng, 8, seen)
    for n, (crashed, after, want) in enumerate(states):
        work = workdir / f"s{n}"
        work.mkdir()
        summary.recovery += 1
        try:
            check_state(crashed, after, want, work)
        except Exception as exc:
            summary.failures.append(f"crash {crashed.after} ops into recovering a state of "
                                    f"op {state.after} ({state.kind}), {crashed.kind} crash: "
                                    f"{type(exc).__name__}: {exc}")
            if len(summary.failures) >= max_failures:
                return
        finally:
            shutil.rmtree(work, ignore_errors=True)


def explore_recovery(state: CrashState, trace: Trace, expect: Expect, workdir: Path,
                     rng: random.Random, budget: int, seen: set[bytes]) -> Iterator[tuple[
                         CrashState, Trace, Expect]]:
    """Crash again, while recovering ``state``: record what opening it and the daemon's first
    append do to the files, and yield every state a crash after each of those operations could
    leave, with what it must satisfy (the events the first recovery kept, plus the new one
    once its append returned)."""
    root = workdir / "root"
    root.mkdir(parents=True)
    rec = Recorder(root)
    model = FsModel()
    model.durable_dirs |= state.dirs
    model.volatile_dirs |= state.dirs
    for d in state.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, data in state.files.items():
        (root / name).write_bytes(data)
        model.adopt(name, rec.adopt(name), data)
    log = EventLog.open(root, segment_size=trace.segment_size, io=rec)
    try:
        kept = log.last_seq
        new = log.append([("supervisor.start", "", {"pid": 2})])
        rec.mark("ack", new[-1].seq)
    finally:
        log.close()
    after = Trace([], trace.appended[:kept] + new,
                  {s for s in trace.batch_ends if s <= kept} | {kept + 1}, trace.snapshots,
                  trace.segment_size)
    acked = expect.acked
    for i, op in enumerate(rec.ops):
        model.apply(op)
        if op.kind == "ack":
            acked = op.seq
            continue
        for crashed in itertools.chain(model.process_crash(i), model.power_loss(i, rng, budget)):
            key = crashed.key()
            if key not in seen:
                seen.add(key)
                crashed.written = kept
                yield crashed, after, Expect(acked, expect.durable_snapshot)


def _append_writes(trace: Trace) -> dict[int, int]:
    """Op index of each batch's write -> the last seq of that batch (the write before its
    ``ack``: zeros written ahead come before it, in the same window)."""
    out: dict[int, int] = {}
    last_write = -1
    for i, op in enumerate(trace.ops):
        if op.kind == "write" and op.path == "" and op.data.strip(b"\0"):
            last_write = i
        elif op.kind == "ack" and last_write >= 0:
            out[last_write] = op.seq
            last_write = -1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=3000, help="distinct states, about")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    import logging

    import structlog

    logging.disable(logging.WARNING)  # every torn tail cut says so
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    started = time.perf_counter()
    s = explore(args.states, args.seed, max_failures=20)
    print(f"{s.ops} operations recorded; {s.generated} crash states generated, {s.states} "
          f"distinct checked ({s.process} process crash, {s.power} power loss) in "
          f"{time.perf_counter() - started:.1f} s; exercised: {s.tags}; {s.recovery} states "
          "of a second crash during recovery")
    for f in s.failures:
        print("FAIL:", f)
    return 1 if s.failures else 0


if __name__ == "__main__":
    sys.exit(main())
