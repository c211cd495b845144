"""``supervisord``: the event-sourced daemon, in the foreground.

A start answers ``ps`` before it has loaded what only later work needs. In order:

1. the command line (nothing heavier than ``argparse``; Supervisor-compatibility flags, when
   given, are checked now: a bad one refuses the start before anything is touched);
2. the event log opened (its lock: a second daemon on this root is refused here), its id, the
   API socket bound (a live one refused, a stale one replaced), the state rebuilt from the
   snapshot and the log's tail (:mod:`supervisor.restore`), ``supervisor.start`` appended:
   none of it imports trio or structlog, and log lines meanwhile are kept
   (:mod:`supervisor.logsetup`);
3. the early server (:mod:`supervisor.early`) in a thread: ``ps`` and ``status`` answered from
   that state, every other request kept for the full server;
4. meanwhile, in this thread: trio, structlog and the services (:mod:`supervisor.services`);
   they take the early server's socket and connections over, then reconcile, start the shim
   launcher, and serve until a signal or ``shutdown``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from events import procfs
from events.log import CorruptLog, EventLog, LogBusy, LogVersionError
from supervisor import compat_args, limits, logsetup, projection, restore
from supervisor.apisocket import bind_api_socket, socket_identity, unlink_if_ours
from supervisor.early import About, EarlyServer
from supervisor.logid import InvalidLogId, ensure_log_id
from supervisor.paths import Paths, default_root
from supervisor.projection import State
from supervisor.version import VERSION, version_line

if TYPE_CHECKING:
    from supervisor.compat import Options

__all__ = ["main"]

log = logsetup.get_logger("supervisord")


class Refused(Exception):
    """A start refused, with the line that says why (already logged)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="supervisord", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help=f"state directory (default {default_root()})")
    p.add_argument("--socket", default=None, help="API socket path (default ROOT/supervisord.sock)")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--repair", action="store_true",
                   help="cut a corrupt event log back to its last good record (kept aside)")
    p.add_argument("--group", default=None,
                   help="let members of this group use the API socket (mode 0660)")
    p.add_argument("--snapshot-every", type=int, default=10_000, metavar="N",
                   help="write a snapshot every N events (start-up replays at most N)")
    p.add_argument("--retain-events", type=int, default=1_000_000, metavar="N",
                   help="keep at least the last N events on disk (never past the snapshot)")
    p.add_argument("--subscriber-buffer", type=int, default=10_000, metavar="N",
                   help="events buffered per subscriber before it is cut off as too slow")
    p.add_argument("--reconcile-concurrency", type=int, default=64, metavar="N",
                   help="containers reconciled at once after a start")
    p.add_argument("--no-shim-launcher", dest="shim_launcher", action="store_false",
                   help="start every shim in a fresh interpreter instead of forking it from "
                   "the preloaded launcher (slower, and more memory per shim)")
    for setting in limits.SETTINGS:  # checked at start (limits.resolve): one sentence each
        p.add_argument(setting.flag, default=None, metavar=setting.metavar,
                       help=f"{setting.rule}; else the --config key, else ${setting.env}")
    p.add_argument("--segment-size", type=int, default=64 * 2**20, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=version_line("supervisord"))
    compat_args.add_arguments(p)  # Supervisor compatibility: --config, --http-*
    return p.parse_args(argv)


class EarlySignals:
    """SIGTERM/SIGINT before trio watches them: kept, so that the services stop as soon as
    they run (``supervisor.stop`` recorded, a snapshot written), as they would had the signal
    come a moment later; never the default action (an exit without a word)."""

    def __init__(self) -> None:
        self.received: int | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.received = self.received or signum


class Recovered(NamedTuple):
    """What the daemon has before it loads trio: the open log (its lock held), its id, the
    state rebuilt from it, and the early server on the bound API socket."""

    eventlog: EventLog
    log_id: str
    state: State
    snapshot_seq: int
    early: EarlyServer
    group_gid: int | None
    signals: EarlySignals
    #: this boot's id, and that of the daemon that ran before (:mod:`supervisor.supervision`)
    this_boot: str
    previous_boot: str | None
    #: the client limits (flags, --config, environment: :mod:`supervisor.limits`)
    limits: limits.Limits


#: The interpreter's thread switch interval while the early server answers (the default,
#: 5 ms, is restored at the handover).
EARLY_SWITCH_INTERVAL = 0.0005

#: Tests: while the file this names exists, the daemon waits before it loads the rest (the
#: early window made as long as a test needs to act in it; a signal ends the wait), having
#: written the modules it imported so far to ``FILE.modules``.
HOLD_ENV = "TETHER_EARLY_HOLD"


def _hold(signals: EarlySignals) -> None:
    path = os.environ.get(HOLD_ENV)
    if not path or not os.path.exists(path):
        return
    with open(f"{path}.modules.tmp", "w") as f:  # whole when the test sees it
        f.write("\n".join(sorted(sys.modules)))
    os.replace(f"{path}.modules.tmp", f"{path}.modules")
    while os.path.exists(path) and signals.received is None:
        time.sleep(0.005)


def _raise_nofile() -> None:
    """One link per shim plus clients: 1,000 containers need more than the usual 1,024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _open_log(paths: Paths, args: argparse.Namespace) -> EventLog:
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.shims.mkdir(exist_ok=True, mode=0o700)
    try:
        return EventLog.open(paths.root, segment_size=args.segment_size, repair=args.repair)
    except CorruptLog as exc:
        log.error("refusing to start: the event log is corrupt", path=exc.path,
                  offset=exc.offset, hint="start with --repair to keep every record before "
                  "the damage (the rest is kept aside in a .broken file)", error=str(exc))
        raise Refused from None
    except (LogBusy, LogVersionError) as exc:
        log.error("refusing to start", error=str(exc))
        raise Refused from None


def _recover(eventlog: EventLog, args: argparse.Namespace
             ) -> tuple[str, State, int]:
    try:  # the log's identity, durable before supervisor.start is appended (logid.py)
        log_id = ensure_log_id(eventlog.root)
    except (InvalidLogId, OSError) as exc:
        log.error("refusing to start", error=str(exc))
        raise Refused from None
    try:
        state, snapshot_seq = restore.load_state(eventlog, repair=args.repair)
    except (restore.StartupError, CorruptLog) as exc:
        log.error("refusing to start", error=str(exc),
                  hint="start with --repair" if isinstance(exc, CorruptLog) else None)
        raise Refused from None
    return log_id, state, snapshot_seq


def _record_start(eventlog: EventLog, state: State, paths: Paths, this_boot: str) -> State:
    """Append ``supervisor.start`` (durable) and fold it: before anyone is answered, so what
    the early server says (``status``'s ``last_seq``) is what the full server will say. The
    log writer does not exist yet: this is the log's only writer at this moment."""
    try:
        events = eventlog.append([("supervisor.start", "", {
            "pid": os.getpid(), "version": VERSION, "root": str(paths.root),
            "boot_id": this_boot})])
    except OSError as exc:
        log.error("refusing to start: supervisor.start cannot be recorded", error=str(exc))
        raise Refused from None
    folder = projection.Folder(state)
    for event in events:
        folder.apply(event)
    return folder.state()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.configure(args.log_format, lazy=True)
    try:
        code, then = _start(args)
    except Refused:
        return 1
    finally:
        logsetup.flush()
    then()  # supervisor.restart: exec the same supervisord (the log and socket are closed)
    return code


def _start(args: argparse.Namespace) -> tuple[int, Callable[[], None]]:
    paths = Paths.under(args.root or default_root(), args.socket)
    paths.check_socket()
    compat_options: Options | None = None
    if compat_args.given(args):  # checked before anything is touched (bad flag: SystemExit)
        from supervisor import compat as compat_mod

        compat_options = compat_mod.options(args)
    _raise_nofile()  # first: the connection cap's default is an eighth of the new limit
    chosen = limits.resolve({s.key: getattr(args, s.key) for s in limits.SETTINGS},
                            compat_options.loaded.daemon if compat_options is not None
                            and compat_options.loaded is not None else {})
    signals = EarlySignals()
    eventlog = _open_log(paths, args)
    http_path = paths.root / compat_args.SOCKET_NAME
    try:
        sock, gid = bind_api_socket(paths.socket, args.group)
        bound = socket_identity(paths.socket)
        http: socket.socket | None = None
        http_bound = None
        try:
            # Supervisor's XML-RPC socket too: its read-only methods are answered early
            http, _ = bind_api_socket(http_path, args.group)
            http_bound = socket_identity(http_path)
            log_id, state, snapshot_seq = _recover(eventlog, args)
            this_boot = procfs.boot_id()
            # the boot of the daemon that ran before (before our supervisor.start replaces it)
            previous = state.daemon.get("start", {}).get("boot_id")
            previous_boot = previous if isinstance(previous, str) else None
            state = _record_start(eventlog, state, paths, this_boot)
            about = About(str(paths.root), str(paths.socket), snapshot_seq, log_id)
            early = EarlyServer(sock, state, restore.to_reconcile(state), gid, paths.root,
                                this_boot, previous_boot, http=http, eventlog=eventlog,
                                about=about, cap=chosen.max_connections)
            # the early server's thread answers between imports of this one: a shorter switch
            # interval makes each answer wait for the interpreter a fraction as long
            sys.setswitchinterval(EARLY_SWITCH_INTERVAL)
            early.start()
            from supervisor import neighbours  # shutil and more: not before the early server

            for note in neighbours.warnings():  # Supervisor's commands have our names too
                log.warning(note)
            try:
                rec = Recovered(eventlog, log_id, state, snapshot_seq, early, gid, signals,
                                this_boot, previous_boot, chosen)
                return _run_services(args, paths, compat_options, rec)
            finally:
                for conn in early.handover():  # nothing left after a normal run
                    conn.sock.close()
        finally:
            sock.close()
            unlink_if_ours(paths.socket, bound)
            if http is not None:
                http.close()
                unlink_if_ours(http_path, http_bound)
    finally:
        eventlog.close()


def _run_services(args: argparse.Namespace, paths: Paths, compat_options: Options | None,
                  rec: Recovered) -> tuple[int, Callable[[], None]]:
    """Load the rest of the daemon (while the early server answers) and run it; returns the
    exit code and what to do once everything is closed."""
    _hold(rec.signals)
    import trio

    from supervisor import compat as compat_mod
    from supervisor import services
    from supervisor.core import Config

    logsetup.activate()
    config = Config(paths.root, socket=args.socket, repair=args.repair, group=args.group,
                    snapshot_every=max(1, args.snapshot_every),
                    retain_events=max(0, args.retain_events),
                    subscriber_buffer=max(1, args.subscriber_buffer),
                    reconcile_concurrency=max(1, args.reconcile_concurrency),
                    segment_size=args.segment_size, shim_launcher=args.shim_launcher)
    compat = compat_mod.Compat(compat_options)
    return trio.run(services.run, config, compat, rec), compat.exec_if_requested


if __name__ == "__main__":
    sys.exit(main())
