"""The plainest HTTP/1.1 requests, read without h11: what the early server (:mod:`supervisor.early`)
answers on ``ROOT/supervisor.sock`` before the daemon has loaded h11 and trio.

Sans-IO, and deliberately narrow: :func:`parse` takes only a well-formed ``POST /RPC2
HTTP/1.1`` with a ``Host``, one ``Content-Length`` and nothing this module does not
understand (no ``Transfer-Encoding``, no ``Expect``, no folded or odd header line), within the
full server's limits (:data:`MAX_HEAD`, :data:`MAX_BODY`). Anything else is :class:`NotPlain`:
not an error here, but a request for the full server (:mod:`supervisor.http`), which answers it
with h11 and its own words (431, 413, 400, 404...) once it has taken the connection over. So a
client is never told something here that the full server would not tell it.

:func:`response` writes what h11 writes for the full server's responses (the same status line
and headers, byte for byte: ``tests/test_early_http.py`` compares them).
"""

from __future__ import annotations

__all__ = ["MAX_BODY", "MAX_HEAD", "NotPlain", "Request", "parse", "response"]

#: The largest request head and body either server reads (431 and 413 over them).
MAX_HEAD = 64 << 10
MAX_BODY = 1 << 20

#: A header name's bytes (RFC 9110's tchar), and a value's (visible, obs-text, space, tab):
#: checked with ``bytes.translate`` (no regular expression compiled at the daemon's start).
_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VALUE = bytes(range(0x20, 0x7f)) + bytes(range(0x80, 0x100)) + b"\t"


#: ``http.HTTPStatus``'s phrases of the statuses answered here (its enum costs ~2 ms to load).
_PHRASES = {200: b"OK", 400: b"Bad Request"}


class NotPlain(Exception):
    """Not a request this module reads: the full server's to answer."""


class Request:
    """One request: its target and body, the bytes of the buffer it took (head and body),
    and whether the client asked to close after the response (``Connection: close``)."""

    __slots__ = ("body", "close", "size", "target")

    def __init__(self, target: bytes, body: bytes, size: int, close: bool) -> None:
        self.target = target
        self.body = body
        self.size = size
        self.close = close


def parse(buf: bytes | bytearray, target: bytes = b"/RPC2") -> Request | None:
    """The request at the head of ``buf``, None while more bytes are needed, or
    :class:`NotPlain`."""
    end = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buf) > MAX_HEAD or (buf and not buf[:1].isalpha()):
            raise NotPlain("no plain request head")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[1] != target or parts[2] != b"HTTP/1.1":
        raise NotPlain("not POST of the target over HTTP/1.1")
    length: int | None = None
    hosts = 0
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN):
            raise NotPlain("a header line")
        value = value.strip(b" \t")
        if value.translate(None, _VALUE):
            raise NotPlain("a header value")
        name = name.lower()
        if name == b"content-length":
            if length is not None or not value.isdigit():
                raise NotPlain("content-length")
            length = int(value)
        elif name == b"host":
            hosts += 1
        elif name in (b"transfer-encoding", b"expect", b"upgrade"):
            raise NotPlain(name.decode())
        elif name == b"connection":
            close = close or b"close" in {t.strip().lower() for t in value.split(b",")}
    if length is None or hosts != 1 or length > MAX_BODY:
        raise NotPlain("no content-length, no single host, or a body too large")
    size = end + 4 + length
    if len(buf) < size:
        return None
    return Request(parts[1], bytes(buf[end + 4:size]), size, close)


def response(status: int, body: bytes, content_type: bytes, *, asked_close: bool = False,
             error: bool = False) -> bytes:
    """The full server's response (``supervisor.http._Conn.respond``; ``error``: its
    ``_error``, which adds ``connection: close``) as h11 writes it: h11 writes its own
    ``Connection: close`` in place of ours when the client asked to close."""
    head = [b"HTTP/1.1 %d %s" % (status, _PHRASES[status]),
            b"content-type: " + content_type, b"content-length: %d" % len(body),
            b"server: tether"]
    if asked_close:
        head.append(b"Connection: close")
    elif error:
        head.append(b"connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body
