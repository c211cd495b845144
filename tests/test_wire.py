"""The sans-IO codec: round trips, any split of a stream, limits enforced before allocation."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import wire

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
messages = st.dictionaries(st.text(min_size=1), values, min_size=1, max_size=5)


@given(st.lists(messages, min_size=1, max_size=8), st.data())
def test_any_split_of_a_stream_yields_the_same_messages(msgs, data):
    stream = b"".join(wire.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = wire.FrameDecoder()
    out = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[prev:cut]))
        prev = cut
    assert out == msgs
    assert decoder.buffered == 0


def test_byte_at_a_time():
    msgs = [wire.hello("client"), wire.request(1, "ps", {"all": True}), wire.end(1)]
    stream = b"".join(wire.encode(m) for m in msgs)
    decoder = wire.FrameDecoder()
    out = []
    for i in range(len(stream)):
        out.extend(decoder.feed(stream[i : i + 1]))
    assert out == msgs


def test_oversized_header_is_refused_before_buffering():
    decoder = wire.FrameDecoder(max_frame=1024)
    with pytest.raises(wire.FrameTooLarge, match="4294967295 bytes"):
        decoder.feed(struct.pack(">I", 0xFFFFFFFF))
    # nothing but the 4 header bytes was ever held
    assert decoder.buffered <= 4


def test_encode_refuses_what_the_peer_would_refuse():
    with pytest.raises(wire.FrameTooLarge):
        wire.encode({"x": b"a" * 2000}, max_frame=1000)


@pytest.mark.parametrize(
    "payload",
    [msgpack.packb([1, 2, 3]), msgpack.packb("text"), msgpack.packb(7), b"\xc1", b"\x92\x01"],
)
def test_non_map_and_garbage_frames_give_the_typed_error(payload):
    decoder = wire.FrameDecoder()
    with pytest.raises(wire.ProtocolError):
        decoder.feed(struct.pack(">I", len(payload)) + payload)


def test_empty_frame_is_an_error():
    with pytest.raises(wire.ProtocolError, match="empty frame"):
        wire.FrameDecoder().feed(b"\0\0\0\0")


def test_hello_version_and_role_checked():
    assert wire.parse_hello(wire.hello("daemon"), {"daemon"})["role"] == "daemon"
    with pytest.raises(wire.ProtocolError, match="protocol version 2"):
        wire.parse_hello({"hello": {"proto": 2, "role": "daemon"}})
    with pytest.raises(wire.ProtocolError, match="unexpected role"):
        wire.parse_hello(wire.hello("shim"), {"daemon"})
    with pytest.raises(wire.ProtocolError, match="hello frame first"):
        wire.parse_hello(wire.request(1, "ps"))


def test_parse_request_shapes():
    req = wire.parse_request(wire.request(3, "kill", {"signal": 9}))
    assert (req.rid, req.method, req.params) == (3, "kill", {"signal": 9})
    with pytest.raises(wire.ProtocolError) as exc:
        wire.parse_request({"id": 4, "method": 5})
    assert exc.value.rid == 4 and exc.value.code == "invalid"
    with pytest.raises(wire.ProtocolError):
        wire.parse_request({"id": "x", "method": "ps"})
    with pytest.raises(wire.ProtocolError):
        wire.parse_request({"id": 1, "method": "ps", "params": [1]})


# -- response_to: how every client reads replies -------------------------------------------------


def test_response_to_reads_results_items_and_ends_of_its_request():
    assert wire.response_to(3, wire.reply(3, [1])) == ("result", [1])
    assert wire.response_to(3, wire.reply(3)) == ("result", None)  # None is a result too
    assert wire.response_to(3, wire.item(3, {"seq": 1})) == ("item", {"seq": 1})
    assert wire.response_to(3, wire.end(3)) == ("end", None)


def test_response_to_skips_other_requests_and_unknown_shapes():
    assert wire.response_to(3, wire.item(2, "stale")) is None  # an abandoned stream's item
    assert wire.response_to(3, wire.error(2, "internal", "old")) is None
    assert wire.response_to(3, {"id": 3, "surprise": 1}) is None  # a newer peer's frame


def test_response_to_raises_error_frames_for_its_request_or_the_connection():
    with pytest.raises(wire.RemoteError) as exc:
        wire.response_to(3, wire.error(3, "not_found", "no container 'x'"))
    assert (exc.value.code, exc.value.message) == ("not_found", "no container 'x'")
    with pytest.raises(wire.RemoteError) as exc:
        wire.response_to(3, wire.error(None, "protocol", "bad frame"))
    assert exc.value.code == "protocol"
    with pytest.raises(wire.RemoteError) as exc:
        wire.response_to(3, {"id": 3, "error": "not a map"})
    assert exc.value.code == "protocol" and "malformed" in exc.value.message


# -- the client conversation (sans-IO) ------------------------------------------------------------


def _server_bytes(*messages: dict) -> bytes:
    return b"".join(wire.encode(m) for m in messages)


def test_conversation_hello_then_a_call_byte_by_byte():
    conv = wire.Conversation("client")
    assert wire.FrameDecoder().feed(conv.hello()) == [wire.hello("client")]
    sent = wire.FrameDecoder().feed(conv.request("ps", {"all": True}))
    assert sent == [wire.request(1, "ps", {"all": True})] and conv.rid == 1
    assert conv.next_event() is None  # nothing received yet: it needs data
    data = _server_bytes(wire.hello("daemon", pid=7), wire.reply(1, [{"id": "a"}]))
    events = []
    for i in range(len(data)):
        conv.receive_data(data[i : i + 1])
        while (event := conv.next_event()) is not None:
            events.append(event)
    assert events == [("hello", {"proto": wire.PROTO, "role": "daemon", "pid": 7}),
                      ("result", [{"id": "a"}])]
    assert conv.peer == {"proto": wire.PROTO, "role": "daemon", "pid": 7}


def test_conversation_stream_skips_an_abandoned_requests_frames():
    conv = wire.Conversation()
    conv.receive_data(_server_bytes(wire.hello("daemon")))
    assert conv.next_event() == ("hello", {"proto": wire.PROTO, "role": "daemon"})
    conv.request("events", stream=True)
    conv.request("logs", stream=True)  # the first was abandoned: its frames are skipped
    conv.receive_data(_server_bytes(wire.item(1, "old"), wire.end(1), wire.item(2, "a"),
                                    wire.item(2, "b"), wire.end(2)))
    got = []
    while (event := conv.next_event()) is not None:
        got.append(event)
    assert got == [("item", "a"), ("item", "b"), ("end", None)]


def test_conversation_refuses_a_wrong_hello_and_mismatched_replies():
    conv = wire.Conversation()
    conv.receive_data(_server_bytes(wire.reply(1, "no hello")))
    with pytest.raises(wire.ProtocolError, match="hello frame first"):
        conv.next_event()
    refused = wire.Conversation()
    refused.receive_data(_server_bytes(wire.error(None, "permission_denied", "uid 65534")))
    with pytest.raises(wire.RemoteError) as exc:
        refused.next_event()
    assert exc.value.code == "permission_denied"
    conv = wire.Conversation()
    conv.receive_data(_server_bytes(wire.hello("daemon")))
    conv.next_event()
    conv.request("events")  # a call ...
    conv.receive_data(_server_bytes(wire.item(1, "x")))  # ... answered like a stream
    with pytest.raises(wire.ProtocolError, match="a call"):
        conv.next_event()


def test_conversation_raw_messages_for_multiplexing_callers():
    conv = wire.Conversation("supervisor")
    conv.request("state")
    conv.request("events", stream=True)
    conv.receive_data(_server_bytes(wire.hello("shim"), wire.reply(1, {"seq": 3}),
                                    wire.item(2, {"seq": 3})))
    assert conv.next_event()[0] == "hello"
    assert conv.next_message() == wire.reply(1, {"seq": 3})
    assert conv.next_message() == wire.item(2, {"seq": 3})
    assert conv.next_message() is None
