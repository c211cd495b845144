"""Benchmark the fleet exporter and print tables (not a test).

    .venv/bin/python bench/fleet.py [--quick] [--events 20000] [--exits 200]

On a 3-server JetStream cluster on 127.0.0.1 (fresh store dirs under /tmp):

* events/s from one node's log into the R3 stream: a log pre-filled with N events, the daemon
  started on it, ``supervisord-export`` started, timed until the stream holds the node's last
  event (acknowledged, so replicated to a quorum); for several ``--window`` sizes (1 = wait for
  each ack before the next publish), and an R1 stream on one server beside them;
* container exit -> a fleet consumer's delivery (an ordered consumer on
  ``tether.<node>.task.exit``), p50/p99, beside exit -> the local ``events`` subscriber in the
  same run (each measured from the exit's ``exited_at``, stamped by the shim).

Every process it starts (nats-servers, the daemon, its shims, the exporters) is killed by pid
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import nats  # noqa: E402
import nats.errors  # noqa: E402
import nats.js.api  # noqa: E402
import nats.js.errors  # noqa: E402
from conftest import kill_and_wait, processes_naming  # noqa: E402
from daemon import history  # noqa: E402
from daemon_helpers import Daemon  # noqa: E402
from nats_helpers import ExportProc, NatsCluster, NatsServer  # noqa: E402

from events.log import EventLog  # noqa: E402
from events.rpc import BlockingConnection  # noqa: E402
from supervisor.fleet import records  # noqa: E402


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def build_log(root: Path, n: int) -> None:
    """n events of realistic shapes (bench/daemon.py's history)."""
    root.mkdir(parents=True)
    log = EventLog.open(root)
    items = list(history(n))
    for start in range(0, n, 1000):
        log.append(items[start:start + 1000])
    log.close()


async def _last_seq(url: str, node: str) -> int:
    nc = await nats.connect(url.split(","))
    try:
        js = nc.jetstream(timeout=2)
        try:
            msg = await js.get_last_msg("TETHER", records.node_filter(node))
        except Exception:
            return 0
        return records.parse_msg_id(msg.headers)[2]
    finally:
        await nc.close()


def throughput(work: Path, url: str, n: int, window: int, tag: str) -> float:
    """events/s of one exporter draining an n-event log into the stream."""
    root = work / f"tp-{tag}"
    build_log(root, n)
    d = Daemon(root, "--no-shim-launcher")
    d.start()
    try:
        target = d.call("status")["last_seq"]
        node = f"tp-{tag}"
        e = ExportProc(root, url, node, "--window", str(window))
        t0 = time.perf_counter()
        e.start()
        while asyncio.run(_last_seq(url, node)) < target:
            if not e.running():
                raise RuntimeError(e.log_text()[-2000:])
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        e.stop()
        return target / elapsed
    finally:
        d.cleanup()


def latency(work: Path, url: str, exits: int) -> tuple[list[float], list[float]]:
    """(exit -> fleet consumer, exit -> local subscriber) in seconds, same exits."""
    root = work / "lat"
    d = Daemon(root)
    d.start()
    node = "lat"
    e = ExportProc(root, url, node).start()
    local: list[float] = []
    fleet: list[float] = []
    ready = threading.Barrier(3)
    done = threading.Event()

    def local_sub() -> None:
        with BlockingConnection(d.socket, timeout=None) as c:
            since = c.call("status")["last_seq"]
            stream = c.stream("events", since=since, follow=True, types=["task.exit"])
            ready.wait()
            for item in stream:
                local.append((time.time_ns() - item["data"]["exited_at"]) / 1e9)
                if len(local) >= exits:
                    return

    async def fleet_sub() -> None:
        nc = await nats.connect(url.split(","))
        try:
            js = nc.jetstream()
            while True:  # the exporter creates the stream
                try:
                    sub = await js.subscribe(f"tether.{node}.task.exit", ordered_consumer=True,
                                             deliver_policy=nats.js.api.DeliverPolicy.NEW)
                    break
                except nats.js.errors.NotFoundError:
                    await asyncio.sleep(0.1)
            await asyncio.get_running_loop().run_in_executor(None, ready.wait)
            while len(fleet) < exits and not done.is_set():
                try:
                    msg = await sub.next_msg(timeout=1)
                except nats.errors.TimeoutError:
                    continue
                event = records.decode(msg.data)
                fleet.append((time.time_ns() - event.data["exited_at"]) / 1e9)
        finally:
            await nc.close()

    threads = [threading.Thread(target=local_sub, daemon=True),
               threading.Thread(target=lambda: asyncio.run(fleet_sub()), daemon=True)]
    for t in threads:
        t.start()
    ready.wait(30)
    ids = []
    try:
        with BlockingConnection(d.socket) as c:
            for _ in range(exits):
                ids.append(c.call("run", spec={"command": ["sh", "-c", "sleep 0.02"]})["id"])
                time.sleep(0.03)
            deadline = time.monotonic() + 60
            while (len(local) < exits or len(fleet) < exits) and time.monotonic() < deadline:
                time.sleep(0.05)
            done.set()
            for cid in ids:
                c.call("rm", id=cid, force=True)
    finally:
        e.stop()
        d.cleanup()
    return fleet, local


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer events and exits")
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--exits", type=int, default=200)
    args = p.parse_args()
    n = 5_000 if args.quick else args.events
    exits = 60 if args.quick else args.exits
    work = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    cluster = NatsCluster(work / "nats")
    solo = NatsServer("solo", work / "nats-solo")
    try:
        cluster.start_all()
        solo.start()
        rows: list[tuple[str, str]] = []
        for window in (1, 32, 256):
            rate = throughput(work, cluster.urls, n, window, f"r3w{window}")
            rows.append((f"{n} events -> R3 stream, window {window}", f"{rate:,.0f} events/s"))
        rate = throughput(work, solo.url, n, 256, "r1")
        rows.append((f"{n} events -> R1 stream (one server), window 256",
                     f"{rate:,.0f} events/s"))
        fleet, local = latency(work, cluster.urls, exits)
        rows.append((f"exit -> fleet consumer, R3 (p50 / p99, {len(fleet)} exits)",
                     f"{statistics.median(fleet) * 1e3:.2f} / {pct(fleet, 99) * 1e3:.2f} ms"))
        rows.append((f"exit -> local subscriber, same exits (p50 / p99, {len(local)})",
                     f"{statistics.median(local) * 1e3:.2f} / {pct(local, 99) * 1e3:.2f} ms"))
        width = max(len(r[0]) for r in rows)
        print(f"{'what':<{width}}  figure")
        for what, figure in rows:
            print(f"{what:<{width}}  {figure}")
    finally:
        for s in [*cluster.servers.values(), solo]:
            s.kill9()
        kill_and_wait(processes_naming(str(work)))
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
