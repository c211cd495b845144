"""Tether's event model, durable log, wire codec and subscription filters.

No trio at import time: the blocking shim and supervisorctl import this package too.
"""

from events.model import KNOWN_TYPES, Event, InvalidEvent, InvalidId, is_known_type, validate_id

__all__ = ["KNOWN_TYPES", "Event", "InvalidEvent", "InvalidId", "is_known_type", "validate_id"]
