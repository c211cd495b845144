"""``supervisord-export``: one node's event log into a NATS JetStream stream, exactly once.

A process of its own (asyncio end to end: nats-py's world), so a slow or absent broker never
touches the daemon. One *session* at a time:

1. read the node's position back from the stream: its last message (``last_by_subj
   tether.<node>.>``), never a local file a crash could leave stale;
2. check the messages that may still have been in flight when it was sent (its
   ``Tether-Acked`` header says from where): any the broker dropped while it stored a later one
   is published again (late, and said so), so nothing is ever lost;
3. ``events since=<seq>`` from the daemon (history, then live) and publish each event with
   ``Nats-Msg-Id: <node>/<log_id>/<seq>``, up to :data:`WINDOW` unacknowledged at once,
   confirming acks in order.

Any trouble (the daemon goes away, a publish is not acknowledged within :data:`ACK_TIMEOUT`, a
server or the stream leader dies) ends the session; the next one starts again at step 1 after a
back-off, so the resume point is always what the stream confirmed. A retried publish that the
stream had in fact stored is dropped by JetStream's duplicate window (same Msg-Id). The
daemon's log compacted past the position: a loud error, and an ``export.gap`` event in the
stream that names the missing seqs, never a silent skip.

Exit codes: 0 on SIGTERM/SIGINT (in-flight publishes confirmed first), 1 when waiting cannot
help: no broker at start, refused credentials, a stream that is not ours, a daemon without a
log id; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext

from supervisor import logsetup
from supervisor.fleet import broker, records
from supervisor.fleet.daemon_link import Compacted, DaemonLink, DaemonUnavailable
from supervisor.paths import Paths, default_root

__all__ = ["ExportConfig", "Exporter", "main"]

log = structlog.get_logger("supervisord-export")

#: Publishes in flight at once. Enough to keep an R3 stream's replication busy (a lone publish
#: waits a whole replication round trip), small enough that a failure re-checks little.
WINDOW = 256
#: An acknowledgement not back within this long ends the session (a leader change takes a few
#: seconds; the retry is deduplicated if the message was stored after all).
ACK_TIMEOUT = 5.0
#: How long a start-up waits for a connected cluster's stream to answer before it gives up.
START_PATIENCE = 30.0
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
#: Room kept under the server's max_payload for the headers.
HEADER_ROOM = 4096


@dataclass
class ExportConfig:
    root: str
    servers: list[str]
    stream: str = "TETHER"
    node: str = ""
    creds: broker.Credentials = field(default_factory=broker.Credentials)
    types: list[str] = field(default_factory=list)
    window: int = WINDOW
    replicas: int | None = None
    ack_timeout: float = ACK_TIMEOUT
    socket: str | None = None

    @property
    def socket_path(self) -> str:
        return str(Paths.under(self.root, self.socket).socket)


class Backoff:
    """0.1 s doubling to 5 s with jitter; reset once a session made progress."""

    def __init__(self) -> None:
        self.delay = BACKOFF_MIN

    def reset(self) -> None:
        self.delay = BACKOFF_MIN

    async def wait(self) -> None:
        await asyncio.sleep(self.delay * random.uniform(0.8, 1.2))
        self.delay = min(BACKOFF_MAX, self.delay * 2)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a task group (others are the cancellations it caused)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first_error(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


class Exporter:
    def __init__(self, config: ExportConfig) -> None:
        self.config = config
        self.node = config.node
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.stopping = asyncio.Event()
        self.published = 0  # events acknowledged by the stream in this process's life
        self.duplicates = 0  # of which JetStream said it already had them

    # -- start-up --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect and make sure of the stream; raises what the caller reports and exits on."""
        self.nc = await broker.connect(self.config.servers, self.config.creds,
                                       name=f"supervisord-export {self.node}")
        self.js = self.nc.jetstream(timeout=broker.API_TIMEOUT,
                                    publish_async_max_pending=self.config.window * 4)
        deadline = time.monotonic() + START_PATIENCE
        backoff = Backoff()
        while True:  # connected, but the stream may be being created or electing its leader
            try:
                replicas = await broker.ensure_stream(self.js, self.config.stream,
                                                      self.config.replicas)
                break
            except broker.BrokerUnavailable as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("stream not available yet; retrying", error=str(exc))
                await backoff.wait()
        log.info("connected", servers=self.nc.connected_url.netloc if self.nc.connected_url
                 else None, stream=self.config.stream, replicas=replicas, node=self.node)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> int:
        backoff = Backoff()
        while not self.stopping.is_set():
            before = self.published
            try:
                await self.session()
            except broker.BrokerConfigError as exc:
                log.error("stopping: the broker refuses what we ask", error=str(exc))
                return 1
            except DaemonNotExportable as exc:
                log.error("stopping", error=str(exc))
                return 1
            except broker.BrokerUnavailable as exc:
                log.warning("broker unavailable; retrying from the stream's position",
                            error=str(exc), retry_in=round(backoff.delay, 2))
            except DaemonUnavailable as exc:
                log.warning("daemon unavailable; retrying", error=str(exc),
                            socket=self.config.socket_path, retry_in=round(backoff.delay, 2))
            except Restart:
                continue
            if self.published > before:
                backoff.reset()
            if not self.stopping.is_set():
                await _until(self.stopping, backoff.wait())
        return 0

    async def session(self) -> None:
        assert self.js is not None
        await broker.ensure_stream(self.js, self.config.stream, self.config.replicas)
        link = await DaemonLink.open(self.config.socket_path)
        try:
            info = await link.call("info")
            log_id = info.get("log_id") if isinstance(info, dict) else None
            if not isinstance(log_id, str) or not log_id:
                raise DaemonNotExportable(
                    f"supervisord at {self.config.socket_path} has no log_id (older than this "
                    "exporter): upgrade it")
            position = await self.resume(log_id, int(info.get("last_seq") or 0))
            await self.pump(link, position)
        finally:
            await link.aclose()

    # -- where to start ----------------------------------------------------------------------

    async def resume(self, log_id: str, daemon_last: int) -> records.Position:
        """The stream's position for this node's log, holes left by the last session filled."""
        assert self.js is not None
        found = await broker.last_position(self.js, self.config.stream, self.node)
        if found is None:
            log.info("no events of this node in the stream yet; exporting from the start",
                     node=self.node, log_id=log_id)
            return records.Position(log_id)
        last, acked = found
        if last.log_id != log_id:
            log.warning("the node's log is a new one (a re-created root): exporting it from "
                        "its start", node=self.node, old_log_id=last.log_id,
                        old_last_seq=last.seq, log_id=log_id)
            return records.Position(log_id, 0, last.stream_seq)
        if acked.seq >= last.seq:  # a re-published hole: everything up to acked is stored
            position = acked
        else:
            await self.fill_holes(acked, last)
            position = last
        if position.seq > daemon_last:
            log.error("the stream holds more of this log than the daemon has: was the root "
                      "restored from an older copy, or its log cut by --repair? Events the "
                      "daemon numbers up to the stream's seq again are NOT exported",
                      node=self.node, stream_seq=position.seq, daemon_last_seq=daemon_last)
        log.info("resuming", node=self.node, log_id=log_id, after_seq=position.seq)
        return position

    async def fill_holes(self, acked: records.Position, last: records.Position) -> None:
        """Publish again any event in ``(acked, last]`` the broker dropped while it stored a
        later one (a leader change with several publishes in flight can do that)."""
        assert self.js is not None
        present = set()
        for _, hdrs in await broker.stream_messages_after(
                self.js, self.config.stream, self.node, acked.stream_seq, last.stream_seq):
            with contextlib.suppress(records.BadMessage):
                _, log_id, seq = records.parse_msg_id(hdrs)
                if log_id == last.log_id:
                    present.add(seq)
        link = await DaemonLink.open(self.config.socket_path)
        try:
            missing = [r async for r in link.events(acked.seq, self.config.types, follow=False,
                                                    until=last.seq)
                       if r["seq"] <= last.seq and r["seq"] not in present]
        except Compacted:
            log.warning("cannot check for dropped publishes: the daemon's log was compacted",
                        after_seq=acked.seq)
            return
        finally:
            await link.aclose()
        for record in missing:
            log.error("the broker dropped an event while it stored a later one; publishing it "
                      "again, out of order", node=self.node, seq=record["seq"],
                      type=record.get("type"))
            await self.publish_one(self.event(last.log_id, record), last)

    # -- publishing --------------------------------------------------------------------------

    def event(self, log_id: str, record: dict[str, Any]) -> records.FleetEvent:
        return records.FleetEvent(node=self.node, log_id=log_id, seq=int(record["seq"]),
                                  time=int(record.get("time") or 0), type=str(record["type"]),
                                  id=str(record.get("id") or ""), data=record.get("data") or {})

    def message(self, event: records.FleetEvent, acked: records.Position
                ) -> tuple[str, bytes, dict[str, str]]:
        assert self.nc is not None
        body = records.encode(event)
        if len(body) > self.nc.max_payload - HEADER_ROOM:
            log.error("event larger than the broker's max_payload; its data is replaced by a "
                      "note", seq=event.seq, type=event.type, size=len(body),
                      max_payload=self.nc.max_payload)
            note = {"export_error": f"event of {len(body)} bytes exceeds the broker's "
                    f"max_payload ({self.nc.max_payload}); read it on the node"}
            event = records.FleetEvent(event.node, event.log_id, event.seq, event.time,
                                       event.type, event.id, note)
            body = records.encode(event)
        return (records.subject_for(event.node, event.type), body,
                records.headers(event, acked))

    async def publish_one(self, event: records.FleetEvent, acked: records.Position) -> int:
        """Publish and wait for the ack; returns the stream seq."""
        assert self.js is not None
        subject, body, hdrs = self.message(event, acked)
        try:
            ack = await self.js.publish(subject, body, timeout=self.config.ack_timeout,
                                        stream=self.config.stream, headers=hdrs)
        except Exception as exc:
            raise _classify(exc, event) from None
        self.published += 1
        return int(ack.seq)

    async def pump(self, link: DaemonLink, start: records.Position) -> None:
        """Daemon events -> stream, pipelined; returns on stop, raises to end the session."""
        assert self.js is not None
        js = self.js
        window = asyncio.Semaphore(self.config.window)
        inflight: deque[tuple[records.FleetEvent, asyncio.Future[Any]]] = deque()
        wake = asyncio.Event()
        acked = start

        draining = False

        async def read_and_publish() -> None:
            # A whole batch is published without yielding (unless the window is full), so
            # nats-py sends it in one write: one syscall per event capped us at ~2,400/s.
            async for batch in link.event_batches(acked.seq, self.config.types):
                for record in batch:
                    await window.acquire()
                    event = self.event(start.log_id, record)
                    subject, body, hdrs = self.message(event, acked)
                    try:
                        future = await js.publish_async(subject, body, headers=hdrs,
                                                        stream=self.config.stream)
                    except Exception as exc:
                        raise _classify(exc, event) from None
                    inflight.append((event, future))
                    wake.set()

        async def confirm() -> None:
            nonlocal acked
            while True:
                while not inflight:
                    if draining:
                        return
                    wake.clear()
                    await wake.wait()
                event, future = inflight[0]
                if not future.done():
                    await asyncio.wait((future,), timeout=self.config.ack_timeout)
                try:
                    if not future.done():
                        raise TimeoutError
                    ack = future.result()
                except Exception as exc:
                    raise _classify(exc, event) from None
                inflight.popleft()
                window.release()
                self.published += 1
                self.duplicates += bool(ack.duplicate)
                acked = records.Position(start.log_id, event.seq, int(ack.seq))

        try:
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(read_and_publish())
                confirmer = tg.create_task(confirm())
                stop = tg.create_task(self.stopping.wait())
                await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not stop.done():
                    raise DaemonUnavailable("the daemon ended the event stream")
                reader.cancel()  # a stop: confirm what is in flight, then return
                draining = True
                wake.set()
                await confirmer
        except BaseExceptionGroup as group:
            error = _first_error(group)
            if isinstance(error, Compacted):
                await self.record_gap(error, acked)
                raise Restart() from None
            raise error from None
        finally:
            for _, future in inflight:  # frees nats-py's pending slots of lost publishes
                future.cancel()

    async def record_gap(self, exc: Compacted, acked: records.Position) -> None:
        """The log no longer holds ``acked.seq + 1 .. oldest - 1``: say so, loudly and in the
        stream (an ``export.gap`` event at seq ``oldest - 1``), then go on from there."""
        first, last = exc.since + 1, exc.oldest - 1
        log.error("EVENTS LOST TO THE FLEET: the daemon's log was compacted past the export "
                  "position; recording the gap in the stream", node=self.node, first=first,
                  last=last, hint="keep the exporter running, or raise supervisord "
                  "--retain-events")
        gap = records.FleetEvent(
            node=self.node, log_id=acked.log_id, seq=last, time=time.time_ns(),
            type=records.GAP_TYPE, id="",
            data={"first": first, "last": last, "oldest_kept": exc.oldest,
                  "reason": "compacted in the node's log before they were exported"})
        await self.publish_one(gap, acked)


class Restart(Exception):
    """Start a new session at once (after a gap was recorded)."""


class DaemonNotExportable(Exception):
    """The daemon cannot be exported from (too old: no log id)."""


def _classify(exc: BaseException, event: records.FleetEvent) -> BaseException:
    import nats.errors
    import nats.js.errors

    where = f"publishing seq {event.seq} ({event.type})"
    if isinstance(exc, nats.js.errors.APIError) and not isinstance(
            exc, nats.js.errors.NoStreamResponseError | nats.js.errors.ServiceUnavailableError):
        if exc.code in (503, 408, 504) or exc.err_code in (10008, 10023):
            return broker.BrokerUnavailable(f"{where}: {exc}")
        return broker.BrokerConfigError(f"{where}: {exc.description or exc}")
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return broker.BrokerUnavailable(f"{where}: no acknowledgement in time")
    return broker.BrokerUnavailable(f"{where}: {type(exc).__name__}: {exc}")


async def _until(stop: asyncio.Event, aw: Any) -> None:
    """Await ``aw`` unless ``stop`` is set first."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopper):
            t.cancel()


def default_node() -> str:
    """The host's short name, as one subject token."""
    name = socket.gethostname().split(".")[0]
    cleaned = "".join(c if c.isalnum() or c in "_-" else "-" for c in name)[:64]
    return cleaned or "node"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="supervisord-export",
        description="Publish this node's Tether events to a NATS JetStream stream, exactly "
                    "once, in order.")
    p.add_argument("--root", default=None, help=f"supervisord's root (default {default_root()})")
    p.add_argument("--socket", default=None, help="the API socket (default ROOT/supervisord.sock)")
    p.add_argument("--nats", required=True, metavar="URL[,URL...]",
                   help="NATS servers, e.g. nats://10.0.0.1:4222,nats://10.0.0.2:4222")
    p.add_argument("--stream", default="TETHER", help="JetStream stream (created if missing)")
    p.add_argument("--node", default=None,
                   help="this node's name in subjects (default: the host name)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--creds", metavar="FILE", help="a NATS credentials file")
    auth.add_argument("--user", help="NATS user (with --password)")
    p.add_argument("--password", default=None, help="NATS password (with --user)")
    p.add_argument("--types", nargs="+", default=[], metavar="PREFIX",
                   help="only these event types or prefixes (default: every event)")
    p.add_argument("--replicas", type=int, choices=(1, 2, 3, 4, 5), default=None,
                   help="replicas of a stream it creates (default: 3, or what the cluster has)")
    p.add_argument("--window", type=int, default=WINDOW, metavar="N",
                   help=f"publishes in flight at once (default {WINDOW})")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    args = p.parse_args(argv)
    if args.password is not None and args.user is None:
        p.error("--password needs --user")
    if args.window < 1:
        p.error("--window must be 1 or more")
    return args


async def _main(config: ExportConfig) -> int:
    exporter = Exporter(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, exporter.stopping.set)
    try:
        try:
            await exporter.connect()
        except (broker.BrokerConfigError, broker.BrokerUnavailable) as exc:
            log.error("cannot start", error=str(exc))
            return 1
        code = await exporter.run()
        log.info("stopped", published=exporter.published, duplicates=exporter.duplicates)
        return code
    finally:
        await exporter.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.configure(args.log_format)
    try:
        node = records.validate_node(args.node or default_node())
        servers = broker.parse_servers(args.nats)
    except (records.InvalidNode, broker.BrokerConfigError) as exc:
        sys.stderr.write(f"supervisord-export: {exc}\n")
        return 2
    if args.creds and not os.path.isfile(args.creds):
        sys.stderr.write(f"supervisord-export: --creds {args.creds}: no such file\n")
        return 2
    config = ExportConfig(
        root=args.root or str(default_root()), socket=args.socket, servers=servers,
        stream=args.stream, node=node,
        creds=broker.Credentials(args.creds, args.user, args.password), types=args.types,
        window=args.window, replicas=args.replicas)
    return asyncio.run(_main(config))


if __name__ == "__main__":
    sys.exit(main())
