"""The cap on open connections per server (:mod:`supervisor.admission`), without trio: the
early server (:mod:`supervisor.early`) applies the same cap before the daemon has loaded trio.

The cap is :data:`DEFAULT_MAX_CONNECTIONS`, lowered to an eighth of the descriptor limit when
that is small; ``--max-connections`` (or its file key, or ``TETHER_MAX_CONNECTIONS``:
:mod:`supervisor.limits`) sets it, per server.
"""

from __future__ import annotations

import resource

__all__ = ["DEFAULT_MAX_CONNECTIONS", "default_max_connections", "fits"]

#: Open connections per server. Far above what a host's users and tools hold at once (each
#: ``supervisorctl`` holds one for a command; a subscriber one for as long as it follows),
#: low enough that the descriptors they can take leave room for a link per shim.
DEFAULT_MAX_CONNECTIONS = 1024


def default_max_connections() -> int:
    """:data:`DEFAULT_MAX_CONNECTIONS` within an eighth of the descriptor limit (at least 4:
    one for root, three for everyone else)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(4, min(DEFAULT_MAX_CONNECTIONS, soft // 8))


def fits(open_now: int, cap: int, uid: int | None) -> bool:
    """Whether one more connection from *uid* (None: unknown) fits beside *open_now*: everyone
    shares all slots but the last, which only root may take."""
    return open_now < cap if uid == 0 else open_now < cap - 1
