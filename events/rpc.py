"""A small blocking client for any Tether socket (supervisorctl -> daemon, tests -> shim).

Blocking on purpose: a one-shot ``supervisorctl ps`` must not pay for importing trio. It is a
thin I/O wrapper around :class:`events.wire.Conversation`, the sans-IO client that the trio side
of the system drives too.

It uses the interpreter's own ``_socket`` object, not the ``socket`` module: that module's
enums (``AddressFamily``...) and its ``selectors`` import cost a one-shot command more than its
connect, and a blocking connect/send/recv needs none of them. Its errors are the same
(``OSError`` and its subclasses, ``TimeoutError``).
"""

from __future__ import annotations

import _socket

from events import wire

TYPE_CHECKING = False  # not typing's: every supervisorctl call imports this module
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


__all__ = ["BlockingConnection"]

_RECV = 65536


class BlockingConnection:
    """One connection: hello exchanged on connect, then calls and streams, one at a time.

    ``timeout`` (seconds, or None for none) bounds each socket operation, so a wedged peer
    gives ``TimeoutError`` rather than a hung caller. :meth:`send_request` and :meth:`recv`
    are the raw level, for callers that keep several requests open on one connection.
    """

    def __init__(self, path: str, role: str = "client", timeout: float | None = 30.0,
                 max_frame: int = wire.MAX_FRAME, codec: wire.Codec = wire.NATIVE,
                 first: tuple[str, dict[str, Any]] | None = None) -> None:
        """``first``: a call (method, params) sent in the same write as the hello, so that a
        one-shot command waits for one round trip, not two; :meth:`result` reads its answer."""
        self.path = path
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._conv = wire.Conversation(role, max_frame, codec)
        try:
            self._sock.connect(path)
            data = self._conv.hello()
            if first is not None:
                data += self._conv.request(*first)
            # A peer that refuses us (bad credentials, too many connections) may close before
            # reading our hello: its error frame, sent first, says why, so read it.
            try:  # noqa: SIM105 (contextlib is an import every supervisorctl call would pay)
                self._sock.sendall(data)
            except BrokenPipeError:
                pass
            self.peer: dict[str, Any] = self._next()[1]
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> BlockingConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)

    def _receive(self) -> None:
        data = self._sock.recv(_RECV)
        if not data:
            raise ConnectionResetError(f"{self.path}: peer closed the connection")
        self._conv.receive_data(data)

    def _next(self) -> tuple[str, Any]:
        while (event := self._conv.next_event()) is None:
            self._receive()
        return event

    def recv(self) -> dict[str, Any]:
        """The next message from the peer; ``ConnectionError`` if it closed the connection."""
        while (message := self._conv.next_message()) is None:
            self._receive()
        return message

    def send_request(self, method: str, params: dict[str, Any] | None = None) -> int:
        """Send a request without waiting; its id (read the replies with :meth:`recv`)."""
        self._sock.sendall(self._conv.request(method, params))
        return self._conv.rid

    def call(self, method: str, **params: Any) -> Any:
        """Send a request and return its result; an error reply raises ``wire.RemoteError``."""
        self._sock.sendall(self._conv.request(method, params))
        return self._next()[1]

    def result(self) -> Any:
        """The result of the call sent last (``first``); an error reply raises
        ``wire.RemoteError``."""
        return self._next()[1]

    def stream(self, method: str, **params: Any) -> Iterator[Any]:
        """Yield the items of a stream until its end frame; an error frame raises."""
        self._sock.sendall(self._conv.request(method, params, stream=True))
        while (event := self._next())[0] == "item":
            yield event[1]
