"""The event record and the vocabulary of event types.

Every change of container state is one :class:`Event`. The log is the only source of truth, so
this module is deliberately small and strict about what it accepts from disk or the wire, and
deliberately lenient about *types*: an event type this version does not know (written by a newer
Tether, say) is carried through untouched and reported, never a crash. That is what makes an
in-place upgrade or downgrade of the daemon safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from events.ids import InvalidId, validate_id

__all__ = [
    "KNOWN_TYPES",
    "Event",
    "InvalidEvent",
    "InvalidId",
    "is_known_type",
    "validate_id",
]

#: The types DESIGN.md defines, named like containerd's topics.
KNOWN_TYPES: frozenset[str] = frozenset(
    {
        "supervisor.start",
        "supervisor.stop",
        "container.create",
        "container.update",
        "container.delete",
        "container.restart",
        "task.create",
        "task.start",
        "task.exit",
        "task.delete",
        "task.oom",
        "task.exec.start",
        "task.exec.exit",
        "shim.lost",
    }
)

class InvalidEvent(ValueError):
    """A record that does not have the shape of an event (bad field, wrong type)."""


def is_known_type(event_type: str) -> bool:
    """True for the types this version understands; others are carried, not interpreted."""
    return event_type in KNOWN_TYPES


@dataclass(frozen=True, slots=True)
class Event:
    """One record of the log: ``seq`` is gap-free from 1, ``time`` is unix nanoseconds."""

    seq: int
    time: int
    type: str
    id: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The map that is msgpack-encoded on disk and on the wire."""
        return {"seq": self.seq, "time": self.time, "type": self.type, "id": self.id,
                "data": self.data}

    @classmethod
    def from_record(cls, record: object) -> Event:
        """Build an event from a decoded map, checking every field's type.

        Extra keys (a newer writer's) are ignored; missing ``id``/``data`` take their defaults,
        so an older writer's records still read.
        """
        if not isinstance(record, dict):
            raise InvalidEvent(f"event record must be a map, not {type(record).__name__}")
        seq = record.get("seq")
        time = record.get("time")
        etype = record.get("type")
        eid = record.get("id", "")
        data = record.get("data", {})
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise InvalidEvent(f"event seq must be a positive integer, got {seq!r}")
        if not isinstance(time, int) or isinstance(time, bool):
            raise InvalidEvent(f"event {seq}: time must be an integer, got {time!r}")
        if not isinstance(etype, str) or not etype:
            raise InvalidEvent(f"event {seq}: type must be a non-empty string, got {etype!r}")
        if not isinstance(eid, str):
            raise InvalidEvent(f"event {seq}: id must be a string, got {eid!r}")
        if not isinstance(data, dict):
            raise InvalidEvent(f"event {seq}: data must be a map, got {type(data).__name__}")
        return cls(seq=seq, time=time, type=etype, id=eid, data=data)
