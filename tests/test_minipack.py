"""events.minipack is msgpack, byte for byte: checked against msgpack's C extension itself."""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import minipack, wire

_INT = st.one_of(st.integers(-(2**63), 2**64 - 1),
                 st.sampled_from([0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
                                  2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769,
                                  -(2**31), -(2**31) - 1, -(2**63)]))
#: str and bytes across their 8/16/32-bit length headers, cheaply (hypothesis refuses to draw
#: 70 KB of random bytes often)
_LONG = st.integers(30, 70000)
_SCALAR = st.one_of(st.none(), st.booleans(), _INT, st.floats(allow_nan=False), st.text(),
                    st.binary(), _LONG.map(lambda n: "é" * (n // 2)), _LONG.map(b"\x00".__mul__))
VALUES = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=20),
                            st.dictionaries(st.one_of(st.text(), st.binary()), inner,
                                            max_size=20)),
    max_leaves=40)


def native_packb(value: object) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


def native_unpackb(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=True)


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_packs_what_msgpack_packs_byte_for_byte(value: object) -> None:
    assert minipack.packb(value) == native_packb(value)


@settings(max_examples=150, deadline=None)
@given(VALUES)
def test_reads_what_msgpack_writes(value: object) -> None:
    assert minipack.unpackb(native_packb(value)) == native_unpackb(native_packb(value))


@pytest.mark.parametrize("count", [15, 16, 65535, 65536])
def test_collection_headers_at_their_boundaries(count: int) -> None:
    for value in (list(range(count)), {str(i): i for i in range(count)}):
        data = native_packb(value)
        assert minipack.packb(value) == data
        assert minipack.unpackb(data) == value  # over NATIVE_OVER: decoded by msgpack itself


def test_tuples_and_str_subclasses_pack_as_msgpack_packs_them() -> None:
    from events.domain import ContainerState

    value = {"state": ContainerState.RUNNING, "argv": ("a", "b"), "buf": bytearray(b"x")}
    assert minipack.packb(value) == native_packb(value)


def test_single_floats_are_read() -> None:
    data = msgpack.packb(1.5, use_single_float=True)
    assert data[0] == 0xCA
    assert minipack.unpackb(data) == 1.5


@pytest.mark.parametrize(("data", "why"), [
    (b"", "truncated"),
    (b"\x92\x01", "truncated"),                    # an array of 2 with one item
    (b"\xda\x00\x05abc", "truncated"),              # str16 of 5 with 3 bytes
    (b"\xcd\x01", "truncated"),                     # uint16 with one byte
    (b"\x01\x02", "extra data"),
    (b"\x81\x01\x02", "map key"),                   # an int key (strict_map_key)
    (b"\xc1", "unsupported"),                       # never used
    (b"\xa2\xff\xfe", "utf-8"),                     # not UTF-8
    (b"\xdd\xff\xff\xff\xff", "truncated"),         # announces 4 G items in 0 bytes
])
def test_malformed_input_is_a_value_error_that_says_what(data: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why if why != "utf-8" else "utf-8|codec"):
        minipack.unpackb(data)
    with pytest.raises(ValueError):
        native_unpackb(data)  # msgpack refuses each as well


def test_ext_types_are_refused_where_msgpack_would_read_them() -> None:
    """The one difference, documented: no Tether peer sends an ext type (a Timestamp)."""
    data = b"\xd4\x01\x00"  # fixext 1
    assert isinstance(native_unpackb(data), msgpack.ExtType)
    with pytest.raises(ValueError, match="ext type"):
        minipack.unpackb(data)


def test_nesting_is_bounded() -> None:
    deep = b"\x91" * (minipack.MAX_DEPTH + 1) + b"\xc0"
    with pytest.raises(ValueError, match="nested deeper"):
        minipack.unpackb(deep)
    value: list[object] = []
    for _ in range(minipack.MAX_DEPTH + 2):
        value = [value]
    with pytest.raises(ValueError, match="nested deeper"):
        minipack.packb(value)


@pytest.mark.parametrize(("value", "error"), [
    (2**64, OverflowError), (-(2**63) - 1, OverflowError), (object(), TypeError),
    ({1, 2}, TypeError),
])
def test_what_cannot_be_packed_raises_as_msgpack_does(value: object,
                                                      error: type[Exception]) -> None:
    with pytest.raises(error):
        minipack.packb(value)
    with pytest.raises(error):
        native_packb(value)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.dictionaries(st.text(max_size=10), VALUES, max_size=4), min_size=1,
                max_size=4),
       st.integers(1, 64))
def test_light_and_native_conversations_frame_the_same_bytes(messages: list[dict[str, object]],
                                                             chunk: int) -> None:
    """The wire's two codecs are interchangeable: each decodes the other's frames, whatever the
    split points."""
    for writer, reader in ((wire.LIGHT, wire.NATIVE), (wire.NATIVE, wire.LIGHT)):
        stream = b"".join(wire.encode(m, codec=writer) for m in messages)
        assert stream == b"".join(wire.encode(m, codec=reader) for m in messages)
        decoder = wire.FrameDecoder(codec=reader)
        got = []
        for i in range(0, len(stream), chunk):
            got += decoder.feed(stream[i:i + chunk])
        assert got == messages


def test_a_malformed_light_frame_is_a_protocol_error() -> None:
    decoder = wire.FrameDecoder(codec=wire.LIGHT)
    with pytest.raises(wire.ProtocolError, match="not valid msgpack"):
        decoder.feed(b"\x00\x00\x00\x02\x81\x01")
