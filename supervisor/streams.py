"""The two stream methods: ``events`` (history then live) and ``logs`` (CRI files, followed).

``events``: the subscriber is registered at the current ``last_seq`` L in the same trio step
that reads L, then history ``(since, L]`` comes from disk and live events ``> L`` from the
subscriber's buffer: no gap, no duplicate. A subscriber whose buffer overflows gets
``too_slow`` naming the last seq it was sent, so ``since=that`` resumes exactly.

``logs``: ``container.log`` and its rotated files (``container.log.N``, larger N older) are
read in order; with ``follow`` the current file is read as it grows and, when the path's inode
changes (rotation renames, never truncates), the old file is finished before the new one is
opened, so no line is lost or repeated across a rotation.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

import trio

from events import shim_api
from events.domain import ErrorCode
from events.filters import make_filter
from events.model import Event
from events.timefmt import parse_rfc3339
from supervisor.decide import stopped_for_good
from supervisor.errors import ApiError
from supervisor.spec import check_id
from supervisor.subscribers import TooSlow

if TYPE_CHECKING:
    from supervisor.core import Core

__all__ = ["Streams", "parse_cri_line"]

SendItem = Callable[[Any], Awaitable[None]]

HISTORY_BATCH = 1024
LOG_POLL = 0.05


def _str_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(ErrorCode.INVALID, f"{name} must be a list of strings")
    return value


def _take(it: Iterator[Event], n: int, last: int) -> list[Event]:
    out: list[Event] = []
    for event in it:
        if event.seq > last:
            break
        out.append(event)
        if len(out) >= n or event.seq >= last:
            break
    return out


def parse_cri_line(line: bytes) -> dict[str, Any] | None:
    """``<RFC3339Nano> stdout|stderr F|P <text>`` -> ``{time (ns), stream, partial, line}``."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3:
        return None
    stamp, stream, tag = parts[0], parts[1], parts[2]
    text = parts[3] if len(parts) == 4 else b""
    return {"time": parse_rfc3339(stamp.decode(errors="replace")),
            "stream": stream.decode(errors="replace"), "partial": tag == b"P",
            "line": text.decode(errors="replace")}


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
        ids = _str_list(params.get("ids"), "ids")
        follow = bool(params.get("follow"))
        limit = core.config.subscriber_buffer
        wanted = params.get("buffer")
        if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0:
            limit = min(limit, wanted)
            if sock is not None and wanted < 100:
                # "behind" must mean behind: do not let the kernel hide a stalled reader
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        matches = make_filter(types, ids)
        # -- the handoff: no await between reading L and subscribing --
        last = core.state.last_seq
        sub = core.hub.subscribe(last, matches, limit) if follow else None
        last_sent = since
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
                            await send(event.to_record())
                            last_sent = event.seq
                    if not batch or batch[-1].seq >= last:
                        break
            if sub is None:
                return
            while True:
                try:
                    batch = await sub.next_batch()
                except TooSlow:
                    raise ApiError(
                        ErrorCode.TOO_SLOW,
                        f"subscriber fell more than {sub.limit} events behind and was cut off; "
                        f"the last seq it was sent is {last_sent}: resume with since="
                        f"{last_sent}") from None
                for event in batch:
                    if event.seq > since:
                        await send(event.to_record())
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
            raise ApiError(ErrorCode.INVALID, f"tail must be a number of lines >= 0, got "
                           f"{tail!r}")
        follow = bool(params.get("follow"))
        directory = shim_api.shim_dir(self.core.paths.root, cid)
        current = directory / shim_api.CONTAINER_LOG
        rotated = sorted(directory.glob(shim_api.CONTAINER_LOG + ".*"),
                         key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
        rotated = [p for p in rotated if p.suffix[1:].isdigit()]

        def read_all() -> tuple[list[bytes], IO[bytes] | None, int]:
            lines: list[bytes] = []
            for path in rotated:
                with contextlib.suppress(OSError):
                    lines.extend(path.read_bytes().splitlines(keepends=True))
            try:
                f = open(current, "rb")  # noqa: SIM115 - kept open to follow
            except FileNotFoundError:
                return lines, None, 0
            data = f.read()
            cut = data.rfind(b"\n") + 1
            f.seek(cut)
            lines.extend(data[:cut].splitlines(keepends=True))
            return lines, f, os.fstat(f.fileno()).st_ino

        lines, f, inode = await trio.to_thread.run_sync(read_all)
        try:
            if tail is not None:
                lines = lines[-tail:] if tail else []
            for raw in lines:
                item = parse_cri_line(raw)
                if item is not None:
                    await send(item)
            if not follow:
                return
            buf = b""
            while True:
                if f is None:
                    try:
                        f = open(current, "rb")  # noqa: SIM115
                        inode = os.fstat(f.fileno()).st_ino
                    except FileNotFoundError:
                        f = None
                if f is not None:
                    chunk = f.read()
                    if chunk:
                        buf += chunk
                        *whole, buf = buf.split(b"\n")
                        for raw in whole:
                            item = parse_cri_line(raw)
                            if item is not None:
                                await send(item)
                        continue
                    try:
                        now = os.stat(current).st_ino
                    except FileNotFoundError:
                        now = None
                    if now != inode:  # rotated: the old file is finished, take the new one
                        f.close()
                        f = None
                        continue
                c = self.core.container(cid)
                if c is None or stopped_for_good(c):
                    return  # the shim drains the output before it records the exit
                await trio.sleep(LOG_POLL)
        finally:
            if f is not None:
                f.close()

