"""When a small write may run in the trio thread itself: while the disk is fast.

Two thread hand-offs cost more than a small write to a fast disk, so the daemon writes a lone
event (:mod:`supervisor.logwriter`) and a start's spec file (:class:`supervisor.shims.FileWrites`)
in its trio thread; but a write that stalls stops that thread, and with it ``ps`` and every
subscriber. So the rule, one for both: once a write took *slow* seconds or more, the writes
go to a worker thread for *cooldown* seconds (a disk that stalls once is likely to stall
again: it stops the trio thread at most once per cooldown).
"""

from __future__ import annotations

import time

__all__ = ["DiskPace"]


class DiskPace:
    """The disk's recent pace: :meth:`fast` until a write :meth:`took` *slow* seconds or
    more, then not for *cooldown* seconds."""

    def __init__(self, slow: float, cooldown: float) -> None:
        self.slow = slow
        self.cooldown = cooldown
        self.slow_until = 0.0  # monotonic: until then, writes go to a worker thread

    def fast(self) -> bool:
        return time.monotonic() >= self.slow_until

    def took(self, seconds: float) -> None:
        if seconds >= self.slow:
            self.slow_until = time.monotonic() + self.cooldown
