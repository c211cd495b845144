"""Tether side by side with containerd 1.6 (``ctr``, runc) and Debian's Supervisor 4.2, in one run.

    sudo .venv/bin/python bench/compare.py [--rounds 7] [--only ROW[,ROW...]] [--large 1000]

Run as root (OCI runtimes, cgroups). It installs what is missing with apt-get (containerd,
supervisor, runc, busybox-static; never in CI), then starts, each on private paths under one
temp directory: Debian's containerd from a generated config (its own socket, root, state, runc
root and ``ctr`` namespace), Debian's supervisord from a generated config (its own socket), and
our supervisord on a private root. Nothing uses the machine's own services or default paths.

Every row is measured interleaved round by round (the order of the systems alternates each
round, so a drift of the machine's load hits both alike) and printed as medians with the ratio
Tether / other: this machine is shared and noisy, so only ratios measured side by side mean
anything. Rows (``--only`` takes these keys; some build state that later rows need, and
``--only`` builds just that):

==============  ===============================================================================
run             whole ``supervisorctl run --runtime runc --rootfs R`` vs ``ctr run -d --null-io
                --rootfs R`` (each until its process exits: the container is running)
rm              ``supervisorctl rm -f`` of a running container vs ``ctr task delete -f`` +
                ``ctr container delete``
inproc-run      run -> running through the blocking client in-process vs bare ``runc run -d``
exit            SIGKILL of a runc container's init -> its exit seen by a live subscriber
                (Tether's ``events`` stream in-process) vs a running ``ctr events`` (p50, p99)
ps              ``supervisorctl ps`` vs ``ctr task ls``, 20 runc containers running on each
status          ``supervisorctl status`` vs ``ctr task ls``, 20 running
restart         daemon kill -9, restart, until the CLI lists all 20 running
start50         50 ``sleep`` programs started through the client library (10 connections) vs
                supervisord exec -> 50 RUNNING from its config (``startsecs=0``)
ps70            ``supervisorctl ps`` (70) vs Supervisor's ``supervisorctl status`` (50)
shim-memory     PSS of one shim (mean of the 50 process shims) vs Supervisor's per-program cost
shared-shim     50 more ``sleep`` programs in shared shims, groups of 10 (``shim_group``): the
                group processes' PSS and the launcher's, per program, vs supervisord's PSS / 50
daemon-memory   daemon PSS with 70 containers vs supervisord with 50 programs
appenders       64 concurrent durable appenders through the daemon's LogWriter (events/s) vs
                the log alone taking batches of 64 (the ceiling the scheduler leaves)
shim-pss        mean shim PSS with 50 runc containers vs containerd-shim-runc-v2 at 50
restart-large   daemon kill -9 -> all N (``--large``, default 1,000) listed running (Tether only;
                goal 1 s)
==============  ===============================================================================

Every process it started (daemons, shims, containers, launchers) is ended by pid at the end and
on Ctrl-C: they all name the temp directory in their command line or descend from one that does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
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

ROWS = ("run", "rm", "inproc-run", "exit", "ps", "status", "restart", "start50", "ps70",
        "shim-memory", "shared-shim", "daemon-memory", "appenders", "shim-pss", "restart-large")
AT = 20  # running containers on each side for ps / status / restart
MANY = 50  # programs for start50 and the memory rows
SLEEP = ["/bin/sleep", "100000"]


class Row:
    """One line of the table: Tether's samples and the other system's, with what each is."""

    def __init__(self, key: str, what: str, other: str, unit: str = "ms", goal: str = "",
                 higher_is_better: bool = False) -> None:
        self.key = key
        self.what = what
        self.other = other
        self.unit = unit
        self.goal = goal
        self.higher_is_better = higher_is_better
        self.tether: list[float] = []
        self.theirs: list[float] = []
        self.note = ""

    def value(self, samples: list[float]) -> float | None:
        return statistics.median(samples) if samples else None

    def ratio(self) -> float | None:
        a, b = self.value(self.tether), self.value(self.theirs)
        if a is None or b is None or b == 0:
            return None
        return a / b


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def interleaved(rounds: int, tether: Callable[[], Any], other: Callable[[], Any]) -> None:
    """Call both once per round, alternating which goes first."""
    for r in range(rounds):
        for f in ((tether, other) if r % 2 == 0 else (other, tether)):
            f()


class Compare:
    def __init__(self, base: Path, rounds: int, only: set[str], large: int) -> None:
        self.base = base
        self.rounds = rounds
        self.only = only
        self.large = large
        self.rows: dict[str, Row] = {}
        self.rootfs = build_busybox_rootfs(base / "rootfs")
        self.tether = cs.Tether(base)
        self.containerd = cs.Containerd(base)
        self.supervisor = cs.DebianSupervisor(base)
        self.bare = cs.BareRunc(base, self.rootfs)
        self.n = 0  # container names
        self.token = base.name.split("-", 1)[1].lower().replace("_", "0")

    def want(self, *keys: str) -> bool:
        return any(k in self.only for k in keys)

    def row(self, key: str, *args: Any, **kwargs: Any) -> Row:
        self.rows[key] = Row(key, *args, **kwargs)
        return self.rows[key]

    def name(self, prefix: str) -> str:
        """A container name that carries this run's token (its cgroups are found by it)."""
        self.n += 1
        return f"{prefix}{self.n}-{self.token}"

    def say(self, text: str) -> None:
        print(f"compare: {text}", file=sys.stderr, flush=True)

    # -- helpers per system ---------------------------------------------------------------

    def tether_spec(self, runtime: str = "runc", name: str | None = None) -> dict[str, Any]:
        spec: dict[str, Any] = {"command": SLEEP, "runtime": runtime}
        if runtime != "process":
            spec["rootfs"] = str(self.rootfs)
        if name:
            spec["name"] = name
        return spec

    def tether_run_inproc(self, runtime: str = "runc", name: str | None = None) -> dict[str, Any]:
        with self.tether.conn() as c:
            return c.call("run", spec=self.tether_spec(runtime, name))

    def tether_rm(self, cid: str) -> None:
        with self.tether.conn() as c:
            c.call("rm", id=cid, force=True)

    def ctr_run(self, cid: str) -> float:
        took, _ = cs.timed(self.containerd.run_argv(cid, self.rootfs, SLEEP))
        return took

    def ctr_rm(self, cid: str) -> float:
        total = 0.0
        for argv in self.containerd.rm_argvs(cid):
            took, _ = cs.timed(argv)
            total += took
        return total

    def fill(self, tether_n: int, containerd_n: int) -> None:
        """Bring the runc containers of each side up to the given counts (untimed)."""
        have = sum(1 for r in self.tether.ps() if r["runtime"] == "runc")
        for _ in range(max(0, tether_n - have)):
            self.tether_run_inproc("runc", self.name("tr"))
        have = len(self.containerd.tasks())
        for _ in range(max(0, containerd_n - have)):
            self.ctr_run(self.name("cr"))

    # -- rows on empty systems ------------------------------------------------------------

    def run_and_rm(self) -> None:
        run = self.row("run", "run a runc busybox container, whole CLI",
                       "ctr run -d --null-io --rootfs", goal="<= 1.0")
        rm = self.row("rm", "rm -f a running container, whole CLI",
                      "ctr task delete -f + ctr container delete")

        def tether() -> None:
            cid = self.name("r")
            took, _ = cs.timed(self.tether.ctl("run", "--name", cid, "--runtime", "runc",
                                               "--rootfs", str(self.rootfs), "--", *SLEEP))
            run.tether.append(ms(took))
            took, _ = cs.timed(self.tether.ctl("rm", "-f", cid))
            rm.tether.append(ms(took))

        def other() -> None:
            cid = self.name("c")
            run.theirs.append(ms(self.ctr_run(cid)))
            rm.theirs.append(ms(self.ctr_rm(cid)))

        interleaved(self.rounds, tether, other)

    def inproc_run(self) -> None:
        row = self.row("inproc-run", "run -> running, in-process client (runc)",
                       "bare runc run -d", goal="<= bare + 10 ms")

        def tether() -> None:
            t = time.perf_counter()
            cid = self.tether_run_inproc("runc", self.name("i"))["id"]
            row.tether.append(ms(time.perf_counter() - t))
            self.tether_rm(cid)

        def other() -> None:
            cid, bundle = self.bare.bundle(SLEEP)
            took, _ = cs.timed(self.bare.run_argv(cid, bundle), detaches=True)
            row.theirs.append(ms(took))
            self.bare.delete(cid)

        interleaved(self.rounds, tether, other)
        diff = (row.value(row.tether) or 0) - (row.value(row.theirs) or 0)
        row.note = f"Tether - bare = {diff:+.1f} ms"

    def exit_latency(self, per_round: int = 3) -> None:
        p50 = self.row("exit", "exit -> live subscriber, p50 (runc, SIGKILL)",
                       "ctr events (/tasks/exit)", goal="<= 2 ms")
        p99 = self.row("exit-p99", "exit -> live subscriber, p99", "ctr events",
                       goal="<= 10 ms")
        seen_t: queue.Queue[tuple[str, int]] = queue.Queue()
        seen_c: queue.Queue[tuple[str, int]] = queue.Queue()
        with self.tether.conn() as c:
            since = c.call("status")["last_seq"]
        stop = threading.Event()

        def follow_tether() -> None:
            try:
                with self.tether.conn(timeout=None) as c:
                    for item in c.stream("events", since=since, follow=True,
                                         types=["task.exit"]):
                        seen_t.put((item["id"], time.time_ns()))
                        if stop.is_set():
                            return
            except (OSError, ValueError):
                pass

        def follow_ctr(proc: Any) -> None:
            pattern = re.compile(rb'"container_id":"([^"]+)"')
            for line in proc.stdout:
                now = time.time_ns()
                if b"/tasks/exit" in line:
                    m = pattern.search(line)
                    if m:
                        seen_c.put((m.group(1).decode(), now))

        def wait_for(q: queue.Queue[tuple[str, int]], cid: str) -> int:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    got, at = q.get(timeout=1)
                except queue.Empty:
                    continue
                if got == cid:
                    return at
            raise RuntimeError(f"no exit event for {cid} within 30 s")

        tether_lat: list[float] = []
        ctr_lat: list[float] = []
        threading.Thread(target=follow_tether, daemon=True).start()
        with cs.line_reader(self.containerd.ctr("events")) as events:
            threading.Thread(target=follow_ctr, args=(events,), daemon=True).start()
            time.sleep(0.3)  # both subscribed

            def tether() -> None:
                for _ in range(per_round):
                    r = self.tether_run_inproc("runc", self.name("e"))
                    time.sleep(0.05)
                    t0 = time.time_ns()
                    os.kill(r["pid"], signal.SIGKILL)
                    tether_lat.append((wait_for(seen_t, r["id"]) - t0) / 1e6)
                    self.tether_rm(r["id"])

            def other() -> None:
                for _ in range(per_round):
                    cid = self.name("e")
                    self.ctr_run(cid)
                    pid = self.containerd.tasks()[cid][0]
                    time.sleep(0.05)
                    t0 = time.time_ns()
                    os.kill(pid, signal.SIGKILL)
                    ctr_lat.append((wait_for(seen_c, cid) - t0) / 1e6)
                    self.ctr_rm(cid)

            interleaved(self.rounds, tether, other)
        stop.set()
        p50.tether, p50.theirs = tether_lat, ctr_lat
        p99.tether, p99.theirs = [pct(tether_lat, 99)], [pct(ctr_lat, 99)]
        p50.note = f"{len(tether_lat)} exits each"

    # -- rows at 20 running ---------------------------------------------------------------

    def list_rows(self) -> None:
        ps = self.row("ps", f"list {AT} running, whole CLI (supervisorctl ps)", "ctr task ls",
                      goal="<= 1.2")
        status = self.row("status", f"supervisorctl status, {AT} running", "ctr task ls",
                          goal="<= 1.2")

        def tether() -> None:
            ps.tether.append(ms(cs.timed(self.tether.ctl("ps"))[0]))
            # Supervisor's status: exit 3 when a program is not running
            status.tether.append(ms(cs.timed(self.tether.ctl("status"), ok=(0, 3))[0]))

        def other() -> None:
            ps.theirs.append(ms(cs.timed(self.containerd.ctr("task", "ls"))[0]))
            status.theirs.append(ms(cs.timed(self.containerd.ctr("task", "ls"))[0]))

        interleaved(self.rounds, tether, other)

    def restart(self, key: str, count: int, rounds: int, with_containerd: bool) -> None:
        row = self.row(key, f"daemon kill -9, restart, until all {count} listed running",
                       "containerd (ctr task ls)" if with_containerd else "-",
                       goal="<= 2.0" if with_containerd else "<= 1000 ms")
        listen_t: list[float] = []
        listen_c: list[float] = []

        def tether() -> None:
            self.tether.kill9()
            t0 = time.perf_counter()
            self.tether.start()
            listen_t.append(ms(time.perf_counter() - t0))
            while True:
                _, proc = cs.timed(self.tether.ctl("ps", "--json"))
                rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
                if sum(1 for r in rows if r.get("state") == "running") >= count:
                    break
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("Tether: not all running 120 s after a restart")
            row.tether.append(ms(time.perf_counter() - t0))
            self.tether.wait_launcher()

        def other() -> None:
            self.containerd.kill9()
            t0 = time.perf_counter()
            self.containerd.start()
            listen_c.append(ms(time.perf_counter() - t0))
            while True:
                _, proc = cs.timed(self.containerd.ctr("task", "ls"))
                tasks = cs.parse_task_ls(proc.stdout.decode())
                if sum(1 for _, st in tasks.values() if st == "RUNNING") >= count:
                    break
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("containerd: not all running 120 s after a restart")
            row.theirs.append(ms(time.perf_counter() - t0))

        if with_containerd:
            interleaved(rounds, tether, other)
            row.note = (f"socket listening after {statistics.median(listen_t):.0f} / "
                        f"{statistics.median(listen_c):.0f} ms")
        else:
            for _ in range(rounds):
                tether()
            row.note = f"socket listening after {statistics.median(listen_t):.0f} ms"

    # -- 50 programs -----------------------------------------------------------------------

    def start50(self) -> None:
        row = self.row("start50", f"{MANY} sleep programs started (client library, 10 conns)",
                       "supervisord exec -> all RUNNING (its config)")
        self.supervisor.write_config(MANY)
        rounds_left = self.rounds
        kept: list[str] = []

        def tether() -> None:
            import trio

            from supervisor.client import connect

            names = [self.name("p") for _ in range(MANY)]

            async def starter(chunk: list[str]) -> None:
                async with await connect(socket=self.tether.sock) as client:
                    for name in chunk:
                        await client.call("run", spec=self.tether_spec("process", name))

            async def all_of_them() -> float:
                t = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for k in range(10):
                        nursery.start_soon(starter, names[k::10])
                return time.perf_counter() - t

            row.tether.append(ms(trio.run(all_of_them)))
            if rounds_left > 1:
                with self.tether.conn() as c:
                    for name in names:
                        c.call("rm", id=name, force=True)
            else:
                kept.extend(names)

        def other() -> None:
            t0 = time.perf_counter()
            self.supervisor.start()
            self.supervisor.wait_connectable()
            while self.supervisor.running_count() < MANY:
                if time.perf_counter() - t0 > 120:
                    raise RuntimeError("supervisord: programs not RUNNING within 120 s")
                time.sleep(0.002)
            row.theirs.append(ms(time.perf_counter() - t0))
            if rounds_left > 1:
                self.supervisor.stop()

        for r in range(self.rounds):
            for f in ((tether, other) if r % 2 == 0 else (other, tether)):
                f()
            rounds_left -= 1

    def at70(self) -> None:
        total = len(self.tether.ps())
        if self.want("ps70"):
            row = self.row("ps70", f"supervisorctl ps ({total}) vs Supervisor's supervisorctl "
                           f"status ({MANY})", "/usr/bin/supervisorctl status")
            interleaved(self.rounds,
                        lambda: row.tether.append(ms(cs.timed(self.tether.ctl("ps"))[0])),
                        lambda: row.theirs.append(ms(self._supervisor_status())))
        process_shims = [r["id"] for r in self.tether.ps() if r["runtime"] == "process"]
        shim_pids = self.tether.shim_pids()
        if self.want("shim-memory"):
            row = self.row("shim-memory", f"memory per program: mean shim PSS ({len(shim_pids)} "
                           "shims)", "Supervisor (no per-program process)", unit="MB",
                           goal="<= 2.0 MB (0.5 shared)")
            pss = [cs.pss_kb(pid) for pid in shim_pids]
            row.tether = [statistics.mean(p["Pss"] for p in pss) / 1024]
            row.theirs = [0.0]
            launcher = self.tether.launcher_pid()
            anon = statistics.mean(p["Pss_Anon"] for p in pss) / 1024
            lpss = cs.pss_kb(launcher)["Pss"] / 1024 if launcher else 0.0
            row.note = (f"of which anon {anon:.2f} MB; launcher {lpss:.1f} MB; "
                        f"{len(process_shims)} process + {len(shim_pids) - len(process_shims)} "
                        "runc shims")
        if self.want("daemon-memory"):
            row = self.row("daemon-memory", f"daemon PSS, {total} containers vs supervisord, "
                           f"{MANY}", "supervisord (Debian)", unit="MB")
            row.tether = [cs.pss_kb(self.tether.pid())["Pss"] / 1024]
            row.theirs = [cs.pss_kb(self.supervisor.pid())["Pss"] / 1024]

    def shared_shim(self, size: int = 10) -> None:
        """The opt-in shared shim beside Supervisor (no process per program): *MANY* ``sleep``
        programs in groups of *size*, PSS per program = (the group processes' PSS + the whole
        launcher's) / programs, as ``bench/shim.py --shared`` counts it; Supervisor's is its
        daemon's PSS with its *MANY* programs, divided by them. Removed afterwards."""
        row = self.row("shared-shim", f"memory per program: shared shim, groups of {size} "
                       f"({MANY})", "Supervisor (its daemon's PSS / programs)", unit="MB",
                       goal="<= 0.5 MB")
        names = [self.name("g") for _ in range(MANY)]
        group = self.name("grp")
        with self.tether.conn() as c:
            for k, name in enumerate(names):
                c.call("run", spec={**self.tether_spec("process", name),
                                    "shim_group": f"{group}-{k // size}"})
            pids = {int(c.call("inspect", id=name)["shim_pid"]) for name in names}
            pss = [cs.pss_kb(pid) for pid in pids]
            launcher = self.tether.launcher_pid()
            lpss = cs.pss_kb(launcher)["Pss"] if launcher else 0
            row.tether = [(sum(p["Pss"] for p in pss) + lpss) / 1024 / MANY]
            row.theirs = [cs.pss_kb(self.supervisor.pid())["Pss"] / 1024 / MANY]
            anon = sum(p["Pss_Anon"] for p in pss) / 1024 / MANY
            row.note = (f"{len(pids)} group processes; anon {anon:.2f} MB a program, "
                        f"the launcher's {lpss / 1024:.1f} MB shared out")
            for name in names:
                c.call("rm", id=name, force=True)

    def _supervisor_status(self) -> float:
        argv = self.supervisor.status_argv()
        t = time.perf_counter()
        proc = cs.subprocess.run(argv, stdin=cs.subprocess.DEVNULL, capture_output=True,
                                 env=cs._clean_env(), check=False)
        took = time.perf_counter() - t
        if proc.returncode not in (0, 3) or proc.stdout.count(b"RUNNING") < MANY:
            raise RuntimeError(f"Supervisor's status failed: {proc.stdout!r} {proc.stderr!r}")
        return took

    def drop_programs(self) -> None:
        """End the 50 programs on both sides (before the runc-only rows)."""
        self.supervisor.stop()
        with self.tether.conn() as c:
            for r in c.call("ps", all=True):
                if r["runtime"] == "process":
                    c.call("rm", id=r["id"], force=True)

    # -- the log ---------------------------------------------------------------------------

    def appenders(self, seconds: float = 1.0) -> None:
        from eventlog import bench_batches, bench_group_commit, bench_writer_alone

        row = self.row("appenders", "64 concurrent durable appenders (LogWriter)",
                       "the log alone, batches of 64", unit="ev/s", goal=">= 100,000/s",
                       higher_is_better=True)
        where = self.base / "log"
        where.mkdir()
        batches: list[float] = []

        def tether() -> None:
            r = bench_group_commit(where, 64, seconds)
            row.tether.append(r["rate"])
            batches.append(r["batch"])

        def other() -> None:
            row.theirs.append(bench_batches(where, 64, 2000))

        interleaved(self.rounds, tether, other)
        alone = bench_writer_alone(64, seconds)
        row.note = (f"{statistics.median(batches):.0f} events per fdatasync; the same writer "
                    f"with a no-op log: {alone:,.0f}/s")

    # -- memory at 50 runc -----------------------------------------------------------------

    def shim_pss(self) -> None:
        self.fill(MANY, MANY)
        t_pids = [pid for pid in self.tether.shim_pids()]
        c_pids = self.containerd.shim_pids()
        row = self.row("shim-pss", f"shim PSS at {MANY} runc containers (mean)",
                       "containerd-shim-runc-v2", unit="MB", goal="<= 2.0 MB")
        t = [cs.pss_kb(p) for p in t_pids]
        c = [cs.pss_kb(p) for p in c_pids]
        row.tether = [statistics.mean(p["Pss"] for p in t) / 1024]
        row.theirs = [statistics.mean(p["Pss"] for p in c) / 1024]
        row.note = (f"{len(t_pids)} vs {len(c_pids)} shims; anon "
                    f"{statistics.mean(p['Pss_Anon'] for p in t) / 1024:.2f} vs "
                    f"{statistics.mean(p['Pss_Anon'] for p in c) / 1024:.2f} MB")
        d = self.row("daemon-pss-50", f"daemon PSS at {MANY} runc containers", "containerd",
                     unit="MB")
        d.tether = [cs.pss_kb(self.tether.pid())["Pss"] / 1024]
        d.theirs = [cs.pss_kb(self.containerd.pid())["Pss"] / 1024]

    def restart_large(self) -> None:
        """Tether alone at N (process runtime: N runc containers would not fit here)."""
        from concurrent.futures import ThreadPoolExecutor

        self.containerd.remove_all()
        self.containerd.stop()
        have = len(self.tether.ps())
        self.say(f"starting {self.large - have} more containers for restart-large")

        def one(_: int) -> None:
            self.tether_run_inproc("process", self.name("L"))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(max(0, self.large - have))))
        self.restart("restart-large", self.large, max(1, min(self.rounds, 3)), False)

    # -- the whole run ---------------------------------------------------------------------

    def run(self) -> None:
        self.tether.start()
        self.tether.wait_launcher()
        self.containerd.start()
        if self.want("run", "rm"):
            self.say("run / rm")
            self.run_and_rm()
        if self.want("inproc-run"):
            self.say("in-process run vs bare runc")
            self.inproc_run()
        if self.want("exit"):
            self.say("exit -> subscriber")
            self.exit_latency()
        if self.want("ps", "status", "restart"):
            self.fill(AT, AT)
            if self.want("ps", "status"):
                self.say(f"ps / status at {AT}")
                self.list_rows()
            if self.want("restart"):
                self.say(f"restart at {AT}")
                self.restart("restart", AT, self.rounds, True)
        if self.want("start50", "ps70", "shim-memory", "shared-shim", "daemon-memory"):
            self.fill(AT, AT)
            self.say(f"{MANY} programs")
            self.start50()
            self.at70()
            if self.want("shared-shim"):
                self.shared_shim()
            self.drop_programs()
        if self.want("appenders"):
            self.say("64 appenders")
            self.appenders()
        if self.want("shim-pss"):
            self.say(f"shim PSS at {MANY}")
            self.shim_pss()
        if self.want("restart-large"):
            self.restart_large()

    def cleanup(self) -> None:
        for step in (self.supervisor.stop, self.containerd.remove_all, self.bare.remove_all):
            with contextlib.suppress(Exception):
                step()
        with contextlib.suppress(Exception):
            self.tether.stop()
        with contextlib.suppress(Exception):
            self.containerd.stop()
        killed = cs.kill_everything_under(str(self.base))
        if killed:  # the containers of the last rows are left running until here
            self.say(f"cleanup ended {killed} processes (daemons, shims, containers)")
        # what runc made outside our directory: the cgroups of the containers of all three
        # (the state directories are under ours); Tether's are found by our names' token
        for name in (cs.Containerd.NAMESPACE, cs.BareRunc.CGROUP_PARENT):
            remove_cgroup_tree(name)
        for name in cs.cgroups_under("tether", self.token):
            remove_cgroup_tree(name)


def print_table(cmp: Compare, rounds: int) -> None:
    rows = list(cmp.rows.values())
    print(f"\nTether side by side, one run, medians of {rounds} interleaved rounds "
          f"(ratio = Tether / other)\n")
    head = ("what", "Tether", "other", "ratio", "goal", "other is", "note")
    table = [head]
    for r in rows:
        a, b = r.value(r.tether), r.value(r.theirs)

        def fmt(v: float | None, unit: str) -> str:
            if v is None:
                return "-"
            if unit == "ev/s":
                return f"{v:,.0f}/s"
            return f"{v:.2f} {unit}" if unit == "MB" or v < 10 else f"{v:.0f} {unit}"

        ratio = r.ratio()
        table.append((r.what, fmt(a, r.unit), fmt(b, r.unit),
                      f"{ratio:.2f}" if ratio is not None and b else "-", r.goal, r.other,
                      r.note))
    widths = [max(len(str(line[i])) for line in table) for i in range(len(head))]
    for k, line in enumerate(table):
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\nversions: {cs.which_version([cs.CONTAINERD, '--version'])}; "
          f"{cs.which_version([cs.DEBIAN_SUPERVISORD, '--version'])} (supervisor); "
          f"{cs.which_version([cs.RUNC, '--version'])}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per row")
    ap.add_argument("--only", default="", help=f"comma-separated rows: {', '.join(ROWS)}")
    ap.add_argument("--large", type=int, default=1000,
                    help="containers for restart-large (default 1,000)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or set(ROWS)
    unknown = only - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    if os.geteuid() != 0:
        raise SystemExit("bench/compare.py needs root (runc, containerd, cgroups)")
    if not (cs.VENV_BIN / "supervisorctl").exists():
        raise SystemExit("no .venv/bin/supervisorctl: run `bash .ci/setup` first")
    cs.ensure_debian_packages(lambda text: print(text, file=sys.stderr, flush=True))
    # Stale bytecode would be compiled again by every CLI call and shim (PYTHONDONTWRITEBYTECODE
    # is common, and an edit since the last .ci/setup makes it stale): measure the real thing.
    cs.run_quiet([sys.executable, "-m", "compileall", "-q", *(str(cs.REPO / p)
                                                             for p in ("events", "shim",
                                                                       "supervisor"))])
    # Ctrl-C and SIGTERM both unwind through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    base = Path(tempfile.mkdtemp(prefix="tcmp-", dir="/tmp"))
    cmp = Compare(base, max(1, args.rounds), only, args.large)
    try:
        cmp.run()
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        cmp.cleanup()
        cs.remove_tree(base)
        if cmp.rows:
            print_table(cmp, cmp.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
