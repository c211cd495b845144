"""A scripted stand-in for supervisord's socket, for protocol-level tests of the clients only.

(A helper module for test_ctl.py and test_client.py; it holds no tests itself.) It answers
hellos and replies to requests from a script (method -> handler), in a thread, on a
real unix socket. It proves what supervisorctl and the client library *send* and how they render
and report what they *receive*; it proves nothing about containers or the OS: those tests use
the real daemon (tests/daemon_helpers.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from events import wire

#: A handler gets the params and returns the frames to send (without ids: they are added),
#: e.g. ``[{"result": 1}]`` or ``[{"item": x}, {"end": True}]``; ``None`` sends nothing (hang).
Handler = Callable[[dict[str, Any]], list[dict[str, Any]] | None]


class FakeDaemon:
    def __init__(self, path: Path, handlers: dict[str, Handler], pid: int = 4242) -> None:
        self.path = str(path)
        self.handlers = handlers
        self.pid = pid
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(8)
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = wire.FrameDecoder()
        helloed = False
        with contextlib.suppress(OSError):
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for message in decoder.feed(data):
                    if not helloed:
                        wire.parse_hello(message)
                        conn.sendall(wire.encode(wire.hello("daemon", pid=self.pid,
                                                            version="fake")))
                        helloed = True
                        continue
                    req = wire.parse_request(message)
                    self.requests.append((req.method, req.params))
                    handler = self.handlers.get(req.method)
                    if handler is None:
                        frames: list[dict[str, Any]] | None = [
                            {"error": {"code": "unknown_method", "message": req.method}}]
                    else:
                        frames = handler(req.params)
                    for frame in frames or []:
                        if frame.get("close"):
                            conn.shutdown(socket.SHUT_RDWR)
                            return
                        conn.sendall(wire.encode({"id": req.rid, **frame}))

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._thread.join(5)


@contextlib.contextmanager
def fake_daemon(root: Path, handlers: dict[str, Handler]) -> Iterator[FakeDaemon]:
    fake = FakeDaemon(root / "supervisord.sock", handlers)
    try:
        yield fake
    finally:
        fake.close()


def result(value: Any) -> Handler:
    return lambda params: [{"result": value}]


def stream(items: list[Any], end: dict[str, Any] | None = None) -> Handler:
    return lambda params: [*({"item": i} for i in items), end or {"end": True}]


def error(code: str, message: str) -> Handler:
    return lambda params: [{"error": {"code": code, "message": message}}]
