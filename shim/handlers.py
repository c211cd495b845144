"""The socket methods of :mod:`events.shim_api`: check the parameters, delegate, reply.

Each method is thin: it validates what the caller sent (a clear ``invalid`` naming the field;
every number finite and bounded, :func:`events.policy.seconds`) and hands the request to the
task (:mod:`shim.task`, whose state table answers ``conflict``), the exec sessions
(:mod:`shim.execs`) or the outbox (:mod:`shim.outbox`). A method returns its result, or
:data:`shim.task.PENDING` when the reply comes later (the request is parked on its connection).

Error codes: ``invalid`` (bad params or request shape), ``unknown_method``, ``conflict`` (the
task's state does not allow it; an ``exec_id`` used before), ``not_found`` (kill of an exited
task without ``all``), ``exec_failed`` (start, exec), ``protocol`` (bad hello or frame: the
connection is then closed), ``internal`` (a bug: the request fails, the shim goes on).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import policy, shim_api, wire
from events.ids import validate_id
from events.signals import InvalidSignal, parse_signal
from shim.loop import ShimError, park
from shim.runtime import ExecFailed
from shim.task import PENDING, check

if TYPE_CHECKING:
    from shim.loop import Conn
    from shim.server import Shim

Method = Callable[["Conn", int, dict[str, Any]], Any]


class Handlers:
    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.task = shim.task
        self.methods: dict[str, Method] = {
            "state": self.state, "start": self.start, "kill": self.kill, "stop": self.stop,
            "wait": self.wait, "events": self.events, "ack": self.ack, "delete": self.delete,
            "shutdown": self.shutdown, "exec": self.exec,
        }

    def on_message(self, conn: Conn, message: dict[str, Any]) -> None:
        loop = self.shim.loop
        req = loop.request_of(conn, message, {"supervisor", "client"}, lambda: {
            "id": self.shim.id, "instance": self.task.instance, "pid": os.getpid()})
        if req is None:
            return
        handler = self.methods.get(req.method)
        try:
            if handler is None:
                raise ShimError("unknown_method", f"unknown method {req.method!r}; known: "
                                f"{sorted(self.methods)}")
            result = handler(conn, req.rid, req.params)
        except ShimError as exc:
            loop.send(conn, wire.error(req.rid, exc.code, str(exc)))
            return
        except Exception as exc:  # a bug must cost one request, never the shim
            self.shim.diag.log("error", "request_failed", method=req.method, error=repr(exc))
            loop.send(conn, wire.error(req.rid, "internal", f"{req.method}: {exc!r}"))
            return
        if result is not PENDING:
            loop.send(conn, wire.reply(req.rid, result))

    # -- methods ------------------------------------------------------------------------------

    def state(self, conn: Conn, rid: int, params: dict[str, Any]) -> dict[str, Any]:
        shim, outbox = self.shim, self.shim.outbox
        return {"id": shim.id, "instance": self.task.instance, **self.task.report(),
                "orphans_reaped": shim.orphans_reaped, "shim_pid": os.getpid(),
                "seq": outbox.seq, "acked": outbox.acked, "runtime": shim.spec.get("runtime"),
                "started_by_run": shim.started_by_run,
                # the daemon's word that this run's record is durable (``recorded`` names us)
                "recorded": shim.started_by_run and shim_api.read_recorded(
                    shim.dir, shim.dir_fd) == self.task.instance,
                "execs": shim.execs.callers(),
                "log": {"lines": shim.log.written_lines, "dropped": shim.log.dropped_lines}}

    def start(self, conn: Conn, rid: int, params: dict[str, Any]) -> dict[str, Any]:
        return self.task.start(by_request=True)

    def kill(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        self.task.kill(_signal(params, "signal", signal.SIGTERM), bool(params.get("all", False)))
        return None

    def stop(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        try:
            timeout = policy.seconds(params.get("timeout", self.task.stop_timeout),
                                     "stop timeout")
        except ValueError as exc:
            raise ShimError("invalid", str(exc)) from None
        sig = _signal(params, "signal", self.task.stop_signal)
        return self.task.stop(conn, rid, timeout, sig)

    def wait(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        return self.task.wait(conn, rid)

    def events(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        park(conn)
        self.shim.outbox.subscribe(conn, rid)
        return PENDING

    def ack(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        seq = params.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ShimError("invalid", f"ack needs an integer seq >= 0, got {seq!r}")
        self.shim.outbox.ack(seq)
        self.shim.maybe_retire()
        return None

    def delete(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        result = self.task.delete(conn, rid, bool(params.get("force")))
        if result is not PENDING:
            self.shim.done = True
        return result

    def shutdown(self, conn: Conn, rid: int, params: dict[str, Any]) -> None:
        self.task.shutdown(bool(params.get("force")))
        self.shim.done = True
        return None

    def exec(self, conn: Conn, rid: int, params: dict[str, Any]) -> Any:
        exec_id, process = self._exec_params(params)
        check("exec", self.task.state)
        if self.shim.done:
            raise ShimError("conflict", "cannot exec: the shim is ending")
        if exec_id in self.shim.execs.ids:
            raise ShimError("conflict", f"exec id {exec_id!r} was used before in this container")
        park(conn)
        try:
            self.shim.execs.spawn(exec_id, process, conn, rid)
        except ExecFailed as exc:
            conn.pending -= 1
            self.shim.diag.log("warning", "exec_failed", exec_id=exec_id, error=str(exc))
            raise ShimError("exec_failed", str(exc)) from None
        return PENDING

    def _exec_params(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        try:
            exec_id = validate_id(params.get("exec_id"))
        except ValueError:
            raise ShimError("invalid", "exec_id must be 1-64 characters from [A-Za-z0-9_.-], "
                            "starting with a letter or digit; got "
                            f"{params.get('exec_id')!r}") from None
        command = params.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) for a in command)):
            raise ShimError("invalid", f"exec command must be a non-empty list of strings, "
                            f"got {command!r}")
        defaults = self.task.container_process()
        env = params.get("env")
        if env is None:
            env = defaults.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in env.items()):
            raise ShimError("invalid", f"exec env must be a map of strings, got {env!r}")
        cwd = params.get("cwd") or defaults.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ShimError("invalid", f"exec cwd must be a string, got {cwd!r}")
        return exec_id, {"command": command, "env": env, "cwd": cwd,
                         "user": defaults.get("user")}


def _signal(params: dict[str, Any], name: str, default: int) -> int:
    try:
        return parse_signal(params.get(name, default))
    except InvalidSignal as exc:
        raise ShimError("invalid", f"{name}: {exc}") from None
