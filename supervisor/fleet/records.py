"""How one node's event becomes one JetStream message, and back: pure functions, no I/O.

The fleet stream's contract (docs/design.md section 10), shared by the exporter, the fleet
reader and any consumer in any language:

* subject ``tether.<node>.<type>``: the event type's dot-separated words become subject tokens,
  so ``tether.*.task.exit`` or ``tether.web1.>`` select by type or node. A type that cannot be
  subject tokens (an empty word, a space, ``*`` or ``>``) goes to ``tether.<node>._invalid``:
  the body still carries it untouched.
* headers ``Nats-Msg-Id: <node>/<log_id>/<seq>`` (JetStream drops a second message with the
  same id within the stream's duplicate window; it also names the event, so no other header
  repeats node, log or seq), ``Tether-Id`` (the container id, "" for daemon events) and
  ``Tether-Acked`` (see :class:`Position`). Few headers on purpose: nats-py encodes each one
  in Python, and every header costs the exporter's throughput.
* body: one JSON object ``{"node", "log_id", "seq", "time", "type", "id", "data"}``, ``time``
  in unix nanoseconds as in the log. JSON, not msgpack, so ``nats sub`` and a consumer in any
  language read it; bytes in ``data`` (rare) become UTF-8 text as in ``supervisorctl events
  --json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "GAP_TYPE",
    "SUBJECT_ROOT",
    "FleetEvent",
    "InvalidNode",
    "Position",
    "decode",
    "encode",
    "headers",
    "msg_id",
    "node_filter",
    "parse_msg_id",
    "position_of",
    "subject_for",
    "validate_node",
]

SUBJECT_ROOT = "tether"
#: The exporter's own event when the daemon's log was compacted past its position.
GAP_TYPE = "export.gap"

_NODE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BAD_TOKEN = re.compile(r"[\s*>]")


class InvalidNode(ValueError):
    """A node name that cannot be one subject token."""


def validate_node(name: str) -> str:
    """A node name is one subject token: letters, digits, ``_`` and ``-`` (no dot), 1-64."""
    if not isinstance(name, str) or not _NODE.fullmatch(name):
        raise InvalidNode(f"invalid node name {name!r}: use 1-64 letters, digits, '_' or '-' "
                          "(it is one NATS subject token, so no dots or spaces)")
    return name


def subject_for(node: str, event_type: str) -> str:
    """``tether.<node>.<type>``, or ``tether.<node>._invalid`` for a type that is no subject."""
    words = event_type.split(".")
    if not event_type or any(not w or _BAD_TOKEN.search(w) for w in words):
        return f"{SUBJECT_ROOT}.{node}._invalid"
    return f"{SUBJECT_ROOT}.{node}.{event_type}"


def node_filter(node: str | None) -> str:
    """The subject filter of one node's events, or of every node's (``None``)."""
    return f"{SUBJECT_ROOT}.{node or '*'}.>"


def msg_id(node: str, log_id: str, seq: int) -> str:
    return f"{node}/{log_id}/{seq}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a node's export stands: the last event of log ``log_id`` stored in the stream.

    ``stream_seq`` is that message's sequence in the stream (0 when unknown). Every message also
    carries ``Tether-Acked: <seq>:<stream_seq>``, the exporter's position when it was sent (all
    events up to it acknowledged, in order), so whoever reads the last message knows which
    earlier messages may still have been in flight: only those need checking for a hole.
    """

    log_id: str
    seq: int = 0
    stream_seq: int = 0

    def acked_header(self) -> str:
        return f"{self.seq}:{self.stream_seq}"


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One event of one node as the fleet stream holds it."""

    node: str
    log_id: str
    seq: int
    time: int
    type: str
    id: str
    data: dict[str, Any]

    def record(self) -> dict[str, Any]:
        """The local event record (what ``supervisorctl events`` renders)."""
        return {"seq": self.seq, "time": self.time, "type": self.type, "id": self.id,
                "data": self.data}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode(event: FleetEvent) -> bytes:
    body = {"node": event.node, "log_id": event.log_id, "seq": event.seq, "time": event.time,
            "type": event.type, "id": event.id, "data": event.data}
    return json.dumps(body, default=_json_default, ensure_ascii=False,
                      separators=(",", ":")).encode()


def headers(event: FleetEvent, acked: Position) -> dict[str, str]:
    return {"Nats-Msg-Id": msg_id(event.node, event.log_id, event.seq), "Tether-Id": event.id,
            "Tether-Acked": acked.acked_header()}


def parse_msg_id(hdrs: dict[str, str] | None) -> tuple[str, str, int]:
    """``Nats-Msg-Id`` -> (node, log_id, seq); :class:`BadMessage` if it is not ours."""
    node, _, rest = (hdrs or {}).get("Nats-Msg-Id", "").partition("/")
    log_id, _, seq = rest.partition("/")
    if not node or not log_id or not seq.isdigit():
        raise BadMessage(f"no Tether Nats-Msg-Id ({(hdrs or {}).get('Nats-Msg-Id')!r})")
    return node, log_id, int(seq)


class BadMessage(ValueError):
    """A message on a ``tether.`` subject that is not one of ours."""


def decode(data: bytes | None) -> FleetEvent:
    """The body of a fleet message; :class:`BadMessage` for anything else."""
    try:
        body = json.loads(data or b"")
    except ValueError as exc:
        raise BadMessage(f"not a fleet event (body is not JSON: {exc})") from None
    if not isinstance(body, dict):
        raise BadMessage("not a fleet event (body is not a JSON object)")
    try:
        event = FleetEvent(node=body["node"], log_id=body["log_id"], seq=body["seq"],
                           time=body["time"], type=body["type"], id=body.get("id", ""),
                           data=body.get("data") or {})
    except KeyError as exc:
        raise BadMessage(f"not a fleet event (no {exc.args[0]!r} in its body)") from None
    if not (isinstance(event.seq, int) and isinstance(event.time, int)
            and isinstance(event.type, str) and isinstance(event.node, str)
            and isinstance(event.log_id, str) and isinstance(event.data, dict)):
        raise BadMessage("not a fleet event (a field has the wrong type)")
    return event


def position_of(hdrs: dict[str, str] | None, stream_seq: int) -> tuple[Position, Position]:
    """From the headers of a node's last message: (where it stands, its ``Tether-Acked``).

    Raises :class:`BadMessage` when the headers are not an exporter's.
    """
    _, log_id, seq = parse_msg_id(hdrs)
    try:
        acked_seq, _, acked_stream = (hdrs or {}).get("Tether-Acked", "0:0").partition(":")
        acked = Position(log_id, int(acked_seq), int(acked_stream or 0))
    except ValueError as exc:
        raise BadMessage(f"the node's last message has a bad Tether-Acked ({exc})") from None
    return Position(log_id, seq, stream_seq), acked
