"""Benchmark of the shim (a printed table, not a test): start latency, memory, exit latency.

    .venv/bin/python bench/shim.py [--shims 50] [--runs 30]
    .venv/bin/python bench/shim.py --shared N [--shims 50]   # the shared shim only

Measures, beside the anchors of shared/ANCHORS.md:

* spawn -> ready: ``python -I -m shim start`` run to completion (it returns once ready);
* RSS and PSS (``/proc/PID/smaps_rollup``) of one idle shim, and the mean per shim with N running;
* exit -> event: SIGKILL of the container -> ``task.exit`` item read by a connected client
  (includes the fsync of the exit file, which comes first);
* log throughput: a container writing as fast as it can, through the shim into container.log;
* side by side, the same for shims forked from ``python -I -m shim launcher`` (preloaded,
  ``gc.freeze()``; what supervisord uses), with the launcher's own PSS shared out;
* supervision (``--restarts N``, 0 to skip): a crash-looping container (``exit 1``, policy
  ``always``, back-off delay 0) restarted N times by its shim with no daemon, a test client
  acknowledging the events: the shim's own CPU seconds per 100 restarts (and, apart, its reaped
  children's: the container's processes and, for runc, the runtime's commands); and the restart
  latency exit -> running again (SIGKILL of ``sleep`` -> the next ``task.start`` read by the
  client; and the shim's own ``exited_at`` -> ``started_at``), process runtime and runc,
  beside what docker, Supervisor and systemd do (ANCHORS.md).

``--shared N``: the opt-in shared shim (docs/design.md, section 7) alone: ``--shims`` programs
started through the launcher, one shim each, then in groups of N, then all in one group; PSS
per program (every shim process's PSS and the launcher's, summed, divided by the programs),
beside Supervisor's (no process per program; its daemon's PSS per program, ANCHORS.md).

Every process it starts is ended by pid: the bench is a child subreaper, so the detached shims
are reparented to it and reaped here.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from events import shim_api, wire
from events.rpc import BlockingConnection

ANCHORS = {
    "containerd-shim-runc-v2 at 50": (13.2, 2.6),
    "conmon": (2.1, 0.47),
}

def memory(pid: int) -> tuple[float, float, float]:
    """(RSS, PSS, PSS of anonymous memory) in MB from smaps_rollup. The anonymous part is
    what each shim really costs; the file-backed part (libpython, .so files) is shared with
    every other Python process on the machine, so it varies with what else runs."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:", "Pss_Anon:"):
                values[parts[0]] = int(parts[1]) / 1024
    return values["Rss:"], values["Pss:"], values["Pss_Anon:"]


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Bench:
    def __init__(self, root: str) -> None:
        self.root = root
        self.pids: dict[int, int | None] = {}  # pid -> start time (pids get reused)
        self.n = 0

    def spec(self, command: list[str], **extra: Any) -> str:
        self.n += 1
        cid = f"b{self.n}"
        directory = shim_api.shim_dir(self.root, cid)
        directory.mkdir(parents=True)
        shim_api.write_spec(directory, {"id": cid, "instance": f"{cid}-1", "command": command,
                                        "env": {"PATH": "/usr/bin:/bin"}, **extra})
        return cid

    def start(self, command: list[str], **extra: Any) -> tuple[dict[str, Any], float]:
        cid = self.spec(command, **extra)
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-I", "-m", "shim", "start", "--root", self.root,
                               "--id", cid], capture_output=True, text=True, timeout=30)
        elapsed = time.perf_counter() - began
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        ready = json.loads(proc.stdout)
        self.track(ready["pid"], ready["task_pid"])
        return ready, elapsed

    def delete(self, ready: dict[str, Any]) -> None:
        with contextlib.suppress(OSError), BlockingConnection(ready["address"], timeout=5) as c:
            c.call("delete", force=True)

    def track(self, *pids: int) -> None:
        for pid in pids:
            self.pids.setdefault(pid, start_time(pid))

    def cleanup(self) -> None:
        """SIGKILL what we started and is still alive as itself; reap what comes to us."""
        for pid, started in self.pids.items():
            if started is not None and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.01)


def exit_latency(ready: dict[str, Any]) -> float:
    with BlockingConnection(ready["address"], timeout=10) as conn:
        conn.send_request("events")
        while conn.recv()["item"]["type"] != "task.start":
            pass
        began = time.perf_counter()
        os.kill(ready["task_pid"], signal.SIGKILL)
        while conn.recv()["item"]["type"] != "task.exit":
            pass
        return time.perf_counter() - began


#: What the systems people compare us with do after an exit (shared/ANCHORS.md).
RESTART_ANCHORS = [
    ("docker --restart", "100 ms doubling (reset after 10 s up); none while dockerd is down"),
    ("Supervisor autorestart", "at once, no delay, no limit once RUNNING; children die with it"),
    ("systemd Restart=", "RestartSec 100 ms; StartLimitBurst"),
]

ALWAYS_AT_ONCE = {"policy": "always", "delay": 0}


def cpu_ticks(pid: int) -> tuple[int, int]:
    """(utime + stime, cutime + cstime) of *pid*: its own CPU, and its reaped children's."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class Stream:
    """The daemon's side: one events stream, every item acknowledged as it arrives."""

    def __init__(self, address: str) -> None:
        self.conn = BlockingConnection(address, timeout=30)
        self.rid = self.conn.send_request("events")

    def next(self, etype: str) -> dict[str, Any]:
        while True:
            message = self.conn.recv()
            if message.get("id") == self.rid and "item" in message:
                item = message["item"]
                self.conn.send_request("ack", {"seq": item["seq"]})
                if item["type"] == etype:
                    return dict(item["data"])

    def close(self) -> None:
        self.conn.close()


def crash_loop_cpu(bench: Bench, restarts: int, **spec: Any) -> tuple[float, float, float]:
    """CPU seconds per 100 restarts of ``exit 1`` under ``always`` with no back-off: the
    shim's own, its reaped children's; and the restarts per second achieved."""
    ready, _ = bench.start(["sh", "-c", "exit 1"], restart=ALWAYS_AT_ONCE, **spec)
    stream = Stream(ready["address"])
    try:
        stream.conn.send_request("start")  # (call() would skip the events meanwhile)
        for _ in range(5):  # warm up
            stream.next("task.start")
        hz = os.sysconf("SC_CLK_TCK")
        own0, kids0 = cpu_ticks(ready["pid"])
        began = time.perf_counter()
        for _ in range(restarts):
            bench.track(stream.next("task.start")["pid"])
        elapsed = time.perf_counter() - began
        own1, kids1 = cpu_ticks(ready["pid"])
    finally:
        stream.close()
        bench.delete(ready)
    per100 = 100 / restarts / hz
    return (own1 - own0) * per100, (kids1 - kids0) * per100, restarts / elapsed


def restart_latency(bench: Bench, runs: int, **spec: Any) -> tuple[float, float]:
    """Medians (ms): SIGKILL of the task -> its next ``task.start`` read by the client, and
    the shim's own ``exited_at`` -> ``started_at``."""
    ready, _ = bench.start(["sleep", "1000"], restart=ALWAYS_AT_ONCE, **spec)
    stream = Stream(ready["address"])
    seen, own = [], []
    try:
        stream.conn.send_request("start")  # (call() would skip the events meanwhile)
        pid = stream.next("task.start")["pid"]
        for _ in range(runs):
            began = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            exited = stream.next("task.exit")
            started = stream.next("task.start")
            seen.append(time.perf_counter() - began)
            own.append((started["started_at"] - exited["exited_at"]) / 1e9)
            pid = started["pid"]
            bench.track(pid)
    finally:
        stream.close()
        bench.delete(ready)
    return statistics.median(seen) * 1e3, statistics.median(own) * 1e3


def restart_rows(bench: Bench, restarts: int, runs: int) -> list[tuple[str, str, str, str]]:
    rows = []
    own, kids, rate = crash_loop_cpu(bench, restarts)
    rows.append((f"crash loop, process runtime: CPU s per 100 restarts, shim / children "
                 f"({restarts} restarts, {rate:.0f}/s)", f"{own:.2f} / {kids:.2f} s", "", ""))
    seen, shim = restart_latency(bench, runs)
    rows.append(("restart latency, process runtime: kill -> task.start read / shim's own",
                 f"{seen:.1f} / {shim:.1f} ms", "", "delay 0"))
    oci = oci_spec(bench.root)
    if oci is None:
        rows.append(("restart with runc", "not measured: runc or busybox-static missing", "",
                     ""))
    else:
        own, kids, rate = crash_loop_cpu(bench, max(20, restarts // 5), **oci)
        rows.append((f"crash loop, runc: CPU s per 100 restarts, shim / children "
                     f"({max(20, restarts // 5)} restarts, {rate:.0f}/s)",
                     f"{own:.2f} / {kids:.2f} s", "", "children: runc create/start/delete"))
        seen, shim = restart_latency(bench, max(5, runs // 3), **oci)
        rows.append(("restart latency, runc: kill -> task.start read / shim's own",
                     f"{seen:.1f} / {shim:.1f} ms", "", "delete, create, start"))
    rows += [(f"anchor: {name}", what, "", "ANCHORS.md") for name, what in RESTART_ANCHORS]
    return rows


def oci_spec(root: str) -> dict[str, Any] | None:
    """runc with a busybox root filesystem, when both are there."""
    if shutil.which("runc") is None:  # (this script is named shim.py: no ``import shim`` here)
        return None
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    try:
        from oci_helpers import build_busybox_rootfs

        rootfs = build_busybox_rootfs(os.path.join(root, "rootfs"))
    except (ImportError, RuntimeError):
        return None
    return {"runtime": "runc", "rootfs": str(rootfs)}


def log_throughput(bench: Bench, size: int = 100_000_000) -> tuple[float, float]:
    """MB/s of a container writing 37-byte lines as fast as it can: through the shim (start ->
    exit, every line in container.log) and, for reference, the same command into /dev/null."""
    script = f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}"
    began = time.perf_counter()
    subprocess.run(["sh", "-c", script + " > /dev/null"], check=True)
    direct = size / (time.perf_counter() - began) / 1e6
    ready, _ = bench.start(["sh", "-c", script])
    with BlockingConnection(ready["address"], timeout=60) as conn:
        began = time.perf_counter()
        conn.call("start")
        conn.call("wait")
        shim = size / (time.perf_counter() - began) / 1e6
    bench.delete(ready)
    return shim, direct


def run_started(bench: Bench, count: int) -> list[dict[str, Any]]:
    shims = []
    for _ in range(count):
        ready, _ = bench.start(["sleep", "1000"])
        with BlockingConnection(ready["address"], timeout=10) as conn:
            conn.call("start")
        shims.append(ready)
    return shims


class LauncherChannel:
    """``python -I -m shim launcher`` on a socketpair, as supervisord runs it."""

    def __init__(self, root: str) -> None:
        self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "shim", "launcher", "--root", root, "--fd",
             str(theirs.fileno()), "--title-space", "_" * 72],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self.decoder = wire.FrameDecoder()
        self.pending: list[dict[str, Any]] = []
        self.rid = 0
        self.recv()  # hello: preloaded and frozen

    def recv(self) -> dict[str, Any]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the launcher closed its channel")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def start(self, cid: str) -> dict[str, Any]:
        self.rid += 1
        self.sock.sendall(wire.encode(wire.request(self.rid, "start", {"id": cid})))
        reply = self.recv()
        if "result" not in reply:
            raise RuntimeError(reply)
        return reply["result"]

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(5)


def launcher_experiment(bench: Bench, count: int, runs: int) -> dict[str, float]:
    """Shims forked from ``python -I -m shim launcher`` (what supervisord uses): ready latency
    and memory, the launcher's own PSS shared out among the shims."""
    launcher = LauncherChannel(bench.root)
    bench.track(launcher.proc.pid)
    try:
        latencies, shims = [], []
        for i in range(max(count, runs)):
            cid = bench.spec(["sleep", "1000"])
            began = time.perf_counter()
            ready = launcher.start(cid)
            latencies.append(time.perf_counter() - began)
            bench.track(ready["pid"], ready["task_pid"])
            if i >= count:
                bench.delete(ready)
                continue
            with BlockingConnection(ready["address"], timeout=10) as conn:
                conn.call("start")
            shims.append(ready)
        time.sleep(0.5)
        mems = [memory(s["pid"]) for s in shims]
        launcher_pss = memory(launcher.proc.pid)[1]
        exits = [exit_latency(s) for s in shims[:10]]
        for ready in shims:
            bench.delete(ready)
        return {"ready_ms": statistics.median(latencies) * 1e3,
                "ready_p90": statistics.quantiles(latencies, n=10)[-1] * 1e3,
                "rss": statistics.mean(m[0] for m in mems),
                "pss": statistics.mean(m[1] for m in mems),
                "anon": statistics.mean(m[2] for m in mems),
                "launcher_pss": launcher_pss,
                "pss_with_launcher": statistics.mean(m[1] for m in mems) + launcher_pss / count,
                "exit_ms": statistics.median(exits) * 1e3}
    finally:
        launcher.close()


def shared_experiment(bench: Bench, count: int, size: int) -> dict[str, float]:
    """*count* ``sleep`` programs through the launcher, in groups of *size* (1: a shim each):
    shim processes, and PSS (and its anonymous part) per program, the launcher's included."""
    launcher = LauncherChannel(bench.root)
    bench.track(launcher.proc.pid)
    try:
        started = []
        for i in range(count):
            extra = {"shim_group": f"g{i // size}"} if size > 1 else {}
            ready = launcher.start(bench.spec(["sleep", "1000"], **extra))
            bench.track(ready["pid"], ready["task_pid"])
            with BlockingConnection(ready["address"], timeout=10) as conn:
                conn.call("start")
            started.append(ready)
        time.sleep(0.5)
        pids = {r["pid"] for r in started}
        mems = [memory(pid) for pid in pids] + [memory(launcher.proc.pid)]
        for ready in started:
            bench.delete(ready)
        return {"processes": len(pids), "pss": sum(m[1] for m in mems) / count,
                "anon": sum(m[2] for m in mems) / count}
    finally:
        launcher.close()


def shared_main(count: int, size: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    root = tempfile.mkdtemp(prefix="tether-bench-")
    bench = Bench(root)
    sizes = sorted({1, size, count})
    try:
        results = {n: shared_experiment(bench, count, n) for n in sizes}
    finally:
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)
    print(f"{count} sleep programs through the launcher; PSS per program = (every shim's PSS "
          "+ the launcher's) / programs")
    print(f"{'shims':<28}  {'processes':>9}  {'PSS per program (anon)':>24}  note")
    for n in sizes:
        r = results[n]
        what = "one shim each" if n == 1 else f"groups of {n} (--shim-group)"
        print(f"{what:<28}  {r['processes']:>9.0f}  {r['pss']:>15.2f} ({r['anon']:.2f}) MB  "
              f"{'<= 0.5 MB goal' if n > 1 else ''}")
    print(f"{'Supervisor (ANCHORS.md)':<28}  {0:>9}  {25.8 / 50:>15.2f} MB"
          "          its daemon's PSS at 50 / 50: no process per program")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shims", type=int, default=50)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--restarts", type=int, default=200,
                        help="restarts of the crash-loop measurement (0: skip supervision)")
    parser.add_argument("--shared", type=int, metavar="N", default=0,
                        help="measure only the shared shim: --shims programs in groups of N")
    args = parser.parse_args()
    if args.shared:
        shared_main(args.shims, args.shared)
        return
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    root = tempfile.mkdtemp(prefix="tether-bench-")
    bench = Bench(root)
    try:
        ready_times = []
        for _ in range(args.runs):
            ready, elapsed = bench.start(["sleep", "1000"])
            ready_times.append(elapsed)
            bench.delete(ready)
        idle = run_started(bench, 1)[0]
        time.sleep(0.5)
        idle_mem = memory(idle["pid"])
        bench.delete(idle)
        shims = run_started(bench, args.shims)
        time.sleep(0.5)
        mems = [memory(s["pid"]) for s in shims]
        exits = [exit_latency(s) for s in shims[: min(20, len(shims))]]
        for ready in shims:
            bench.delete(ready)
        forked = launcher_experiment(bench, args.shims, args.runs)
        through_shim, direct = log_throughput(bench)
        supervision = restart_rows(bench, args.restarts, args.runs) if args.restarts else []
    finally:
        bench.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    q = statistics.quantiles(ready_times, n=10)
    n = args.shims
    mean = [statistics.mean(m[i] for m in mems) for i in range(3)]
    rows = [
        ("spawn -> ready (median / p90)",
         f"{statistics.median(ready_times) * 1e3:.1f} / {q[-1] * 1e3:.1f} ms",
         f"{forked['ready_ms']:.1f} / {forked['ready_p90']:.1f} ms", "<= 20 ms goal"),
        ("one idle shim: RSS / PSS (anon)", "{:.1f} / {:.1f} ({:.1f}) MB".format(*idle_mem),
         "", ""),
        (f"mean per shim with {n} running: RSS / PSS (anon)",
         "{:.1f} / {:.1f} ({:.1f}) MB".format(*mean),
         f"{forked['rss']:.1f} / {forked['pss']:.1f} ({forked['anon']:.1f}) MB",
         "<= 7 MB PSS goal"),
        (f"PSS per shim at {n}, the launcher's share included", f"{mean[1]:.2f} MB",
         f"{forked['pss_with_launcher']:.2f} MB", "<= 2.6 MB stretch"),
        ("the launcher's own PSS", "", f"{forked['launcher_pss']:.1f} MB", ""),
        ("exit -> task.exit event (median of SIGKILLs)",
         f"{statistics.median(exits) * 1e3:.2f} ms", f"{forked['exit_ms']:.2f} ms",
         "ctr events: 2.2 ms"),
        ("container writing 37-byte lines: via the shim's log / to /dev/null",
         f"{through_shim:.0f} / {direct:.0f} MB/s", "", "CRI records, fsync-free"),
    ]
    rows += [(f"anchor: {name}: RSS / PSS", f"{rss} / {pss} MB", "", "ANCHORS.md")
             for name, (rss, pss) in ANCHORS.items()]
    rows += supervision
    width = max(len(r[0]) for r in rows)
    print(f"{'what':{width}}  {'shim start (fresh)':>24}  {'shim launcher':>24}  note")
    for what, fresh, launched, note in rows:
        print(f"{what:{width}}  {fresh:>24}  {launched:>24}  {note}")


if __name__ == "__main__":
    main()
