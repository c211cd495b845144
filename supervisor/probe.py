"""Which recovered ``running`` containers ``ps`` may show ``running`` before reconciliation.

After a start, ``ps`` shows a container whose task may still run as ``unknown`` until
reconciliation (:mod:`supervisor.recovery`) has heard from its shim. For most containers that
reconciliation concludes nothing: the shim is alive, runs the task the log records, and has
nothing the log lacks. The early server (:mod:`supervisor.early`) establishes exactly that,
before the daemon has loaded trio, with one ``state`` request per shim on a fresh connection
(multiplexed on the early server's selector, a bounded number at a time):

* the log says ``running``, not stopped by hand nor given up (reconciliation sends those a
  stop again, or decides), and the task was created in this boot (else it ended with the
  boot: reconciliation applies the policy);
* the shim that answers in the container's directory is the record's (same id, same
  ``instance``), its task is ``running`` with the record's pid, and its outbox is empty
  (``seq == acked``: no event the log has not had; ``seen <= seq``: the log is not ahead).

Such a container is shown ``running`` at once, by the early server and then by the full one;
reconciliation still links its shim as always (and records what happens from then on). Every
other container stays ``unknown`` until reconciled, as before: a probe never appends, never
acknowledges, and a shim that does not answer within :data:`PROBE_TIMEOUT` is simply left to
reconciliation. A probe's connection is a plain client of the shim: closing it changes nothing
for the shim (its outbox waits for the link).
"""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from events import shim_api, wire
from events.domain import ContainerState
from supervisor.projection import Container

__all__ = ["PROBE_CONCURRENCY", "PROBE_TIMEOUT", "Probe", "provable", "proves"]

#: Shims asked at once (a thousand connections at once would wake a thousand shims together,
#: which the early server's replies then wait behind).
PROBE_CONCURRENCY = 128
#: How long one shim may take to answer before its container is left to reconciliation.
PROBE_TIMEOUT = 0.5

RUNNING = ContainerState.RUNNING


def provable(c: Container, this_boot: str, previous_boot: str | None) -> bool:
    """Whether the record alone allows a probe to prove ``c`` running (see the docstring)."""
    boot = c.boot_id or previous_boot
    return (c.state == RUNNING and not c.stopped_by_user and not c.gave_up
            and c.instance is not None and c.pid is not None
            and not (boot and boot != this_boot))


def proves(c: Container, state: Mapping[str, Any]) -> bool:
    """Whether the shim's ``state`` answer proves that reconciliation will find ``c`` as the
    log says (running, the same task, nothing to replay)."""
    seq, acked = state.get("seq"), state.get("acked")
    if not isinstance(seq, int) or not isinstance(acked, int):
        return False
    return (state.get("id") == c.id and state.get("instance") == c.instance
            and state.get("status") == RUNNING and state.get("pid") == c.pid
            and seq == acked and c.seen.get(c.instance or "", 0) <= seq)


def read_address(root: Path, cid: str) -> str | None:
    """``ROOT/shims/ID/address``, never through a symlink (the rule of
    :func:`supervisor.shims.read_shim_file`, which imports trio)."""
    try:
        dfd = os.open(root / "shims" / cid, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                      | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if os.path.islink(root / "shims"):
            return None
        fd = os.open(shim_api.ADDRESS_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=dfd)
        with open(fd, "rb") as f:
            return f.read(4096).decode().strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(dfd)


@dataclass
class _Ask:
    c: Container
    sock: socket.socket
    deadline: float
    conv: wire.Conversation = field(default_factory=lambda: wire.Conversation("supervisor"))
    out: bytes = b""


class Probe:
    """The probes of one start, driven by the early server's selector: :meth:`fill` starts
    probes up to :data:`PROBE_CONCURRENCY`, :meth:`ready` handles a probe's socket event,
    :meth:`expire` ends overdue ones; :attr:`proven` grows; :attr:`done` once all ended."""

    def __init__(self, root: Path, containers: Iterable[Container]) -> None:
        self.root = root
        self._todo = list(containers)
        self._asks: dict[int, _Ask] = {}
        self.proven: set[str] = set()
        self.asked = 0

    @property
    def done(self) -> bool:
        return not self._todo and not self._asks

    def fill(self, sel: selectors.BaseSelector) -> None:
        while self._todo and len(self._asks) < PROBE_CONCURRENCY:
            c = self._todo.pop()
            address = read_address(self.root, c.id)
            if address is None:
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(address)  # a unix socket connects at once, or fails
            except OSError:
                sock.close()
                continue
            ask = _Ask(c, sock, time.monotonic() + PROBE_TIMEOUT)
            ask.out = ask.conv.hello() + ask.conv.request("state", {})
            self._asks[sock.fileno()] = ask
            self.asked += 1
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, self)
            self._send(sel, ask)

    def ready(self, sel: selectors.BaseSelector, sock: socket.socket, mask: int) -> None:
        ask = self._asks.get(sock.fileno())
        if ask is None:
            return
        if mask & selectors.EVENT_WRITE:
            self._send(sel, ask)
        if not mask & selectors.EVENT_READ:
            return
        finished = True
        try:
            data = sock.recv(65536)
            if data:
                ask.conv.receive_data(data)
                finished = False
                while not finished and (event := ask.conv.next_event()) is not None:
                    if event[0] == "result":
                        if isinstance(event[1], dict) and proves(ask.c, event[1]):
                            self.proven.add(ask.c.id)
                        finished = True
        except BlockingIOError:
            finished = False
        except (OSError, wire.ProtocolError, wire.RemoteError):
            finished = True
        if finished:
            self._end(sel, ask)
            self.fill(sel)

    def _send(self, sel: selectors.BaseSelector, ask: _Ask) -> None:
        try:
            sent = ask.sock.send(ask.out) if ask.out else 0
        except BlockingIOError:
            return
        except OSError:
            self._end(sel, ask)
            return
        ask.out = ask.out[sent:]
        if not ask.out:
            sel.modify(ask.sock, selectors.EVENT_READ, self)

    def expire(self, sel: selectors.BaseSelector, now: float) -> None:
        for ask in [a for a in self._asks.values() if a.deadline <= now]:
            self._end(sel, ask)
        self.fill(sel)

    def next_deadline(self) -> float | None:
        return min((a.deadline for a in self._asks.values()), default=None)

    def _end(self, sel: selectors.BaseSelector, ask: _Ask) -> None:
        if self._asks.pop(ask.sock.fileno(), None) is None:
            return
        sel.unregister(ask.sock)
        ask.sock.close()

    def close(self, sel: selectors.BaseSelector) -> None:
        """End every probe still asking (the early server is handing over)."""
        self._todo.clear()
        for ask in list(self._asks.values()):
            self._end(sel, ask)
