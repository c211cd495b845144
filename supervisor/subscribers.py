"""Live event subscribers with bounded buffers, and the history -> live handoff.

A subscriber registers *before* its history is read, at the current ``last_seq`` L, inside one
step of the trio thread (no await in between), so every event > L reaches its live buffer and
every event <= L is in the history read from disk: no gap, no duplicate.

A subscriber that cannot keep up is not allowed to grow the daemon's memory: when its buffer is
full it is marked too slow and cut off with the last seq it was sent, so it can resume with
``since``. Publishing never blocks the log writer.

A subscriber whose task is idle (parked in :meth:`Subscriber.next_batch`, everything before
sent) and whose buffer is empty is sent its new events by :meth:`Hub.publish` itself, through
its ``direct`` sender, when the connection takes them without waiting: the task is not woken
and the event leaves in the step that applied it, a scheduler round sooner. Anything else (its
task busy, events buffered, the socket full) goes through the buffer as before, so the order,
the bound and the cut-off are the same: events are sent directly only when nothing is ahead of
them, and a reader that stopped reading fills its socket, then its buffer.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Sequence

import trio

from events.model import Event

__all__ = ["Hub", "Subscriber"]

Filter = Callable[[Event], bool]
#: Sends events to the subscriber's client now if it can without waiting (True), else nothing.
Direct = Callable[[list[Event]], bool]


class Subscriber:
    """One live subscription: ``after`` is the seq from which live events are buffered."""

    __slots__ = ("_wakeup", "after", "buffer", "direct", "idle", "internal", "limit", "matches",
                 "overflowed", "sent")

    def __init__(self, after: int, matches: Filter, limit: int, internal: bool = False,
                 direct: Direct | None = None) -> None:
        self.internal = internal  # the daemon's own (run --rm): not a client, not counted
        self.after = after
        self.matches = matches
        self.limit = limit
        self.buffer: deque[Event] = deque()
        self.overflowed = False
        self._wakeup = trio.Event()
        #: sends events to the client at once if it can (None: always through the buffer)
        self.direct = direct
        #: its task waits in :meth:`next_batch` with everything it took sent
        self.idle = False
        #: the seq of the last event :attr:`direct` sent (0: none)
        self.sent = 0

    def push(self, events: Sequence[Event]) -> None:
        if self.overflowed:
            return
        fresh = [e for e in events if e.seq > self.after and self.matches(e)]
        if not fresh:
            return
        if self.idle and not self.buffer and self.direct is not None and self.direct(fresh):
            self.sent = fresh[-1].seq
            return
        for event in fresh:
            if len(self.buffer) >= self.limit:
                self.overflowed = True
                self.buffer.clear()
                break
            self.buffer.append(event)
        self._wakeup.set()

    async def next_batch(self) -> list[Event]:
        """Wait for buffered events; raises :class:`TooSlow` once the buffer overflowed."""
        while not self.buffer and not self.overflowed:
            self.idle = True
            try:
                await self._wakeup.wait()
            finally:
                self.idle = False
            self._wakeup = trio.Event()
        if self.overflowed:
            raise TooSlow()
        batch = list(self.buffer)
        self.buffer.clear()
        return batch


class TooSlow(Exception):
    """The subscriber's buffer overflowed; the caller names the last seq it sent."""


#: Client subscribers at once, by default: far above a host's dashboards and exporters.
DEFAULT_MAX_SUBSCRIBERS = 256


def _max_subscribers() -> int:
    given = os.environ.get("TETHER_MAX_SUBSCRIBERS", "")
    return int(given) if given.isdigit() and int(given) > 0 else DEFAULT_MAX_SUBSCRIBERS


class Hub:
    """Fans committed events out to every live subscriber (called by the log writer)."""

    def __init__(self, buffer_limit: int = 10_000, max_subscribers: int | None = None) -> None:
        self.buffer_limit = buffer_limit
        #: client subscribers at once (``events --follow``): each holds a connection and up
        #: to ``buffer_limit`` events; ``TETHER_MAX_SUBSCRIBERS`` sets it
        self.max_subscribers = max_subscribers or _max_subscribers()
        self._subs: set[Subscriber] = set()

    def __len__(self) -> int:
        """Client subscribers (``info``'s and ``/metrics``' count): not the daemon's own."""
        return sum(not sub.internal for sub in self._subs)

    def subscribe(self, after: int, matches: Filter, limit: int | None = None,
                  internal: bool = False, direct: Direct | None = None) -> Subscriber:
        sub = Subscriber(after, matches, limit or self.buffer_limit, internal, direct)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    def publish(self, events: Sequence[Event]) -> None:
        for sub in self._subs:
            sub.push(events)
