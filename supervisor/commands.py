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
import shutil
import signal as signal_mod
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from events import wire
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, ContainerState, ErrorCode
from supervisor import protocol
from supervisor.channel import Closed, connect
from supervisor.core import VERSION, Core
from supervisor.errors import ApiError
from supervisor.projection import Container, State
from supervisor.shims import (
    Ready,
    exit_data,
    new_instance,
    read_address,
    remote_api_error,
    shim_spec,
)
from supervisor.spec import check_id, signal_number, timeout_param, validate_spec
from supervisor.streams import Streams

__all__ = ["Commands"]

log = structlog.get_logger("supervisord.commands")

SendItem = Callable[[Any], Awaitable[None]]
Call = Callable[[dict[str, Any]], Awaitable[Any]]
Stream = Callable[[dict[str, Any], SendItem, Any], Awaitable[None]]

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
STOPPED = ContainerState.STOPPED

_ADJECTIVES = ("brave", "calm", "eager", "fond", "glad", "keen", "lucid", "merry", "nimble",
               "proud", "quick", "sly", "tidy", "vivid", "witty", "zesty")
_NOUNS = ("otter", "heron", "lynx", "panda", "raven", "tapir", "wombat", "yak", "bison",
          "gecko", "ibis", "koala", "lemur", "moose", "newt", "orca")

#: How long ``stop`` waits for the exit to be recorded once its shim replied, and past the
#: grace time when the shim is gone and the exit comes from the pid's end: the record's
#: append (an fdatasync) and the link's wake-up, with room for a loaded machine.
RECORD_GRACE = 10.0


def exit_fields(c: Container) -> dict[str, Any]:
    """The exit result (:data:`supervisor.protocol.EXIT_FIELDS` and ``reason``)."""
    return {"id": c.id, "pid": c.pid, "exit_status": c.exit_status, "signal": c.signal,
            "exited_at": c.finished, "reason": c.exit_reason}


class Commands:
    """The API's handlers, by name (:attr:`calls` and :attr:`streams`)."""

    def __init__(self, core: Core) -> None:
        self._core = core
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

    def _container(self, cid: str) -> Container:
        c = self._core.container(cid)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no container {cid!r}; see "
                           "`supervisorctl ps -a`")
        return c

    def _new_id(self) -> str:
        for _ in range(100):
            cid = (f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-"
                   f"{secrets.token_hex(2)}")
            if self._core.container(cid) is None and not (self._root / "shims" / cid).exists():
                return cid
        return secrets.token_hex(6)

    def _row(self, c: Container) -> dict[str, Any]:
        return {"id": c.id, "state": self._core.shown_state(c), "pid": c.pid,
                "exit_status": c.exit_status, "restarts": c.restarts, "runtime": c.runtime,
                "created": c.created, "started": c.started, "finished": c.finished}

    async def _wait_stopped(self, cid: str, instance: str | None,
                            timeout: float | None = None) -> Container | None:
        """Until the projection shows this task stopped; None if the container was removed."""
        def done(state: State) -> tuple[Container | None] | None:
            c = state.containers.get(cid)
            if c is None:
                return (None,)
            if c.state == STOPPED and (instance is None or c.instance == instance):
                return (c,)
            return None

        if timeout is None:
            return (await self._core.wait_until(done))[0]
        with trio.move_on_after(timeout):
            return (await self._core.wait_until(done))[0]
        raise ApiError(ErrorCode.UNAVAILABLE, f"container {cid}: no exit was recorded in "
                       f"{timeout:g}s")

    # -- create / start / run -------------------------------------------------------------------

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = validate_spec(params.get("spec"))
        name = spec.get("name")
        cid = check_id(name) if name is not None else self._new_id()
        async with self._core.lock(cid):
            if self._core.container(cid) is not None:
                raise ApiError(ErrorCode.CONFLICT, f"the id {cid!r} is in use; remove that "
                               "container first (`supervisorctl rm`) or choose another name")
            if (self._root / "shims" / cid).exists():  # a crash between spawn and create
                what = await self._core.shims.end(cid)
                log.warning("ended a shim the log did not know", id=cid, action=what)
            instance = new_instance()
            ready = await self._core.shims.spawn(cid, instance, spec)
            stored = {**spec, "name": cid}
            try:
                await self._core.append([
                    ("container.create", cid, {"spec": stored}),
                    ("task.create", cid, _task_create_data(ready, instance)),
                ])
            except BaseException:
                # not durable: the container does not exist, so neither may its shim
                with trio.CancelScope(shield=True):
                    what = await self._core.shims.end(cid)
                    log.warning("create not recorded; shim ended", id=cid, action=what)
                raise
            self._core.shims.link(cid, instance)
        return {"id": cid}

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        async with self._core.lock(cid):
            return await self._start_locked(cid)

    async def _start_locked(self, cid: str) -> dict[str, Any]:
        c = self._container(cid)
        if c.state == RUNNING:
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is already running")
        if c.state != CREATED:
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is {c.state}; use restart")
        instance = c.instance
        try:
            result = await self._core.shims.call(cid, "start")
        except ApiError as exc:
            if exc.code == ErrorCode.EXEC_FAILED:
                # the shim recorded exit 127: reply once that exit is durable
                with trio.move_on_after(5):
                    await self._wait_stopped(cid, instance)
            raise
        pid = result.get("pid")

        def still_created(state: State) -> bool:
            c2 = state.containers.get(cid)
            return c2 is not None and c2.instance == instance and c2.state == CREATED

        data = {"pid": pid, "instance": instance}
        if isinstance(result.get("started_at"), int):  # the shim's clock, when it started it
            data["started_at"] = result["started_at"]
        await self._core.guarded_append(cid, [("task.start", cid, data)], still_created)
        return {"id": cid, "pid": pid}

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        created = await self.create(params)
        cid = created["id"]
        async with self._core.lock(cid):
            return await self._start_locked(cid)

    # -- stop / kill / restart / rm / wait -------------------------------------------------------

    async def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        timeout = timeout_param(params)
        async with self._core.lock(cid):
            c = self._container(cid)
            return exit_fields(await self._stop_locked(c, timeout))

    async def _stop_locked(self, c: Container, timeout: float | None) -> Container:
        cid = c.id
        if c.state == STOPPED:
            return c
        instance = c.instance
        if timeout is None:
            timeout = float(c.spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        stop_signal = int(c.spec.get("stop_signal") or DEFAULT_STOP_SIGNAL)
        try:
            record = await self._core.shims.call(cid, "stop", timeout=timeout,
                                                 signal=stop_signal)
        except ApiError as exc:
            if exc.code != ErrorCode.UNAVAILABLE:
                raise
            # the shim is gone: its link records the exit (exit file, or the pid's end)
            return await self._stopped(cid, instance, timeout + RECORD_GRACE)
        if isinstance(record, dict) and record.get("instance") == instance:
            # the same record the link is delivering (deduplicated by shim_seq): whichever
            # comes first is appended, so the reply never waits on the link
            await self._core.append_shim_event(cid, "task.exit", exit_data(record))
        return await self._stopped(cid, instance, RECORD_GRACE)

    async def _stopped(self, cid: str, instance: str | None, timeout: float) -> Container:
        c = await self._wait_stopped(cid, instance, timeout)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"container {cid} was removed meanwhile")
        return c

    async def kill(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        sig = signal_number(params.get("signal", DEFAULT_STOP_SIGNAL))
        c = self._container(cid)
        if c.state == STOPPED and not params.get("all"):
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is not running")
        await self._core.shims.call(cid, "kill", signal=sig, all=bool(params.get("all")))

    async def restart(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        timeout = timeout_param(params)
        async with self._core.lock(cid):
            c = await self._stop_locked(self._container(cid), timeout)
            await self._retire_task(cid)
            c = self._container(cid)
            instance = new_instance()
            ready = await self._core.shims.spawn(cid, instance, c.spec)
            try:
                await self._core.append([
                    ("container.restart", cid, {"attempt": c.restarts + 1,
                                                "reason": "restart command", "delay": 0}),
                    ("task.create", cid, _task_create_data(ready, instance)),
                ])
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._core.shims.retire(cid)
                raise
            self._core.shims.link(cid, instance)
            return await self._start_locked(cid)

    async def _retire_task(self, cid: str) -> None:
        """Delete the stopped task's shim and record ``task.delete``."""
        await self._core.shims.retire(cid)
        c = self._container(cid)
        await self._core.append([("task.delete", cid, {"exit_status": c.exit_status,
                                                       "instance": c.instance})])

    async def rm(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        force = bool(params.get("force"))
        async with self._core.lock(cid):
            c = self._container(cid)
            if c.state == RUNNING and not force:
                raise ApiError(ErrorCode.CONFLICT, f"container {cid} is running; stop it first "
                               "or use rm -f")
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
                self._core.shims.forget(link)
            else:
                await self._core.shims.retire(cid)
            c = self._container(cid)
            if c.state == RUNNING:  # shim unreachable and the task outlived it
                if c.pid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(c.pid, signal_mod.SIGKILL)
                await self._stopped(cid, c.instance, RECORD_GRACE)
            await self._core.append([("container.delete", cid, {})])
            await trio.to_thread.run_sync(
                lambda: shutil.rmtree(self._root / "shims" / cid, ignore_errors=True))
        self._core.forget_locks(cid)

    async def wait(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        c: Container | None = self._container(cid)
        if c is not None and c.state != STOPPED:
            c = await self._wait_stopped(cid, None)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"container {cid} was removed while waiting")
        return exit_fields(c)

    # -- read-only -----------------------------------------------------------------------------

    async def ps(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        show_all = bool(params.get("all"))
        rows = [self._row(c) for c in self._core.state.containers.values()
                if show_all or c.state != STOPPED]
        rows.sort(key=lambda r: (r["created"] or 0, r["id"]))
        return rows

    async def inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        c = self._container(cid)
        since = max(0, c.create_seq - 1)
        last = self._core.state.last_seq

        def history() -> list[dict[str, Any]]:
            out = []
            for event in self._core.eventlog.read(since):
                if event.seq > last:
                    break
                if event.id == cid:
                    out.append(event.to_record())
            return out

        try:
            hist = await trio.to_thread.run_sync(history)
        except Exception as exc:  # compacted or unreadable: still answer
            hist = []
            log.warning("inspect: history unavailable", id=cid, error=str(exc))
        return {**self._row(c), "spec": c.spec, "instance": c.instance,
                "shim_pid": c.shim_pid, "address": c.address, "signal": c.signal,
                "exit_reason": c.exit_reason, "oom": c.oom, "lost": c.lost,
                "history": hist}

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
                "skipped_events": self._core.skipped}

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
                isinstance(k, str) and k and "=" not in k and isinstance(v, str)
                for k, v in env.items())):
            raise ApiError(ErrorCode.INVALID, "exec env must map names (without '=') to "
                           "strings")
        cwd = params.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ApiError(ErrorCode.INVALID, "exec cwd must be a path string")
        c = self._container(cid)
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


def _task_create_data(ready: Ready, instance: str) -> dict[str, Any]:
    """``task.create`` from the shim's ready line (``created_at``: the shim's clock)."""
    data: dict[str, Any] = {"pid": ready.get("task_pid"), "shim_pid": ready.get("pid"),
                            "address": ready.get("address"), "instance": instance}
    if isinstance(ready.get("created_at"), int):
        data["created_at"] = ready["created_at"]
    return data
