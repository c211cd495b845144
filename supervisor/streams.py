"""The two stream methods: ``events`` (history then live) and ``logs`` (CRI files, followed).

``events``: the subscriber is registered at the current ``last_seq`` L in the same trio step
that reads L, then history ``(since, L]`` comes from disk and live events ``> L`` from the
subscriber's buffer: no gap, no duplicate. A subscriber whose buffer overflows gets
``too_slow`` naming the last seq it was sent, so ``since=that`` resumes exactly.

``logs``: ``container.log`` and its rotated files (``container.log.N``, larger N older) are
read in order, split on ``\n`` only (the CRI rule) with the text kept as bytes; each item
carries a ``cursor`` ``[inode, end offset]`` that ``after`` resumes from exactly (an inode
survives the renames of rotation). With ``follow`` the current file is read as it grows and,
when the path's inode changes (rotation renames, never truncates), the old file is finished
before the new one is opened, so no line is lost or repeated across a rotation.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events import shim_api
from events.domain import ErrorCode, EventType
from events.filters import make_filter, type_matches
from events.model import Event
from events.timefmt import parse_rfc3339
from supervisor.channel import ItemSender
from supervisor.decide import stopped_for_good
from supervisor.errors import ApiError
from supervisor.shims import checked_shim_dir
from supervisor.spec import check_id
from supervisor.subscribers import TooSlow

if TYPE_CHECKING:
    from supervisor.core import Core

__all__ = ["Streams", "parse_cri_line"]

log = structlog.get_logger("supervisord.streams")

SendItem = Callable[[Any], Awaitable[None]]

HISTORY_BATCH = 1024
LOG_POLL = 0.05
#: Seconds a subscriber may leave one event unread (its socket full) before it is cut
#: (``TETHER_SUBSCRIBER_STALL`` for tests). Its live buffer is bounded in events already; this
#: frees what it still holds (its connection, a batch of history) from a client that stopped
#: reading altogether.
SUBSCRIBER_STALL = float(os.environ.get("TETHER_SUBSCRIBER_STALL") or 60.0)


def _str_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(ErrorCode.INVALID, f"{name} must be a list of strings")
    return value


def _take(it: Iterator[Event], n: int, last: int) -> list[Event]:
    out = []
    for event in it:
        if event.seq > last:
            break
        out.append(event)
        if len(out) >= n or event.seq >= last:
            break
    return out


def parse_cri_line(line: bytes) -> dict[str, Any] | None:
    """``<RFC3339Nano> stdout|stderr F|P <text>`` -> ``{time (ns), stream, partial, line}``.

    ``line`` is the text's bytes, unchanged: a container's output is bytes (a progress bar's
    ``\\r``, binary data), and only ``\\n`` ends a CRI record."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    stamp, stream, tag = parts[0], parts[1], parts[2]
    text = parts[3] if len(parts) == 4 else b""
    return {"time": parse_rfc3339(stamp.decode(errors="replace")),
            "stream": stream.decode(errors="replace"), "partial": tag == b"P", "line": text}


def _cursor(value: object) -> tuple[int, int] | None:
    """``logs``' ``after``: the ``cursor`` of the last item a reader got, ``[inode, offset]``."""
    if value is None:
        return None
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        return int(value[0]), int(value[1])
    raise ApiError(ErrorCode.INVALID, f"after must be a cursor [inode, offset] from a logs item, "
                   f"got {value!r}")


class Streams:
    def __init__(self, core: Core) -> None:
        self.core = core

    # -- events ----------------------------------------------------------------------------------

    async def events(self, params: dict[str, Any], send: SendItem,
                     sock: socket.socket | None = None) -> None:
        core = self.core
        since = params.get("since", 0)
        if since is None:
            since = 0
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ApiError(ErrorCode.INVALID, f"since must be a seq >= 0, got {since!r}")
        types = _str_list(params.get("types"), "types")
        for wanted in types:  # a typo would otherwise be an empty stream, forever
            if not any(type_matches(known, wanted) for known in EventType):
                raise ApiError(ErrorCode.INVALID, f"unknown event type {wanted!r}: give a "
                               f"type or a prefix of one ({', '.join(EventType)})")
        ids = _str_list(params.get("ids"), "ids")
        follow = bool(params.get("follow"))
        limit = core.config.subscriber_buffer
        buffer = params.get("buffer")
        if buffer is not None and (isinstance(buffer, bool) or not isinstance(buffer, int)
                                   or buffer < 1):
            raise ApiError(ErrorCode.INVALID, f"buffer must be a number of events >= 1, got "
                           f"{buffer!r}")
        if buffer is not None:
            limit = min(limit, buffer)
            if sock is not None and buffer < 100:
                # "behind" must mean behind: do not let the kernel hide a stalled reader
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        matches = make_filter(types, ids)
        if follow and len(core.hub) >= core.hub.max_subscribers:
            raise ApiError(ErrorCode.UNAVAILABLE, f"too many subscribers "
                           f"({core.hub.max_subscribers}): end one that follows events (or "
                           "raise TETHER_MAX_SUBSCRIBERS)")
        direct = None
        if isinstance(send, ItemSender):
            now = send.now

            def direct(events: list[Event]) -> bool:
                return now([event.to_record() for event in events])
        # -- the handoff: no await between reading L and subscribing --
        last = core.state.last_seq
        # (live events up to ``since`` are not sent: the subscriber starts after both)
        sub = core.hub.subscribe(max(last, since), matches, limit, direct=direct) \
            if follow else None
        last_sent = since

        async def send_or_cut(record: dict[str, Any]) -> None:
            """Send one event; a client that reads nothing for SUBSCRIBER_STALL is cut (its
            socket shut down: an error frame could not reach it either)."""
            with trio.move_on_after(SUBSCRIBER_STALL) as stalled:
                await send(record)
            if stalled.cancelled_caught:
                log.warning("subscriber cut: it read nothing", seconds=SUBSCRIBER_STALL,
                            last_sent=last_sent)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                raise ApiError(ErrorCode.TOO_SLOW, f"subscriber read nothing for "
                               f"{SUBSCRIBER_STALL:g}s and was cut off; the last seq it was "
                               f"sent is {last_sent}: resume with since={last_sent}")
        try:
            if since < last:
                first = core.eventlog.first_seq
                if since + 1 < first:
                    raise ApiError(ErrorCode.NOT_FOUND, f"events {since + 1}..{first - 1} were "
                                   f"compacted; the oldest kept is {first}")
                it = core.eventlog.read(since)
                while True:
                    batch = await trio.to_thread.run_sync(_take, it, HISTORY_BATCH, last)
                    for event in batch:
                        if matches(event):
                            await send_or_cut(event.to_record())
                            last_sent = event.seq
                    if not batch or batch[-1].seq >= last:
                        break
            if sub is None:
                return
            while True:
                try:
                    batch = await sub.next_batch()
                except TooSlow:
                    last_sent = max(last_sent, sub.sent)
                    raise ApiError(
                        ErrorCode.TOO_SLOW,
                        f"subscriber fell more than {sub.limit} events behind and was cut off; "
                        f"the last seq it was sent is {last_sent}: resume with since="
                        f"{last_sent}") from None
                last_sent = max(last_sent, sub.sent)  # what Hub.publish sent meanwhile
                for event in batch:
                    await send_or_cut(event.to_record())
                    last_sent = event.seq
        finally:
            if sub is not None:
                core.hub.unsubscribe(sub)

    # -- logs ------------------------------------------------------------------------------------

    async def logs(self, params: dict[str, Any], send: SendItem,
                   sock: socket.socket | None = None) -> None:
        cid = check_id(params.get("id"))
        if self.core.container(cid) is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no container {cid!r}")
        tail = params.get("tail")
        if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 0):
            raise ApiError(ErrorCode.INVALID, f"tail must be a number of lines >= 0, got {tail!r}")
        since = params.get("since")
        if since is not None and (isinstance(since, bool) or not isinstance(since, int)):
            raise ApiError(ErrorCode.INVALID, f"since must be a time in unix ns, got {since!r}")
        after = _cursor(params.get("after"))
        follow = bool(params.get("follow"))
        directory = checked_shim_dir(self.core.paths.root, cid)  # never through a symlink
        current = directory / shim_api.CONTAINER_LOG

        def item(raw: bytes, ino: int, end: int) -> dict[str, Any] | None:
            got = parse_cri_line(raw)
            if got is None or (since is not None and (got["time"] or 0) < since):
                return None
            got["cursor"] = [ino, end]
            return got

        def read_all() -> tuple[list[dict[str, Any]], Any, int, int]:
            """Every whole line of the rotated files (oldest first) and of the current one,
            from ``after`` on; the current file is returned open, at the end of its last line."""
            rotated = sorted((p for p in directory.glob(shim_api.CONTAINER_LOG + ".*")
                              if p.suffix[1:].isdigit()), key=lambda p: -int(p.suffix[1:]))
            opened: list[tuple[Any, int]] = []  # (file, inode), oldest first
            for path in [*rotated, current]:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - the current one is kept to follow
                except FileNotFoundError:
                    continue
                opened.append((f, os.fstat(f.fileno()).st_ino))
            inodes = [ino for _, ino in opened]
            offset = 0
            if after is not None and after[0] in inodes:  # else rotated away: all is newer
                first = inodes.index(after[0])
                for f, _ in opened[:first]:
                    f.close()
                opened, offset = opened[first:], after[1]
            out: list[dict[str, Any]] = []
            for i, (f, ino) in enumerate(opened):
                pos = f.seek(offset if i == 0 else 0)
                data = f.read()
                for raw in data[: data.rfind(b"\n") + 1].split(b"\n")[:-1]:
                    pos += len(raw) + 1
                    got = item(raw, ino, pos)
                    if got is not None:
                        out.append(got)
                if i == len(opened) - 1 and f.name == str(current):
                    f.seek(pos)  # an unfinished last line is read again when it is whole
                    return out, f, ino, pos
                f.close()
            return out, None, 0, 0

        lines, f, inode, pos = await trio.to_thread.run_sync(read_all)
        try:
            if tail is not None:
                lines = lines[-tail:] if tail else []
            for got in lines:
                await send(got)
            if not follow:
                return
            buf = b""
            while True:
                if f is None:
                    try:
                        f = open(current, "rb")  # noqa: SIM115
                        inode, pos = os.fstat(f.fileno()).st_ino, 0
                    except FileNotFoundError:
                        f = None
                if f is not None:
                    chunk = f.read()
                    if chunk:
                        buf += chunk
                        *whole, buf = buf.split(b"\n")
                        for raw in whole:
                            pos += len(raw) + 1
                            line = item(raw, inode, pos)
                            if line is not None:
                                await send(line)
                        continue
                    try:
                        now = os.stat(current).st_ino
                    except FileNotFoundError:
                        now = None
                    if now != inode:  # rotated: the old file is finished, take the new one
                        f.close()
                        f = None
                        buf = b""
                        continue
                c = self.core.container(cid)
                if c is None or stopped_for_good(c):
                    return  # the shim drains the output before it records the exit
                await trio.sleep(LOG_POLL)
        finally:
            if f is not None:
                f.close()
