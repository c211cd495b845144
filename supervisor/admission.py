"""The accept loop both of supervisord's servers share: who gets in, and how many.

The API socket (:mod:`supervisor.server`) and the HTTP server (:mod:`supervisor.http`) accept
connections alike; only what they say to a client differs. This module owns what they share:

* the accept loop, which backs off on ``EMFILE`` instead of spinning, and never dies of it;
* the peer's credentials (``SO_PEERCRED``), read once at accept, before any byte is read;
* a cap on open connections. A client over it is told so in its protocol (``unavailable: too
  many connections (N)``; HTTP 503) and closed at once, so a fleet of authorized clients that
  never finish a request costs at most N descriptors, never the daemon's whole table: the
  daemon raises its descriptor limit for one link per shim, and without a cap 20,000 held
  connections left nothing for the next shim or command. The last slot is kept for root
  (uid 0): whoever exhausted the others, an administrator can still run ``ps`` or
  ``shutdown``.

Each server still sets its own read timeouts (a frame, an HTTP request, begun and not
finished): those belong to the protocol, not to the accept.

The cap is :data:`supervisor.conncap.DEFAULT_MAX_CONNECTIONS`, lowered to an eighth of the
descriptor limit when that is small; ``--max-connections`` sets it, per server
(:mod:`supervisor.limits`).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

from supervisor.conncap import default_max_connections, fits
from supervisor.peercred import Creds, peer_creds

__all__ = ["Admission"]

log = structlog.get_logger("supervisord.admission")

#: How long a refusal may take to write: a fresh socket's buffer is empty, so this only
#: matters for a peer that is already gone.
REFUSE_TIMEOUT = 1.0
#: The pause after an accept failed (``EMFILE``, ``ENFILE``, ``ENOMEM``): the loop must not spin
#: while the condition lasts.
ACCEPT_BACKOFF = 0.1

Handler = Callable[[trio.SocketStream, Creds | None], Awaitable[None]]
Refuse = Callable[[trio.SocketStream, str], Awaitable[None]]


class Admission:
    """One server's accept loop and connection count. ``refuse`` writes the protocol's "too
    many connections" to a stream it is about to close; ``handle`` serves an admitted one."""

    def __init__(self, name: str, max_connections: int | None = None) -> None:
        self.name = name
        self.max_connections = max_connections or default_max_connections()
        self.open = 0
        self.refused = 0

    def admits(self, creds: Creds | None) -> bool:
        """Whether one more connection from *creds* fits: everyone shares all slots but the
        last, which only root may take."""
        return fits(self.open, self.max_connections, None if creds is None else creds[1])

    async def admit(self, nursery: trio.Nursery, stream: trio.SocketStream,
                    creds: Creds | None, handle: Handler, refuse: Refuse) -> bool:
        """Let one connection in or tell it that it does not fit: the one accept step, for a
        connection accepted now (:meth:`serve`) and for one the early server held
        (:mod:`supervisor.early`: it admitted under the same cap, counted here from now on).
        An admitted one runs ``handle(stream, creds)`` in *nursery*, counted until it ends."""
        if not self.admits(creds):
            await self.refuse(stream, refuse, creds)
            return False
        self.open += 1
        nursery.start_soon(self._run, handle, stream, creds)
        return True

    async def serve(self, sock: socket.socket, handle: Handler, refuse: Refuse, *,
                    credentials: bool = True,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on *sock* until cancelled; each admitted connection runs ``handle(stream,
        creds)`` in its own task (creds is None without ``credentials``: TCP)."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with listener, trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # EMFILE: back off, keep serving the others
                    log.warning("accept failed", server=self.name, error=str(exc))
                    await trio.sleep(ACCEPT_BACKOFF)
                    continue
                creds: Creds | None = None
                if credentials:
                    try:
                        creds = peer_creds(stream.socket)  # type: ignore[arg-type]  # trio's socket
                    except OSError:
                        creds = (0, -1, -1)  # nobody: the server's own rule refuses it
                await self.admit(nursery, stream, creds, handle, refuse)

    async def _run(self, handle: Handler, stream: trio.SocketStream,
                   creds: Creds | None) -> None:
        try:
            await handle(stream, creds)
        finally:
            self.open -= 1

    async def refuse(self, stream: trio.SocketStream, refuse: Refuse,
                     creds: Creds | None) -> None:
        """Tell one connection it does not fit, and close it (the accept loop's refusal, and
        the API server's for a connection the early server held: :mod:`supervisor.early`)."""
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:  # not one line per refusal
            log.warning("connection refused: too many connections", server=self.name,
                        max_connections=self.max_connections, refused=self.refused,
                        uid=creds[1] if creds else None)
        message = (f"too many connections ({self.max_connections}); the last is kept for "
                   "root: close idle clients (or raise supervisord's --max-connections)")
        gone = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
        with trio.move_on_after(REFUSE_TIMEOUT), contextlib.suppress(*gone):
            await refuse(stream, message)
        with trio.CancelScope(shield=True), contextlib.suppress(*gone):
            await stream.aclose()
