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
