"""Benchmark of the OCI path: bare runtimes against what the shim will pay through shim/oci.py.

Run as root: ``.venv/bin/python bench/oci.py [-n 15]``. Prints a table (medians of N runs),
with the anchors measured on this kind of machine (/work/shared/ANCHORS.md) beside.

* bare ``runc run -d`` / ``crun run -d`` of busybox ``sleep`` until the command returns, and
  ``delete -f`` of the running container; crun runs in a private mount namespace without
  /sys/fs/cgroup/unified when the layout is hybrid (it refuses it otherwise), and the price of
  that namespace is measured on its own (``list`` with and without it);
* ``ctr run -d --rootfs`` through containerd only if it is installed;
* the shim's start path: ``prepare_bundle`` (config.json written atomically), then
  ``OciCli.create`` with pipes + ``start``;
* the shim's stop path for a container that obeys SIGTERM (busybox ``sleep`` under the tini
  init, which forwards the signal): ``kill TERM``, ``waitpid`` of the init, ``delete`` (no -f),
  against ``delete -f`` of the same running container. Goal: <= 20 ms.
* through the real shim (``python -I -m shim start``, supervisord's fallback path, then the
  ``start`` call on its socket): run -> running for runc, crun and the process runtime, and
  the ``stop`` call (TERM to tini, which forwards it) until its reply, then ``delete``;
* through supervisord as users meet it (its shim launcher, in-process client): ``run`` until
  the reply (``task.start`` durable), and ``stop`` of a container that obeys SIGTERM until the
  reply (``task.exit`` durable). Goals: <= the bare runtime + 10 ms, <= 0.5x containerd.

Everything it makes (containers, state roots, cgroups under ``tether-bench``, temp dirs) is
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oci_helpers import build_busybox_rootfs, remove_cgroup_tree, wait_for_children

from events import shim_api
from events.rpc import BlockingConnection
from shim.oci import (
    OciCli,
    RuntimeFailed,
    RuntimeNotFound,
    hide_unified_cgroup,
    prepare_bundle,
    resolve_runtime,
)

CGROUP_PARENT = "tether-bench"
ANCHORS = {
    "runc run -d": "19 ms",
    "runc delete -f (running)": "106 ms",
    "crun run -d": "7 ms",
    "crun delete -f (running)": "4 ms",
    "ctr run -d --rootfs": "59 ms",
    "conmon + runc create/start": "29 ms",
}
GOAL_STOP_MS = 20.0


def ms(seconds: float) -> float:
    return seconds * 1000.0


class Bench:
    def __init__(self, base: Path, n: int, rootfs: Path | None = None) -> None:
        self.base = base
        self.n = n
        self.rootfs = rootfs or build_busybox_rootfs(base / "rootfs")
        self.rows: list[tuple[str, float | None, str, str]] = []
        self.runtimes: dict[str, OciCli] = {}
        self.shim_root = base / "root"
        self.shim_pids: list[int] = []
        self.cgroups: list[str] = []

    def runtime(self, name: str) -> OciCli:
        if name not in self.runtimes:
            self.runtimes[name] = OciCli(name, root=str(self.base / name),
                                             log_path=self.base / f"{name}.log.json")
        return self.runtimes[name]

    def bundle(self, name: str, command: list[str], init: bool = False) -> tuple[str, str]:
        cid = f"b-{uuid.uuid4().hex[:8]}"
        spec = {"id": cid, "command": command, "rootfs": str(self.rootfs), "init": init,
                "runtime": name}
        bundle = prepare_bundle(spec, self.base / "bundles" / cid,
                                cgroups_path=f"/{CGROUP_PARENT}/{cid}")
        return cid, bundle

    def row(self, what: str, samples: list[float], anchor: str = "", note: str = "") -> None:
        value = statistics.median(samples) if samples else None
        self.rows.append((what, value, anchor, note))

    def skip(self, what: str, why: str, anchor: str = "") -> None:
        self.rows.append((what, None, anchor, why))

    # -- bare runtimes ----------------------------------------------------------------------

    def bare(self, name: str) -> None:
        rt = self.runtime(name)
        preexec: Callable[[], None] | None = (hide_unified_cgroup if rt.hides_unified
                                              else None)
        run, delete = [], []
        for _ in range(self.n):
            cid, bundle = self.bundle(name, ["sleep", "100"])
            cmd = rt.command(["run", "-d", "--bundle", bundle, "--pid-file",
                              str(self.base / f"{cid}.pid"), cid])
            t = time.perf_counter()
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, preexec_fn=preexec, check=True)
            run.append(time.perf_counter() - t)
            pid = int((self.base / f"{cid}.pid").read_text())
            t = time.perf_counter()
            subprocess.run(rt.command(["delete", "-f", cid]), stdin=subprocess.DEVNULL,
                           capture_output=True, preexec_fn=preexec, check=True)
            delete.append(time.perf_counter() - t)
            reap(pid)
        note = "in a private mount ns (hybrid layout)" if rt.hides_unified else ""
        self.row(f"{name} run -d", [ms(x) for x in run], ANCHORS[f"{name} run -d"], note)
        self.row(f"{name} delete -f (running)", [ms(x) for x in delete],
                 ANCHORS[f"{name} delete -f (running)"], note)

    def private_ns_price(self) -> None:
        rt = self.runtime("crun")
        plain, hidden = [], []
        for _ in range(self.n):
            for samples, preexec in ((plain, None), (hidden, hide_unified_cgroup)):
                t = time.perf_counter()
                subprocess.run(rt.command(["list", "-q"]), capture_output=True,
                               preexec_fn=preexec, check=True)
                samples.append(time.perf_counter() - t)
        self.row("crun list, plain", [ms(x) for x in plain])
        self.row("crun list, private mount ns", [ms(x) for x in hidden], "",
                 "price of hiding cgroup2 per command")

    # -- the shim's paths through the driver ------------------------------------------------

    def driver_start(self, name: str, label: str = "") -> None:
        rt = self.runtime(name)
        label = label or name
        prepare, create, start = [], [], []
        for _ in range(self.n):
            t = time.perf_counter()
            cid, bundle = self.bundle(name, ["sleep", "100"])
            prepare.append(time.perf_counter() - t)
            r, w = os.pipe()
            try:
                t = time.perf_counter()
                pid = rt.create(cid, bundle, str(self.base / f"{cid}.pid"), stdout=w, stderr=w)
                t1 = time.perf_counter()
                rt.start(cid)
                t2 = time.perf_counter()
            finally:
                os.close(w)
                os.close(r)
            create.append(t1 - t)
            start.append(t2 - t1)
            rt.kill(cid, signal.SIGKILL)
            reap(pid)
            rt.delete(cid)
        self.row(f"{label}: prepare_bundle (config.json)", [ms(x) for x in prepare])
        self.row(f"{label}: OciCli.create (pipes)", [ms(x) for x in create])
        self.row(f"{label}: OciCli.start", [ms(x) for x in start])
        self.row(f"{label}: create + start (shim pays)",
                 [ms(a + b) for a, b in zip(create, start, strict=True)],
                 ANCHORS["conmon + runc create/start"] + " (conmon)")

    def stop_path(self, name: str, label: str = "") -> None:
        rt = self.runtime(name)
        label = label or name
        graceful, direct, graceful_f, forced = [], [], [], []
        for samples, mode in ((graceful, "term"), (direct, "direct"), (graceful_f, "term-f"),
                              (forced, "force")):
            for _ in range(self.n):
                cid, bundle = self.bundle(name, ["sleep", "100"], init=True)
                pid = rt.create(cid, bundle, str(self.base / f"{cid}.pid"))
                rt.start(cid)
                # tini ready (it has forked the command): a TERM sent before that hits a pid 1
                # without a handler and the kernel drops it (see the report).
                wait_for_children(pid)
                t = time.perf_counter()
                if mode in ("term", "term-f", "direct"):
                    if mode == "direct":  # the init is the shim's child: its pid is stable
                        os.kill(pid, signal.SIGTERM)
                    else:
                        rt.kill(cid, signal.SIGTERM)
                    status = reap(pid)
                    rt.delete(cid, force=mode == "term-f")
                    if status is None or os.waitstatus_to_exitcode(status) != 143:
                        raise SystemExit(f"{name}: unexpected stop status {status}")
                else:
                    rt.delete(cid, force=True)
                    reap(pid)
                samples.append(time.perf_counter() - t)
        med = statistics.median(graceful) * 1000
        self.row(f"{label}: stop = kill TERM + waitpid + delete", [ms(x) for x in graceful],
                 f"goal <= {GOAL_STOP_MS:.0f} ms", "OK" if med <= GOAL_STOP_MS else "OVER GOAL")
        self.row(f"{label}: same, os.kill(init) instead of `kill`", [ms(x) for x in direct])
        self.row(f"{label}: same, but delete -f (stopped)", [ms(x) for x in graceful_f])
        self.row(f"{label}: delete -f of the same (running)", [ms(x) for x in forced])

    # -- through the real shim --------------------------------------------------------------

    def _shim(self, runtime: str, command: list[str], init: bool = False) -> dict[str, int | str]:
        """Write a spec and run ``shim start``; returns its ready line."""
        cid = f"b-{uuid.uuid4().hex[:8]}"
        directory = shim_api.shim_dir(self.shim_root, cid)
        directory.mkdir(parents=True)
        spec = {"id": cid, "instance": uuid.uuid4().hex[:8], "command": command,
                "runtime": runtime, "init": init, "env": {"PATH": "/usr/bin:/bin"}}
        if runtime != "process":
            spec["rootfs"] = str(self.rootfs)
        shim_api.write_spec(directory, spec)
        self.cgroups.append(f"tether/{cid}-{spec['instance']}")
        proc = subprocess.run([sys.executable, "-I", "-m", "shim", "start", "--root",
                               str(self.shim_root), "--id", cid], capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"shim start {runtime}: {proc.stderr.decode().strip()}")
        ready = json.loads(proc.stdout)
        self.shim_pids.append(ready["pid"])
        return ready

    def _end_shim(self, conn: BlockingConnection, ready: dict[str, int | str]) -> float:
        """``delete`` (the task has exited); returns its time; reaps the shim (we are its
        subreaper once its starter's intermediate exited)."""
        t = time.perf_counter()
        conn.call("delete")
        took = time.perf_counter() - t
        reap(int(ready["pid"]))
        return took

    def through_shim(self, runtime: str) -> None:
        ready_t, start_t, total = [], [], []
        for _ in range(self.n):
            t = time.perf_counter()
            ready = self._shim(runtime, ["sleep", "100"])
            t1 = time.perf_counter()
            with BlockingConnection(str(ready["address"]), role="supervisor") as conn:
                conn.call("start")
                t2 = time.perf_counter()
                conn.call("kill", signal=9)
                conn.call("wait")
                self._end_shim(conn, ready)
            ready_t.append(t1 - t)
            start_t.append(t2 - t1)
            total.append(t2 - t)
        anchor = ANCHORS.get(f"{runtime} run -d", "") + (f" ({runtime} run -d)"
                                                         if runtime != "process" else "")
        self.row(f"shim {runtime}: shim start (ready: created)", [ms(x) for x in ready_t])
        self.row(f"shim {runtime}: start call (running)", [ms(x) for x in start_t])
        self.row(f"shim {runtime}: run -> running", [ms(x) for x in total], anchor,
                 "ctr run -d: " + ANCHORS["ctr run -d --rootfs"])

    def stop_through_shim(self, runtime: str) -> None:
        stop_t, delete_t = [], []
        for _ in range(self.n):
            ready = self._shim(runtime, ["sleep", "100"], init=True)
            with BlockingConnection(str(ready["address"]), role="supervisor") as conn:
                conn.call("start")
                wait_for_children(int(ready["task_pid"]))  # tini has its handlers
                t = time.perf_counter()
                record = conn.call("stop", timeout=10)
                stop_t.append(time.perf_counter() - t)
                if record["exit_status"] != 143:
                    raise SystemExit(f"shim {runtime}: unexpected stop status {record}")
                delete_t.append(self._end_shim(conn, ready))
        med = statistics.median(stop_t) * 1000
        self.row(f"shim {runtime}: stop call (TERM obeyed) until reply",
                 [ms(x) for x in stop_t], f"goal <= {GOAL_STOP_MS:.0f} ms",
                 "OK" if med <= GOAL_STOP_MS else "OVER GOAL")
        self.row(f"shim {runtime}: delete call after the exit", [ms(x) for x in delete_t])

    def crun_hidden_once(self) -> None:
        """The crun paths again, from a process that hid cgroup2 once for itself (what a shim
        running only crun can do at start-up) instead of in every command's preexec."""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # not inherited: be a subreaper too
                hide_unified_cgroup()
                sub = Bench(self.base, self.n, rootfs=self.rootfs)
                try:
                    assert not sub.runtime("crun").hides_unified
                    sub.driver_start("crun", "crun, ns hidden once")
                    sub.stop_path("crun", "crun, ns hidden once")
                finally:
                    sub.cleanup()
                os.write(w, json.dumps(sub.rows).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            data = f.read()
        _, status = os.waitpid(pid, 0)
        if status != 0 or not data:
            self.skip("crun, ns hidden once", f"child failed (wait status {status})")
            return
        self.rows.extend(tuple(row) for row in json.loads(data))

    def containerd(self) -> None:
        if shutil.which("ctr") is None:
            self.skip("ctr run -d --rootfs", "not measured: containerd/ctr not installed",
                      ANCHORS["ctr run -d --rootfs"])
            return
        self.skip("ctr run -d --rootfs", "ctr found, but not measured here (needs a running "
                  "containerd); see ANCHORS.md", ANCHORS["ctr run -d --rootfs"])

    # -- cleanup ----------------------------------------------------------------------------

    def through_daemon(self, runtimes: list[str]) -> None:
        """``run`` and ``stop`` through a real supervisord that starts shims with its launcher."""
        from daemon import Daemon, kill_everything_naming, wait_launcher

        root = self.base / "daemon" / "root"
        root.mkdir(parents=True)
        d = Daemon(root)
        try:
            d.start()
            wait_launcher(d)
            with d.conn() as c:
                for runtime in runtimes:
                    runs, stops = [], []
                    for _ in range(self.n):
                        spec: dict[str, object] = {"command": ["sleep", "100"],
                                                   "runtime": runtime}
                        if runtime != "process":
                            spec.update(rootfs=str(self.rootfs), init=True)
                        t = time.perf_counter()
                        cid = c.call("run", spec=spec)["id"]
                        t1 = time.perf_counter()
                        c.call("stop", id=cid, timeout=10)
                        t2 = time.perf_counter()
                        c.call("rm", id=cid, force=True)
                        runs.append(ms(t1 - t))
                        stops.append(ms(t2 - t1))
                    bare = ANCHORS.get(f"{runtime} run -d", "")
                    self.row(f"supervisord {runtime}: run -> running (launcher)", runs,
                             f"{bare} ({runtime} run -d)" if bare else "",
                             "ctr run -d: " + ANCHORS["ctr run -d --rootfs"])
                    self.row(f"supervisord {runtime}: stop (TERM obeyed) until reply", stops,
                             f"goal <= {GOAL_STOP_MS:g} ms",
                             "OK" if statistics.median(stops) <= GOAL_STOP_MS else "over")
        finally:
            d.stop()
            kill_everything_naming(str(root))

    def cleanup(self) -> None:
        for pid in self.shim_pids:  # whatever a failed run left: our children (subreaper)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        for name in ("runc", "crun"):
            if (self.shim_root / name).is_dir():
                rt = OciCli(name, root=str(self.shim_root / name),
                                log_path=self.base / f"{name}-shim-cleanup.log.json")
                with contextlib.suppress(RuntimeFailed):
                    for entry in rt.list():
                        with contextlib.suppress(RuntimeFailed):
                            rt.delete(entry["id"], force=True)
        for name in self.cgroups:
            remove_cgroup_tree(name)
        for rt in self.runtimes.values():
            with contextlib.suppress(RuntimeFailed):
                for entry in rt.list():
                    with contextlib.suppress(RuntimeFailed):
                        rt.delete(entry["id"], force=True)
        remove_cgroup_tree(CGROUP_PARENT)


def reap(pid: int, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.0005)


def print_table(rows: list[tuple[str, float | None, str, str]], n: int) -> None:
    print(f"\nOCI benchmarks, median of {n} runs (ms)\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'what':<{width}}  {'median':>8}  {'anchor':<22}  note")
    print(f"{'-' * width}  {'-' * 8}  {'-' * 22}  ----")
    for what, value, anchor, note in rows:
        shown = f"{value:8.1f}" if value is not None else f"{'-':>8}"
        print(f"{what:<{width}}  {shown}  {anchor:<22}  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=15, help="runs per measurement")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/oci.py needs root (OCI runtimes, cgroups)")
    # Like the shim: be a subreaper, so each container init becomes our child to waitpid.
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    base = Path(tempfile.mkdtemp(prefix="tether-bench-oci-"))
    bench = Bench(base, args.n)
    try:
        names = []
        for name in ("runc", "crun"):
            try:
                resolve_runtime(name)
                names.append(name)
            except RuntimeNotFound as exc:
                bench.skip(f"{name} run -d", str(exc))
        for name in names:
            bench.bare(name)
        if "crun" in names and bench.runtime("crun").hides_unified:
            bench.private_ns_price()
        bench.containerd()
        for name in names:
            bench.driver_start(name)
        for name in names:
            bench.stop_path(name)
        if "crun" in names and bench.runtime("crun").hides_unified:
            bench.crun_hidden_once()
        for name in [*names, "process"]:
            bench.through_shim(name)
        for name in [*names, "process"]:
            bench.stop_through_shim(name)
        bench.through_daemon([*names, "process"])
    finally:
        bench.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    print_table(bench.rows, args.n)


if __name__ == "__main__":
    main()
