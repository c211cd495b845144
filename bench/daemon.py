"""Benchmark supervisord and print a table (not a test).

    .venv/bin/python bench/daemon.py [--quick] [--sizes 100,500,1000] [--events 1000000]

Measures, on a fresh root under /tmp (sockets must stay short):
* run -> running: in-process blocking client, and the whole ``supervisorctl run`` CLI;
* 100 concurrent runs;
  (these three side by side: shims from the launcher, and ``--no-shim-launcher``)
* kill -9 of the daemon -> every one of N containers reconciled and answering;
* container exit -> a live ``events`` subscriber (p50/p99);
* a shim SIGKILLed -> ``shim.lost`` recorded (p50/p99);
* supervision: the daemon's CPU per 100 restarts of a crash-looping container, when the shim
  restarts it (the daemon records) and when the daemon decides (its shim lost each time);
* daemon RSS with the largest N containers;
* start over a 1,000,000-event log (with the snapshot the daemon would have written, and
  without one, to show why snapshots exist).

Every process it starts (daemon, shims, containers) is killed by pid at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cleanup import kill_everything_naming  # noqa: E402

from events.log import EventLog  # noqa: E402
from events.rpc import BlockingConnection  # noqa: E402
from events.snapshot import write_snapshot  # noqa: E402
from supervisor.projection import fold  # noqa: E402

VENV_BIN = Path(sys.executable).parent


class Daemon:
    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.args = args
        self.sock = str(root / "supervisord.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.launchers_seen = 0

    def start(self) -> float:
        """Start and return the seconds until ``status`` answered."""
        t0 = time.perf_counter()
        with open(self.root.parent / "daemon.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--root", str(self.root),
                 "--log-format", "json", *self.args],
                stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
        while True:
            try:
                with BlockingConnection(self.sock, timeout=5) as c:
                    c.call("status")
                return time.perf_counter() - t0
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("daemon died; see daemon.log") from None
                time.sleep(0.002)

    def conn(self) -> BlockingConnection:
        return BlockingConnection(self.sock, timeout=120)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


def wait_launcher(d: Daemon, timeout: float = 10.0) -> None:
    """Until the daemon's shim launcher said hello (its log says so); shims start fresh before."""
    log = d.root.parent / "daemon.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.read_bytes().count(b'"shim launcher ready"') > d.launchers_seen:
            d.launchers_seen += 1
            return
        time.sleep(0.01)
    raise RuntimeError("the shim launcher did not start; see daemon.log")


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def bench_run(d: Daemon, n: int) -> tuple[float, float]:
    samples = []
    with d.conn() as c:
        for _ in range(n):
            t0 = time.perf_counter()
            cid = c.call("run", spec={"command": ["sleep", "1000"]})["id"]
            samples.append(time.perf_counter() - t0)
            c.call("rm", id=cid, force=True)
    return median_ms(samples), pct(samples, 90) * 1000


def bench_cli(d: Daemon, n: int) -> float | None:
    ctl = VENV_BIN / "supervisorctl"
    if not ctl.exists():
        return None
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = subprocess.run([str(ctl), "--socket", d.sock, "run", "--", "sleep", "1000"],
                             capture_output=True, check=True)
        samples.append(time.perf_counter() - t0)
        with d.conn() as c:
            c.call("rm", id=out.stdout.decode().strip(), force=True)
    return median_ms(samples)


def run_many(d: Daemon, n: int, width: int, prefix: str) -> float:
    def one(i: int) -> None:
        with d.conn() as c:
            c.call("run", spec={"command": ["sleep", "100000"], "name": f"{prefix}{i}"})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(width) as pool:
        list(pool.map(one, range(n)))
    return time.perf_counter() - t0


def bench_reconcile(d: Daemon) -> tuple[float, float]:
    """kill -9, restart: (seconds until status answers, seconds until all reconciled)."""
    d.kill9()
    t0 = time.perf_counter()
    d.start()
    t_status = time.perf_counter() - t0
    with d.conn() as c:
        while True:
            st = c.call("status")
            if not st["reconciling"]:
                rows = c.call("ps", all=True)
                if not any(r["state"] == "unknown" for r in rows):
                    break
            time.sleep(0.005)
    return t_status, time.perf_counter() - t0


def bench_exit_latency(d: Daemon, n: int) -> tuple[float, float, float, float]:
    """(p50, p99) of exit -> subscriber, and of the daemon's own part: append -> subscriber
    (the event's ``time`` is stamped by the log writer just before its fdatasync)."""
    latencies: list[float] = []
    daemon_part: list[float] = []
    ready = threading.Event()
    done = threading.Event()
    start_seq = 0
    with d.conn() as c:
        start_seq = c.call("status")["last_seq"]

    def follow() -> None:
        with d.conn() as c:
            stream = c.stream("events", since=start_seq, follow=True, types=["task.exit"])
            ready.set()
            for item in stream:
                now = time.time_ns()
                exited = item["data"].get("exited_at")
                if exited:
                    latencies.append((now - exited) / 1e9)
                    daemon_part.append((now - item["time"]) / 1e9)
                if len(latencies) >= n:
                    done.set()
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait(10)
    ids = []
    with d.conn() as c:
        for _ in range(n):
            ids.append(c.call("run", spec={"command": ["sh", "-c", "sleep 0.02"]})["id"])
            time.sleep(0.03)
        done.wait(30)
        for cid in ids:
            c.call("rm", id=cid, force=True)
    return (median_ms(latencies), pct(latencies, 99) * 1000, median_ms(daemon_part),
            pct(daemon_part, 99) * 1000)


def _shim_pid(d: Daemon, cid: str) -> int:
    return int((d.root / "shims" / cid / "shim.pid").read_text())


def bench_shim_lost(d: Daemon, n: int) -> tuple[float, float]:
    """(p50, p99) of a shim's SIGKILL -> ``shim.lost`` in the log (seen by a subscriber)."""
    samples = []
    with d.conn() as c:
        for _ in range(n):
            cid = c.call("run", spec={"command": ["sleep", "1000"]})["id"]
            since = c.call("status")["last_seq"]
            with d.conn() as follower:
                stream = follower.stream("events", since=since, follow=True, ids=[cid],
                                         types=["shim.lost"])
                t0 = time.perf_counter()
                os.kill(_shim_pid(d, cid), signal.SIGKILL)
                next(stream)
                samples.append(time.perf_counter() - t0)
            c.call("rm", id=cid, force=True)
    return median_ms(samples), pct(samples, 99) * 1000


def _restarts(c: BlockingConnection, cid: str) -> int:
    return int(next(r for r in c.call("ps", all=True) if r["id"] == cid)["restarts"])


def bench_crash_loop(d: Daemon, n: int, timeout: float = 60.0) -> float | None:
    """Daemon CPU seconds per 100 restarts of ``true`` under ``always`` with no back-off, the
    shim restarting it (the daemon records four events per restart). None when this shim
    does not restart by itself."""
    with d.conn() as c:
        cid = c.call("run", spec={"command": ["true"], "restart": {
            "policy": "always", "delay": 0, "max_delay": 0}})["id"]
        deadline = time.monotonic() + 5
        while _restarts(c, cid) < 2:
            if time.monotonic() > deadline:
                c.call("rm", id=cid, force=True)
                return None
            time.sleep(0.01)
        first, cpu0 = _restarts(c, cid), d.cpu_seconds()
        deadline = time.monotonic() + timeout
        while (done := _restarts(c, cid) - first) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = d.cpu_seconds() - cpu0
        c.call("rm", id=cid, force=True)
    return cpu / max(1, done) * 100


def bench_daemon_restarts(d: Daemon, n: int) -> tuple[float, float]:
    """The daemon's own decisions: a container (``sleep``, ``always``) whose shim is SIGKILLed
    and then its task, so that the daemon records the task's end and decides and carries out
    the restart (a new shim) every time. (daemon CPU seconds per 100 restarts, median ms from
    the lost task's recorded end to the next task's recorded start.)"""
    with d.conn() as c:
        cid = c.call("run", spec={"command": ["sleep", "1000"],
                                  "restart": {"policy": "always", "delay": 0}})["id"]

        def row() -> dict:  # ps, not inspect: no history read per poll
            return next(r for r in c.call("ps", all=True) if r["id"] == cid)

        def wait(predicate: Any) -> dict:
            while not predicate(r := row()):
                time.sleep(0.005)
            return r

        cpu0 = d.cpu_seconds()
        for i in range(n):
            task = wait(lambda r, i=i: r["state"] == "running" and r["restarts"] == i)["pid"]
            since = c.call("status")["last_seq"]
            os.kill(_shim_pid(d, cid), signal.SIGKILL)
            with d.conn() as follower:  # the loss recorded, so that the task's end is seen
                next(follower.stream("events", since=since, follow=True, ids=[cid],
                                     types=["shim.lost"]))
            os.kill(task, signal.SIGKILL)
        wait(lambda r: r["state"] == "running" and r["restarts"] == n)
        cpu = d.cpu_seconds() - cpu0
        history = c.call("inspect", id=cid)["history"]
        c.call("rm", id=cid, force=True)
    gaps, ended = [], None
    for e in history:
        if e["type"] == "task.exit":
            ended = e["time"]
        elif e["type"] == "task.start" and ended is not None:
            gaps.append((e["time"] - ended) / 1e9)
            ended = None
    return cpu / n * 100, median_ms(gaps)


Item = tuple[str, str, dict[str, Any]]


def history(n: int) -> Iterator[Item]:
    """n events of realistic shapes: create/task/exit/delete cycles over 2,000 ids."""
    spec = {"command": ["sleep", "1"], "env": {}, "runtime": "process", "name": ""}
    seq, i = 0, 0
    while True:
        cid, inst = f"c{i % 2000}", f"i{i}"
        for item in (("container.create", cid, {"spec": {**spec, "name": cid}}),
                     ("task.create", cid, {"pid": 100 + i, "shim_pid": 99, "address": "/x",
                                           "instance": inst}),
                     ("task.start", cid, {"pid": 100 + i, "shim_seq": 2, "instance": inst}),
                     ("task.exit", cid, {"pid": 100 + i, "exit_status": 0, "signal": 0,
                                         "exited_at": 1, "shim_seq": 3, "instance": inst}),
                     ("container.delete", cid, {})):
            if seq == n:
                return
            seq += 1
            yield item
        i += 1


def build_log(root: Path, n: int, snapshot: bool) -> float:
    """A log of n events of realistic shapes (create/task/exit/delete cycles)."""
    root.mkdir(parents=True)
    log = EventLog.open(root)
    batch: list[Item] = []
    t0 = time.perf_counter()
    for item in history(n):
        batch.append(item)
        if len(batch) >= 20000:
            log.append(batch)
            batch = []
    if batch:
        log.append(batch)
    if snapshot:  # what the daemon's snapshotter would have written
        state = fold(log.read(0))
        write_snapshot(root, state.last_seq, state.to_dict())
    log.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples")
    ap.add_argument("--sizes", default="100,500,1000")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--no-supervision", dest="supervision", action="store_false",
                    help="skip the supervision rows (a daemon from before restart policies)")
    args = ap.parse_args()
    supervision = args.supervision
    sizes = [int(s) for s in args.sizes.split(",")]
    samples = 5 if args.quick else 20
    if args.quick:
        sizes = [min(s, 100) for s in sizes][:1]
        args.events = min(args.events, 100_000)
    base = Path(tempfile.mkdtemp(prefix="tb-", dir="/tmp"))
    rows: list[tuple[str, str, str]] = []
    try:
        # the start path side by side: shims forked by the launcher, and fresh interpreters
        froot = base / "f"
        froot.mkdir()
        fresh = Daemon(froot, "--no-shim-launcher")
        fresh.start()
        root = base / "r"
        root.mkdir()
        d = Daemon(root)
        d.start()
        wait_launcher(d)
        starts: dict[str, tuple[str, str, str]] = {}
        for label, daemon in (("launcher", d), ("fresh", fresh)):
            med, p90 = bench_run(daemon, samples)
            cli = bench_cli(daemon, max(3, samples // 2))
            cpu0 = daemon.cpu_seconds()
            wall = run_many(daemon, 100, 100, "conc")
            cpu = daemon.cpu_seconds() - cpu0
            starts[label] = (f"{med:.1f} / {p90:.1f} ms",
                             f"{cli:.1f} ms" if cli else "ctl not installed",
                             f"{wall * 1000:.0f} ms (daemon CPU {cpu * 1000:.0f} ms)")
        fresh.stop()
        kill_everything_naming(str(froot))
        for i, (what, goal) in enumerate((
                ("run -> running, in-process client (median / p90)", "<= 25 ms"),
                ("run -> running, whole `supervisorctl run` (median)", "<= 45 ms (ctr: 59)"),
                ("100 concurrent runs (wall)", "<= 1 s"))):
            rows.append((f"{what}, launcher", starts["launcher"][i], goal))
            rows.append((f"{what}, fresh interpreter", starts["fresh"][i], ""))
        p50, p99, a50, a99 = bench_exit_latency(d, 20 if args.quick else 50)
        rows.append(("exit -> live subscriber (p50 / p99)", f"{p50:.2f} / {p99:.2f} ms",
                     "<= 2 / 10 ms (ctr: 2.2)"))
        rows.append(("  of which log append -> subscriber (p50 / p99)",
                     f"{a50:.2f} / {a99:.2f} ms", ""))
        if supervision:
            l50, l99 = bench_shim_lost(d, 10 if args.quick else 20)
            rows.append(("shim SIGKILL -> shim.lost recorded (p50 / p99)",
                         f"{l50:.1f} / {l99:.1f} ms", ""))
            loop = bench_crash_loop(d, 100)
            rows.append(("daemon CPU per 100 restarts, the shim restarting",
                         "n/a: this shim does not restart" if loop is None
                         else f"{loop:.2f} s", "little"))
            cpu, latency = bench_daemon_restarts(d, 20 if args.quick else 50)
            rows.append(("daemon CPU per 100 restarts it decides (shim lost each time)",
                         f"{cpu:.2f} s", ""))
            rows.append(("  the lost task's end -> its restart started (median)",
                         f"{latency:.1f} ms", ""))
        have = 100
        for n in sizes:
            if n > have:
                t = run_many(d, n - have, 8, f"n{n}-")
                print(f"  (started {n - have} more containers in {t:.1f} s)", file=sys.stderr)
                have = n
            t_status, t_all = bench_reconcile(d)
            wait_launcher(d)  # the new daemon's (untimed: shims start fresh until then)
            rows.append((f"kill -9 -> {n} containers reconciled and answering",
                         f"{t_all * 1000:.0f} ms (status after {t_status * 1000:.0f} ms)",
                         "1,000 in <= 1 s" if n == 1000 else ""))
        rows.append((f"daemon RSS with {have} containers", f"{d.rss_mb():.1f} MB", "<= 60 MB"))
        with d.conn() as c:
            ps_samples = []
            for _ in range(samples):
                t0 = time.perf_counter()
                c.call("ps", all=True)
                ps_samples.append(time.perf_counter() - t0)
        rows.append((f"ps at {have} containers, in-process (median)",
                     f"{median_ms(ps_samples):.1f} ms", "(ctr task ls at 50: 15 ms)"))
        d.stop()
        kill_everything_naming(str(base))
        for snap in (True, False):
            lroot = base / ("log-snap" if snap else "log-nosnap")
            build_log(lroot, args.events, snap)
            ld = Daemon(lroot)
            t = ld.start()
            ld.stop()
            rows.append((f"start over a {args.events:,}-event log "
                         f"({'with' if snap else 'without'} snapshot)", f"{t * 1000:.0f} ms",
                         "<= 2 s" if snap else "(why snapshots exist)"))
    finally:
        # twice: a shim the launcher forked just before its daemon stopped finishes its double
        # fork after the first sweep saw its parent
        killed = kill_everything_naming(str(base))
        time.sleep(0.5)
        killed += kill_everything_naming(str(base))
        shutil.rmtree(base, ignore_errors=True)
    others = [name for name in ("containerd", "ctr", "supervisord") if shutil.which(name)
              and not str(shutil.which(name)).startswith(str(VENV_BIN))]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure'.ljust(width)}  {'result':<32} goal")
    print("-" * (width + 50))
    for name, value, goal in rows:
        print(f"{name.ljust(width)}  {value:<32} {goal}")
    side = ", ".join(others) if others else "containerd and Debian supervisor not installed here"
    print(f"\n(cleanup killed {killed} leftover processes; side by side: {side})")


if __name__ == "__main__":
    main()
