"""Offline tools for an operator whose daemon will not start: ``python -m events ...``.

``verify ROOT``                     check every record of every segment (and the snapshot);
                                    formats 1 and 2 alike
``dump ROOT [--since SEQ] [--json]``  one line per event (JSON: seq, time, type, id, data)
``repair ROOT``                     cut the log at its first damage, keeping the cut bytes

They never need the daemon, trio or structlog, and ``verify``/``dump`` write nothing, so they are
safe to run on a log that is being investigated (or while the daemon runs).
Exit codes: 0 ok, 1 damage or failure, 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from events import render
from events.log import (
    CorruptLog,
    LogBusy,
    LogVersionError,
    list_segments,
    read_events,
    repair,
    verify,
)
from events.model import Event
from events.snapshot import CorruptSnapshot, read_snapshot


def event_json(ev: Event) -> str:
    return render.event_json(ev.to_record())


def event_line(ev: Event) -> str:
    return render.event_line(ev.to_record())


def _need_log(root: Path) -> bool:
    if not list_segments(root / "events"):
        print(f"error: no event log under {root / 'events'} (wrong ROOT?)", file=sys.stderr)
        return False
    return True


def cmd_verify(root: Path) -> int:
    if not _need_log(root):
        return 1
    report = verify(root)
    span = (f"seqs {report.first_seq}..{report.last_seq}" if report.records
            else "no records")
    formats = ", ".join(f"format {v}: {n}" for v, n in sorted(report.formats.items()))
    print(f"{root / 'events'}: {report.segments} segment(s)"
          f"{f' ({formats})' if formats else ''}, {report.records} record(s), {span}")
    for w in report.warnings:
        print(f"warning: {w}")
    for path in report.evidence:
        what = ("the unsynced tail a start cut off" if ".torn" in path.name
                else "bytes repair cut off")
        print(f"note: {path} holds {what}; kept as evidence, delete it when done")
    for p in report.problems:
        print(f"DAMAGE: {p}")
    bad_snapshot = False
    try:
        snap = read_snapshot(root)
        print(f"snapshot: seq {snap[0]}" if snap else "snapshot: none")
        if snap and report.last_seq is not None and snap[0] > report.last_seq:
            print(f"DAMAGE: snapshot is at seq {snap[0]}, after the log's last seq "
                  f"{report.last_seq}: records were lost")
            bad_snapshot = True
    except CorruptSnapshot as exc:
        print(f"DAMAGE: {exc}")
        bad_snapshot = True
    if report.problems:
        print(f"the log is damaged; `python -m events repair {root}` keeps every record before "
              "the first damage (cut bytes go to .broken files)")
    elif not bad_snapshot:
        print("ok")
    return 1 if report.problems or bad_snapshot else 0


def cmd_dump(root: Path, since: int, as_json: bool) -> int:
    if not _need_log(root):
        return 1
    render = event_json if as_json else event_line
    out = sys.stdout
    try:
        for ev in read_events(root, since):
            out.write(render(ev) + "\n")
    except CorruptLog as exc:
        out.flush()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_repair(root: Path) -> int:
    if not _need_log(root):
        return 1
    try:
        report = repair(root)
    except LogBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m events",
                                     description="Offline tools for Tether's event log.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("verify", help="check every record; exit 1 on damage")
    p.add_argument("root", type=Path)
    p = sub.add_parser("dump", help="print every event (after --since)")
    p.add_argument("root", type=Path)
    p.add_argument("--since", type=int, default=0, metavar="SEQ")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p = sub.add_parser("repair", help="cut the log at its first damage (stop supervisord first)")
    p.add_argument("root", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.command == "verify":
            return cmd_verify(args.root)
        if args.command == "dump":
            return cmd_dump(args.root, args.since, args.json)
        return cmd_repair(args.root)
    except LogVersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `dump | head`
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
