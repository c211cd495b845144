"""The state after a start: the snapshot plus the log after it (:func:`load_state`), and which
containers must be reconciled with their shims before ``ps`` shows their state
(:func:`to_reconcile`). No trio and no structlog: the daemon rebuilds the state before it loads
either, to answer ``ps`` early (:mod:`supervisor.early`); reconciliation is
:mod:`supervisor.recovery`'s.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from events.domain import ContainerState
from events.durable import fsync_dir
from events.log import EventLog
from events.snapshot import CorruptSnapshot, read_snapshot
from supervisor import logsetup, projection

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["StartupError", "keep_snapshot_aside", "load_state", "to_reconcile"]

log = logsetup.get_logger("supervisord.recovery")

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
RESTARTING = ContainerState.RESTARTING


class StartupError(Exception):
    """A reason to refuse to start, with what to do about it."""


def load_state(eventlog: EventLog, *, repair: bool = False) -> tuple[projection.State, int]:
    """``(state, snapshot_seq)`` from the snapshot (if usable) plus the log after it.

    A snapshot whose seq is after the log's last one proves that acknowledged events are gone
    (no crash produces it: docs/design.md section 4): :class:`StartupError`, and the snapshot
    is left as it is, the evidence. With ``repair`` (the operator accepts the loss) it is kept
    aside under another name (:func:`keep_snapshot_aside`) and the state is rebuilt from the
    log alone; reconciliation then adopts the live shims the log lost (:mod:`supervisor.adopt`).
    """
    t0 = time.monotonic()
    state = projection.State()
    snapshot_seq = 0
    try:
        snap = read_snapshot(eventlog.root)
    except CorruptSnapshot as exc:
        log.warning("snapshot unusable; replaying the whole log", error=str(exc))
        snap = None
    if snap is not None:
        seq, data = snap
        try:
            candidate = projection.State.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("snapshot unreadable; replaying the whole log", error=str(exc))
        else:
            if seq > eventlog.last_seq:
                if not repair:
                    raise StartupError(_ahead_message(eventlog, seq))
                kept = keep_snapshot_aside(eventlog.root, seq)
                log.error("the snapshot is ahead of the log: events were lost; --repair "
                          "rebuilds the state from the log alone and adopts the live shims "
                          "the log lost", snapshot_seq=seq, last_seq=eventlog.last_seq,
                          snapshot_kept_as=str(kept))
            else:
                state, snapshot_seq = candidate, seq
    if state.last_seq + 1 < eventlog.first_seq:
        raise StartupError(
            f"the event log starts at seq {eventlog.first_seq} (older segments were compacted) "
            f"but the usable snapshot ends at {state.last_seq}: the state cannot be rebuilt. "
            f"Restore {eventlog.root}/snapshot from a backup.")
    replayed = skipped = 0
    folder = projection.Folder(state)
    for event in eventlog.read(state.last_seq):
        reason = folder.apply(event)
        replayed += 1
        if reason is not None:
            skipped += 1
            log.warning("event skipped during replay", seq=event.seq, type=event.type,
                        id=event.id, reason=reason)
    state = folder.state()
    log.info("state rebuilt", snapshot_seq=snapshot_seq, replayed=replayed, skipped=skipped,
             last_seq=state.last_seq, containers=len(state.containers),
             seconds=round(time.monotonic() - t0, 3))
    return state, snapshot_seq


def _ahead_message(eventlog: EventLog, seq: int) -> str:
    return (f"the event log ends at seq {eventlog.last_seq} but {eventlog.root}/snapshot "
            f"covers up to seq {seq}: acknowledged events {eventlog.last_seq + 1}-{seq} are "
            "missing from the log (an older copy of it put back, or a cut). Nothing was "
            f"changed. Either put back the {eventlog.root}/events that goes with the snapshot, "
            "or start once with --repair: the state is then rebuilt from the log alone, the "
            "snapshot kept aside as snapshot.ahead-of-log.SEQ, and the containers the log "
            "lost that still run are adopted from their shims (their stopped ones stay "
            "unlisted, their files under shims/)")


def keep_snapshot_aside(root: Path, seq: int) -> Path:
    """Rename ``ROOT/snapshot`` to ``ROOT/snapshot.ahead-of-log.SEQ`` (never over an existing
    file), durably: the next snapshot must not overwrite the evidence of what was lost."""
    base = root / f"snapshot.ahead-of-log.{seq}"
    target, n = base, 0
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}.{n}")
    os.rename(root / "snapshot", target)
    fsync_dir(root)
    return target


def to_reconcile(state: projection.State) -> list[str]:
    """The containers ``ps`` shows ``unknown`` until they are reconciled: those whose task may
    still run, or whose restart may be under way."""
    return [cid for cid, c in state.containers.items()
            if c.state in (CREATED, RUNNING, RESTARTING)]
