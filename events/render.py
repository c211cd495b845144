"""How an event (and any value in it) is shown to people and scripts: one home for both
``supervisorctl events`` and ``python -m events dump``.

* ``--json`` lines: ``seq, time, type, id, data`` and nothing else; times RFC 3339 with
  nanoseconds; bytes that are UTF-8 as text, others kept losslessly as ``{"base64": ...}``.
* human lines: ``seq time type id key=value ...``, data keys sorted, ``*_at`` times as RFC 3339,
  a container spec shown without the fields that have their default (the caller passes the
  defaults: the daemon's spec vocabulary is not the events package's to know).

Standard library only, ``json`` imported when first needed: every one-shot ``supervisorctl``
imports this module.
"""

from __future__ import annotations

from events import timefmt

TYPE_CHECKING = False  # not typing's: every one-shot supervisorctl imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["dumps", "event_json", "event_line", "event_object", "json_default", "rfc3339"]


def rfc3339(ns: int | None) -> str | None:
    """Unix nanoseconds -> RFC 3339 (:func:`events.timefmt.rfc3339`); None -> None."""
    return None if ns is None else timefmt.rfc3339(ns)


def json_default(value: Any) -> Any:
    """JSON has no bytes: UTF-8 stays text, anything else is kept, losslessly, as base64."""
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            import base64

            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON the same way everywhere: UTF-8 kept readable, bytes as above, compact lines."""
    import json  # not for a table: 1.4 ms of a one-shot run

    separators = (", ", ": ") if indent is None else (",", ": ")
    return json.dumps(value, default=json_default, ensure_ascii=False, indent=indent,
                      separators=separators)


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


def event_line(record: Mapping[str, Any], spec_defaults: Mapping[str, Any] | None = None) -> str:
    """One human line: ``seq time type id key=value ...`` (data compact, keys sorted)."""
    data = record.get("data") or {}
    parts = []
    for key in sorted(data, key=str):
        value = data[key]
        if key == "spec" and isinstance(value, dict) and spec_defaults is not None:
            # the line shows what was asked, not every default
            value = {k: v for k, v in value.items()
                     if k not in spec_defaults or spec_defaults[k] != v}
        if isinstance(key, str) and key.endswith("_at") and isinstance(value, int) \
                and not isinstance(value, bool):
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
