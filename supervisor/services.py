"""supervisord's services, all in one trio nursery (nothing runs unowned), once
:mod:`supervisor.daemon` has opened the log, bound the API socket, rebuilt the state and
started the early server (:mod:`supervisor.early`) on it:

* the log writer (the only writer of the event log; group commit in a worker thread);
* the API server on ``ROOT/supervisord.sock``, which takes over the early server's listening
  socket and connections (the handover);
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

import os
import signal
from typing import TYPE_CHECKING

import structlog
import trio

from supervisor import autoremove, recovery
from supervisor import compat as compat_mod
from supervisor.commands import Commands
from supervisor.core import Config, Core
from supervisor.early import EarlyServer, Handed
from supervisor.lifecycle import Lifecycle
from supervisor.server import Server
from supervisor.supervision import Supervision
from supervisor.version import VERSION

if TYPE_CHECKING:
    from supervisor.daemon import EarlySignals, Recovered

__all__ = ["run"]

log = structlog.get_logger("supervisord")

#: Grace for the reply of ``shutdown`` to leave before the server is cancelled.
SHUTDOWN_REPLY_GRACE = 0.05


async def run(config: Config, compat: compat_mod.Compat, rec: Recovered) -> int:
    """Run until a signal or ``shutdown``; returns the exit code. The caller owns the log, the
    socket and the early server (it stops it, and closes what was not handed over)."""
    state = rec.state
    core = Core(config, rec.eventlog, state, rec.snapshot_seq, rec.log_id)
    # from the first request on: reconcile_all ends it
    core.begin_reconciling(recovery.to_reconcile(state))
    lifecycle = Lifecycle(core)
    supervision = Supervision(core, lifecycle)
    commands = Commands(core, lifecycle)
    compat.install(core, commands)
    if commands.missing():  # the method table and the handlers are one: a bug otherwise
        raise RuntimeError(f"methods without a handler: {commands.missing()}")
    server = Server(core, commands, rec.group_gid, rec.limits.max_connections,
                    frame_timeout=rec.limits.frame_timeout)
    compat.http.max_connections = rec.limits.max_connections
    compat.http.request_timeout = rec.limits.http_request_timeout
    await _serve(core, supervision, server, rec, compat)
    log.info("supervisord stopped; containers keep running", last_seq=core.state.last_seq)
    return 0


async def _serve(core: Core, supervision: Supervision, server: Server, rec: Recovered,
                 compat: compat_mod.Compat) -> None:
    early = rec.early
    async with trio.open_nursery() as outer:
        await outer.start(core.writer.run)
        try:  # supervisor.start is recorded already (supervisor.daemon)
            async with trio.open_nursery() as services:
                await services.start(core.shims.run)
                await services.start(supervision.run)
                handed = _handover(core, early)
                services.start_soon(server.serve_handed, [h for h in handed if not h.http])
                compat.listener, compat.listener_gid = early.http_listener, rec.group_gid
                compat.handed = [h for h in handed if h.http]
                await services.start(server.serve, early.listener)
                await services.start(compat.serve)  # ROOT/supervisor.sock, --config
                await services.start(autoremove.run, core, server.commands.rm)  # --rm
                services.start_soon(_reconcile, core, supervision, rec.previous_boot)
                services.start_soon(recovery.snapshotter, core)
                await _until_stop(core, rec.signals)
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


def _handover(core: Core, early: EarlyServer) -> list[Handed]:
    """Stop the early server and take what it leaves: its connections, and the containers
    its probes proved running (reconciled already: ``ps`` showed them running)."""
    handed = early.handover()
    proven = early.proven
    for cid in proven:
        core.reconciled(cid)
    if early.error is not None:
        log.error("the early server failed; its connections are handed over",
                  error=repr(early.error))
    log.info("supervisord started", pid=os.getpid(), root=str(core.paths.root),
             socket=str(core.paths.socket), last_seq=core.state.last_seq,
             containers=len(core.state.containers), proven_running=len(proven),
             early_answers=sum(early.answered.values()), handed_over=len(handed))
    return handed


async def _reconcile(core: Core, supervision: Supervision, previous_boot: str | None) -> None:
    """Reconciliation, then the shim launcher: until every recovered container is reconciled,
    ``ps`` shows it ``unknown``, so nothing that can wait (the launcher's fork and preload) may
    take the CPU from it (a spawn meanwhile starts the launcher itself)."""
    await recovery.reconcile_all(core, supervision, previous_boot)
    core.shims.want_launcher()


async def _until_stop(core: Core, early_signals: EarlySignals) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        if early_signals.received is not None:  # before trio watched them: stop now
            log.info("signal received; stopping",
                     signal=signal.Signals(early_signals.received).name)
            return
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
