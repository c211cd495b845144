"""Supervisor compatibility in the daemon: its flags, its socket, its methods, in one object.

:class:`Compat` is what ``supervisord`` adds for people coming from Supervisor, hooked into the
daemon at three points (see ``supervisor/daemon.py``):

* :func:`add_arguments` / :func:`options`: ``--config FILE`` (a supervisord.conf or Tether TOML,
  checked before the daemon starts: a bad file refuses the start, naming file, line and key),
  ``--http-listen HOST:PORT``, ``--http-user``, ``--http-password``;
* :meth:`Compat.install`: the API methods ``apply``, ``update``, ``program_sources`` and
  ``xmlrpc`` (Supervisor's interface over the daemon's own socket, for Tether's supervisorctl);
* :meth:`Compat.serve` (a task of the daemon's nursery): the HTTP server on
  ``ROOT/supervisor.sock`` (and TCP), the exit counter of ``/metrics``, and the apply of the
  ``--config`` file once recovery's reconciliation is done.

After the daemon's loop returns, :meth:`Compat.exec_if_requested` re-executes supervisord if
``supervisor.restart`` asked for it: the shims are detached, so every program keeps running.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
import trio

from supervisor import metrics, program_files, sv_logs
from supervisor import programs as P
from supervisor.apply import Applier
from supervisor.compat_args import SOCKET_NAME, add_arguments  # add_arguments: re-exported
from supervisor.errors import ApiError
from supervisor.http import HttpServer, reply, response
from supervisor.shims import real_shim_dir
from supervisor.sv_rpc import SupervisorRPC
from supervisor.sv_xmlrpc import BadRequest, Fault, dump_fault, dump_result, load_call

if TYPE_CHECKING:
    from supervisor.commands import Commands
    from supervisor.core import Core
    from supervisor.early import Handed

__all__ = ["Compat", "Options", "add_arguments", "options"]

log = structlog.get_logger("supervisord.compat")

#: Events ``readLog`` (the "main log") shows, newest last.
MAIN_LOG_EVENTS = 2000


@dataclass
class Options:
    config: str | None = None
    loaded: P.Desired | None = None
    listen: tuple[str, int] | None = None
    tcp: socket.socket | None = None  # bound before the daemon starts: a taken port refuses it
    user: str | None = None
    password: str | None = None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def options(args: argparse.Namespace) -> Options:
    """Check the flags (SystemExit with a sentence on a bad one) and read ``--config``."""
    out = Options(user=args.http_user, password=args.http_password)
    if (out.user is None) != (out.password is None):
        raise SystemExit("supervisord: --http-user and --http-password go together")
    if args.http_listen:
        host, sep, port = args.http_listen.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SystemExit(f"supervisord: --http-listen {args.http_listen!r}: use HOST:PORT, "
                             "e.g. 127.0.0.1:9001")
        if not _loopback(host) and out.user is None:
            raise SystemExit(f"supervisord: --http-listen {host} is not a loopback address: "
                             "set --http-user and --http-password (basic auth)")
        out.listen = (host, int(port))
        out.tcp = _bind_tcp(host, int(port))
    elif out.user is not None:
        raise SystemExit("supervisord: --http-user/--http-password need --http-listen")
    if args.config:
        out.config = os.path.abspath(args.config)
        try:
            out.loaded = program_files.load(out.config)
        except P.ConfigError as exc:
            raise SystemExit(f"supervisord: --config: {exc}") from None
    return out


class Compat:
    def __init__(self, opts: Options | None = None) -> None:
        self.options = opts or Options()
        self.config_path = self.options.config
        self.applier = Applier(self)
        self.applier.loaded = self.options.loaded
        self.rpc = SupervisorRPC(self)
        #: containers stopped by a Supervisor verb: STOPPED rather than EXITED. A hint for the
        #: projections that do not record "stopped by hand" themselves (docs/design.md, 8).
        self.stopped_by_hand: set[str] = set()
        self.reexec_requested = False
        self.exits = 0
        self.fsync = metrics.Histogram()
        self.http = HttpServer(self, {
            ("POST", "/RPC2"): self._rpc2,
            ("GET", "/logtail"): self._logtail,
            ("GET", "/metrics"): self._metrics,
        })
        self.core: Core = None  # type: ignore[assignment]  # set by install()
        self.commands: Commands = None  # type: ignore[assignment]  # set by install()
        self.nursery: trio.Nursery = None  # type: ignore[assignment]  # set by serve()
        #: ``ROOT/supervisor.sock`` bound by the daemon before it loaded this (the early
        #: server answered on it), its group, and the connections the early server held
        self.listener: socket.socket | None = None
        self.listener_gid: int | None = None
        self.handed: list[Handed] = []

    # -- hooks -------------------------------------------------------------------------------

    def install(self, core: Core, commands: Commands) -> None:
        self.core = core
        self.commands = commands
        commands.extend({
            "apply": self.applier.api_apply, "update": self.applier.api_update,
            "program_sources": self.applier.api_sources, "xmlrpc": self.api_xmlrpc,
        })
        if getattr(core.writer, "on_write", False) is None:  # each durable batch, timed
            core.writer.on_write = self._on_write

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        from supervisor.apisocket import bind_api_socket

        core = self.core
        path = core.paths.root / SOCKET_NAME
        given = self.listener  # the daemon's, then: it closes and removes it
        if given is not None:
            sock, gid = given, self.listener_gid
        else:
            sock, gid = bind_api_socket(path, core.config.group)
        handed, self.handed = self.handed, []
        tcp = self.options.tcp
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await nursery.start(functools.partial(
                    self.http.serve, sock, self.http.unix_gate(gid), handed=handed))
                if tcp is not None and self.options.listen is not None:
                    await nursery.start(self.http.serve, tcp, self.http.basic_auth_gate(
                        self.options.user, self.options.password))
                    log.info("serving Supervisor's XML-RPC on TCP",
                             address=f"{self.options.listen[0]}:{tcp.getsockname()[1]}")
                task_status.started()
                if self.config_path is not None:
                    nursery.start_soon(self._apply_config_at_start)
        finally:
            if given is None:
                sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if tcp is not None:
                tcp.close()

    def exec_if_requested(self) -> None:
        """``supervisor.restart``: the same interpreter and command line, anew. The shims are
        detached, so every program keeps running (Supervisor's own restart kills them)."""
        if not self.reexec_requested:
            return
        log.info("re-executing supervisord; programs keep running", argv=sys.orig_argv)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, sys.orig_argv)

    # -- tasks -------------------------------------------------------------------------------

    def _on_write(self, events: list[Any], seconds: float) -> None:
        self.fsync.observe(seconds)
        self.exits += sum(1 for e in events if e.type == "task.exit")

    async def _apply_config_at_start(self) -> None:
        # the file as read at start: a `reread`/`update` meanwhile reads it again and is its
        # own apply; this one must not pick up their newer copy and apply it behind their back
        desired = self.applier.loaded
        if desired is None:
            return
        while self.core.reconciling:
            await trio.sleep(0.05)
        try:
            result = await self.applier.apply(desired.processes, desired.source, prune=True,
                                              dry_run=False)
        except ApiError as exc:
            log.error("--config could not be applied; nothing was changed",
                      config=self.config_path, error=exc.message)
            return
        for line in result["lines"]:
            log.info("--config", change=line)
        for failure in result["failed"]:
            log.error("--config: a program did not start", **failure)

    def main_log(self) -> str:
        """Supervisor's "main log" (``readLog``): the newest events, one line each."""
        from supervisor import ctl_render

        core = self.core
        last = core.state.last_seq
        since = max(core.eventlog.first_seq - 1, last - MAIN_LOG_EVENTS, 0)
        lines = []
        for event in core.eventlog.read(since):
            if event.seq > last:
                break
            lines.append(ctl_render.event_line(event.to_record()))
        return "".join(line + "\n" for line in lines)

    # -- the daemon's own socket -------------------------------------------------------------

    async def api_xmlrpc(self, params: dict[str, Any]) -> dict[str, Any]:
        """``xmlrpc {name, args}``: Supervisor's interface without HTTP; a fault is a result
        (``{"fault": {"code", "string"}}``), not an error of the call."""
        try:
            value = await self.rpc.call(params.get("name"), params.get("args") or [])
        except Fault as exc:
            return {"fault": {"code": exc.code, "string": exc.text}}
        return {"result": value}

    # -- HTTP routes -------------------------------------------------------------------------

    async def _rpc2(self, conn: Any, path: str, body: bytes) -> None:
        try:
            method, params = load_call(body)
        except BadRequest as exc:
            raise reply(400, f"{exc}\n") from None
        try:
            payload = dump_result(await self.rpc.call(method, list(params)))
        except Fault as exc:
            payload = dump_fault(exc.code, exc.text)
        except Exception as exc:
            log.exception("XML-RPC method failed", method=method, error=repr(exc))
            raise reply(500, f"{method} failed: {exc!r}\n") from None
        await conn.respond(200, payload, b"text/xml")

    async def _logtail(self, conn: Any, path: str, body: bytes) -> None:
        import h11

        rest = path[len("/logtail/"):] if path.startswith("/logtail/") else ""
        name, _, channel = rest.partition("/")
        channel = channel or "stdout"
        if not name or channel not in ("stdout", "stderr"):
            raise reply(404, "use /logtail/NAME[/stdout|stderr]\n")
        try:
            _, c = self.rpc._find(name)
        except Fault:
            c = None
        if c is None:
            raise reply(404, f"no such process {name}\n")
        directory = real_shim_dir(self.core.paths.root, c["id"])
        if directory is None:
            raise reply(404, f"{name} has no log\n")
        await conn.send(response(200, [
            (b"content-type", b"text/plain;charset=utf-8"), (b"x-accel-buffering", b"no"),
            (b"server", b"tether")]))
        channels = self.rpc._channels(c, channel)
        async with trio.open_nursery() as nursery:
            async def until_closed() -> None:
                while await conn.stream.receive_some(4096):
                    pass  # a client says nothing more; EOF means it left
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_closed)
            async for chunk in sv_logs.follow(directory, channels, 1024, trio.sleep):
                await conn.send(h11.Data(data=chunk))

    async def _metrics(self, conn: Any, path: str, body: bytes) -> None:
        from supervisor.version import VERSION

        core = self.core
        counts = dict.fromkeys(("created", "running", "restarting", "stopped", "unknown"), 0)
        restarts = 0
        for c in core.state.containers.values():
            state = core.shown_state(c)
            counts[state] = counts.get(state, 0) + 1
            restarts += int(c.get("restarts") or 0)
        snap = metrics.Snapshot(
            version=VERSION, containers=counts, restarts=restarts, exits=self.exits,
            last_seq=core.state.last_seq, subscribers=len(core.hub), shims=len(core.shims),
            http_connections=self.http.connections, fsync=self.fsync.cumulative(),
            fsync_sum=self.fsync.sum)
        data = await trio.to_thread.run_sync(metrics.render, snap)
        await conn.respond(200, data, b"text/plain; version=0.0.4; charset=utf-8")


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise SystemExit(f"supervisord: --http-listen {host}:{port}: {exc.strerror}") from None
    return sock
