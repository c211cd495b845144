"""A pure-Python msgpack codec for the frames of a one-shot ``supervisorctl`` command.

Why it exists: a one-shot command is a short-lived process whose cost is mostly its imports, and
``import msgpack`` is the largest of them (its ``ext`` module imports ``datetime`` and
``collections`` for ``Timestamp`` and ``ExtType``: together more than the whole rest of the
command). The frames of a one-shot command are small (a request, a ``ps`` reply), so this codec
decodes them in less time than the import would take. A frame over :data:`NATIVE_OVER` bytes
(``ps`` of a thousand containers) is handed to msgpack's C extension, whose import then pays
for itself.

It is the same format, not a dialect: :func:`packb` gives byte for byte what
``msgpack.packb(obj, use_bin_type=True)`` gives (the smallest encoding of each value), and
:func:`unpackb` reads what ``msgpack.unpackb(data, raw=False, strict_map_key=True)`` reads, with
one exception: ext types (msgpack's ``Timestamp``, ``ExtType``), which no Tether peer sends, are
refused as malformed input. ``tests/test_minipack.py`` checks both against msgpack itself.
Malformed input raises :class:`ValueError` (the wire turns it into a ``ProtocolError``); a value
that cannot be encoded raises :class:`TypeError` or :class:`OverflowError`, as msgpack's do.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: every supervisorctl call imports this module
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_DEPTH", "NATIVE_OVER", "packb", "unpackb"]

#: Frames larger than this many bytes are decoded by msgpack's C extension.
NATIVE_OVER = 64 * 1024
#: Deepest nesting of arrays and maps accepted: a hostile frame cannot exhaust the stack (the
#: reader takes two Python frames a level, under the interpreter's default limit of 1,000).
MAX_DEPTH = 256

_F64 = b"\xcb"


def packb(obj: Any) -> bytes:
    """``obj`` as msgpack (``use_bin_type=True``): None, bool, int, float, str, bytes, list,
    tuple and dict, nested."""
    out = bytearray()
    _pack(obj, out, 0)
    return bytes(out)


def _pack(obj: Any, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    if obj is None:
        out.append(0xC0)
    elif obj is True:
        out.append(0xC3)
    elif obj is False:
        out.append(0xC2)
    elif isinstance(obj, int):
        _pack_int(int(obj), out)
    elif isinstance(obj, str):
        data = obj.encode()
        if len(data) < 32:
            out.append(0xA0 | len(data))
        else:
            _sized(len(data), out, 0xD9, "str")
        out += data
    elif isinstance(obj, dict):
        _header(len(obj), out, 0x80, 0xDE)
        for key, value in obj.items():
            _pack(key, out, depth + 1)
            _pack(value, out, depth + 1)
    elif isinstance(obj, list | tuple):
        _header(len(obj), out, 0x90, 0xDC)
        for value in obj:
            _pack(value, out, depth + 1)
    elif isinstance(obj, float):
        out += _F64 + _float_bytes(obj)
    elif isinstance(obj, bytes | bytearray | memoryview):
        data = bytes(obj)
        _sized(len(data), out, 0xC4, "bytes object")
        out += data
    else:
        raise TypeError(f"can not serialize {type(obj).__name__!r} object")


def _sized(n: int, out: bytearray, code8: int, what: str) -> None:
    """A str's or a bin's length: *code8* and 1 byte, the next code and 2, the one after and 4
    (str8/16/32 are 0xd9-0xdb, bin8/16/32 0xc4-0xc6)."""
    for code, width in ((code8, 1), (code8 + 1, 2), (code8 + 2, 4)):
        if n < 1 << (8 * width):
            out.append(code)
            out += n.to_bytes(width, "big")
            return
    raise ValueError(f"{what} is too large")


def _header(n: int, out: bytearray, fix: int, code16: int) -> None:
    """A map's or an array's header: fix (up to 15 entries), 16-bit or 32-bit count."""
    if n < 16:
        out.append(fix | n)
    elif n < 0x10000:
        out.append(code16)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(code16 + 1)
        out += n.to_bytes(4, "big")
    else:
        raise ValueError("list or dict is too large")


def _pack_int(n: int, out: bytearray) -> None:
    if n >= 0:
        if n < 0x80:
            out.append(n)
        elif n < 0x100:
            out += b"\xcc" + n.to_bytes(1, "big")
        elif n < 0x10000:
            out += b"\xcd" + n.to_bytes(2, "big")
        elif n < 0x100000000:
            out += b"\xce" + n.to_bytes(4, "big")
        elif n < 0x10000000000000000:
            out += b"\xcf" + n.to_bytes(8, "big")
        else:
            raise OverflowError("Integer value out of range")
    elif n >= -32:
        out.append(n & 0xFF)
    elif n >= -0x80:
        out += b"\xd0" + n.to_bytes(1, "big", signed=True)
    elif n >= -0x8000:
        out += b"\xd1" + n.to_bytes(2, "big", signed=True)
    elif n >= -0x80000000:
        out += b"\xd2" + n.to_bytes(4, "big", signed=True)
    elif n >= -0x8000000000000000:
        out += b"\xd3" + n.to_bytes(8, "big", signed=True)
    else:
        raise OverflowError("Integer value out of range")


def _float_bytes(value: float) -> bytes:
    import _struct  # the C module alone: ``struct`` is a layer the CLI need not pay for

    return _struct.pack(">d", value)


def _float_value(data: bytes, fmt: str) -> float:
    import _struct

    value: float = _struct.unpack(fmt, data)[0]
    return value


def unpackb(data: bytes) -> Any:
    """The one value ``data`` holds (``raw=False, strict_map_key=True``); anything else in it,
    or anything short or malformed, raises :class:`ValueError`."""
    if len(data) > NATIVE_OVER:
        import msgpack  # type: ignore[import-untyped]  # it ships no type information

        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    value, pos = _Reader(data).read(0, 0)
    if pos != len(data):
        raise ValueError(f"extra data: {len(data) - pos} bytes after the value")
    return value


class _Reader:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _take(self, pos: int, n: int) -> bytes:
        end = pos + n
        if end > len(self.data):
            raise ValueError(f"truncated: {n} bytes needed at offset {pos}")
        return self.data[pos:end]

    def _uint(self, pos: int, n: int) -> int:
        return int.from_bytes(self._take(pos, n), "big")

    def read(self, pos: int, depth: int) -> tuple[Any, int]:
        """The value at ``pos`` and the offset after it."""
        data = self.data
        if pos >= len(data):
            raise ValueError(f"truncated: a value needed at offset {pos}")
        b = data[pos]
        pos += 1
        if b <= 0x7F:
            return b, pos
        if b >= 0xE0:
            return b - 0x100, pos
        if 0xA0 <= b <= 0xBF:
            return self._str(pos, b & 0x1F)
        if 0x80 <= b <= 0x8F:
            return self._map(pos, b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return self._array(pos, b & 0x0F, depth)
        if b == 0xC0:
            return None, pos
        if b == 0xC2:
            return False, pos
        if b == 0xC3:
            return True, pos
        if 0xCC <= b <= 0xCF:
            n = 1 << (b - 0xCC)
            return self._uint(pos, n), pos + n
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return int.from_bytes(self._take(pos, n), "big", signed=True), pos + n
        if 0xD9 <= b <= 0xDB:
            n = 1 << (b - 0xD9)
            return self._str(pos + n, self._uint(pos, n))
        if 0xC4 <= b <= 0xC6:
            n = 1 << (b - 0xC4)
            size = self._uint(pos, n)
            return self._take(pos + n, size), pos + n + size
        if b == 0xCB:
            return _float_value(self._take(pos, 8), ">d"), pos + 8
        if b == 0xCA:
            return _float_value(self._take(pos, 4), ">f"), pos + 4
        if b in (0xDC, 0xDD):
            n = 2 if b == 0xDC else 4
            return self._array(pos + n, self._uint(pos, n), depth)
        if b in (0xDE, 0xDF):
            n = 2 if b == 0xDE else 4
            return self._map(pos + n, self._uint(pos, n), depth)
        raise ValueError(f"unsupported msgpack type 0x{b:02x} at offset {pos - 1}"
                         + (" (an ext type)" if b in (0xC7, 0xC8, 0xC9) or 0xD4 <= b <= 0xD8
                            else ""))

    def _str(self, pos: int, size: int) -> tuple[str, int]:
        return self._take(pos, size).decode(), pos + size

    def _array(self, pos: int, count: int, depth: int) -> tuple[list[Any], int]:
        if depth >= MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if count > len(self.data) - pos:  # each item takes a byte at least
            raise ValueError(f"truncated: an array of {count} items at offset {pos}")
        items = []
        for _ in range(count):
            value, pos = self.read(pos, depth + 1)
            items.append(value)
        return items, pos

    def _map(self, pos: int, count: int, depth: int) -> tuple[dict[Any, Any], int]:
        if depth >= MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if 2 * count > len(self.data) - pos:
            raise ValueError(f"truncated: a map of {count} entries at offset {pos}")
        out = {}
        for _ in range(count):
            key, pos = self.read(pos, depth + 1)
            if type(key) is not str and type(key) is not bytes:
                raise ValueError(f"{type(key).__name__} is not allowed for map key "
                                 "(strict_map_key)")
            out[key], pos = self.read(pos, depth + 1)
        return out, pos
