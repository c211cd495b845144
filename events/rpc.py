"""A small blocking client for any Tether socket (supervisorctl -> daemon, tests -> shim).

Blocking on purpose: a one-shot ``supervisorctl ps`` must not pay for importing trio. The trio
side of the system uses the same sans-IO codec (:mod:`events.wire`) with its own I/O.
"""

from __future__ import annotations

import socket

from events import wire

TYPE_CHECKING = False  # not typing's: every supervisorctl call imports this module (~3 ms)
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


__all__ = ["BlockingConnection"]


class BlockingConnection:
    """One connection: hello exchanged on connect, then calls and streams, one at a time.

    ``timeout`` (seconds, or None for none) bounds each socket operation, so a wedged peer
    gives ``TimeoutError`` rather than a hung caller.
    """

    def __init__(self, path: str, role: str = "client", timeout: float | None = 30.0,
                 max_frame: int = wire.MAX_FRAME) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._decoder = wire.FrameDecoder(max_frame)
        self._pending: list[dict[str, Any]] = []
        self._next_id = 1
        try:
            self._sock.connect(path)
            # A peer that refuses us (bad credentials, too many connections) may close before
            # reading our hello: its error frame, sent first, says why, so read it. (No
            # contextlib.suppress: it costs every supervisorctl call ~2 ms of imports.)
            try:  # noqa: SIM105
                self._send(wire.hello(role))
            except BrokenPipeError:
                pass
            self.peer = wire.parse_hello(self.recv())
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

    def _send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(wire.encode(message))

    def recv(self) -> dict[str, Any]:
        """The next message from the peer; ``ConnectionError`` if it closed the connection."""
        while not self._pending:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionResetError(f"{self.path}: peer closed the connection")
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    def send_request(self, method: str, params: dict[str, Any] | None = None) -> int:
        rid = self._next_id
        self._next_id += 1
        self._send(wire.request(rid, method, params))
        return rid

    def call(self, method: str, **params: Any) -> Any:
        """Send a request and return its result; an error reply raises ``wire.RemoteError``."""
        rid = self.send_request(method, params)
        while True:
            response = wire.response_to(rid, self.recv())
            if response is not None and response[0] == "result":
                return response[1]

    def stream(self, method: str, **params: Any) -> Iterator[Any]:
        """Yield the items of a stream until its end frame; an error frame raises."""
        rid = self.send_request(method, params)
        while True:
            response = wire.response_to(rid, self.recv())
            if response is None or response[0] == "result":
                continue
            if response[0] == "end":
                return
            yield response[1]
