"""The commands that outlive a connection: ``wait``, ``logs``, ``events``, ``exec``.

A daemon may be restarted (an upgrade, a crash, a kill -9) while they run; the containers do
not care, and neither should a script that waits on one. So ``wait``, ``logs -f`` and
``events -f`` reconnect, with back-off, for up to ``--reconnect`` seconds (default 60), and go
on where they were:

* ``wait`` asks again: the exit is in the log, and a container that exited while no daemon was
  up is recorded as soon as the daemon is back (its shim kept the status);
* ``events -f`` resumes after the last seq it printed (``since``): no gap, no duplicate;
* ``logs -f`` resumes after the last line it printed: every item carries the daemon's
  ``cursor`` (the log file's inode and the offset after the line; rotation renames files and
  keeps inodes), which ``after`` takes back.

When the daemon does not come back in time they exit 125 (:data:`~supervisor.ctl.
EXIT_NO_STATUS`), never 1, which a container's status could be. ``exec`` cannot be resumed
(its output went through the lost connection): it exits 125 at once.

Following commands also watch their standard output: when its reader leaves (``| head -1``)
they stop within :data:`OUTPUT_CHECK` seconds, even if nothing more would be printed.
"""

from __future__ import annotations

import select
import sys
import time

from events import wire
from supervisor import ctl
from supervisor.ctl import CtlError, DaemonGone, OutputClosed, Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterator
    from typing import Any

    from events.rpc import BlockingConnection

__all__ = ["cmd_events", "cmd_exec", "cmd_logs", "cmd_wait"]

#: Seconds between two checks that our reader is still there, while nothing arrives.
OUTPUT_CHECK = 1.0
#: Back-off between reconnection attempts: first delay, and the cap it doubles up to.
RETRY_FIRST, RETRY_MAX = 0.05, 1.0


class DaemonLost(CtlError):
    """The daemon went away during a command and did not come back in time."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ctl.EXIT_NO_STATUS)


def output_gone() -> bool:
    """Has the reader of our stdout left? (A pipe whose read end is closed polls POLLERR.)"""
    poller = select.poll()
    try:
        poller.register(sys.stdout.fileno(), select.POLLOUT)
    except (ValueError, OSError):
        return False
    return any(mask & select.POLLERR for _, mask in poller.poll(0))


def items(conn: BlockingConnection, method: str, params: dict[str, Any],
          watch_output: bool = False) -> Iterator[Any]:
    """The items of a stream (an error frame raises ``wire.RemoteError``). With
    ``watch_output``, blocks at most :data:`OUTPUT_CHECK` at a time to check our reader."""
    rid = conn.send_request(method, params)
    if watch_output:
        conn.settimeout(OUTPUT_CHECK)
    while True:
        try:
            message = conn.recv()
        except TimeoutError:
            if not watch_output:
                raise
            if output_gone():
                raise OutputClosed from None
            continue
        response = wire.response_to(rid, message)
        if response is None or response[0] == "result":
            continue
        if response[0] == "end":
            return
        yield response[1]


def resilient(t: Target, what: str, reconnect: float,
              attempt: Callable[[BlockingConnection], int]) -> int:
    """Run ``attempt`` on a connection; when the daemon goes away, reconnect (back-off, up to
    ``reconnect`` seconds) and run it again. The first connection's failure is an ordinary
    error: only a daemon that was there and left is waited for."""
    conn = t.connect(call_timeout=None, stream=True)
    while True:
        try:
            with conn:
                return attempt(conn)
        except ConnectionError as exc:
            if reconnect <= 0:
                raise DaemonLost(f"{what}: supervisord closed the connection ({exc}); not "
                                 "waiting for it (--reconnect 0)") from None
            ctl.warn(f"supervisorctl {what}: supervisord went away; reconnecting for up to "
                     f"{reconnect:g} s (containers keep running)")
            conn = _reconnect(t, what, reconnect)
            ctl.warn(f"supervisorctl {what}: reconnected")


def _reconnect(t: Target, what: str, window: float) -> BlockingConnection:
    deadline = time.monotonic() + window
    delay = RETRY_FIRST
    last: CtlError | None = None
    while time.monotonic() < deadline:
        try:
            return t.connect(call_timeout=None, stream=True)
        except DaemonGone as exc:
            last = exc
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, RETRY_MAX)
    raise DaemonLost(f"{what}: supervisord did not come back within {window:g} s ({last}); "
                     f"the command can be run again once it is up ({t._start_hint()})")


# -- wait ---------------------------------------------------------------------------------------


def cmd_wait(t: Target, args: argparse.Namespace) -> int:
    """Print the exit status and exit with it (125 when there is none to give)."""
    result: dict[str, Any] = {}

    def attempt(conn: BlockingConnection) -> int:
        result.update(conn.call("wait", id=args.id) or {})
        return 0

    resilient(t, "wait", args.reconnect, attempt)
    status = result.get("exit_status")
    if status is None:
        ctl.out("unknown\n")
        ctl.warn(f"supervisorctl wait {args.id}: the exit status is unknown ("
                 f"{result.get('reason') or 'its shim was lost'}); `supervisorctl inspect "
                 f"{args.id}` shows what is known")
        return ctl.EXIT_NO_STATUS
    ctl.out(f"{status}\n")
    return int(status) & 0xFF


# -- logs ---------------------------------------------------------------------------------------


def cmd_logs(t: Target, args: argparse.Namespace) -> int:
    """A container's output: each line's bytes as they were written, stdout to our stdout and
    stderr to our stderr (a partial line is continued by the next item, so no newline)."""
    from supervisor import ctl_render

    params: dict[str, Any] = {"id": args.id, "follow": args.follow}
    if args.tail is not None:
        params["tail"] = args.tail
    if args.since is not None:
        params["since"] = args.since
    cursor: list[Any] = []
    resumed: list[bool] = []
    began = time.time_ns()

    def show(item: dict[str, Any]) -> None:
        if args.json:
            ctl.out(ctl_render.log_json(item) + "\n")
            return
        stream = sys.stderr if item.get("stream") == "stderr" else sys.stdout
        line = item.get("line", b"")
        data = bytes(line) if isinstance(line, bytes | bytearray) else str(line).encode()
        if not item.get("partial"):
            data += b"\n"
        if args.timestamps:
            data = ctl_render.log_prefix(item) + data
        ctl.write_bytes(stream, data)

    def attempt(conn: BlockingConnection) -> int:
        wanted = dict(params)
        if cursor:  # resuming: exactly after the last line shown
            wanted.pop("tail", None)
            wanted["after"] = cursor[0]
        elif resumed and "tail" in params:  # nothing shown yet (--tail 0): what came since
            wanted.pop("tail", None)
            wanted["since"] = max(began, params.get("since") or 0)
        resumed.append(True)
        for item in items(conn, "logs", wanted, watch_output=args.follow):
            show(item)
            if isinstance(item.get("cursor"), list):
                cursor[:] = [item["cursor"]]
            if args.follow:
                ctl.flush(sys.stdout, sys.stderr)
        return ctl.EXIT_OK

    if not args.follow:
        with t.connect(stream=True) as conn:
            return attempt(conn)
    return resilient(t, "logs", args.reconnect, attempt)


# -- events -------------------------------------------------------------------------------------


_EVENTS_HELP = "\nTry 'supervisorctl events --help'."


def _fleet_events(args: argparse.Namespace) -> int:
    """``events --nats``: nats-py and asyncio are imported here only, by no other command."""
    if not args.nats:
        raise CtlError("supervisorctl events: --node needs --nats URL (the fleet stream)"
                       + _EVENTS_HELP, ctl.EXIT_USAGE)
    from supervisor.fleet.reader import ReaderError, run_events

    try:
        return run_events(args)
    except ReaderError as exc:
        if exc.usage:
            raise CtlError(f"supervisorctl events: {exc}{_EVENTS_HELP}", ctl.EXIT_USAGE
                           ) from None
        raise CtlError(f"events: {exc}") from None


def cmd_events(t: Target, args: argparse.Namespace) -> int:
    if args.nats or args.node:
        return _fleet_events(args)
    if not isinstance(args.since, int):
        raise CtlError(f"supervisorctl events: --since {args.since}: the local log takes a "
                       f"seq (a time needs --nats){_EVENTS_HELP}", ctl.EXIT_USAGE)
    from supervisor import ctl_render

    render = ctl_render.event_json if args.json else ctl_render.event_line
    last = [args.since]
    base: dict[str, Any] = {"follow": args.follow}
    if args.types:
        base["types"] = args.types
    if args.ids:
        base["ids"] = args.ids

    def attempt(conn: BlockingConnection) -> int:
        try:
            for record in items(conn, "events", {**base, "since": last[0]},
                                watch_output=args.follow):
                ctl.out(render(record) + "\n")
                last[0] = record.get("seq", last[0])
                if args.follow:
                    ctl.flush()
        except wire.RemoteError as exc:
            if exc.code != "too_slow":
                raise
            ctl.flush()
            raise CtlError(
                f"events: {exc.message} (too_slow): this reader fell behind the daemon's "
                f"buffer and was cut off after seq {last[0]}; resume without a gap with: "
                f"supervisorctl events --since {last[0]}{' --follow' if args.follow else ''}"
            ) from None
        return ctl.EXIT_OK

    if not args.follow:
        with t.connect(call_timeout=None, stream=True) as conn:  # the history can be long
            return attempt(conn)
    return resilient(t, "events", args.reconnect, attempt)


# -- exec ---------------------------------------------------------------------------------------


def cmd_exec(t: Target, args: argparse.Namespace) -> int:
    """The exec'd process's output as it comes (bytes, unchanged), on our stdout/stderr; our
    exit code is its status (128 + signal when killed), 126/127 when it cannot run / is not
    found (docker's), 125 for any other failure."""
    status = ctl.EXIT_NO_STATUS
    params: dict[str, Any] = {"id": args.id, "command": list(args.command)}
    if args.env:
        params["env"] = dict(args.env)
    if args.cwd:
        params["cwd"] = args.cwd
    with t.connect(call_timeout=None, stream=True) as c:
        try:
            for item in items(c, "exec", params):
                if "exit_status" in item:
                    value = item["exit_status"]
                    status = int(value) & 0xFF if value is not None else ctl.EXIT_NO_STATUS
                    continue
                out = sys.stderr if item.get("stream") == "stderr" else sys.stdout
                data = item.get("data", b"")
                ctl.write_bytes(out, data if isinstance(data, bytes) else str(data).encode())
                ctl.flush(out)
        except wire.RemoteError as exc:
            if exc.code != "exec_failed":
                raise
            missing = "No such file" in exc.message or "Errno 2]" in exc.message
            ctl.warn(f"supervisorctl {ctl.remote_message('exec', exc)}")
            return 127 if missing else 126
        except ConnectionError as exc:
            raise DaemonLost(f"exec: supervisord closed the connection ({exc}): the process's "
                             "output and status are lost to this command (the process may "
                             "still run in the container)") from None
    return status
