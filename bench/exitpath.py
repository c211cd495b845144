"""Where an exit's time goes: SIGKILL of a container's init -> its ``task.exit`` at a live
subscriber, hop by hop, for one tree or two side by side.

    sudo .venv/bin/python bench/exitpath.py [--exits 300] [--trees A,B] [--trace] [--runtime R]

Each tree (a checkout with its own ``.venv``; default: this one) gets its own daemon on a
private root and a live ``events`` subscriber (a thread of this process, through the blocking
client, as ``bench/compare.py``'s "exit" row has it). Exits are taken one at a time,
interleaved in blocks of five between the trees (the order alternating), so a drift of the
machine's load hits every tree alike. Each exit: a runc container (``sleep``), 50 ms, then
``SIGKILL`` of its init; the time runs from the kill to the subscriber's thread holding the
event. A pidfd of the init says when the kernel was done with it (``kernel``: the teardown no
supervisor can shorten).

``--trace`` also puts a ``.pth`` line in each tree's venv for the length of the run (removed
after), which loads ``bench/exittrace.py`` into the daemon, the launcher and the shims: each hop
then has a timestamp, and the table gives the median of each hop and of the time from the kill
to it. The wrappers cost a few us per hop: compare traced runs with traced runs.

It also times what the log's append costs alone on this disk: a ~200-byte ``pwrite`` and its
``fdatasync`` into a preallocated file (as ``events.log`` appends), and the shim's exit file
(``shim_api.write_exit_file``: write, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import select
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_systems as cs
from oci_helpers import build_busybox_rootfs, remove_cgroup_tree

from events import shim_api

HERE = Path(__file__).resolve().parent
SLEEP = ["/bin/sleep", "100000"]
BLOCK = 5  # exits on one tree before the next tree's turn
#: hops in path order: (label, what it is)
HOPS = [
    ("k.dead", "kernel: the init is dead (its pidfd readable)"),
    ("s.wake", "shim: woken (SIGCHLD on the wakeup fd)"),
    ("s.reaped", "shim: waitpid returned, Task.reaped"),
    ("s.drained", "shim: the init's output drained"),
    ("s.oom", "shim: OOM counter read"),
    ("s.publish", "shim: record built, publish begins"),
    ("s.sent", "shim: task.exit written to the daemon's socket"),
    ("d.bytes", "daemon: a read returned (any connection)"),
    ("d.recv", "daemon: link decoded it (record_shim_event)"),
    ("d.queued", "daemon: checked, LogWriter.append"),
    ("d.thread", "daemon: writer thread took the batch"),
    ("d.sync0", "daemon: encoded and written, fdatasync begins"),
    ("d.written", "daemon: fdatasync returned"),
    ("d.complete", "daemon: the result in the trio thread (applying)"),
    ("d.publish", "daemon: applied, Hub.publish"),
    ("d.direct", "daemon: sent by Hub.publish (an idle subscriber)"),
    ("d.woken", "daemon: the subscriber's task runs"),
    ("d.sent", "daemon: the item written to its socket"),
    ("b.seen", "subscriber: the client thread has the event"),
]
PTH = "_tether_exittrace.pth"


class Tree:
    """One checkout: its daemon, its subscriber, its samples."""

    def __init__(self, path: Path, base: Path, n: int, trace: bool) -> None:
        self.path = path
        self.label = path.name
        self.bin = path / ".venv" / "bin"
        self.dir = base / f"t{n}"
        self.root = self.dir / "r"
        self.root.mkdir(parents=True)
        self.sock = str(self.root / "supervisord.sock")
        self.trace_dir = self.dir / "trace" if trace else None
        self.proc: Any = None
        self.seen: queue.Queue[tuple[str, int]] = queue.Queue()
        self.samples: list[dict[str, int]] = []

    def start(self) -> None:
        import subprocess

        env = dict(os.environ)
        if self.trace_dir is not None:
            self.trace_dir.mkdir()
            env["TETHER_EXITTRACE"] = str(self.trace_dir)
        with open(self.dir / "daemon.log", "ab") as err:
            self.proc = subprocess.Popen([str(self.bin / "supervisord"), "--root",
                                          str(self.root)], stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env)
        cs.wait_connectable(self.sock, self.proc, "supervisord")
        deadline = time.monotonic() + 15
        while b"shim launcher ready" not in (self.dir / "daemon.log").read_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no shim launcher; see {self.dir / 'daemon.log'}")
            time.sleep(0.01)
        with self.conn() as c:
            since = c.call("status")["last_seq"]
        threading.Thread(target=self._follow, args=(since,), daemon=True).start()
        time.sleep(0.2)

    def conn(self, timeout: float | None = 60.0) -> cs.BlockingConnection:
        return cs.BlockingConnection(self.sock, timeout=timeout)

    def _follow(self, since: int) -> None:
        with contextlib.suppress(OSError, ValueError), self.conn(timeout=None) as c:
            for item in c.stream("events", since=since, follow=True, types=["task.exit"]):
                self.seen.put((item["id"], time.time_ns()))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait()

    def one_exit(self, name: str, rootfs: Path) -> None:
        with self.conn() as c:
            r = c.call("run", spec={"command": SLEEP, "runtime": "runc", "rootfs": str(rootfs),
                                    "name": name})
        time.sleep(0.05)
        pidfd = os.pidfd_open(r["pid"])
        try:
            poll = select.poll()
            poll.register(pidfd, select.POLLIN)
            t0 = time.time_ns()
            os.kill(r["pid"], signal.SIGKILL)
            poll.poll(10_000)
            dead = time.time_ns()
        finally:
            os.close(pidfd)
        deadline = time.monotonic() + 30
        while True:
            got, at = self.seen.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == r["id"]:
                break
        self.samples.append({"kill": t0, "k.dead": dead, "b.seen": at})
        with self.conn() as c:
            c.call("rm", id=r["id"], force=True)

    def add_trace(self) -> None:
        """Cut the processes' marks into exits by time: each exit's window runs from its kill
        to the next one's."""
        if self.trace_dir is None:
            return
        marks: list[tuple[int, str]] = []
        for f in self.trace_dir.iterdir():
            for line in f.read_text().splitlines():
                label, ns = line.split()
                marks.append((int(ns), label))
        marks.sort()
        kills = [s["kill"] for s in self.samples] + [2**63]
        i = 0
        for k, sample in enumerate(self.samples):
            while i < len(marks) and marks[i][0] < kills[k]:
                i += 1
            j = i
            while j < len(marks) and marks[j][0] < kills[k + 1]:
                sample.setdefault(marks[j][1], marks[j][0])
                j += 1


def q(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report(trees: list[Tree]) -> None:
    print(f"\nexit -> live subscriber (runc, SIGKILL), {len(trees[0].samples)} exits per tree, "
          "interleaved; ms")

    def line(what: str, cell: Callable[[Tree], str]) -> None:
        print(f"{what:58}" + "".join(cell(t) for t in trees))

    def span(a: str, b: str, key: float) -> Callable[[Tree], str]:
        """The *key* percentile of ``b - a`` over every exit."""
        return lambda t: f"{q([(s[b] - s[a]) / 1e6 for s in t.samples], key):>24.3f}"

    def median(step: Callable[[dict[str, Any]], float], *needs: str) -> Callable[[Tree], str]:
        """The median of ``step`` over the exits that have every mark it *needs* (0: none)."""
        def cell(t: Tree) -> str:
            both = [s for s in t.samples if all(k in s for k in needs)]
            return f"{statistics.median(step(s) for s in both) if both else 0:>13.3f}{'':11}"
        return cell

    line("", lambda t: f"{t.label[:22]:>24}")
    for what, key in (("kill -> subscriber, p50", 50), ("kill -> subscriber, p90", 90),
                      ("kill -> subscriber, p99", 99)):
        line(what, span("kill", "b.seen", key))
    line("kill -> dead (kernel), p50", span("kill", "k.dead", 50))
    for what, key in (("dead -> subscriber (what a supervisor adds), p50", 50),
                      ("dead -> subscriber, p90", 90)):
        line(what, span("k.dead", "b.seen", key))
    if trees[0].trace_dir is None:
        return
    print("\nper hop: median of (this hop - the one before it in that exit) / median of "
          "(this hop - kill), ms; the exits that have the hop (a direct send has no d.woken)")
    line("", lambda t: f"{t.label[:22]:>24}")
    for k, (label, what) in enumerate(HOPS):
        row = f"{what[:58]:58}"
        for t in trees:
            steps, totals = [], []
            for s in t.samples:
                if label not in s:
                    continue
                # the shim does not wait for the bench's k.dead
                before = [h for h, _ in HOPS[:k] if h in s and h != "k.dead"] or ["kill"]
                steps.append((s[label] - s[before[-1]]) / 1e6)
                totals.append((s[label] - s["kill"]) / 1e6)
            if not steps:
                row += f"{'-':>24}"
                continue
            row += (f"{statistics.median(steps):>8.3f} / {statistics.median(totals):>6.3f}"
                    f" {len(steps) / len(t.samples):>4.0%} ")
        print(row)
    def between(a: str, b: str) -> Callable[[Tree], str]:
        return median(lambda s: (s[b] - s[a]) / 1e6, a, b)

    line("shim: woken -> sent", between("s.wake", "s.sent"))
    line("daemon: link has it -> subscriber has it", between("d.recv", "b.seen"))
    line("daemon: the same without its fdatasync",
         median(lambda s: (s["b.seen"] - s["d.recv"] - s["d.written"] + s["d.sync0"]) / 1e6,
                "d.recv", "b.seen", "d.sync0", "d.written"))
    line("daemon: written by the trio thread (share of exits)",
         lambda t: f"{sum('d.inline' in s for s in t.samples) / len(t.samples):>13.2f}{'':11}")
    line("shim: exit file written (after s.sent)", between("s.sent", "s.file"))


def disk_costs(where: Path, n: int = 300) -> None:
    """The log's append and the shim's exit file, alone, on this disk."""
    path = where / "fdatasync.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, bytes(1 << 20), 0)
        os.fsync(fd)
        took = []
        for k in range(n):
            t = time.perf_counter()
            os.pwrite(fd, os.urandom(200), k * 200)
            os.fdatasync(fd)
            took.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    exitdir = where / "exitfile"
    exitdir.mkdir()
    files = []
    record = {"pid": 1, "exit_status": None, "signal": 9, "exited_at": time.time_ns(),
              "shim_seq": 3, "instance": "x" * 32}
    for _ in range(n // 3):
        t = time.perf_counter()
        shim_api.write_exit_file(str(exitdir), dict(record))
        files.append((time.perf_counter() - t) * 1e3)
    print(f"\nthis disk, alone: pwrite 200 B + fdatasync (preallocated) p50 {q(took, 50):.3f} "
          f"p90 {q(took, 90):.3f} p99 {q(took, 99):.3f} ms ({n}); the shim's exit file "
          f"p50 {q(files, 50):.3f} p90 {q(files, 90):.3f} ms ({len(files)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exits", type=int, default=300, help="exits per tree")
    ap.add_argument("--trees", default=str(cs.REPO), help="comma-separated checkouts")
    ap.add_argument("--trace", action="store_true", help="timestamps at each hop")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/exitpath.py needs root (runc, cgroups)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = Path(tempfile.mkdtemp(prefix="texit-", dir="/tmp"))
    token = base.name.split("-", 1)[1].lower().replace("_", "0")
    paths = [Path(p).resolve() for p in args.trees.split(",")]
    pths = []
    if args.trace:
        line = (f"import os, sys; os.environ.get('TETHER_EXITTRACE') and "
                f"(sys.path.append({str(HERE)!r}), __import__('exittrace').install())\n")
        for p in paths:
            for sp in (p / ".venv" / "lib").glob("python3*/site-packages"):
                (sp / PTH).write_text(line)
                pths.append(sp / PTH)
    trees = [Tree(p, base, n, args.trace) for n, p in enumerate(paths)]
    try:
        rootfs = build_busybox_rootfs(base / "rootfs")
        for t in trees:
            cs.run_quiet([str(t.bin / "python"), "-m", "compileall", "-q",
                          *(str(t.path / d) for d in ("events", "shim", "supervisor"))])
            t.start()
        disk_costs(base)
        n = 0
        rounds = -(-args.exits // BLOCK)
        for r in range(rounds):
            for t in (trees if r % 2 == 0 else trees[::-1]):
                for _ in range(BLOCK):
                    n += 1
                    t.one_exit(f"x{n}-{token}", rootfs)
        for t in trees:
            t.add_trace()
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        for pth in pths:
            with contextlib.suppress(OSError):
                pth.unlink()
        for t in trees:
            with contextlib.suppress(Exception):
                t.stop()
        cs.kill_everything_under(str(base))
        for name in cs.cgroups_under("tether", token):
            remove_cgroup_tree(name)
        cs.remove_tree(base)
    report(trees)
    return 0


if __name__ == "__main__":
    sys.exit(main())
