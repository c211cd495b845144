"""The API methods of :mod:`supervisor.protocol`, one coroutine each.

Rules every mutating command follows:
* the id is validated before anything touches a path;
* it holds its container's lock (commands on one container run one at a time; different
  containers in parallel);
* it replies only after its event is durable (``Core.append`` returns after fdatasync);
* ``wait``/``stop`` results come from the projection reaching ``stopped`` (a durable
  ``task.exit``), never from the shim's word alone.

The public methods of :class:`Commands` are exactly the API's methods
(:data:`supervisor.protocol.METHODS`): the dispatch table is made from that table.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal as signal_mod
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from events import wire
from events.domain import DEFAULT_STOP_SIGNAL, ContainerState, ErrorCode
from events.procfs import is_running, starttime
from supervisor import adopt, autoremove, protocol, rows
from supervisor.channel import Closed, connect
from supervisor.core import Core
from supervisor.decide import stopped_for_good
from supervisor.errors import ApiError
from supervisor.lifecycle import RECORD_GRACE, Lifecycle
from supervisor.links import end_leftovers
from supervisor.projection import Container
from supervisor.shims import (
    Ready,
    checked_shim_dir,
    exit_data,
    read_address,
    remote_api_error,
    remove_shim_dir,
    shim_spec,
)
from supervisor.spec import check_id, seconds_param, signal_number, validate_spec
from supervisor.streams import Streams
from supervisor.version import VERSION

__all__ = ["Commands"]

log = structlog.get_logger("supervisord.commands")

#: How long ``inspect`` waits for a shim's health results before it answers without them.
HEALTH_LOG_TIMEOUT = 2.0

SendItem = Callable[[Any], Awaitable[None]]
Call = Callable[[dict[str, Any]], Awaitable[Any]]
Stream = Callable[[dict[str, Any], SendItem, Any], Awaitable[None]]

RUNNING = ContainerState.RUNNING
RESTARTING = ContainerState.RESTARTING
STOPPED = ContainerState.STOPPED

_ADJECTIVES = ("brave", "calm", "eager", "fond", "glad", "keen", "lucid", "merry", "nimble",
               "proud", "quick", "sly", "tidy", "vivid", "witty", "zesty")
_NOUNS = ("otter", "heron", "lynx", "panda", "raven", "tapir", "wombat", "yak", "bison",
          "gecko", "ibis", "koala", "lemur", "moose", "newt", "orca")

def exit_fields(c: Container) -> dict[str, Any]:
    """The exit result (:data:`supervisor.protocol.EXIT_FIELDS` and ``reason``)."""
    return {"id": c.id, "pid": c.pid, "exit_status": c.exit_status, "signal": c.signal,
            "exited_at": c.finished, "reason": c.exit_reason}


class Commands:
    """The API's handlers, by name (:attr:`calls` and :attr:`streams`)."""

    def __init__(self, core: Core, lifecycle: Lifecycle) -> None:
        self._core = core
        self._lifecycle = lifecycle
        self._root = core.paths.root
        self._streams = Streams(core)
        self.calls: dict[str, Call] = {}
        self.streams: dict[str, Stream] = {}
        for name, kind in protocol.METHODS.items():
            handler = getattr(self, name, None)
            if handler is None:
                continue  # another component's (extend)
            if kind == "stream":
                self.streams[name] = handler
            else:
                self.calls[name] = handler

    def extend(self, calls: dict[str, Call]) -> None:
        """Handlers of methods another component serves (Supervisor compatibility's
        ``apply``, ``xmlrpc``, ...): each must be in :data:`supervisor.protocol.METHODS`."""
        unknown = set(calls) - set(protocol.METHODS)
        if unknown:
            raise ValueError(f"methods not in supervisor.protocol.METHODS: {sorted(unknown)}")
        self.calls.update(calls)

    def missing(self) -> list[str]:
        """Methods of the table without a handler (none, once every component installed)."""
        return sorted(set(protocol.METHODS) - set(self.calls) - set(self.streams))

    # -- helpers -------------------------------------------------------------------------------

    def _new_id(self) -> str:
        for _ in range(100):
            cid = (f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-"
                   f"{secrets.token_hex(2)}")
            if (self._core.container(cid) is None
                    and not os.path.lexists(self._root / "shims" / cid)):
                return cid
        return secrets.token_hex(6)

    def _row(self, c: Container) -> dict[str, Any]:
        return rows.ps_row(c, self._core.shown_state(c))

    # -- create / start / run -------------------------------------------------------------------

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        cid, _, _ = await self._new_container(params, start=False)
        return {"id": cid}

    async def _new_container(self, params: dict[str, Any], *, start: bool
                             ) -> tuple[str, str, Ready]:
        """A new container and its shim, its task created (with ``start``, started too: one
        request to the shim, one append): ``(id, instance, the shim's ready map)``."""
        spec = validate_spec(params.get("spec"))
        name = spec.get("name")
        cid = name if name is not None else self._new_id()  # validate_spec checked the name
        async with self._core.lock(cid):
            if self._core.container(cid) is not None:
                raise ApiError(ErrorCode.CONFLICT, f"the id {cid!r} is in use; remove that "
                               "container first (`supervisorctl rm`) or choose another name")
            await self._clear_the_way(cid)
            instance, ready = await self._lifecycle.new_container(cid, spec, start=start)
        return cid, instance, ready

    async def _clear_the_way(self, cid: str) -> None:
        """A directory the log does not know where ``cid``'s would go: what start-up left
        alone (:func:`supervisor.adopt.account_for`) is refused, never ended or removed; the
        leftovers of a start nothing ran in are removed."""
        directory = checked_shim_dir(self._root, cid)  # a symlink there: refused
        if not os.path.lexists(directory):
            return
        if not self._core.shims.alive(cid) and adopt.never_ran(self._root, cid):
            await trio.to_thread.run_sync(remove_shim_dir, self._root, cid)
            return
        raise ApiError(ErrorCode.CONFLICT, f"{directory} holds a container the log does not "
                       "know (a live shim, or a lost container's logs and exit: the daemon "
                       "log names it); it is never ended or removed by the daemon: look at it, "
                       "remove it yourself, or choose another name")

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        """Start a created container, or a stopped one (a new task, in a new shim)."""
        cid = check_id(params.get("id"))
        async with self._core.lock(cid):
            c = self._lifecycle.container(cid)
            if c.state == RUNNING:
                raise ApiError(ErrorCode.CONFLICT, f"container {cid} is already running")
            if c.state == RESTARTING:
                raise ApiError(ErrorCode.CONFLICT, f"container {cid} is restarting (waiting "
                               "out its back-off); `supervisorctl restart` starts it now")
            if c.state == STOPPED:
                await self._lifecycle.retire(cid)
                await self._lifecycle.new_task(cid)
            return await self._lifecycle.start(cid)

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        """``create`` and ``start`` in one request to the shim and one append."""
        cid, instance, ready = await self._new_container(params, start=True)
        exec_error = ready.get("exec_error")
        if exec_error is None:
            return {"id": cid, "pid": ready.get("task_pid")}
        async with self._core.lock(cid):
            await self._lifecycle.start_failed(cid, instance, exec_error)
        raise ApiError(ErrorCode.EXEC_FAILED, await self._after_failed_run(cid, exec_error))

    async def _after_failed_run(self, cid: str, message: str) -> str:
        """The error of a ``run`` whose command could not start: which container, and whether
        its id is still taken (``auto_remove``: removed here, before the reply)."""
        c = self._core.container(cid)
        reason = str((c.exit_reason if c else None) or "").removeprefix("exec_failed: ")
        if c is not None and autoremove.due(c):
            with contextlib.suppress(ApiError):
                await self.rm({"id": cid})
        what = f"container {cid} could not start: {reason or message}"
        if self._core.container(cid) is None:
            return f"{what}; it was removed (auto_remove)"
        return (f"{what}; it exists, stopped with status 127: `supervisorctl rm {cid}` frees "
                "the name (or run with --rm)")

    # -- stop / kill / restart / rm / wait -------------------------------------------------------

    async def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        timeout = seconds_param(params)
        async with self._core.lock(cid):
            return exit_fields(await self._lifecycle.stop(cid, timeout, "stop"))

    async def kill(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        sig = signal_number(params.get("signal", DEFAULT_STOP_SIGNAL))
        c = self._lifecycle.container(cid)
        if c.state in (STOPPED, RESTARTING) and not params.get("all"):
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is not running"
                           + ("; it waits out its back-off: `supervisorctl stop` cancels the "
                              "restart" if c.state == RESTARTING else ""))
        await self._core.shims.call(cid, "kill", signal=sig, all=bool(params.get("all")))

    async def restart(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stop (durably: no policy restart comes in between), then a new task at once; in a
        back-off, the restart happens now and the back-off starts over."""
        cid = check_id(params.get("id"))
        timeout = seconds_param(params)
        async with self._core.lock(cid):
            await self._lifecycle.stop(cid, timeout, "restart")
            await self._lifecycle.retire(cid)
            await self._lifecycle.new_task(cid, [("container.restart", cid, {
                "attempt": 0, "delay": 0.0, "reason": "restart command", "by": "user",
                "start_at": time.time_ns()})], autostart=True)
            return await self._lifecycle.start(cid)

    async def rm(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        force = bool(params.get("force"))
        async with self._core.lock(cid):
            c = self._lifecycle.container(cid)
            if c.state in (RUNNING, RESTARTING) and not force:
                raise ApiError(ErrorCode.CONFLICT, f"container {cid} is {c.state}; stop it "
                               "first or use rm -f")
            if not (c.state == STOPPED and (c.stopped_by_user or stopped_for_good(c))):
                # durable first: no policy restart may follow the removal's kill
                # timeout 0: sent again after a crash, it is still rm -f's SIGKILL
                await self._core.append([("container.stop", cid, {"reason": "rm",
                                                                   "timeout": 0})])
                c = self._lifecycle.container(cid)
            if c.state != STOPPED:
                link = self._core.shims.expect_end(cid)
                try:
                    record = await self._core.shims.call(cid, "delete", force=True)
                except ApiError as exc:
                    if exc.code != ErrorCode.UNAVAILABLE:
                        raise
                    record = None
                if record:
                    await self._core.append_shim_event(cid, "task.exit", exit_data(record))
                c = self._lifecycle.container(cid)
                if c.state != STOPPED:  # its shim is gone and the task outlived it
                    await self._end_lost_task(c)
                self._core.shims.forget(link)
            else:
                # with force: a shim whose back-off ended between the stop's append and this
                # call runs a task the log refused; the removal ends it too
                await self._core.shims.retire(cid, force=True, task_pid=c.pid,
                                              ended_at=c.finished)
            await adopt.delete_lost_container(self._root, c)
            # a removal the daemon dies in after the delete is finished by recovery
            await trio.to_thread.run_sync(adopt.mark_removing, self._root, cid)
            await self._core.append([("container.delete", cid, {})])
            await trio.to_thread.run_sync(remove_shim_dir, self._root, cid)
        self._core.forget_locks(cid)

    async def _end_lost_task(self, c: Container) -> None:
        """``rm -f`` of a container whose shim is gone: SIGKILL its task (if that pid is still
        the task: pids are reused) and record its end (status unknown: it is not our child)."""
        pid = c.pid
        if pid and is_running(pid) and c.lost_starttime in (None, starttime(pid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal_mod.SIGKILL)
            # its children too: the process runtime makes the task its group's leader, and
            # with its shim gone nobody else will end them (what left the group stays)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal_mod.SIGKILL)
            with trio.move_on_after(RECORD_GRACE):
                while is_running(pid):
                    await trio.sleep(0.01)
        elif pid:  # the task ended before the shim was found lost: what it left lives on
            await trio.to_thread.run_sync(end_leftovers, pid, c.finished, c.lost_starttime)
        await self._core.append_shim_event(c.id, "task.exit", {
            "pid": pid, "exit_status": None, "signal": None, "exited_at": time.time_ns(),
            "instance": c.instance, "reason": "removed (rm -f) after its shim was lost"})

    async def wait(self, params: dict[str, Any]) -> dict[str, Any]:
        """The exit once the container is stopped for good (an exit the policy restarts is
        not the end: docker's ``wait`` with a restart policy)."""
        cid = check_id(params.get("id"))
        c: Container | None = self._lifecycle.container(cid)
        if c is not None and not stopped_for_good(c):
            c = await self._lifecycle.wait_stopped(cid, None, for_good=True)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"container {cid} was removed while waiting")
        return exit_fields(c)

    # -- read-only -----------------------------------------------------------------------------

    async def ps(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return rows.ps_rows(self._core.state.containers.values(), self._core.shown_state,
                            params)

    async def inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        c = self._lifecycle.container(cid)
        try:
            hist = await trio.to_thread.run_sync(rows.history, self._core.eventlog, c,
                                                 self._core.state.last_seq)
        except Exception as exc:  # compacted or unreadable: still answer
            hist = []
            log.warning("inspect: history unavailable", id=cid, error=str(exc))
        return rows.inspect_row(c, self._core.shown_state(c), hist, await self._health(c))

    async def _health(self, c: Container) -> dict[str, Any] | None:
        """``inspect``'s health: the record's status, and the last results from the shim
        (it keeps them; none when it cannot be reached)."""
        if not c.spec.get("health"):
            return None
        results: list[Any] = []
        if c.state != STOPPED:
            try:
                with trio.move_on_after(HEALTH_LOG_TIMEOUT):
                    state = await self._core.shims.call(c.id, "state")
                    health = state.get("health") if isinstance(state, dict) else None
                    if isinstance(health, dict) and isinstance(health.get("log"), list):
                        results = health["log"]
            except ApiError:
                pass
        return {"status": c.health, "failing_streak": c.failing_streak, "log": results}

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "uptime": self._core.uptime(),
                "last_seq": self._core.state.last_seq, "reconciling": self._core.reconciling}

    async def info(self, params: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, int] = {s: 0 for s in protocol.STATES}
        for c in self._core.state.containers.values():
            shown = self._core.shown_state(c)
            counts[shown] = counts.get(shown, 0) + 1
        return {"version": VERSION, "pid": os.getpid(), "root": str(self._root),
                "socket": str(self._core.paths.socket), "last_seq": self._core.state.last_seq,
                "containers": counts, "shims": len(self._core.shims),
                "snapshot_seq": self._core.snapshot_seq, "subscribers": len(self._core.hub),
                "skipped_events": self._core.skipped, "log_id": self._core.log_id}

    async def shutdown(self, params: dict[str, Any]) -> None:
        self._core.request_shutdown()

    # -- streams -------------------------------------------------------------------------------

    async def events(self, params: dict[str, Any], send_item: SendItem, sock: Any) -> None:
        await self._streams.events(params, send_item, sock)

    async def logs(self, params: dict[str, Any], send_item: SendItem, sock: Any) -> None:
        await self._streams.logs(params, send_item, sock)

    async def exec(self, params: dict[str, Any], send_item: SendItem, sock: Any) -> None:
        """Another process in a running container, through its shim: the shim's items
        (``{"stream", "data"}``, then ``{"exit_status", "signal"}``) are passed on as they
        come. ``task.exec.start``/``exit`` reach the log through the shim's event link.

        ``env`` is added to the container's environment (as ``docker exec -e``); the exec id
        is generated here (``exec-N``), unique per container."""
        cid = check_id(params.get("id"))
        command = params.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) and "\0" not in a for a in command)):
            raise ApiError(ErrorCode.INVALID, "exec command must be a non-empty list of "
                           "strings (argv)")
        env = params.get("env")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and k and "=" not in k and "\0" not in k
                and isinstance(v, str) and "\0" not in v for k, v in env.items())):
            raise ApiError(ErrorCode.INVALID, "exec env must map names (without '=' or NUL) "
                           "to strings (without NUL)")
        cwd = params.get("cwd")
        if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
            raise ApiError(ErrorCode.INVALID, "exec cwd must be a path string")
        c = self._lifecycle.container(cid)
        if self._core.shown_state(c) != RUNNING:
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is "
                           f"{self._core.shown_state(c)}; exec needs a running container")
        shim_params: dict[str, Any] = {"exec_id": f"exec-{secrets.token_hex(6)}",
                                       "command": command}
        if env:
            shim_params["env"] = shim_spec(cid, c.instance or "", c.spec)["env"] | env
        if cwd:
            shim_params["cwd"] = cwd
        address = read_address(self._root, cid)
        if address is None:
            raise ApiError(ErrorCode.UNAVAILABLE, f"container {cid} has no shim address")
        try:
            chan = await connect(address, "supervisor")
        except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, f"the shim of {cid} cannot be reached: "
                           f"{exc}") from None
        try:
            async for item in chan.stream_items("exec", **shim_params):
                await send_item(item)
        except wire.RemoteError as exc:
            raise remote_api_error(exc) from None
        except (Closed, wire.ProtocolError) as exc:
            raise ApiError(ErrorCode.UNAVAILABLE, f"the shim of {cid} went away during exec: "
                           f"{exc}") from None
        finally:
            with trio.CancelScope(shield=True):
                await chan.aclose()
