"""The wire protocol of every Tether socket, sans-IO: bytes in, messages out.

A frame is ``u32 big-endian length | msgpack map``. The same codec serves the trio daemon, the
blocking ``supervisorctl`` and the blocking shim, so it never touches a socket: callers feed it
whatever bytes arrived and send whatever :func:`encode` returns.

Conversation::

    -> {"hello": {"proto": 1, "role": "client"}}       first frame each way
    <- {"hello": {"proto": 1, "role": "daemon"}}
    -> {"id": 1, "method": "ps", "params": {}}
    <- {"id": 1, "result": [...]}                      or {"id": 1, "error": {...}}
    -> {"id": 2, "method": "events", "params": {...}}
    <- {"id": 2, "item": {...}} ...                    a stream
    <- {"id": 2, "end": true}                          or an error

The maximum frame size is checked against the length header *before* anything is buffered, so a
peer that announces 4 GiB cannot make us allocate it. Every malformed input raises
:class:`ProtocolError` with a message that says what was wrong; nothing else escapes the decoder.

The payload codec is msgpack's C extension (:data:`NATIVE`), imported on first use, or for the
one-shot ``supervisorctl`` the pure-Python :data:`LIGHT` (:mod:`events.minipack`): the same
bytes, without the import that would cost such a command more than all its work. A
:class:`Conversation` or a :class:`FrameDecoder` is given one; this module imports neither
until a frame needs it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: every supervisorctl call imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


__all__ = [
    "LIGHT",
    "MAX_FRAME",
    "NATIVE",
    "PROTO",
    "Codec",
    "Conversation",
    "FrameDecoder",
    "FrameTooLarge",
    "ProtocolError",
    "RemoteError",
    "Request",
    "encode",
    "end",
    "error",
    "hello",
    "item",
    "parse_hello",
    "parse_request",
    "remote_error",
    "reply",
    "request",
    "response_to",
]

#: Protocol version spoken in the hello frame. A peer with another version is refused.
PROTO = 1
#: Default largest frame, header excluded. Large enough for any spec or page of events, small
#: enough that a hostile or confused peer cannot exhaust memory.
MAX_FRAME = 16 * 1024 * 1024

#: The length header: a u32, big-endian.
HEADER_SIZE = 4


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message.

    ``code`` is the error code to send back before closing (``"protocol"`` unless more specific).
    """

    def __init__(self, message: str, code: str = "protocol", rid: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.rid = rid  # the request id the bad frame carried, so the error reply can name it


class FrameTooLarge(ProtocolError):
    """A frame (announced or about to be sent) is larger than the agreed maximum."""


class RemoteError(Exception):
    """An error frame received from the peer, raised on the caller's side."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Codec:
    """How a payload becomes a message and back: ``packb(message) -> bytes`` and ``unpackb(bytes)
    -> message``, msgpack's meanings (``use_bin_type=True``; ``raw=False, strict_map_key=True``).
    Malformed bytes raise any exception: the decoder turns it into a :class:`ProtocolError`."""

    __slots__ = ("name", "packb", "unpackb")

    def __init__(self, name: str, packb: Callable[[Any], bytes],
                 unpackb: Callable[[bytes], Any]) -> None:
        self.name = name
        self.packb = packb
        self.unpackb = unpackb

    def __repr__(self) -> str:
        return f"<wire.Codec {self.name}>"


_msgpack: Any = None  # msgpack, once a NATIVE frame needed it


def _import_msgpack() -> Any:
    global _msgpack
    import msgpack  # type: ignore[import-untyped]  # it ships no type information

    _msgpack = msgpack
    return msgpack


def _native_packb(message: Any) -> bytes:
    payload: bytes = (_msgpack or _import_msgpack()).packb(message, use_bin_type=True)
    return payload


def _native_unpackb(payload: bytes) -> Any:
    return (_msgpack or _import_msgpack()).unpackb(payload, raw=False, strict_map_key=True)


def _light_packb(message: Any) -> bytes:
    from events import minipack

    return minipack.packb(message)


def _light_unpackb(payload: bytes) -> Any:
    from events import minipack

    return minipack.unpackb(payload)


#: msgpack's C extension: the daemon, the shims, the client library, the tests.
NATIVE = Codec("native", _native_packb, _native_unpackb)
#: :mod:`events.minipack`: a one-shot ``supervisorctl`` command (large frames still go to C).
LIGHT = Codec("light", _light_packb, _light_unpackb)


def encode(message: Mapping[str, Any], max_frame: int = MAX_FRAME,
           codec: Codec = NATIVE) -> bytes:
    """Frame one message. Raises :class:`FrameTooLarge` rather than send what the peer refuses."""
    payload = codec.packb(message)
    if len(payload) > max_frame:
        raise FrameTooLarge(f"message of {len(payload)} bytes exceeds the {max_frame}-byte limit")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes as they arrive, get whole messages back.

    Split points do not matter: any partition of a byte stream yields the same messages.
    After a :class:`ProtocolError` the stream is out of sync and the connection must be closed.
    """

    __slots__ = ("_buf", "_need", "codec", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME, codec: Codec = NATIVE) -> None:
        self.max_frame = max_frame
        self.codec = codec
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read, once known

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame (0 at a frame boundary)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        """Add received bytes; return every message they complete, in order."""
        self._buf += data
        out: list[dict[str, Any]] = []
        pos = 0
        buf = self._buf
        while True:
            if self._need is None:
                if len(buf) - pos < HEADER_SIZE:
                    break
                length = int.from_bytes(buf[pos : pos + HEADER_SIZE], "big")
                if length > self.max_frame:
                    raise FrameTooLarge(
                        f"frame header announces {length} bytes, over the {self.max_frame}-byte "
                        "limit"
                    )
                if length == 0:
                    raise ProtocolError("empty frame: a frame must hold one msgpack map")
                pos += HEADER_SIZE
                self._need = length
            if len(buf) - pos < self._need:
                break
            payload = bytes(buf[pos : pos + self._need])
            pos += self._need
            self._need = None
            out.append(_unpack(payload, self.codec))
        if pos:
            del buf[:pos]
        return out


def _unpack(payload: bytes, codec: Codec) -> dict[str, Any]:
    try:
        message = codec.unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"frame is not valid msgpack: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame must hold a msgpack map, not {type(message).__name__}")
    return message


# -- message constructors ---------------------------------------------------------------------


def hello(role: str, **extra: Any) -> dict[str, Any]:
    """The first frame each side sends. ``extra`` carries optional facts (version, instance)."""
    return {"hello": {"proto": PROTO, "role": role, **extra}}


def request(rid: int, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "method": method, "params": dict(params or {})}


def reply(rid: int, result: Any = None) -> dict[str, Any]:
    return {"id": rid, "result": result}


def error(rid: int | None, code: str, message: str) -> dict[str, Any]:
    """An error reply; ``rid`` is None for connection-level errors (bad hello, bad frame)."""
    return {"id": rid, "error": {"code": code, "message": message}}


def item(rid: int, value: Any) -> dict[str, Any]:
    """One item of a stream answering request ``rid``."""
    return {"id": rid, "item": value}


def end(rid: int) -> dict[str, Any]:
    """The normal end of a stream."""
    return {"id": rid, "end": True}


# -- message parsers --------------------------------------------------------------------------


def parse_hello(message: Mapping[str, Any], roles: frozenset[str] | set[str] | None = None
                ) -> dict[str, Any]:
    """Check a peer's hello frame and return its map.

    Raises :class:`ProtocolError` (code ``"protocol"``) for anything that is not a hello of
    our protocol version, or (when ``roles`` is given) of an unexpected role.
    """
    body = message.get("hello")
    if body is None and "error" in message:
        err = message["error"]
        if isinstance(err, dict):
            raise RemoteError(str(err.get("code", "protocol")), str(err.get("message", "")))
    if not isinstance(body, dict):
        raise ProtocolError("expected a hello frame first, e.g. {'hello': {'proto': 1, ...}}")
    proto = body.get("proto")
    if proto != PROTO:
        raise ProtocolError(f"unsupported protocol version {proto!r}; this side speaks {PROTO}")
    role = body.get("role")
    if not isinstance(role, str):
        raise ProtocolError("hello frame has no role")
    if roles is not None and role not in roles:
        raise ProtocolError(f"unexpected role {role!r}; expected one of {sorted(roles)}")
    return dict(body)


def remote_error(err: Any) -> RemoteError:
    """The exception for an error frame's ``error`` map (or for a malformed one)."""
    if not isinstance(err, dict):
        return RemoteError("protocol", f"malformed error frame: {err!r}")
    return RemoteError(str(err.get("code", "internal")), str(err.get("message", "")))


def response_to(rid: int, message: Mapping[str, Any]) -> tuple[str, Any] | None:
    """What *message* means to a caller waiting on request *rid*.

    ``None``: not for this request (an item of a stream an earlier caller abandoned): skip it.
    Otherwise ``("result", value)``, ``("item", value)`` or ``("end", None)``; an error frame
    for *rid* (or a connection-level one, id None) raises :class:`RemoteError`. Every client of
    the system -- blocking or trio -- interprets replies through this one function.
    """
    if message.get("id") not in (rid, None):
        return None
    if "error" in message:
        raise remote_error(message["error"])
    if "result" in message:
        return ("result", message["result"])
    if message.get("end"):
        return ("end", None)
    if "item" in message:
        return ("item", message["item"])
    return None


class Conversation:
    """The client's side of one connection, sans-IO, as h11's ``Connection``: every client of
    the system (the blocking ``supervisorctl``, the trio client library, the daemon's calls to
    its shims) drives one of these and only moves bytes.

    ::

        conv = Conversation("client")
        send(conv.hello())
        send(conv.request("ps", {"all": True}))
        while (event := conv.next_event()) is None:   # None: it needs more bytes
            conv.receive_data(recv())                  # the peer's hello is taken on the way
        kind, value = event                            # ("result", rows)

    One request at a time is *current*: :meth:`next_event` interprets replies for it alone
    (through :func:`response_to`) and skips frames of an earlier request (the items of a stream
    its caller abandoned). An error frame for it raises :class:`RemoteError`; a bad frame
    raises :class:`ProtocolError` (the connection is then out of sync: close it). Callers that
    multiplex several requests on one connection (a shim link: ``state`` beside ``events``)
    read whole frames with :meth:`next_message` and match ids themselves.
    """

    __slots__ = ("_decoder", "_pending", "_stream", "codec", "max_frame", "peer", "rid", "role")

    def __init__(self, role: str = "client", max_frame: int = MAX_FRAME,
                 codec: Codec = NATIVE) -> None:
        self.role = role
        self.max_frame = max_frame
        self.codec = codec
        self._decoder = FrameDecoder(max_frame, codec)
        self._pending: list[dict[str, Any]] = []
        #: the peer's hello map, once it arrived (see :func:`parse_hello`)
        self.peer: dict[str, Any] | None = None
        #: the id of the current request (0: none yet); ids count up from 1
        self.rid = 0
        self._stream = False

    def hello(self, **extra: Any) -> bytes:
        """The first frame to send."""
        return encode(hello(self.role, **extra), self.max_frame, self.codec)

    def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                stream: bool = False) -> bytes:
        """Frame a new request, which becomes the current one. ``stream``: it answers with
        items and an end (``logs``, ``events``, ``exec``), not with one result."""
        self.rid += 1
        self._stream = stream
        return encode(request(self.rid, method, params), self.max_frame, self.codec)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer (never empty: the caller turns EOF into its own error)."""
        self._pending.extend(self._decoder.feed(data))

    @property
    def buffered(self) -> int:
        """Bytes received but not yet a whole message (0 between frames)."""
        return self._decoder.buffered

    def next_message(self) -> dict[str, Any] | None:
        """The next whole frame as it came (None: more bytes needed)."""
        return self._pending.pop(0) if self._pending else None

    def next_event(self) -> tuple[str, Any] | None:
        """What the peer said next: ``("hello", peer)`` first, then, for the current request,
        ``("result", value)``, or ``("item", value)`` ... ``("end", None)`` for a stream;
        None when more bytes are needed."""
        while self._pending:
            message = self._pending.pop(0)
            if self.peer is None:
                self.peer = parse_hello(message)
                return ("hello", self.peer)
            event = response_to(self.rid, message) if self.rid else None
            if event is None:
                continue
            if (event[0] == "result") == self._stream:
                what = "a result" if event[0] == "result" else "stream frames"
                raise ProtocolError(f"request {self.rid} got {what}: it is "
                                    f"{'a stream' if self._stream else 'a call'}")
            return event
        return None


class Request:
    """A validated request: ``rid``, ``method`` and ``params`` (always a dict)."""

    __slots__ = ("method", "params", "rid")

    def __init__(self, rid: int, method: str, params: dict[str, Any]) -> None:
        self.rid = rid
        self.method = method
        self.params = params

    def __repr__(self) -> str:
        return f"Request({self.rid}, {self.method!r}, {self.params!r})"


def parse_request(message: Mapping[str, Any]) -> Request:
    """Validate the shape of a request frame.

    Raises :class:`ProtocolError` with code ``"invalid"``; when the frame carried a usable id,
    it is in ``exc.rid`` so the server can address its error reply.
    """
    rid = message.get("id")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ProtocolError("request needs an integer 'id'", code="invalid")
    method = message.get("method")
    if not isinstance(method, str) or not method:
        raise ProtocolError("request needs a string 'method'", code="invalid", rid=rid)
    params = message.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError("request 'params' must be a map", code="invalid", rid=rid)
    return Request(rid, method, params)
