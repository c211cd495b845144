"""The API methods of supervisor.protocol, one coroutine each.

Rules every mutating command follows:
* the id is validated before anything touches a path;
* it holds its container's lock (commands on one container run one at a time; different
  containers in parallel);
* it replies only after its event is durable (``Core.append`` returns after fdatasync);
* ``wait``/``stop`` results come from the projection reaching ``stopped`` (a durable
  ``task.exit``), never from the shim's word alone.
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
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT
from events.model import InvalidId, validate_id
from events.signals import InvalidSignal, parse_signal
from supervisor import autoremove, protocol
from supervisor.channel import Closed, connect
from supervisor.core import Core
from supervisor.errors import ApiError
from supervisor.shims import (
    call_shim,
    end_shim,
    exit_data,
    new_instance,
    read_address,
    shim_spec,
    spawn_shim,
    start_link,
)
from supervisor.version import VERSION

__all__ = ["Commands"]

log = structlog.get_logger("supervisord.commands")

SendItem = Callable[[Any], Awaitable[None]]

_ADJECTIVES = ("brave", "calm", "eager", "fond", "glad", "keen", "lucid", "merry", "nimble",
               "proud", "quick", "sly", "tidy", "vivid", "witty", "zesty")
_NOUNS = ("otter", "heron", "lynx", "panda", "raven", "tapir", "wombat", "yak", "bison",
          "gecko", "ibis", "koala", "lemur", "moose", "newt", "orca")


def check_id(value: object) -> str:
    try:
        return validate_id(value)
    except InvalidId as exc:
        raise ApiError("invalid", str(exc)) from None


def exit_fields(c: dict[str, Any]) -> dict[str, Any]:
    return {"id": c["id"], "pid": c["pid"], "exit_status": c["exit_status"],
            "signal": c["signal"], "exited_at": c["finished"], "reason": c["exit_reason"]}


def _signal_number(value: object) -> int:
    try:
        return parse_signal(value)
    except InvalidSignal as exc:
        raise ApiError("invalid", str(exc)) from None


def _timeout(params: dict[str, Any]) -> float | None:
    t = params.get("timeout")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
        raise ApiError("invalid", f"timeout must be a number of seconds >= 0, got {t!r}")
    return float(t)


def validate_spec(spec: object) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ApiError("invalid", "params.spec must be a map (see supervisor.protocol.SPEC_PARAMS)")
    unknown = set(spec) - set(protocol.SPEC_PARAMS) - {"namespaces", "rlimits"}
    if unknown:
        raise ApiError("invalid", f"unknown spec fields {sorted(unknown)}; known: "
                       f"{sorted(protocol.SPEC_PARAMS)}")
    command = spec.get("command")
    if (not isinstance(command, list) or not command
            or not all(isinstance(a, str) and "\0" not in a for a in command)):
        raise ApiError("invalid", "spec.command must be a non-empty list of strings (argv)")
    env = spec.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and k and "=" not in k
                                            and isinstance(v, str) for k, v in env.items()):
        raise ApiError("invalid", "spec.env must map names (without '=') to strings")
    for key in ("cwd", "rootfs", "bundle"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ApiError("invalid", f"spec.{key} must be a path string")
    runtime = spec.get("runtime") or "process"
    if not isinstance(runtime, str):
        raise ApiError("invalid", "spec.runtime must be a string")
    if runtime == "process" and (spec.get("rootfs") or spec.get("bundle")):
        # the process runtime would run the command on the host, ignoring the rootfs
        raise ApiError("invalid", "spec.rootfs/bundle need an OCI runtime (runtime runc, crun "
                       "or the path of one); the process runtime runs on the host")
    if spec.get("auto_remove") and autoremove.restarts_by_policy(spec):
        raise ApiError("invalid", "spec.auto_remove cannot be combined with a restart policy "
                       "(as docker's --rm and --restart)")
    for key in ("memory", "pids_limit", "cpus"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
                              or (key != "cpus" and not isinstance(v, int))):
            kind = "a number" if key == "cpus" else "a whole number"
            raise ApiError("invalid", f"spec.{key} must be {kind} above 0, got {v!r}")
    st = spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT)
    if isinstance(st, bool) or not isinstance(st, int | float) or st < 0:
        raise ApiError("invalid", "spec.stop_timeout must be a number >= 0")
    out = {k: v for k, v in protocol.SPEC_PARAMS.items()}
    out.update(spec)
    out["stop_signal"] = _signal_number(spec.get("stop_signal") or DEFAULT_STOP_SIGNAL)
    if spec.get("restart") is not None:
        from events.policy import restart_spec

        try:
            out["restart"] = dict(restart_spec(spec["restart"], "spec.restart"))
        except ValueError as exc:
            raise ApiError("invalid", str(exc)) from None
    return out


class Commands:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.root = core.paths.root
        self.methods: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "create": self.create, "start": self.start, "run": self.run, "stop": self.stop,
            "kill": self.kill, "restart": self.restart, "rm": self.rm, "ps": self.ps,
            "inspect": self.inspect, "wait": self.wait, "status": self.status,
            "info": self.info, "shutdown": self.shutdown,
        }
        from supervisor.streams import Streams

        self.streams: dict[str, Callable[..., Awaitable[None]]] = {
            "events": Streams(core).events, "logs": Streams(core).logs, "exec": self.exec,
        }

    # -- helpers -------------------------------------------------------------------------------

    def _container(self, cid: str) -> dict[str, Any]:
        c = self.core.state.containers.get(cid)
        if c is None:
            raise ApiError("not_found", f"no container {cid!r}; see `supervisorctl ps -a`")
        return c

    def _new_id(self) -> str:
        for _ in range(100):
            cid = (f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-"
                   f"{secrets.token_hex(2)}")
            if cid not in self.core.state.containers and not (self.root / "shims" / cid).exists():
                return cid
        return secrets.token_hex(6)

    def row(self, c: dict[str, Any]) -> dict[str, Any]:
        spec = c["spec"]
        return {"id": c["id"], "state": self.core.shown_state(c), "pid": c["pid"],
                "exit_status": c["exit_status"], "restarts": c["restarts"],
                "runtime": c["runtime"], "created": c["created"], "started": c["started"],
                "finished": c["finished"], "command": spec.get("command"),
                "labels": spec.get("labels") or {}, "oom": bool(c.get("oom_killed")),
                "exit_reason": c["exit_reason"]}

    async def _wait_stopped(self, cid: str, instance: str | None,
                            timeout: float | None = None) -> dict[str, Any]:
        """Until the projection shows this task stopped (or the container gone)."""
        def done(state: Any) -> Any:
            c = state.containers.get(cid)
            if c is None:
                return {"gone": True}
            if c["state"] == "stopped" and (instance is None or c["instance"] == instance):
                return c
            return None

        if timeout is None:
            c = await self.core.wait_until(done)
        else:
            with trio.move_on_after(timeout):
                c = await self.core.wait_until(done)
                return c
            raise ApiError("unavailable", f"container {cid}: no exit was recorded in "
                           f"{timeout:g}s")
        return c

    # -- create / start / run -------------------------------------------------------------------

    async def create(self, params: dict[str, Any]) -> dict[str, Any]:
        spec = validate_spec(params.get("spec"))
        name = spec.get("name")
        cid = check_id(name) if name is not None else self._new_id()
        async with self.core.lock(cid):
            if cid in self.core.state.containers:
                raise ApiError("conflict", f"the id {cid!r} is in use; remove that container "
                               "first (`supervisorctl rm`) or choose another name")
            directory = self.root / "shims" / cid
            if directory.exists():  # leftovers of a crash between spawn and create
                what = await end_shim(self.root, cid)
                log.warning("ended a shim the log did not know", id=cid, action=what)
            instance = new_instance()
            ready = await spawn_shim(self.root, cid, instance, spec)
            stored = {**spec, "name": cid}
            try:
                await self.core.append([
                    ("container.create", cid, {"spec": stored}),
                    ("task.create", cid, _task_create_data(ready, instance)),
                ])
            except BaseException:
                # not durable: the container does not exist, so neither may its shim
                with trio.CancelScope(shield=True):
                    what = await end_shim(self.root, cid)
                    log.warning("create not recorded; shim ended", id=cid, action=what)
                raise
            start_link(self.core, cid, instance)
        return {"id": cid}

    async def start(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        async with self.core.lock(cid):
            return await self._start_locked(cid)

    async def _start_locked(self, cid: str) -> dict[str, Any]:
        c = self._container(cid)
        if c["state"] == "running":
            raise ApiError("conflict", f"container {cid} is already running")
        if c["state"] != "created":
            raise ApiError("conflict", f"container {cid} is {c['state']}; use restart")
        instance = c["instance"]
        try:
            result = await call_shim(self.root, cid, "start")
        except ApiError as exc:
            if exc.code == "exec_failed":
                # the shim recorded exit 127: reply once that exit is durable
                with trio.move_on_after(5):
                    await self._wait_stopped(cid, instance)
            raise
        pid = result.get("pid")

        def still_created(state: Any) -> bool:
            c2 = state.containers.get(cid)
            return c2 is not None and c2["instance"] == instance and c2["state"] == "created"

        data = {"pid": pid, "instance": instance}
        if isinstance(result.get("started_at"), int):  # the shim's clock, when it started it
            data["started_at"] = result["started_at"]
        await self.core.guarded_append(cid, [("task.start", cid, data)], still_created)
        return {"id": cid, "pid": pid}

    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        created = await self.create(params)
        cid = created["id"]
        try:
            async with self.core.lock(cid):
                return await self._start_locked(cid)
        except ApiError as exc:
            if exc.code != "exec_failed":
                raise
            raise ApiError("exec_failed", await self._after_failed_run(cid, exc.message)
                           ) from None

    async def _after_failed_run(self, cid: str, message: str) -> str:
        """The error of a ``run`` whose command could not start: which container, and whether
        its id is still taken (``auto_remove``: removed here, before the reply)."""
        c = self.core.state.containers.get(cid)
        reason = str((c or {}).get("exit_reason") or "").removeprefix("exec_failed: ")
        if c is not None and autoremove.due(c):
            with contextlib.suppress(ApiError):
                await self.rm({"id": cid})
        what = f"container {cid} could not start: {reason or message}"
        if cid not in self.core.state.containers:
            return f"{what}; it was removed (auto_remove)"
        return (f"{what}; it exists, stopped with status 127: `supervisorctl rm {cid}` frees "
                "the name (or run with --rm)")

    # -- stop / kill / restart / rm / wait -------------------------------------------------------

    async def stop(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        timeout = _timeout(params)
        async with self.core.lock(cid):
            c = self._container(cid)
            return exit_fields(await self._stop_locked(c, timeout))

    async def _stop_locked(self, c: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        cid = c["id"]
        if c["state"] == "stopped":
            return c
        instance = c["instance"]
        if timeout is None:
            timeout = float(c["spec"].get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        stop_signal = int(c["spec"].get("stop_signal") or DEFAULT_STOP_SIGNAL)
        params: dict[str, Any] = {"timeout": timeout, "signal": stop_signal}
        try:
            record = await call_shim(self.root, cid, "stop", **params)
        except ApiError as exc:
            if exc.code != "unavailable":
                raise
            # the shim is gone: its link records the exit (exit file, or the pid's end)
            return await self._wait_stopped(cid, instance, timeout + 10)
        if isinstance(record, dict) and record.get("instance") == instance:
            # the same record the link is delivering (deduplicated by shim_seq): whichever
            # comes first is appended, so the reply never waits on the link
            await self.core.append_shim_event(cid, "task.exit", exit_data(record))
        return await self._wait_stopped(cid, instance, 10)

    async def kill(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        sig = _signal_number(params.get("signal", DEFAULT_STOP_SIGNAL))
        c = self._container(cid)
        if c["state"] == "stopped" and not params.get("all"):
            raise ApiError("conflict", f"container {cid} is not running")
        await call_shim(self.root, cid, "kill", signal=sig, all=bool(params.get("all")))
        return None

    async def restart(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        timeout = _timeout(params)
        async with self.core.lock(cid):
            c = self._container(cid)
            c = await self._stop_locked(c, timeout)
            await self._retire_task(cid)
            c = self._container(cid)
            instance = new_instance()
            ready = await spawn_shim(self.root, cid, instance, c["spec"])
            try:
                await self.core.append([
                    ("container.restart", cid, {"attempt": c["restarts"] + 1,
                                                "reason": "restart command", "delay": 0}),
                    ("task.create", cid, _task_create_data(ready, instance)),
                ])
            except BaseException:
                with trio.CancelScope(shield=True):
                    await _quiet_delete(self.root, cid)
                raise
            start_link(self.core, cid, instance)
            return await self._start_locked(cid)

    async def _retire_task(self, cid: str) -> None:
        """Delete the stopped task's shim and record ``task.delete``."""
        link = self.core.links.get(cid)
        if link is not None:
            link.closing = True
        await _quiet_delete(self.root, cid)
        if link is not None:
            link.cancel_scope.cancel()
        c = self._container(cid)
        await self.core.append([("task.delete", cid, {"exit_status": c["exit_status"],
                                                      "instance": c["instance"]})])

    async def rm(self, params: dict[str, Any]) -> None:
        cid = check_id(params.get("id"))
        force = bool(params.get("force"))
        async with self.core.lock(cid):
            c = self._container(cid)
            if c["state"] == "running" and not force:
                raise ApiError("conflict", f"container {cid} is running; stop it first or "
                               "use rm -f")
            link = self.core.links.get(cid)
            if link is not None:
                link.closing = True
            if c["state"] != "stopped":
                try:
                    record = await call_shim(self.root, cid, "delete", force=True)
                except ApiError as exc:
                    if exc.code != "unavailable":
                        raise
                    record = None
                if record:
                    await self.core.append_shim_event(cid, "task.exit", exit_data(record))
            else:
                await _quiet_delete(self.root, cid)
            if link is not None:
                link.cancel_scope.cancel()
            c = self._container(cid)
            if c["state"] == "running":  # shim unreachable and the task outlived it
                pid = c["pid"]
                if pid:
                    import contextlib

                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal_mod.SIGKILL)
                await self._wait_stopped(cid, c["instance"], 10)
            await self.core.append([("container.delete", cid, {})])
            await trio.to_thread.run_sync(
                lambda: shutil.rmtree(self.root / "shims" / cid, ignore_errors=True))
        self.core.forget_locks(cid)
        return None

    async def wait(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        c = self._container(cid)
        if c["state"] == "stopped":
            return exit_fields(c)
        c = await self._wait_stopped(cid, None)
        if "gone" in c:
            raise ApiError("not_found", f"container {cid} was removed while waiting")
        return exit_fields(c)

    # -- read-only -----------------------------------------------------------------------------

    async def ps(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        show_all = bool(params.get("all"))
        rows = [self.row(c) for c in self.core.state.containers.values()
                if show_all or c["state"] != "stopped"]
        rows.sort(key=lambda r: (r["created"] or 0, r["id"]))
        return rows

    async def inspect(self, params: dict[str, Any]) -> dict[str, Any]:
        cid = check_id(params.get("id"))
        c = self._container(cid)
        since = max(0, int(c.get("create_seq", 1)) - 1)
        last = self.core.state.last_seq

        def history() -> list[dict[str, Any]]:
            out = []
            for event in self.core.eventlog.read(since):
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
        return {**self.row(c), "spec": c["spec"], "instance": c["instance"],
                "shim_pid": c["shim_pid"], "address": c["address"], "signal": c["signal"],
                "exit_reason": c["exit_reason"], "oom": c["oom"], "lost": c["lost"],
                "history": hist}

    async def status(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid(), "uptime": self.core.uptime(),
                "last_seq": self.core.state.last_seq, "reconciling": self.core.reconciling}

    async def info(self, params: dict[str, Any]) -> dict[str, Any]:
        counts: dict[str, int] = {s: 0 for s in protocol.STATES}
        for c in self.core.state.containers.values():
            st = self.core.shown_state(c)
            counts[st] = counts.get(st, 0) + 1
        return {"version": VERSION, "pid": os.getpid(), "root": str(self.root),
                "socket": str(self.core.paths.socket), "last_seq": self.core.state.last_seq,
                "containers": counts, "shims": len(self.core.links),
                "snapshot_seq": self.core.snapshot_seq, "subscribers": len(self.core.hub),
                "skipped_events": self.core.skipped,
                "log_id": self.core.log_id}

    async def shutdown(self, params: dict[str, Any]) -> None:
        self.core.shutdown_requested.set()
        return None

    async def exec(self, params: dict[str, Any], send_item: SendItem, raw: Any = None) -> None:
        """Another process in a running container, through its shim: the shim's items
        (``{"stream", "data"}``, then ``{"exit_status", "signal"}``) are passed on as they
        come. ``task.exec.start``/``exit`` reach the log through the shim's event link.

        ``env`` is added to the container's environment (as ``docker exec -e``); the exec id
        is generated here (``exec-N``), unique per container."""
        cid = check_id(params.get("id"))
        command = params.get("command")
        if (not isinstance(command, list) or not command
                or not all(isinstance(a, str) and "\0" not in a for a in command)):
            raise ApiError("invalid", "exec command must be a non-empty list of strings (argv)")
        env = params.get("env")
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and k and "=" not in k and isinstance(v, str)
                for k, v in env.items())):
            raise ApiError("invalid", "exec env must map names (without '=') to strings")
        cwd = params.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise ApiError("invalid", "exec cwd must be a path string")
        c = self._container(cid)
        if self.core.shown_state(c) != "running":
            raise ApiError("conflict", f"container {cid} is {self.core.shown_state(c)}; exec "
                           "needs a running container")
        shim_params: dict[str, Any] = {"exec_id": f"exec-{secrets.token_hex(6)}",
                                       "command": command}
        if env:
            shim_params["env"] = shim_spec(cid, c["instance"], c["spec"])["env"] | env
        if cwd:
            shim_params["cwd"] = cwd
        address = read_address(self.root, cid)
        if address is None:
            raise ApiError("unavailable", f"container {cid} has no shim address")
        try:
            chan = await connect(address, "supervisor")
        except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
            raise ApiError("unavailable", f"the shim of {cid} cannot be reached: {exc}"
                           ) from None
        try:
            async for item in chan.stream_items("exec", **shim_params):
                await send_item(item)
        except wire.RemoteError as exc:
            raise ApiError(exc.code, exc.message) from None
        except (Closed, wire.ProtocolError) as exc:
            raise ApiError("unavailable", f"the shim of {cid} went away during exec: {exc}"
                           ) from None
        finally:
            with trio.CancelScope(shield=True):
                await chan.aclose()


def _task_create_data(ready: dict[str, Any], instance: str) -> dict[str, Any]:
    """``task.create`` from the shim's ready line (``created_at``: the shim's clock)."""
    data = {"pid": ready.get("task_pid"), "shim_pid": ready.get("pid"),
            "address": ready.get("address"), "instance": instance}
    if isinstance(ready.get("created_at"), int):
        data["created_at"] = ready["created_at"]
    return data


async def _quiet_delete(root: Any, cid: str) -> None:
    try:
        await call_shim(root, cid, "delete", force=False)
    except ApiError as exc:
        log.debug("shim delete", id=cid, error=exc.message)

