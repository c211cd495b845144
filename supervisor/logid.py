"""The durable identity of a root's event log: ``ROOT/log_id``.

A log's seqs are 1, 2, 3, ... forever on one root (across daemon restarts and host reboots), so
``(log_id, seq)`` names one event for good; a wiped and re-created root starts again at seq 1
under a new id, so a consumer that deduplicates by ``(node, log_id, seq)`` (the fleet
exporter's ``Nats-Msg-Id``) never mistakes the new log's events for the old one's.

The id is random (128 bits, hex), created once, the first time a daemon starts on the root, and
never rewritten: written to a temp file, fsynced, renamed, the directory fsynced, all before
``supervisor.start`` is appended, so no event is ever visible under a root without its id. A
file that exists but does not hold an id is refused (a start-up error that names it), not
replaced: replacing it would silently make a new log out of an old one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from events.durable import write_atomic

__all__ = ["LOG_ID_FILE", "InvalidLogId", "ensure_log_id"]

LOG_ID_FILE = "log_id"
_VALID = re.compile(r"[0-9a-f]{32}")


class InvalidLogId(Exception):
    """``ROOT/log_id`` exists but does not hold an id."""


def ensure_log_id(root: str | os.PathLike[str]) -> str:
    """The root's log id, created (durably) if the root has none yet."""
    path = Path(root) / LOG_ID_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return _create(path)
    if not _VALID.fullmatch(text):
        raise InvalidLogId(f"{path} does not hold a log id (32 hex digits): {text[:40]!r}; "
                           "restore it from a backup of this root, or remove it only if this "
                           "root's log is new (consumers will take it for another log)")
    return text


def _create(path: Path) -> str:
    import secrets  # once per root: not on every start's path (hashlib, hmac, random)

    log_id = secrets.token_hex(16)
    write_atomic(path, (log_id + "\n").encode(), mode=0o644)  # fsynced, and its directory
    return log_id
