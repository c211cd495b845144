"""Container id validation, in a module of its own so that the shim imports only ``re`` for it."""

from __future__ import annotations

import re

__all__ = ["InvalidId", "validate_id"]

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class InvalidId(ValueError):
    """A container id that could escape a path or confuse a reader; raised before any I/O."""


def validate_id(value: object) -> str:
    """Return *value* if it is a valid container id, else raise :class:`InvalidId`.

    Ids become directory names under ``ROOT/shims/``, so the check happens before anything
    touches a path: no ``/``, no leading ``.`` (so neither ``.`` nor ``..``), at most 64 bytes.
    """
    if not isinstance(value, str):
        raise InvalidId(f"container id must be a string, not {type(value).__name__}")
    if not _ID_RE.fullmatch(value):
        shown = value if len(value) <= 70 else value[:64] + "..."
        raise InvalidId(
            f"invalid container id {shown!r}: use 1-64 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return value
