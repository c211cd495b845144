"""RFC 3339 times with nanoseconds, both ways: every place that prints or reads a time uses these.

``2026-11-28T02:10:00.123456789Z``: UTC, always nine digits, so the strings sort like the times
they name and no precision the log kept is thrown away (the CRI log format uses the same).
"""

from __future__ import annotations

import time

__all__ = ["parse_rfc3339", "rfc3339", "rfc3339_bytes"]

_NS = 1_000_000_000


def rfc3339(ns: int) -> str:
    """Unix nanoseconds -> ``2026-11-28T02:10:00.123456789Z``."""
    secs, frac = divmod(int(ns), _NS)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def rfc3339_bytes(ns: int) -> bytes:
    """:func:`rfc3339` as ASCII bytes (the shim's log writer works in bytes)."""
    return rfc3339(ns).encode("ascii")


def parse_rfc3339(text: str) -> int | None:
    """``2026-11-28T02:10:00.123Z`` (any number of fraction digits, ``Z`` or ``+00:00``) ->
    unix nanoseconds; None for anything else."""
    stamp = text.strip()
    if stamp.endswith("Z"):
        stamp = stamp[:-1]
    elif stamp.endswith("+00:00"):
        stamp = stamp[:-6]
    base, _, frac = stamp.partition(".")
    if frac and not frac.isdigit():
        return None
    import calendar  # with locale and re under it: only a time given by hand needs it

    try:
        secs = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return secs * _NS + nanos
