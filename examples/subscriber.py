#!/usr/bin/env python3
"""Print every container exit as it happens: never twice, never missed, across restarts.

    python examples/subscriber.py --root /var/lib/tether --state /var/tmp/exits.seq

Each exit is printed as one line (``--json``: the JSON line of ``supervisorctl events --json``)::

    exit seq=42 id=job exit_status=7 signal=null pid=12345 at=2026-11-28T02:10:00.123456789Z

How it keeps that promise, using nothing but the public API (:mod:`supervisor.client`):

* The daemon's log numbers events 1, 2, 3, ... with no gap, durably, and ``events(since=N)``
  replays everything after N and then follows live, without gap or duplicate.
* So the subscriber's whole state is one number, the seq of the last exit it printed, kept in
  ``--state``: written after each line is printed (temp file, fsync, rename), read at start-up.
* The daemon goes away (crash, kill -9, upgrade): the stream breaks, the subscriber reconnects
  with back-off (0.1 s doubling to 5 s) and resumes after that seq. Events appended while it
  was away (an exit kept by a shim during the daemon's downtime, say) come in the replay.
* The subscriber itself restarts: it reads the state file and resumes the same way.
* SIGINT/SIGTERM stop it between two events, never between printing a line and saving its seq.
  Only a SIGKILL (or power loss) landing in that window of a few microseconds can repeat one
  line at the next start: no program can print and persist in one atomic step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds `events` and `supervisor`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from events import wire
from events.model import Event
from supervisor import ctl_render
from supervisor.client import Disconnected, TooSlow, connect

#: Back-off between reconnection attempts: quick to notice a restarted daemon, gentle on a
#: daemon that stays down.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0


def read_position(path: Path) -> int:
    """The seq of the last event printed, 0 (the beginning) if there is no state file yet."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    try:
        seq = int(text)
    except ValueError:
        raise SystemExit(f"subscriber: {path} holds {text!r}, not a seq; fix or delete it") \
            from None
    if seq < 0:
        raise SystemExit(f"subscriber: {path} holds a negative seq {seq}; fix or delete it")
    return seq


def save_position(path: Path, seq: int) -> None:
    """Atomically replace the state file: a crash leaves the old number or the new, never half."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, f"{seq}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def render(event: Event, as_json: bool) -> str:
    if as_json:
        return ctl_render.event_json(event.to_record())
    if event.type != "task.exit":  # asked for with --type: the line of `supervisorctl events`
        return ctl_render.event_line(event.to_record())
    d = event.data
    dumps = ctl_render.dumps
    return (f"exit seq={event.seq} id={event.id} exit_status={dumps(d.get('exit_status'))}"
            f" signal={dumps(d.get('signal'))} pid={dumps(d.get('pid'))}"
            f" at={ctl_render.rfc3339(d.get('exited_at') or event.time)}")


def note(message: str) -> None:
    """Diagnostics go to stderr, so stdout carries exactly one line per exit."""
    print(f"subscriber: {message}", file=sys.stderr, flush=True)


async def follow(args: argparse.Namespace) -> None:
    state = Path(args.state)
    last = read_position(state)
    note(f"resuming after seq {last}" if last else "starting from the beginning of the log")
    delay = BACKOFF_MIN
    while True:
        try:
            async with await connect(root=args.root, socket=args.socket) as client:
                status = await client.call("status")
                newest = status.get("last_seq") if isinstance(status, dict) else None
                if isinstance(newest, int) and newest < last:
                    note(f"{state} says seq {last} but the daemon's log ends at {newest}: was "
                         f"the log replaced? Waiting for seq {last + 1}; delete {state} to "
                         "start over")
                note(f"connected to {client.path} (supervisord pid {client.peer.get('pid')})")
                delay = BACKOFF_MIN
                async for event in client.events(since=last, types=args.types, follow=True):
                    # No checkpoint between the print and the save: a cancellation (SIGTERM)
                    # cannot fall between them.
                    print(render(event, args.json), flush=True)
                    save_position(state, event.seq)
                    last = event.seq
                note("supervisord ended the stream; reconnecting")
        except TooSlow as exc:
            note(f"cut off as too slow after seq {exc.last_seq}; resuming")
            continue
        except (OSError, Disconnected, wire.ProtocolError, wire.RemoteError) as exc:
            note(f"supervisord unavailable ({exc}); retrying in {delay:g} s")
        await trio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


async def main_async(args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    note(f"{signal.Signals(signum).name}: stopping")
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await trio.sleep(0)  # let the signal receiver be installed before any event is printed
        await follow(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--root", help="supervisord's root (default: as supervisorctl)")
    target.add_argument("--socket", help="the API socket (default: ROOT/supervisord.sock)")
    parser.add_argument("--state", default="tether-exits.seq",
                        help="file keeping the last seq printed (default: ./tether-exits.seq)")
    parser.add_argument("--type", dest="types", action="append",
                        help="event types to print (default: task.exit; repeatable)")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    args.types = args.types or ["task.exit"]
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
