"""Live events sent by ``Hub.publish`` itself to an idle subscriber (``Channel.send_now``):
what a client of ``events --follow`` relies on is unchanged: every event once, in order, and a
reader that stops reading is cut off with ``too_slow`` naming the last seq it was sent.

Real Unix sockets, the real ``Streams.events`` and ``Hub``; the daemon's core is reduced to
what the live part of the stream reads (its hub, its last seq, its buffer setting).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from events import wire
from events.model import Event
from supervisor.channel import Channel, Closed, ItemSender
from supervisor.errors import ApiError
from supervisor.streams import Streams
from supervisor.subscribers import Hub

RID = 7


def event(seq: int, pad: int = 0) -> Event:
    return Event(seq, seq * 1000, "task.exit", f"c{seq}", {"pad": "x" * pad} if pad else {})


class Peer:
    """The client's end of a connection, read in this thread (non-blocking) or a reader
    thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = wire.FrameDecoder()
        self.messages: list[dict[str, Any]] = []

    def read_available(self) -> list[dict[str, Any]]:
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not data:
                break
            self.messages += self.decoder.feed(data)
        return self.messages

    def read_until(self, done: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        while not done(self.messages):
            data = self.sock.recv(65536)
            if not data:
                break
            self.messages += self.decoder.feed(data)
        return self.messages


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["item"]["seq"] for m in messages if "item" in m]


@contextlib.asynccontextmanager
async def follower(buffer: int | None = None, sndbuf: int | None = None
                   ):  # type: ignore[no-untyped-def]
    """A live ``events`` stream (follow, since 0, nothing in the log yet) served over a
    socketpair: yields (hub, peer, outcome) once the subscriber waits for events."""
    ours, theirs = socket.socketpair()
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    chan = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
    hub = Hub()
    core = SimpleNamespace(hub=hub, state=SimpleNamespace(last_seq=0),
                           config=SimpleNamespace(subscriber_buffer=10_000))
    outcome: dict[str, Any] = {}
    params: dict[str, Any] = {"since": 0, "follow": True}
    if buffer is not None:
        params["buffer"] = buffer

    async def serve() -> None:
        try:
            await Streams(core).events(params, ItemSender(chan, RID),  # type: ignore[arg-type]
                                       chan.stream.socket)
        except ApiError as exc:
            outcome["error"] = exc
            with contextlib.suppress(Closed):
                await chan.send(wire.error(RID, exc.code, exc.message))
        except Exception as exc:  # the server answers "internal" (supervisor/server.py)
            outcome["error"] = exc

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            while not any(sub.idle for sub in hub._subs):
                await trio.sleep(0)
            yield hub, Peer(theirs), outcome
            nursery.cancel_scope.cancel()
    finally:
        theirs.close()
        await chan.aclose()


async def test_an_idle_subscriber_has_the_event_when_publish_returns() -> None:
    async with follower() as (hub, peer, _):
        hub.publish([event(1)])
        # no checkpoint yet: the subscriber's task has not run, the bytes are on the socket
        assert [m["item"] for m in peer.read_available()] == [event(1).to_record()]
        assert [sub.idle for sub in hub._subs] == [True]  # its task was not even woken
        hub.publish([event(2), event(3)])
        assert seqs(peer.read_available()) == [1, 2, 3]


async def test_a_reader_that_stops_reading_gets_every_event_sent_once_in_order_then_too_slow(
        ) -> None:
    """The socket fills (the direct sends stop), then the buffer of 3 (cut off): what the
    reader finds on its socket is 1..N with no gap, and ``too_slow`` names N."""
    async with follower(buffer=3) as (hub, peer, outcome):
        sub = next(iter(hub._subs))
        seq = 0
        while not sub.overflowed:
            seq += 1
            assert seq < 10_000, "never cut off"
            hub.publish([event(seq, pad=1500)])
            for _ in range(3):  # let the subscriber's task send what is buffered
                await trio.sleep(0)
        direct = sub.sent
        messages = await trio.to_thread.run_sync(
            peer.read_until, lambda ms: any("error" in m for m in ms))
        assert "error" in outcome
    got = seqs(messages)
    assert got == list(range(1, len(got) + 1))
    error = messages[-1]["error"]
    assert error["code"] == "too_slow" and f"since={got[-1]}" in error["message"], (error, got)
    assert 0 < direct < got[-1] < seq  # some sent by publish, some by the task, some dropped


async def test_a_slow_reader_gets_every_event_once_in_order_across_both_paths() -> None:
    """Bursts while a reader reads slowly: events alternate between publish's own sends (the
    socket has room, nothing buffered) and the task's (buffered behind a full socket)."""
    n = 3000
    async with follower(sndbuf=4096) as (hub, peer, _):
        sub = next(iter(hub._subs))
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set() and len(seqs(peer.messages)) < n:
                peer.read_available()
                stop.wait(0.0005)

        reader = threading.Thread(target=read)
        reader.start()
        direct_seen = 0
        try:
            for seq in range(1, n + 1):
                hub.publish([event(seq, pad=300)])
                direct_seen += sub.sent == seq
                if seq % 50 == 0:
                    await trio.sleep(0.002)
            with trio.fail_after(30):
                while len(seqs(peer.messages)) < n:
                    await trio.sleep(0.01)
        finally:
            stop.set()
            await trio.to_thread.run_sync(reader.join)
    assert seqs(peer.messages) == list(range(1, n + 1))
    assert 0 < direct_seen < n  # both paths were taken


async def test_send_now_keeps_frames_whole_and_in_order() -> None:
    """A frame the socket takes only in part is finished before any later frame; nothing is
    written while another frame is being sent."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    chan = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
    peer = Peer(theirs)
    try:
        big = wire.encode(wire.item(RID, {"pad": "y" * 200_000}))
        assert chan.send_now(big)  # taken in part: the rest is owed
        assert not chan.send_now(wire.encode(wire.item(RID, 2)))  # nothing jumps the rest
        reading = trio.to_thread.run_sync(peer.read_until, lambda ms: len(ms) >= 2)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(chan.send, wire.item(RID, 3))
            messages = await reading
        assert [m["item"] if isinstance(m["item"], int) else len(m["item"]["pad"])
                for m in messages] == [200_000, 3]
        async with chan._send_lock:  # a frame on its way: send_now waits its turn (refuses)
            assert not chan.send_now(wire.encode(wire.item(RID, 4)))
        theirs.close()
        # refused once the peer is gone; the usual send says why
        assert not chan.send_now(wire.encode(wire.item(RID, 5)))
        with pytest.raises(Closed):
            await chan.send(wire.item(RID, 5))
    finally:
        theirs.close()
        await chan.aclose()


async def test_a_reader_cut_for_stalling_is_told_the_last_event_publish_sent_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Publish fills the socket itself; the next event is the task's, which waits for room
    until the stall cut: the cut names the last seq publish sent, which the reader has."""
    from supervisor import streams

    monkeypatch.setattr(streams, "SUBSCRIBER_STALL", 0.3)
    async with follower(sndbuf=4096) as (hub, peer, outcome):
        sub = next(iter(hub._subs))
        seq = 0
        while sub.sent == seq:  # publish sends each while the socket has room
            seq += 1
            hub.publish([event(seq, pad=1000)])
        with trio.fail_after(10):
            while "error" not in outcome:
                await trio.sleep(0.01)
        got = seqs(peer.read_available())
    assert got == list(range(1, seq))  # the last one was the task's, never sent
    error = outcome["error"]
    assert error.code == "too_slow" and f"since={seq - 1}" in error.message, error.message


async def test_an_event_that_cannot_be_encoded_fails_its_stream_not_the_publisher() -> None:
    """What the subscriber's own send would raise is left to it (the stream answers with an
    error); ``Hub.publish`` runs inside the log writer's completion and must not raise."""
    async with follower() as (hub, peer, outcome):
        hub.publish([Event(1, 1000, "task.exit", "c1", {"bad": object()})])  # does not raise
        hub.publish([event(2)])  # behind it, in order: buffered, not sent ahead
        with trio.fail_after(10):
            while "error" not in outcome:
                await trio.sleep(0.01)
        assert isinstance(outcome["error"], TypeError)
        assert peer.read_available() == []  # nothing sent past the event it could not send
