"""How supervisorctl shows things: times, the ``ps`` table, JSON lines, event lines.

Pure functions of their arguments (``now`` is a parameter), so every format is unit-tested
without a daemon. Only the standard library's cheapest modules are imported: this runs inside
every one-shot ``supervisorctl`` and its import time is part of the 40 ms budget of ``ps``.

The ``--json`` shapes are a compatibility promise (DESIGN.md): one object per line, the fields of
:data:`supervisor.protocol.PS_FIELDS` for ``ps`` and ``seq, time, type, id, data`` for
``events``, times as RFC 3339 UTC with nanoseconds, or ``null``.
"""

from __future__ import annotations

from events import timefmt
from supervisor.protocol import PS_FIELDS

TYPE_CHECKING = False  # not typing's: a one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

__all__ = [
    "PS_TIME_FIELDS",
    "event_json",
    "event_line",
    "human_ago",
    "inspect_json",
    "ps_json_lines",
    "ps_table",
    "rfc3339",
]

#: The ``ps`` fields that are unix-nanosecond times on the wire.
PS_TIME_FIELDS = ("created", "started", "finished")
_NS = 1_000_000_000


def rfc3339(ns: int | None) -> str | None:
    """Unix nanoseconds -> RFC 3339 (:func:`events.timefmt.rfc3339`); None -> None."""
    return None if ns is None else timefmt.rfc3339(ns)


def _human_duration(seconds: float) -> str:
    """Docker's wording (``units.HumanDuration``), so the table reads like ``docker ps``."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def human_ago(ns: int | None, now_ns: int) -> str:
    """``"3 seconds ago"``; ``"-"`` for a time that has not happened (e.g. never started)."""
    if ns is None:
        return "-"
    delta = (now_ns - int(ns)) / _NS
    if delta < 0:  # clocks of two processes; never print "in the future"
        delta = 0
    return _human_duration(delta) + " ago"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


_PS_HEADERS = ("ID", "STATE", "PID", "EXIT", "RESTARTS", "RUNTIME", "CREATED", "STARTED",
               "FINISHED")


def ps_table(rows: Sequence[Mapping[str, Any]], now_ns: int) -> str:
    """The human ``ps``: a header and one aligned line per container, columns as PS_FIELDS."""
    lines: list[list[str]] = [list(_PS_HEADERS)]
    for row in rows:
        cells = []
        for field in PS_FIELDS:
            value = row.get(field)
            if field in PS_TIME_FIELDS:
                cells.append(human_ago(value, now_ns))
            elif field == "state" and row.get("health") and value == "running":
                cells.append(f"{value} ({row['health']})")  # docker's "Up 3 minutes (healthy)"
            else:
                cells.append(_cell(value))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(_PS_HEADERS))]
    out = []
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        out.append("   ".join(padded).rstrip())
    return "\n".join(out) + "\n"


def _json_default(value: Any) -> Any:
    """msgpack may hand us bytes (a container's binary output, a label); JSON has no bytes."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON the same way everywhere: UTF-8 kept readable, bytes decoded, compact lines."""
    import json  # not for the `ps` table: 1.4 ms of a one-shot run

    separators = (", ", ": ") if indent is None else (",", ": ")
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=indent,
                      separators=separators)


def ps_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the promised fields, in order; times as RFC 3339; missing ones as null."""
    obj: dict[str, Any] = {}
    for field in PS_FIELDS:
        value = row.get(field)
        obj[field] = rfc3339(value) if field in PS_TIME_FIELDS else value
    return obj


def ps_json_lines(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(dumps(ps_object(row)) + "\n" for row in rows)


def event_object(record: Mapping[str, Any]) -> dict[str, Any]:
    """The promised event line: ``seq, time, type, id, data`` and nothing else."""
    return {
        "seq": record.get("seq"),
        "time": rfc3339(record.get("time")),
        "type": record.get("type"),
        "id": record.get("id", ""),
        "data": record.get("data", {}),
    }


def event_json(record: Mapping[str, Any]) -> str:
    return dumps(event_object(record))


def event_line(record: Mapping[str, Any]) -> str:
    """One human line: ``seq time type id key=value ...`` (data compact, keys sorted)."""
    data = record.get("data") or {}
    parts = []
    for key in sorted(data):
        value = data[key]
        if key == "spec" and isinstance(value, dict):
            value = _non_default(value)  # the line shows what was asked, not every default
        if key.endswith("_at") and isinstance(value, int) and not isinstance(value, bool):
            shown = rfc3339(value)  # e.g. exited_at: people read times, not nanoseconds
        elif isinstance(value, str) and value and " " not in value:
            shown = value
        else:
            shown = dumps(value)
        parts.append(f"{key}={shown}")
    return " ".join(
        str(p) for p in (record.get("seq"), rfc3339(record.get("time")), record.get("type"),
                         record.get("id") or "-", *parts)
    )


def _non_default(spec: Mapping[str, Any]) -> dict[str, Any]:
    from supervisor.protocol import SPEC_PARAMS

    return {k: v for k, v in spec.items() if k not in SPEC_PARAMS or SPEC_PARAMS[k] != v}


def _times(entry: Any) -> Any:
    """A health check's result with its times (``start``, ``end``: unix ns) as RFC 3339."""
    if not isinstance(entry, dict):
        return entry
    return {k: rfc3339(v) if k in ("start", "end") and isinstance(v, int)
            and not isinstance(v, bool) else v for k, v in entry.items()}


def inspect_json(obj: Mapping[str, Any]) -> str:
    """``inspect``: the daemon's object, times rendered (PS times, history event times)."""
    out = dict(obj)
    for field in PS_TIME_FIELDS:
        if field in out:
            out[field] = rfc3339(out[field])
    restart = out.get("restart")
    if isinstance(restart, dict) and isinstance(restart.get("start_at"), int):
        out["restart"] = {**restart, "start_at": rfc3339(restart["start_at"])}
    health = out.get("health")
    if isinstance(health, dict) and isinstance(health.get("log"), list):
        out["health"] = {**health, "log": [_times(entry) for entry in health["log"]]}
    history = out.get("history")
    if isinstance(history, list):
        out["history"] = [event_object(e) if isinstance(e, dict) else e for e in history]
    return dumps(out, indent=2)
