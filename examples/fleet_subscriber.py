#!/usr/bin/env python3
"""Act on every container exit of every node of the fleet: a durable JetStream consumer.

    python examples/fleet_subscriber.py --nats nats://10.0.0.1:4222 --output /var/tmp/exits

Each ``task.exit`` that ``supervisord-export`` put in the fleet stream (subject
``tether.<node>.task.exit``) is *acted on* -- here: one line appended to ``--output`` (and
fsynced) or printed -- and only then acknowledged::

    exit node=web1 seq=42 id=job exit_status=7 signal=0 at=2026-11-28T02:10:00.123456789Z

How it keeps its promise (every exit acted on, once), with nothing but JetStream:

* The consumer is durable (``--durable``, default ``fleet-exits``): JetStream keeps its
  position, so a restart of this program (or of a NATS server) resumes where it stopped, and a
  message not acknowledged within ``ack_wait`` is delivered again. Nothing is missed.
* A kill -9 between acting and acknowledging gets that exit delivered again. With ``--output``
  the file itself says what was done: at start the last line of each node is read back, and a
  redelivered exit at or before it (same log, not a higher seq) is acknowledged without acting
  again. So the file holds each exit once. (Printing to stdout cannot close that window.)
* Exits come in stream order, which is each node's order; ``max_ack_pending`` bounds how many
  are in hand at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds `events` and `supervisor`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats
import nats.errors
from nats.js import api

from supervisor import ctl_render
from supervisor.fleet import records


class Done:
    """What was acted on, per node: (log_id, seq) of its last exit, read back from the file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.last: dict[str, tuple[str, int]] = {}
        if path and os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue  # a torn last line (a crash mid-write): not acted on
                    self.last[obj["node"]] = (obj["log_id"], obj["seq"])

    def already(self, event: records.FleetEvent) -> bool:
        log_id, seq = self.last.get(event.node, ("", 0))
        return log_id == event.log_id and event.seq <= seq

    def act(self, event: records.FleetEvent) -> None:
        data = event.data
        line = (f"exit node={event.node} seq={event.seq} id={event.id} "
                f"exit_status={data.get('exit_status')} signal={data.get('signal')} "
                f"at={ctl_render.rfc3339(data.get('exited_at'))}")
        if self.path:
            record = {"node": event.node, "log_id": event.log_id, "seq": event.seq,
                      "line": line}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        else:
            print(line, flush=True)
        self.last[event.node] = (event.log_id, event.seq)


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await nats.connect(args.nats.split(","), max_reconnect_attempts=-1)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"{records.SUBJECT_ROOT}.*.task.exit", durable=args.durable, stream=args.stream,
            config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30,
                                      max_ack_pending=256))
        done = Done(args.output)
        while not stop.is_set():
            try:
                batch = await sub.fetch(64, timeout=1)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for msg in batch:
                try:
                    event = records.decode(msg.data)
                except records.BadMessage as exc:
                    print(f"fleet_subscriber: skipping a message: {exc}", file=sys.stderr)
                    await msg.term()  # never deliver it again
                    continue
                if not done.already(event):
                    done.act(event)
                await msg.ack_sync()  # after acting: a crash before this redelivers it
    finally:
        await nc.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nats", required=True, metavar="URL[,URL...]")
    p.add_argument("--stream", default="TETHER")
    p.add_argument("--durable", default="fleet-exits", help="the consumer's name")
    p.add_argument("--output", metavar="FILE",
                   help="append each exit here as a JSON line (fsynced) instead of printing")
    return asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
