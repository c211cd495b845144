"""How supervisorctl shows things: times, the ``ps`` table, JSON lines, event lines.

Pure functions of their arguments (``now`` is a parameter), so every format is unit-tested
without a daemon. Only the standard library's cheapest modules are imported: this runs inside
every one-shot ``supervisorctl`` and its import time is part of the 40 ms budget of ``ps``.

The ``--json`` shapes are a compatibility promise (``docs/design.md`` section 11): one object
per line; :data:`PS_JSON_FIELDS` for ``ps`` (:data:`supervisor.protocol.PS_FIELDS`, then fields
added later, always at the end), ``seq, time, type, id, data`` for ``events``, ``time, stream,
partial, line`` for ``logs``; times as RFC 3339 UTC with nanoseconds, or ``null``; bytes that
are not UTF-8 as ``{"base64": "..."}`` (as ``python -m events dump --json``).
"""

from __future__ import annotations

from events import timefmt
from events.render import dumps, event_json, event_object, rfc3339
from events.render import event_line as _event_line
from supervisor.protocol import PS_FIELDS

TYPE_CHECKING = False  # not typing's: a one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

__all__ = [
    "PS_JSON_FIELDS",
    "PS_TIME_FIELDS",
    "dumps",
    "event_json",
    "event_line",
    "event_object",
    "human_ago",
    "inspect_json",
    "log_json",
    "log_prefix",
    "ps_json_lines",
    "ps_table",
    "rfc3339",
]

#: The ``ps`` fields that are unix-nanosecond times on the wire.
PS_TIME_FIELDS = ("created", "started", "finished")
#: ``ps --json``: the first nine are the original promise; later fields are only ever appended.
PS_JSON_FIELDS = (*PS_FIELDS, "command", "labels", "oom", "exit_reason")
#: Widest COMMAND cell of the table unless ``--no-trunc`` (docker's is 20).
COMMAND_WIDTH = 30
_NS = 1_000_000_000


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
               "FINISHED", "COMMAND")


def state_cell(row: Mapping[str, Any]) -> str:
    """The state, with the health of a running container that has a check (``running
    (healthy)``), and why a stopped container stopped when it was not an ordinary exit:
    ``stopped (oom)``, ``stopped (exec failed)``, ``stopped (lost)`` (the status is unknown)."""
    state = _cell(row.get("state"))
    if state == "running" and row.get("health"):
        return f"running ({row['health']})"  # docker's "Up 3 minutes (healthy)"
    if state != "stopped":
        return state
    reason = str(row.get("exit_reason") or "")
    if row.get("oom"):
        return "stopped (oom)"
    if reason.startswith("exec_failed"):
        return "stopped (exec failed)"
    if reason and row.get("exit_status") is None:
        return "stopped (lost)"
    return state


def command_cell(argv: Any, width: int | None = COMMAND_WIDTH) -> str:
    """``sh -c 'echo hi'``: words with a space or a quote are quoted; cut to ``width`` with
    an ellipsis (docker's habit), whole when ``width`` is None."""
    if not isinstance(argv, list) or not argv:
        return "-"
    words = []
    for word in map(str, argv):
        if word and all(ch.isalnum() or ch in "@%+=:,./-_" for ch in word):
            words.append(word)
        else:
            words.append("'" + word.replace("'", "'\\''") + "'")
    text = " ".join(words)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "\u2026"
    return text


def ps_table(rows: Sequence[Mapping[str, Any]], now_ns: int, trunc: bool = True) -> str:
    """The human ``ps``: a header and one aligned line per container, columns as PS_FIELDS,
    then the command."""
    lines: list[list[str]] = [list(_PS_HEADERS)]
    for row in rows:
        cells = []
        for field in PS_FIELDS:
            value = row.get(field)
            if field in PS_TIME_FIELDS:
                cells.append(human_ago(value, now_ns))
            elif field == "state":
                cells.append(state_cell(row))
            else:
                cells.append(_cell(value))
        cells.append(command_cell(row.get("command"), COMMAND_WIDTH if trunc else None))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(_PS_HEADERS))]
    out = []
    for line in lines:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        out.append("   ".join(padded).rstrip())
    return "\n".join(out) + "\n"


def ps_object(row: Mapping[str, Any]) -> dict[str, Any]:
    """Exactly the promised fields, in order; times as RFC 3339; missing ones as null."""
    obj: dict[str, Any] = {}
    for field in PS_JSON_FIELDS:
        value = row.get(field)
        obj[field] = rfc3339(value) if field in PS_TIME_FIELDS else value
    return obj


def ps_json_lines(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(dumps(ps_object(row)) + "\n" for row in rows)


def event_line(record: Mapping[str, Any]) -> str:
    """:func:`events.render.event_line`, a spec shown without the API's defaults."""
    from supervisor.protocol import SPEC_PARAMS

    return _event_line(record, SPEC_PARAMS)


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


def log_prefix(item: Mapping[str, Any]) -> bytes:
    """``logs -t``: the line's RFC 3339 time and a space (docker's ``--timestamps``)."""
    stamp = item.get("time")
    return ((timefmt.rfc3339(stamp) if isinstance(stamp, int) else "-") + " ").encode()


def log_json(item: Mapping[str, Any]) -> str:
    """``logs --json``: ``time, stream, partial, line``; a line that is not UTF-8 is
    ``{"base64": ...}`` (every byte kept)."""
    stamp = item.get("time")
    return dumps({"time": rfc3339(stamp) if isinstance(stamp, int) else None,
                  "stream": item.get("stream"), "partial": bool(item.get("partial")),
                  "line": item.get("line", b"")})
