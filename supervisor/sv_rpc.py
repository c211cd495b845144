"""Supervisor's XML-RPC interface (API version 3.0), served by Tether's daemon.

Every method of Supervisor's ``supervisor`` and ``system`` namespaces that Supervisor's own
``supervisorctl`` and the tools built on its API use, with Supervisor's arguments, results and
faults (:class:`Fault`, codes of :data:`FAULTS`), carried out with Tether's commands: a
``startProcess`` is ``start`` (or a new task of a stopped container), ``stopProcess`` is
``stop``, ``signalProcess`` is ``kill``; logs are read from the container's log
(:mod:`supervisor.sv_logs`); the configuration methods go through :mod:`supervisor.apply`.

Transport-free: :meth:`SupervisorRPC.call` takes a method name and positional params and
returns the result or raises :class:`Fault`. The HTTP server (``POST /RPC2``) and the daemon's
own socket (method ``xmlrpc``, what Tether's ``supervisorctl status|start|stop...`` use) both
call it, so both speak exactly the same interface.

Over 500 lines on purpose: it is one interface, Supervisor's ~35 methods side by side, each short;
splitting it would scatter one table.

``supervisor.restart`` re-executes supervisord (flush, close, ``execv`` of the same command
line): every program keeps running, with the same pid, which Supervisor itself cannot do.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from events.signals import InvalidSignal, parse_signal
from supervisor import programs as P
from supervisor import sv_logs, sv_view
from supervisor import sv_processes as S
from supervisor.errors import ApiError
from supervisor.shims import real_shim_dir
from supervisor.sv_xmlrpc import (
    ALIASES,
    FAULTS,
    Fault,
)

if TYPE_CHECKING:
    from supervisor.compat import Compat

__all__ = ["SupervisorRPC"]

Method = Callable[..., Awaitable[Any]]


def _result(c: dict[str, Any], status: int, description: str) -> dict[str, Any]:
    group, name = S.identity(c)
    return {"name": name, "group": group, "status": status, "description": description}


class SupervisorRPC:
    def __init__(self, compat: Compat) -> None:
        self.compat = compat
        #: the methods that change something or read more than the state; the read-only
        #: ones are :mod:`supervisor.sv_view`'s (the early server answers them too)
        self.methods: dict[str, Method] = {}
        for full in sorted(sv_view.ALL_METHODS):
            ns, _, name = full.partition(".")
            attr = ALIASES.get(name, name) if ns == "supervisor" else f"system_{name}"
            if full not in sv_view.READ_ONLY:
                self.methods[full] = getattr(self, attr)

    # -- dispatch ----------------------------------------------------------------------------

    def view(self) -> sv_view.View:
        core = self.core
        return sv_view.View(core.state.containers, core.shown_state, core.paths.shims,
                            self.compat.stopped_by_hand, core.shutting_down)

    async def call(self, method: object, params: object) -> Any:
        try:
            return sv_view.call(self.view(), method, params)  # raises UNKNOWN_METHOD too
        except sv_view.NotReadOnly:
            pass
        assert isinstance(method, str)
        if not isinstance(params, list | tuple):
            raise Fault("INCORRECT_PARAMETERS")
        fn = self.methods[method]
        code = fn.__code__
        most = code.co_argcount - 1  # without self
        least = most - len(fn.__defaults__ or ())
        if not least <= len(params) <= most:
            raise Fault("INCORRECT_PARAMETERS")
        return await fn(*params)

    # -- state helpers -----------------------------------------------------------------------

    @property
    def core(self) -> Any:
        return self.compat.core

    def _containers(self) -> list[dict[str, Any]]:
        return list(self.core.state.containers.values())

    def _groups(self) -> dict[str, list[dict[str, Any]]]:
        return sv_view.groups(self.view())

    def _find(self, name: object) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        return sv_view.find(self.view(), name)

    def _state(self, c: dict[str, Any]) -> int:
        return sv_view.state_of(self.view(), c, time.time_ns())

    def _current(self, cid: str) -> dict[str, Any] | None:
        current: dict[str, Any] | None = self.core.state.containers.get(cid)
        return current

    async def _each(self, members: list[dict[str, Any]], want: Callable[[int], bool],
                    action: Callable[[dict[str, Any]], Awaitable[Any]],
                    concurrent: bool = False) -> list[dict[str, Any]]:
        """Supervisor's ``make_allfunc``: the action for each member whose state ``want``s it,
        one result struct each (status SUCCESS or the fault)."""
        chosen = [c for c in members if want(self._state(c))]
        results: dict[str, dict[str, Any]] = {}

        async def one(c: dict[str, Any]) -> None:
            try:
                await action(c)
            except Fault as exc:
                results[c["id"]] = _result(c, exc.code, exc.text)
            else:
                results[c["id"]] = _result(c, FAULTS["SUCCESS"], "OK")

        if concurrent:
            async with trio.open_nursery() as nursery:
                for c in chosen:
                    nursery.start_soon(one, c)
        else:
            for c in chosen:
                await one(c)
        return [results[c["id"]] for c in chosen]

    # -- supervisord -------------------------------------------------------------------------

    async def readLog(self, offset: int, length: int) -> str:
        text = await trio.to_thread.run_sync(self.compat.main_log)
        data = text.encode()
        if offset < 0:
            if length:
                raise Fault("BAD_ARGUMENTS")
            return data[offset:].decode("utf-8", "replace")
        if length < 0:
            raise Fault("BAD_ARGUMENTS")
        chunk = data[offset:] if length == 0 else data[offset:offset + length]
        return chunk.decode("utf-8", "replace")

    async def shutdown(self) -> bool:
        self._not_shutting_down()
        self.core.request_shutdown()
        return True

    async def restart(self) -> bool:
        self._not_shutting_down()
        self.compat.reexec_requested = True
        self.core.request_shutdown()
        return True

    def _not_shutting_down(self) -> None:
        if self.core.shutting_down:
            raise Fault("SHUTDOWN_STATE")

    # -- configuration -----------------------------------------------------------------------

    async def reloadConfig(self) -> list[list[list[str]]]:
        try:
            added, changed, removed = await self.compat.applier.reread()
        except (ApiError, P.ConfigError) as exc:
            raise Fault("CANT_REREAD", getattr(exc, "message", str(exc))) from None
        return [[added, changed, removed]]

    async def addProcessGroup(self, name: str) -> bool:
        await self.compat.applier.add_group(name)
        return True

    async def removeProcessGroup(self, name: str) -> bool:
        members = self._groups().get(name) if isinstance(name, str) else None
        if not members:
            raise Fault("BAD_NAME", str(name))
        if any(self._state(c) in S.RUNNING_STATES for c in members):
            raise Fault("STILL_RUNNING", name)
        await self.compat.applier.remove([c["id"] for c in members])
        return True

    async def getAllConfigInfo(self) -> list[dict[str, Any]]:
        return await self.compat.applier.config_info()

    # -- processes: start --------------------------------------------------------------------

    async def startProcess(self, name: str, wait: bool = True) -> Any:
        _members, c = self._find(name)
        if c is None:
            return await self.startProcessGroup(S.split_namespec(name)[0], wait)
        await self._start(c, wait)
        return True

    async def _start(self, c: dict[str, Any], wait: bool) -> None:
        state = self._state(c)
        if state in S.RUNNING_STATES:
            raise Fault("ALREADY_STARTED", S.namespec(*S.identity(c)))
        if state == S.UNKNOWN:
            raise Fault("FAILED", f"{S.namespec(*S.identity(c))} is in an unknown process "
                        "state")
        cid = c["id"]
        self.compat.stopped_by_hand.discard(cid)
        try:
            if c["state"] == "created":
                result = await self.compat.commands.calls["start"]({"id": cid})
            else:
                result = await self.compat.commands.calls["restart"]({"id": cid})
        except ApiError as exc:
            if exc.code == "exec_failed":
                raise Fault("SPAWN_ERROR", S.namespec(*S.identity(c))) from None
            raise Fault("FAILED", f"{S.namespec(*S.identity(c))}: {exc.message}") from None
        if wait:
            await self._wait_started(cid, result.get("pid"))

    async def _wait_started(self, cid: str, pid: object) -> None:
        """Supervisor's wait: until the process has been up ``startsecs``; ABNORMAL_TERMINATION
        if it ended before."""
        c = self._current(cid)
        if c is None:
            raise Fault("ABNORMAL_TERMINATION", cid)
        secs = S.startsecs(c)
        instance = c.get("instance")

        def ended(state: Any) -> bool:
            now = state.containers.get(cid)
            return now is None or now.get("instance") != instance or now["state"] != "running"

        if secs > 0:
            with trio.move_on_after(secs):
                await self.core.wait_until(ended)
        if ended(self.core.state):
            raise Fault("ABNORMAL_TERMINATION", S.namespec(*S.identity(c)))

    async def startProcessGroup(self, name: str, wait: bool = True) -> list[dict[str, Any]]:
        if not isinstance(name, str) or name not in self._groups():
            raise Fault("BAD_NAME", str(name))
        return await self._start_all(self._groups()[name], wait)

    async def startAllProcesses(self, wait: bool = True) -> list[dict[str, Any]]:
        members = sorted(self._containers(), key=S.sort_key)
        return await self._start_all(members, wait)

    async def _start_all(self, members: list[dict[str, Any]], wait: bool
                         ) -> list[dict[str, Any]]:
        """Start in priority order, then wait out every ``startsecs`` at once."""
        started: list[dict[str, Any]] = []

        async def spawn(c: dict[str, Any]) -> None:
            await self._start(c, wait=False)
            started.append(c)

        results = await self._each(members, lambda s: s not in S.RUNNING_STATES, spawn)
        if wait and started:
            failed: dict[str, Fault] = {}

            async def check(c: dict[str, Any]) -> None:
                try:
                    await self._wait_started(c["id"], None)
                except Fault as exc:
                    failed[c["id"]] = exc

            async with trio.open_nursery() as nursery:
                for c in started:
                    nursery.start_soon(check, c)
            for r in results:
                cid = r["name"]
                if cid in failed:
                    r.update(status=failed[cid].code, description=failed[cid].text)
        return results

    # -- processes: stop and signal ----------------------------------------------------------

    async def stopProcess(self, name: str, wait: bool = True) -> Any:
        _members, c = self._find(name)
        if c is None:
            return await self.stopProcessGroup(S.split_namespec(name)[0], wait)
        if self._state(c) not in S.RUNNING_STATES:
            raise Fault("NOT_RUNNING", name)
        if wait:
            await self._stop(c)
        else:
            self.compat.nursery.start_soon(self._stop_quietly, c)
        return True

    async def _stop(self, c: dict[str, Any]) -> None:
        cid = c["id"]
        self.compat.stopped_by_hand.add(cid)
        try:
            if P.label(c, P.STOP_AS_GROUP) == "true" and c["state"] == "running":
                # stopasgroup: the stop signal goes to the process group too
                await self.compat.commands.calls["kill"]({
                    "id": cid, "signal": int(c["spec"].get("stop_signal") or 15),
                    "all": True})
            await self.compat.commands.calls["stop"]({"id": cid})
        except ApiError as exc:
            if exc.code == "conflict" and (self._current(cid) or {}).get("state") == "stopped":
                return
            raise Fault("FAILED", f"{S.namespec(*S.identity(c))}: {exc.message}") from None

    async def _stop_quietly(self, c: dict[str, Any]) -> None:
        with contextlib.suppress(Fault):
            await self._stop(c)

    async def stopProcessGroup(self, name: str, wait: bool = True) -> list[dict[str, Any]]:
        if not isinstance(name, str) or name not in self._groups():
            raise Fault("BAD_NAME", str(name))
        return await self._each(self._groups()[name], lambda s: s in S.RUNNING_STATES,
                                self._stop, concurrent=True)

    async def stopAllProcesses(self, wait: bool = True) -> list[dict[str, Any]]:
        members = sorted(self._containers(), key=S.sort_key)
        return await self._each(members, lambda s: s in S.RUNNING_STATES, self._stop,
                                concurrent=True)

    def _signal_number(self, signal: object) -> int:
        try:
            return parse_signal(str(signal) if isinstance(signal, int) else signal)
        except InvalidSignal:
            raise Fault("BAD_SIGNAL", str(signal)) from None

    async def signalProcess(self, name: str, signal: str) -> Any:
        _members, c = self._find(name)
        if c is None:
            return await self.signalProcessGroup(S.split_namespec(name)[0], signal)
        number = self._signal_number(signal)
        if self._state(c) not in S.SIGNALLABLE_STATES:
            raise Fault("NOT_RUNNING", name)
        await self._signal(c, number)
        return True

    async def _signal(self, c: dict[str, Any], number: int) -> None:
        try:
            await self.compat.commands.calls["kill"]({"id": c["id"], "signal": number})
        except ApiError as exc:
            raise Fault("FAILED", f"{S.namespec(*S.identity(c))}: {exc.message}") from None

    async def signalProcessGroup(self, name: str, signal: str) -> list[dict[str, Any]]:
        if not isinstance(name, str) or name not in self._groups():
            raise Fault("BAD_NAME", str(name))
        number = self._signal_number(signal)
        return await self._each(self._groups()[name], lambda s: s in S.SIGNALLABLE_STATES,
                                lambda c: self._signal(c, number))

    async def signalAllProcesses(self, signal: str) -> list[dict[str, Any]]:
        number = self._signal_number(signal)
        members = sorted(self._containers(), key=S.sort_key)
        return await self._each(members, lambda s: s in S.SIGNALLABLE_STATES,
                                lambda c: self._signal(c, number))

    # -- logs --------------------------------------------------------------------------------

    def _channels(self, c: dict[str, Any], channel: str) -> frozenset[bytes]:
        if channel == "stdout" and P.label(c, P.REDIRECT_STDERR) == "true":
            return frozenset({b"stdout", b"stderr"})
        return frozenset({channel.encode()})

    async def _read_log(self, name: str, offset: int, length: int, channel: str) -> str:
        _, c = self._find(name)
        if c is None:
            raise Fault("BAD_NAME", name)
        if not isinstance(offset, int) or not isinstance(length, int):
            raise Fault("INCORRECT_PARAMETERS")
        directory = real_shim_dir(self.core.paths.root, c["id"])
        if directory is None:
            raise Fault("NO_FILE", str(self.core.paths.shims / c["id"] / sv_logs.CONTAINER_LOG))
        try:
            data = await trio.to_thread.run_sync(sv_logs.read, directory,
                                                 self._channels(c, channel), offset, length)
        except ValueError as exc:
            raise Fault(str(exc)) from None
        return data.decode("utf-8", "replace")

    async def readProcessStdoutLog(self, name: str, offset: int, length: int) -> str:
        return await self._read_log(name, offset, length, "stdout")

    async def readProcessStderrLog(self, name: str, offset: int, length: int) -> str:
        return await self._read_log(name, offset, length, "stderr")

    async def _tail_log(self, name: str, offset: int, length: int, channel: str) -> list[Any]:
        _, c = self._find(name)
        if c is None:
            raise Fault("BAD_NAME", name)
        if not isinstance(offset, int) or not isinstance(length, int):
            raise Fault("INCORRECT_PARAMETERS")
        directory = real_shim_dir(self.core.paths.root, c["id"])
        if directory is None:
            return ["", 0, False]
        data, size, overflow = await trio.to_thread.run_sync(
            sv_logs.tail, directory, self._channels(c, channel), offset, length)
        return [data.decode("utf-8", "replace"), size, overflow]

    async def tailProcessStdoutLog(self, name: str, offset: int, length: int) -> list[Any]:
        return await self._tail_log(name, offset, length, "stdout")

    async def tailProcessStderrLog(self, name: str, offset: int, length: int) -> list[Any]:
        return await self._tail_log(name, offset, length, "stderr")

    async def _clear(self, c: dict[str, Any]) -> None:
        directory = real_shim_dir(self.core.paths.root, c["id"])
        if directory is None:
            return  # no logs of its own to clear

        def clear() -> None:
            for path in directory.glob(sv_logs.CONTAINER_LOG + ".*"):
                if path.suffix[1:].isdigit():
                    path.unlink(missing_ok=True)
            current = directory / sv_logs.CONTAINER_LOG
            if current.exists():
                # the shim appends (O_APPEND): it writes on at the new end
                os.truncate(current, 0)

        try:
            await trio.to_thread.run_sync(clear)
        except OSError:
            raise Fault("FAILED", S.namespec(*S.identity(c))) from None

    async def clearProcessLogs(self, name: str) -> bool:
        _, c = self._find(name)
        if c is None:
            raise Fault("BAD_NAME", name)
        await self._clear(c)
        return True

    async def clearAllProcessLogs(self) -> list[dict[str, Any]]:
        members = sorted(self._containers(), key=S.sort_key)
        return await self._each(members, lambda s: True, self._clear)

    # -- system ------------------------------------------------------------------------------

    async def system_multicall(self, calls: list[Any]) -> list[Any]:
        results: list[Any] = []
        for call in sv_view.multicall_calls(calls):
            try:
                value = await self.call(*sv_view.multicall_entry(call))
            except Fault as exc:
                results.append({"faultCode": exc.code, "faultString": exc.text})
            else:
                results.append(value)  # Supervisor's: the value itself, not [value]
        return results
