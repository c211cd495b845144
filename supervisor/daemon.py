"""``supervisord``: the event-sourced daemon, in the foreground.

Services, all in one trio nursery (nothing runs unowned):

* the log writer (the only writer of the event log; group commit in a worker thread);
* the API server on ``ROOT/supervisord.sock``;
* the shim registry (:class:`~supervisor.registry.ShimRegistry`): one link task per shim (its
  events, appended exactly once, then acknowledged) and the shim launcher
  (:class:`~supervisor.launcher.ShimLauncher`), a preloaded fork server that starts shims much
  faster than a fresh interpreter; restarted if it dies, ``shim start`` meanwhile. Started once
  reconciliation has ended (or by the first spawn), so its fork and preload never compete with
  what a client waiting after a restart waits for: the API socket, then reconciliation;
* supervision (:class:`~supervisor.supervision.Supervision`): the restarts the daemon decides
  and carries out where no shim exists (after a reboot, after a lost shim's task ended);
* recovery's reconciliation, and the snapshotter;
* signal handling: SIGTERM/SIGINT (or the ``shutdown`` method) stop serving, append
  ``supervisor.stop``, write a snapshot and exit. Containers keep running: the shims are
  detached, and the daemon never kills them on its way out.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import resource
import signal
import socket
import sys

import structlog
import trio

from events.log import CorruptLog, EventLog, LogBusy, LogVersionError
from supervisor import autoremove, logsetup, neighbours, recovery
from supervisor import compat as compat_mod
from supervisor.commands import Commands
from supervisor.core import Config, Core
from supervisor.lifecycle import Lifecycle
from supervisor.logid import InvalidLogId, ensure_log_id
from supervisor.paths import default_root
from supervisor.server import Server, bind_api_socket, socket_identity, unlink_if_ours
from supervisor.supervision import Supervision
from supervisor.version import VERSION, version_line

__all__ = ["main", "run"]

log = structlog.get_logger("supervisord")

#: Grace for the reply of ``shutdown`` to leave before the server is cancelled.
SHUTDOWN_REPLY_GRACE = 0.05


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
    p.add_argument("--segment-size", type=int, default=64 * 2**20, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version=version_line("supervisord"))
    compat_mod.add_arguments(p)  # Supervisor compatibility: --config, --http-*
    return p.parse_args(argv)


async def run(config: Config, compat: compat_mod.Compat | None = None) -> int:
    """Run until a signal or ``shutdown``; returns the exit code."""
    compat = compat or compat_mod.Compat()
    paths = config.paths
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.shims.mkdir(exist_ok=True, mode=0o700)
    try:
        eventlog = EventLog.open(paths.root, segment_size=config.segment_size,
                                 repair=config.repair)
    except CorruptLog as exc:
        log.error("refusing to start: the event log is corrupt", path=exc.path,
                  offset=exc.offset, hint="start with --repair to keep every record before "
                  "the damage (the rest is kept aside in a .broken file)", error=str(exc))
        return 1
    except (LogBusy, LogVersionError) as exc:
        log.error("refusing to start", error=str(exc))
        return 1
    try:
        try:  # the log's identity, durable before supervisor.start is appended (logid.py)
            log_id = ensure_log_id(paths.root)
        except (InvalidLogId, OSError) as exc:
            log.error("refusing to start", error=str(exc))
            return 1
        try:
            state, snapshot_seq = await trio.to_thread.run_sync(
                functools.partial(recovery.load_state, eventlog, repair=config.repair))
        except (recovery.StartupError, CorruptLog) as exc:
            log.error("refusing to start", error=str(exc),
                      hint="start with --repair" if isinstance(exc, CorruptLog) else None)
            return 1
        core = Core(config, eventlog, state, snapshot_seq, log_id)
        # from the first request on: reconcile_all ends it
        core.begin_reconciling(recovery.to_reconcile(state))
        lifecycle = Lifecycle(core)
        supervision = Supervision(core, lifecycle)
        commands = Commands(core, lifecycle)
        compat.install(core, commands)
        if commands.missing():  # the method table and the handlers are one: a bug otherwise
            raise RuntimeError(f"methods without a handler: {commands.missing()}")
        sock, gid = bind_api_socket(paths.socket, config.group)
        bound = socket_identity(paths.socket)
        server = Server(core, commands, gid)
        # the boot of the daemon that ran before (before our own supervisor.start replaces it)
        previous = state.daemon.get("start", {}).get("boot_id")
        try:
            await _serve(core, supervision, server, sock, compat,
                         previous if isinstance(previous, str) else None)
        finally:
            sock.close()
            unlink_if_ours(paths.socket, bound)
    finally:
        eventlog.close()
    log.info("supervisord stopped; containers keep running", last_seq=core.state.last_seq)
    return 0


async def _serve(core: Core, supervision: Supervision, server: Server, sock: socket.socket,
                 compat: compat_mod.Compat, previous_boot: str | None) -> None:
    async with trio.open_nursery() as outer:
        await outer.start(core.writer.run)
        try:
            await core.append([("supervisor.start", "", {"pid": os.getpid(),
                                                         "version": VERSION,
                                                         "root": str(core.paths.root),
                                                         "boot_id": core.boot_id})])
            log.info("supervisord started", pid=os.getpid(), root=str(core.paths.root),
                     socket=str(core.paths.socket), last_seq=core.state.last_seq,
                     containers=len(core.state.containers))
            async with trio.open_nursery() as services:
                await services.start(core.shims.run)
                await services.start(supervision.run)
                await services.start(server.serve, sock)
                await services.start(compat.serve)  # ROOT/supervisor.sock, --config
                await services.start(autoremove.run, core, server.commands.rm)  # run --rm
                services.start_soon(_reconcile, core, supervision, previous_boot)
                services.start_soon(recovery.snapshotter, core)
                await _until_stop(core)
                services.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await core.append([("supervisor.stop", "", {"pid": os.getpid(),
                                                                "version": VERSION})])
                    await recovery.write_snapshot_now(core)
                except Exception as exc:
                    log.error("could not record the stop", error=str(exc))
            outer.cancel_scope.cancel()


async def _reconcile(core: Core, supervision: Supervision, previous_boot: str | None) -> None:
    """Reconciliation, then the shim launcher: until every recovered container is reconciled,
    ``ps`` shows it ``unknown``, so nothing that can wait (the launcher's fork and preload) may
    take the CPU from it (a spawn meanwhile starts the launcher itself)."""
    await recovery.reconcile_all(core, supervision, previous_boot)
    core.shims.want_launcher()


async def _until_stop(core: Core) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            async def on_signal() -> None:
                async for signum in signals:
                    log.info("signal received; stopping", signal=signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

            async def on_shutdown() -> None:
                await core.shutdown_requested()
                log.info("shutdown requested; stopping")
                await trio.sleep(SHUTDOWN_REPLY_GRACE)
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(on_shutdown)


def _raise_nofile() -> None:
    """One link per shim plus clients: 1,000 containers need more than the usual 1,024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.configure(args.log_format)
    root = args.root or default_root()
    config = Config(root, socket=args.socket, repair=args.repair, group=args.group,
                    snapshot_every=max(1, args.snapshot_every),
                    retain_events=max(0, args.retain_events),
                    subscriber_buffer=max(1, args.subscriber_buffer),
                    reconcile_concurrency=max(1, args.reconcile_concurrency),
                    segment_size=args.segment_size, shim_launcher=args.shim_launcher)
    config.paths.check_socket()
    compat = compat_mod.Compat(compat_mod.options(args))
    for note in neighbours.warnings():  # Supervisor's commands have the same names as ours
        log.warning(note)
    _raise_nofile()
    code = trio.run(run, config, compat)
    compat.exec_if_requested()  # supervisor.restart: the same supervisord, programs untouched
    return code


if __name__ == "__main__":
    sys.exit(main())
