"""Tether's event model, durable log, wire codec and subscription filters.

No trio at import time: the blocking shim and supervisorctl import this package too. The
re-exports below are lazy (PEP 562) so that ``import events.wire`` -- all a one-shot
``supervisorctl`` needs -- does not pay for dataclasses and the model.
"""

from __future__ import annotations

__all__ = ["KNOWN_TYPES", "Event", "InvalidEvent", "InvalidId", "is_known_type", "validate_id"]

TYPE_CHECKING = False  # not typing's: the shim imports this package, and typing costs ~8 ms
if TYPE_CHECKING:
    from typing import Any

    from events.model import (
        KNOWN_TYPES,
        Event,
        InvalidEvent,
        InvalidId,
        is_known_type,
        validate_id,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from events import model

        return getattr(model, name)
    raise AttributeError(f"module 'events' has no attribute {name!r}")
