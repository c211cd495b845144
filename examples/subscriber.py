#!/usr/bin/env python3
"""Print every container exit as it happens: never twice, never missed, across restarts.

    examples/subscriber.py --root /var/lib/tether --state /var/tmp/exits.seq

It needs Tether's dependencies (trio, msgpack): run by any ``python3``, it re-executes itself
with the checkout's ``.venv/bin/python`` (made by ``bash .ci/setup``) when they are missing.

Each exit is printed as one line (``--json``: the JSON line of ``supervisorctl events --json``)::

    exit seq=42 id=job exit_status=7 signal=null pid=12345 at=2026-11-28T02:10:00.123456789Z

How it keeps that promise, using nothing but the public API (:mod:`supervisor.client`):

* The daemon's log numbers events 1, 2, 3, ... with no gap, durably, and ``events(since=N)``
  replays everything after N and then follows live, without gap or duplicate.
* So the subscriber's whole state is one number, the seq of the last exit it printed, kept in
  ``--state``: written right after each line is printed (one ``pwrite`` in place, then
  ``fdatasync``), read at start-up.
* The daemon goes away (crash, kill -9, upgrade): the stream breaks, the subscriber reconnects
  with back-off (0.1 s doubling to 5 s) and resumes after that seq. Events appended while it
  was away (an exit kept by a shim during the daemon's downtime, say) come in the replay.
* The subscriber itself restarts: it reads the state file and resumes the same way.
* SIGINT/SIGTERM stop it between two events, never between printing a line and saving its seq.
  Only a SIGKILL (or power loss) landing between those two syscalls can repeat one line at the
  next start: no program can write to a pipe and to a file in one atomic step. (Nothing can be
  *missed*: the seq is saved only after its line was written.) With ``--output FILE`` even that
  window is closed: the last line of the file is itself the position.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

# Run from a checkout without installing: the repository root holds `events` and `supervisor`.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

try:
    import msgpack  # noqa: F401 - only to know that the dependencies are there
    import trio
except ImportError:  # a python3 without Tether's dependencies: use the checkout's venv
    VENV_PYTHON = REPO / ".venv" / "bin" / "python"
    if not VENV_PYTHON.exists() or Path(sys.prefix).resolve() == (REPO / ".venv").resolve():
        raise SystemExit("subscriber: needs Tether's dependencies (trio, msgpack): run "
                         f"`bash {REPO}/.ci/setup`, then {VENV_PYTHON} {__file__}") from None
    os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])

from events import wire  # noqa: E402 - after the dependency check
from events.model import Event  # noqa: E402
from supervisor import ctl_render  # noqa: E402
from supervisor.client import Disconnected, TooSlow, connect  # noqa: E402

#: Back-off between reconnection attempts: quick to notice a restarted daemon, gentle on a
#: daemon that stays down.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0


class Position:
    """The seq of the last event printed, kept in one small file.

    Saved in place with a single ``pwrite`` of a fixed-width number at offset 0: one syscall,
    so a kill at any moment leaves the old number or the new one (never half of either, never
    an empty file), and the window between printing a line and recording it is as short as it
    can be. ``fdatasync`` follows, for power loss; it does not widen that window.
    """

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:  # make the new file's name durable too
            dirfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        text = os.pread(self._fd, 4096, 0).decode(errors="replace").strip()
        try:
            self.seq = int(text) if text else 0
        except ValueError:
            raise SystemExit(f"subscriber: {path} holds {text[:40]!r}, not a seq; fix or delete "
                             "it") from None
        if self.seq < 0:
            raise SystemExit(f"subscriber: {path} holds a negative seq; fix or delete it")

    def save(self, seq: int) -> None:
        os.pwrite(self._fd, f"{seq:0{self.WIDTH}d}\n".encode(), 0)
        os.fdatasync(self._fd)
        self.seq = seq

    def close(self) -> None:
        os.close(self._fd)


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


class Output:
    """Where the lines go: stdout, or (``--output FILE``) a file appended to, one ``write`` per
    line. With a file, the output itself says how far it got: a line is in the file or not
    (SIGKILL cannot interrupt a ``write`` to a regular file half-way), so at start-up the seq
    of its last line overrides an older state file, and not even a kill -9 between printing
    and saving the seq repeats a line."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = 1 if path is None else os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                                                  0o644)

    def write(self, line: str) -> None:
        data = (line + "\n").encode()
        while data:
            data = data[os.write(self._fd, data):]

    def last_seq(self) -> int:
        """The seq of the last whole line of the output file (0 for stdout or an empty file)."""
        if self.path is None:
            return 0
        with open(self.path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            lines = f.read().split(b"\n")[:-1]  # the part after the last newline is not a line
        for raw in reversed(lines):
            seq = seq_of(raw.decode(errors="replace"))
            if seq is not None:
                return seq
        return 0


def seq_of(line: str) -> int | None:
    """The seq a printed line is about, in any of the formats :func:`render` writes."""
    import json

    line = line.strip()
    try:
        if line.startswith("{"):
            seq = json.loads(line).get("seq")
        elif line.startswith("exit seq="):
            seq = int(line.split()[1].removeprefix("seq="))
        else:
            seq = int(line.split()[0])
    except (ValueError, IndexError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def note(message: str) -> None:
    """Diagnostics go to stderr, so stdout carries exactly one line per exit."""
    print(f"subscriber: {message}", file=sys.stderr, flush=True)


async def follow(args: argparse.Namespace, position: Position, output: Output) -> int:
    """Print events until cancelled (SIGINT/SIGTERM); 1 if the output cannot be written."""
    state = position.path
    last = position.seq
    written = output.last_seq()
    if written > last:
        note(f"{output.path} already has seq {written}, {state} only {last}: stopped between "
             "the two writes last time; going by the output")
        last = written
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
                    try:
                        output.write(render(event, args.json))
                    except OSError as exc:  # e.g. `subscriber.py | head -1`: the reader left
                        note(f"cannot write the output ({exc}); stopping at seq {last}")
                        return 1
                    position.save(event.seq)
                    last = event.seq
                note("supervisord ended the stream; reconnecting")
        except TooSlow as exc:
            note(f"cut off as too slow after seq {exc.last_seq}; resuming")
            continue
        except (OSError, Disconnected, wire.ProtocolError, wire.RemoteError) as exc:
            note(f"supervisord unavailable ({exc}); retrying in {delay:g} s")
        await trio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


async def main_async(args: argparse.Namespace, position: Position, output: Output) -> int:
    code = 0
    async with trio.open_nursery() as nursery:

        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    note(f"{signal.Signals(signum).name}: stopping")
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(stop_on_signal)
        await trio.sleep(0)  # let the signal receiver be installed before any event is printed
        code = await follow(args, position, output)
        nursery.cancel_scope.cancel()
    return code


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
    parser.add_argument("--output", metavar="FILE",
                        help="append the lines to FILE instead of stdout (exactly once even "
                             "across a kill -9 of the subscriber)")
    args = parser.parse_args(argv)
    args.types = args.types or ["task.exit"]
    position = Position(Path(args.state))
    output = Output(args.output)
    try:
        return trio.run(main_async, args, position, output)
    finally:
        position.close()


if __name__ == "__main__":
    sys.exit(main())
