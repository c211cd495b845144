"""Where the time of a run, an exit and a restart goes, phase by phase (a printed table).

    sudo .venv/bin/python bench/phases.py [--runs 20] [--restart-at 20,1000]

On a private supervisord (``bench/compare_systems.Tether``), from the event log's own clocks:

* run -> running (in-process client; runc busybox and the process runtime): request -> the
  shim forked, set up, its runtime returned, the task created and started, its ready line
  (the shim's own clocks: the ``phases`` of the ``ready`` line in shim.log, ``created_at``,
  ``started_at``), -> the record durable (``task.start``'s ``time``: the launcher's relay, the
  append, one fdatasync), -> reply (the ``ack`` of the shim's first event, the link); the
  runtime's command inside the shim (spawn -> end, its CPU time); after each run, beside it:
  bare ``runc run -d`` (and its CPU time), the same from a new session, ``runc run -d`` as the
  shim runs it (from here, through ``OciCli``), and ``runc create`` + ``runc start``;
* exit -> live subscriber (SIGKILL of the init from here): -> reaped by the shim (``exited_at``),
  -> appended (the event's ``time``, stamped by the log writer: the shim's exit file and the link
  are in between), -> received by an in-process ``events`` stream (the fdatasync, the hub);
* daemon kill -9 -> restart with N containers: exec -> socket listening -> first ``ps``
  answered -> all N ``running`` (in-process polls, so no CLI start-up is counted), and the
  daemon's own log lines (state rebuilt, reconciled, launcher ready).

Every process it starts is ended by pid at the end (they all name its temp directory).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_systems as cs
from oci_helpers import build_busybox_rootfs, remove_cgroup_tree

SLEEP = ["/bin/sleep", "100000"]


def show(title: str, rows: dict[str, list[float]]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in rows)
    for name, values in rows.items():
        print(f"  {name:<{width}}  median {statistics.median(values):7.2f} ms   "
              f"min {min(values):7.2f}   max {max(values):7.2f}")


class Phases:
    def __init__(self, base: Path, runs: int) -> None:
        self.base = base
        self.runs = runs
        self.rootfs = build_busybox_rootfs(base / "rootfs")
        self.tether = cs.Tether(base)
        self.bare = cs.BareRunc(base, self.rootfs)
        self.token = base.name.split("-", 1)[1].lower().replace("_", "0")
        self.n = 0

    def spec(self, runtime: str) -> dict[str, object]:
        self.n += 1
        spec: dict[str, object] = {"command": SLEEP, "runtime": runtime,
                                   "name": f"ph{self.n}-{self.token}"}
        if runtime != "process":
            spec["rootfs"] = str(self.rootfs)
        return spec

    RUN_ROWS = (
        "request -> shim begins (daemon: spec written; launcher: spare, or 2 forks)",
        "  -> shim set up (log, lock, spec, socket, address, runtime)",
        "  -> runtime returned (bundle written, runc run --detach)",
        "  -> task created",
        "  -> task started (started_at)",
        "  -> ready line written",
        "  -> task.start durable (launcher relay, daemon append)",
        "  -> reply received (ack round trip, link, reply)",
        "total")

    def shim_phases(self, cid: str) -> dict[str, int]:
        """The shim's own clocks of its start, from its ``ready`` line in shim.log."""
        path = self.tether.root / "shims" / cid / "shim.log"
        for line in path.read_text().splitlines():
            if '"event": "ready"' in line:
                record = json.loads(line)
                return {**record.get("phases", {}), "created": record["created_at"],
                        "started": record.get("started_at", record["created_at"]),
                        "ready": record["time"]}
        raise RuntimeError(f"no ready line in {path}")

    def run_phases(self, runtime: str) -> None:
        rows: dict[str, list[float]] = {name: [] for name in self.RUN_ROWS}
        with self.tether.conn() as c:
            for i in range(self.runs):
                since = c.call("status")["last_seq"]
                t0 = time.time_ns()
                r = c.call("run", spec=self.spec(runtime))
                t1 = time.time_ns()
                events = {e["type"]: e for e in
                          c.stream("events", since=since, follow=False, ids=[r["id"]])}
                shim = self.shim_phases(r["id"])
                marks = [t0, shim["forked"], shim["set_up"], shim["runtime"], shim["created"],
                         shim["started"], shim["ready"], events["task.start"]["time"], t1]
                for name, a, b in zip(self.RUN_ROWS, marks, marks[1:], strict=False):
                    rows[name].append((b - a) / 1e6)
                if "command_spawned" in shim:  # the runtime's command, as the shim saw it
                    rows.setdefault("runc run -d in the shim (spawn -> end seen)", []).append(
                        (shim["command_exited"] - shim["command_spawned"]) / 1e6)
                    rows.setdefault("  its CPU time (user + system)", []).append(
                        shim["command_cpu_ns"] / 1e6)
                rows["total"].append((t1 - t0) / 1e6)
                c.call("rm", id=r["id"], force=True)
                if runtime != "process":
                    self.runtime_round(i, rows)
        show(f"run -> running, {runtime} (in-process client)", rows)

    def runtime_round(self, i: int, rows: dict[str, list[float]]) -> None:
        """One sample of each runc row, taken right after a Tether run (so both see the same
        moment of a loaded machine): bare ``runc run -d``, its CPU time, the same from a new
        session, runc as the shim runs it (``OciCli``: its ``--log``, pipes as stdio, the
        shim's spawn), the bundle's write, bare ``create`` + ``start``."""
        from shim.oci import OciCli, prepare_bundle

        def add(name: str, value: float) -> None:
            rows.setdefault(name, []).append(value)

        cid, bundle = self.bare.bundle(SLEEP)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        add("bare runc run -d", cs.timed(self.bare.run_argv(cid, bundle), detaches=True)[0] * 1e3)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        add("  its CPU time (user + system)  ",
            (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3)
        self.bare.delete(cid)
        cid, bundle = self.bare.bundle(SLEEP)
        add("bare runc run -d from a new session (setsid, as a shim)",
            self.timed_new_session(self.bare.run_argv(cid, bundle)))
        self.bare.delete(cid)
        cli = OciCli("runc", self.base / "runc-as-shim", self.base / "runc-as-shim.log")
        spec = {"id": f"as-shim-{i}", "command": SLEEP, "rootfs": str(self.rootfs),
                "runtime": "runc", "env": {"PATH": "/usr/bin:/bin"}}
        b0 = time.perf_counter()
        path = prepare_bundle(spec, self.base / "as-shim" / str(i),
                              cgroups_path=f"/{cs.BareRunc.CGROUP_PARENT}/as-shim-{i}")
        bundle_ms = (time.perf_counter() - b0) * 1e3
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        t0 = time.perf_counter()
        pid = cli.run(spec["id"], path, str(self.base / f"as-shim-{i}.pid"),
                      stdout=out_w, stderr=err_w)
        add("runc run -d as the shim runs it (OciCli, from here)",
            (time.perf_counter() - t0) * 1e3)
        add("  config.json written (prepare_bundle)", bundle_ms)
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        os.kill(pid, signal.SIGKILL)
        cli.delete(spec["id"], force=True, missing_ok=True)
        cid, bundle = self.bare.bundle(SLEEP)
        add("bare runc create", cs.timed(self.bare.argv("create", "--bundle", bundle, cid),
                                         detaches=True)[0] * 1e3)
        add("bare runc start", cs.timed(self.bare.argv("start", cid))[0] * 1e3)
        self.bare.delete(cid)

    @staticmethod
    def timed_new_session(argv: list[str]) -> float:
        """``runc run -d`` from its own session (and so its own scheduling autogroup, where the
        kernel has them), as a shim's runtime commands run: ms."""
        t = time.perf_counter()
        with tempfile.TemporaryFile() as err:  # a file: runc hands its stdio to the container
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err, check=False, start_new_session=True)
            took = (time.perf_counter() - t) * 1e3
            if proc.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: "
                                   f"{err.read().decode(errors='replace').strip()}")
        return took

    def exit_phases(self, runtime: str) -> None:
        seen: queue.Queue[tuple[dict[str, object], int]] = queue.Queue()
        with self.tether.conn() as c:
            since = c.call("status")["last_seq"]

        def follow() -> None:
            try:
                with self.tether.conn(timeout=None) as c:
                    for item in c.stream("events", since=since, follow=True,
                                         types=["task.exit"]):
                        seen.put((item, time.time_ns()))
            except (OSError, ValueError):
                pass

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(0.2)
        rows: dict[str, list[float]] = {
            "kill -> reaped by the shim (exited_at)": [],
            "  -> appended (exit file, link, writer queue)": [],
            "  -> subscriber (fdatasync, hub, stream)": [],
            "total": []}
        with self.tether.conn() as c:
            for _ in range(self.runs):
                r = c.call("run", spec=self.spec(runtime))
                time.sleep(0.05)
                t0 = time.time_ns()
                os.kill(r["pid"], signal.SIGKILL)
                while True:
                    item, at = seen.get(timeout=30)
                    if item["id"] == r["id"]:
                        break
                data = item["data"]
                assert isinstance(data, dict) and isinstance(item["time"], int)
                rows["kill -> reaped by the shim (exited_at)"].append(
                    (data["exited_at"] - t0) / 1e6)
                rows["  -> appended (exit file, link, writer queue)"].append(
                    (item["time"] - data["exited_at"]) / 1e6)
                rows["  -> subscriber (fdatasync, hub, stream)"].append((at - item["time"]) / 1e6)
                rows["total"].append((at - t0) / 1e6)
                c.call("rm", id=r["id"], force=True)
        show(f"exit -> live subscriber, {runtime}", rows)

    def restart_phases(self, count: int, rounds: int) -> None:
        have = len(self.tether.ps())

        def one(_: int) -> None:
            with self.tether.conn() as c:
                c.call("run", spec=self.spec("process"))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(max(0, count - have))))
        rows: dict[str, list[float]] = {"exec -> socket listening": [],
                                        "exec -> first ps answered": [],
                                        "exec -> all listed running": []}
        for _ in range(rounds):
            self.tether.kill9()
            t0 = time.perf_counter()
            self.tether.start()
            rows["exec -> socket listening"].append((time.perf_counter() - t0) * 1e3)
            first = None
            while True:
                rows_now = self.tether.ps()
                if first is None:
                    first = time.perf_counter()
                    rows["exec -> first ps answered"].append((first - t0) * 1e3)
                if sum(1 for r in rows_now if r["state"] == "running") >= count:
                    break
                time.sleep(0.002)
            rows["exec -> all listed running"].append((time.perf_counter() - t0) * 1e3)
            self.tether.wait_launcher()
        show(f"daemon kill -9 -> restart, {count} containers (in-process polls)", rows)
        lines = (self.tether.dir / "daemon.log").read_text().splitlines()
        wanted = ("state rebuilt", "reconciled", "shim launcher ready")
        print("  last start, the daemon's own words:")
        for line in [x for x in lines if any(w in x for w in wanted)][-3:]:
            print(f"    {line[:160]}")

    def cleanup(self) -> None:
        self.tether.stop()
        self.bare.remove_all()
        cs.kill_everything_under(str(self.base))
        remove_cgroup_tree(cs.BareRunc.CGROUP_PARENT)
        for name in cs.cgroups_under("tether", self.token):
            remove_cgroup_tree(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--only", default="run,exit,restart",
                    help="the phases to measure (comma-separated: run, exit, restart)")
    ap.add_argument("--restart-at", default="20,1000",
                    help="container counts for the restart phases (comma-separated)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/phases.py needs root (runc, cgroups)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # the shims keep their runtime command's clocks and CPU time for the ready line only when
    # asked (shim.command.MEASURE): the daemon's environment reaches the launcher and shims
    os.environ["TETHER_SHIM_PHASES"] = "1"
    base = Path(tempfile.mkdtemp(prefix="tph-", dir="/tmp"))
    p = Phases(base, max(1, args.runs))
    try:
        p.tether.start()
        p.tether.wait_launcher()
        only = set(args.only.split(","))
        for runtime in ("runc", "process") if "run" in only else ():
            p.run_phases(runtime)
        for runtime in ("runc", "process") if "exit" in only else ():
            p.exit_phases(runtime)
        for count in sorted(int(x) for x in args.restart_at.split(",") if x):
            if "restart" in only:
                p.restart_phases(count, 3)
    except KeyboardInterrupt:
        return 130
    finally:
        p.cleanup()
        cs.remove_tree(base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
