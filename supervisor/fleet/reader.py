"""``supervisorctl events --nats URL``: the fleet stream, shown like local ``events`` plus the node.

An ephemeral ordered consumer (JetStream redelivers nothing and recreates it on a gap, so the
output is the stream's order, without holes) filtered to ``tether.<node>.>`` or
``tether.*.>``; ``--type``/``--id`` are applied here with the local filter
(:func:`events.filters.make_filter`), so they mean exactly what they mean locally.

Where to start:

* no ``--since``: the stream's first message;
* ``--since SEQ`` (one node): after that seq of the node's current log (the log of its last
  message), found by a binary search over the stream with direct gets (``next_by_subj``):
  about log2(stream size) requests, not a scan;
* ``--since TIME`` (RFC 3339 or a duration such as ``10m``): the messages the stream stored at
  or after TIME, of which those whose event happened at or after TIME (an event exported late,
  after an outage, is stored after it happened, never before).

Without ``--follow`` it stops at the last message the stream had when it started.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import datetime
import re
import sys
import time
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from events.filters import make_filter
from events.model import Event
from supervisor import ctl_render
from supervisor.fleet import broker, records

if TYPE_CHECKING:
    import argparse

__all__ = ["ReaderError", "parse_since", "run_events"]

#: Seconds without a message after which a reader without --follow asks whether it is done.
IDLE_CHECK = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)",
                      re.IGNORECASE)


class ReaderError(Exception):
    """A failure to report (the caller turns it into supervisorctl's error and exit code)."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def parse_since(text: str | int | None, now_ns: int) -> tuple[str, int] | None:
    """``None`` -> None; ``"42"``/42 -> ("seq", 42); ``"10m"`` -> ("time", now - 10 min);
    ``"2026-11-28T02:10:00Z"`` (RFC 3339, any offset, up to 9 fraction digits) -> ("time", ns).
    """
    if text is None:
        return None
    if isinstance(text, int):
        return ("seq", text)
    s = text.strip()
    if s.isdigit():
        return ("seq", int(s))
    total = 0.0
    pos = 0
    for match in _DURATION.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos and pos == len(s):
        return ("time", now_ns - int(total * 1e9))
    stamp = _RFC3339.fullmatch(s)
    if stamp:
        base, frac, zone = stamp.groups()
        secs = calendar.timegm(time.strptime(base.upper(), "%Y-%m-%dT%H:%M:%S"))
        if zone.upper() != "Z":
            sign = 1 if zone[0] == "+" else -1
            secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
        return ("time", secs * 1_000_000_000 + int(((frac or "") + "000000000")[:9]))
    raise ReaderError(f"--since {text!r}: use a seq (42), an RFC 3339 time "
                      "(2026-11-28T02:10:00Z) or a duration ago (90s, 10m, 2h, 1d)", usage=True)


def _start_time(ns: int) -> datetime.datetime:
    """The consumer's start time: microseconds (a datetime's), rounded down, so it is never
    after ``ns`` (the exact cut is made here, on the event's own time)."""
    micros = ns // 1000
    return datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC).replace(
        microsecond=micros % 1_000_000)


class _Output:
    def __init__(self, as_json: bool, types: list[str] | None, ids: list[str] | None,
                 min_time: int | None, follow: bool) -> None:
        self.as_json = as_json
        self.matches = make_filter(types or (), ids or ())
        self.min_time = min_time
        self.follow = follow
        self.shown = 0

    def show(self, event: records.FleetEvent) -> None:
        if self.min_time is not None and event.time < self.min_time:
            return
        if not self.matches(Event(event.seq, event.time, event.type, event.id, event.data)):
            return
        record = event.record()
        if self.as_json:
            line = ctl_render.dumps({"node": event.node, **ctl_render.event_object(record)})
        else:
            line = f"{event.node} {ctl_render.event_line(record)}"
        sys.stdout.write(line + "\n")
        self.shown += 1
        if self.follow:
            sys.stdout.flush()


def _log_and_seq(hdrs: dict[str, str] | None) -> tuple[str, int]:
    try:
        return records.parse_msg_id(hdrs)[1:]
    except records.BadMessage:
        return ("", 0)


async def _node_start(js: JetStreamContext, stream: str, node: str, after: int,
                      first: int) -> int | None:
    """The stream seq of the node's first message after seq ``after`` of its current log;
    None if there is none yet (then: the stream's end)."""
    try:
        last = await js.get_last_msg(stream, records.node_filter(node))
    except nats.js.errors.NotFoundError:
        return None
    current = _log_and_seq(last.headers)[0]

    async def probe(stream_seq: int) -> tuple[int, bool]:
        msg = await js.get_msg(stream, seq=stream_seq, subject=records.node_filter(node),
                               next=True)
        log_id, seq = _log_and_seq(msg.headers)
        return int(msg.seq or 0), log_id == current and seq > after

    last_seq = int(last.seq or 0)
    found, ok = await probe(last_seq)
    if not ok:
        return None
    lo, hi = first, last_seq  # invariant: probe(hi) is ok
    answer = found
    while lo < hi:
        mid = (lo + hi) // 2
        at, ok = await probe(mid)
        if ok:
            hi, answer = mid, at
        else:
            lo = max(mid, at) + 1
    at, ok = await probe(lo)
    return at if ok else answer


#: A stream electing a new leader answers nothing for a few seconds: wait that long.
PATIENCE = 15.0


async def _stream_info(js: JetStreamContext, stream: str, servers: list[str]) -> Any:
    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            return await js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            raise ReaderError(f"no stream {stream} at {','.join(servers)}: is "
                              "supervisord-export running (it creates it)?") from None
        except nats.errors.NoRespondersError:
            raise ReaderError(f"JetStream is not enabled at {','.join(servers)}") from None
        except (nats.errors.Error, OSError) as exc:
            if time.monotonic() > deadline:
                raise ReaderError(f"stream {stream} does not answer ({exc}): is its "
                                  "cluster up, with a quorum of its servers?") from None
            await asyncio.sleep(0.2)


async def read(servers: list[str], stream: str, node: str | None, since: tuple[str, int] | None,
               out: _Output, follow: bool) -> None:
    try:
        nc = await broker.connect(servers, name="supervisorctl events")
    except (broker.BrokerUnavailable, broker.BrokerConfigError) as exc:
        raise ReaderError(str(exc)) from None
    try:
        js = nc.jetstream(timeout=broker.API_TIMEOUT)
        info = await _stream_info(js, stream, servers)
        end = int(info.state.last_seq or 0)
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        if since is not None and since[0] == "seq":
            assert node is not None
            start = await _node_start(js, stream, node, since[1], int(info.state.first_seq or 1))
            if start is None:
                if not follow:
                    return
                start = end + 1
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                        opt_start_seq=start)
        elif since is not None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                        opt_start_time=_start_time(since[1]))
        if not follow and end == 0:
            return
        sub = await js.subscribe(records.node_filter(node), stream=stream,
                                 ordered_consumer=True, config=config)
        try:
            await _drain(sub, out, follow, end)
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()
    finally:
        with contextlib.suppress(nats.errors.Error, OSError):
            await nc.close()


async def _drain(sub: Any, out: _Output, follow: bool, end: int) -> None:
    while True:
        try:
            msg = await sub.next_msg(timeout=None if follow else IDLE_CHECK)
        except nats.errors.TimeoutError:
            if follow:
                continue
            info = await sub.consumer_info()
            if info.num_pending == 0 or int(info.delivered.stream_seq or 0) >= end:
                return
            continue
        meta = msg.metadata
        try:
            event = records.decode(msg.data)
        except records.BadMessage as exc:
            sys.stderr.write(f"supervisorctl events: skipping stream message "
                             f"{meta.sequence.stream}: {exc}\n")
        else:
            out.show(event)
        if not follow and (meta.sequence.stream >= end or meta.num_pending == 0):
            return


def run_events(args: argparse.Namespace) -> int:
    """``supervisorctl events --nats``: 0, or raises :class:`ReaderError`."""
    try:
        node = None if args.node in (None, "all") else records.validate_node(args.node)
    except records.InvalidNode as exc:
        raise ReaderError(f"--node: {exc}", usage=True) from None
    since = parse_since(args.since, time.time_ns())
    if since is not None and since[0] == "seq" and node is None and since[1] > 0:
        raise ReaderError("--since SEQ names a seq of one node's log: add --node NAME (or use "
                          "--since TIME for every node)", usage=True)
    try:
        servers = broker.parse_servers(args.nats)
    except broker.BrokerConfigError as exc:
        raise ReaderError(str(exc), usage=True) from None
    out = _Output(args.json, args.types, args.ids,
                  since[1] if since is not None and since[0] == "time" else None, args.follow)
    asyncio.run(read(servers, args.stream, node, since if since != ("seq", 0) else None, out,
                     args.follow))
    return 0
