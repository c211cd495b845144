"""Supervisor's read-only XML-RPC methods, from a view of the state, without trio.

One implementation for the full server (:class:`supervisor.sv_rpc.SupervisorRPC`) and the
early server (:mod:`supervisor.early`), so that what a Supervisor tool is told right after a
restart, before the daemon has loaded trio, is what it is told after the handover:
``getAPIVersion``/``getVersion``, ``getSupervisorVersion``, ``getIdentification``,
``getState``, ``getPID``, ``getProcessInfo``, ``getAllProcessInfo``, ``system.listMethods``,
``system.methodHelp``, ``system.methodSignature``, and a ``system.multicall`` of only these.

:func:`call` answers them (a :class:`~supervisor.sv_xmlrpc.Fault` as Supervisor's), and raises
:class:`NotReadOnly` for every other method of the interface: the caller's full
implementation (or, in the early window, the full server after the handover) answers those.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from supervisor import sv_processes as S
from supervisor.sv_xmlrpc import (
    ALIASES,
    API_VERSION,
    DOCS,
    SUPERVISOR_VERSION,
    SYSTEM_DOCS,
    Fault,
)

__all__ = ["ALL_METHODS", "READ_ONLY", "NotReadOnly", "View", "call", "find", "groups",
           "process_info", "state_of"]

#: The log file of a container (:data:`supervisor.sv_logs.CONTAINER_LOG`, which loads more).
CONTAINER_LOG = "container.log"

#: Every method name of the interface, read-only or not (``system.listMethods``).
ALL_METHODS = frozenset({f"supervisor.{name}" for name in (*DOCS, *ALIASES)}
                        | {f"system.{name}" for name in SYSTEM_DOCS})


class NotReadOnly(Exception):
    """A method of the interface this module does not answer (it changes something, or needs
    more than the state: a log, the configuration)."""


class View:
    """What the read-only methods read: the containers (id -> record), the state ``ps``
    shows for one (``unknown`` until reconciled), and what the daemon knows beyond them.
    (A plain class: a dataclass's making is a measurable part of the early server's first
    XML-RPC answer.)"""

    __slots__ = ("containers", "shims", "shown", "shutting_down", "stopped_by_hand")

    def __init__(self, containers: Mapping[str, Any], shown: Callable[[Any], str], shims: Path,
                 stopped_by_hand: Collection[str] = frozenset(),
                 shutting_down: bool = False) -> None:
        self.containers = containers
        self.shown = shown
        self.shims = shims
        self.stopped_by_hand = stopped_by_hand
        self.shutting_down = shutting_down


def groups(view: View) -> dict[str, list[Any]]:
    """The containers by Supervisor group, in Supervisor's start order."""
    out: dict[str, list[Any]] = {}
    for c in sorted(view.containers.values(), key=S.sort_key):
        out.setdefault(S.identity(c)[0], []).append(c)
    return out


def find(view: View, name: object) -> tuple[list[Any], Any | None]:
    """Supervisor's ``_getGroupAndProcess``: the group's members and the process (None for
    ``group:*``); BAD_NAME for anything unknown."""
    if not isinstance(name, str):
        raise Fault("INCORRECT_PARAMETERS")
    group, process = S.split_namespec(name)
    members = groups(view).get(group)
    if members is None:
        raise Fault("BAD_NAME", name)
    if process is None:
        return members, None
    for c in members:
        if c["id"] == process:
            return members, c
    raise Fault("BAD_NAME", name)


def state_of(view: View, c: Any, now_ns: int) -> int:
    return S.state_code(c, view.shown(c), now_ns, c["id"] in view.stopped_by_hand)


def process_info(view: View, c: Any, now_ns: int) -> dict[str, Any]:
    log = str(view.shims / c["id"] / CONTAINER_LOG)
    return S.process_info(c, view.shown(c), now_ns, log, c["id"] in view.stopped_by_hand)


def _get_state(view: View) -> dict[str, Any]:
    if view.shutting_down:
        return {"statecode": -1, "statename": "SHUTDOWN"}
    return {"statecode": 1, "statename": "RUNNING"}


def _get_process_info(view: View, name: str) -> dict[str, Any]:
    _, c = find(view, name)
    if c is None:
        raise Fault("BAD_NAME", name)
    return process_info(view, c, time.time_ns())


def _get_all_process_info(view: View) -> list[dict[str, Any]]:
    now = time.time_ns()
    infos = [process_info(view, c, now) for c in view.containers.values()]
    infos.sort(key=lambda i: (i["group"], i["name"]))
    return infos


def _doc(name: object) -> tuple[list[str], str]:
    if isinstance(name, str):
        ns, _, method = name.partition(".")
        method = ALIASES.get(method, method) if ns == "supervisor" else method
        table = DOCS if ns == "supervisor" else SYSTEM_DOCS if ns == "system" else {}
        if method in table:
            return table[method]
    raise Fault("SIGNATURE_UNSUPPORTED")


def _multicall(view: View, calls: list[Any]) -> list[Any]:
    """Supervisor's: each result the value itself, or ``{faultCode, faultString}``. Read-only
    only if every call is: else :class:`NotReadOnly` (the whole multicall goes elsewhere)."""
    results: list[Any] = []
    for one in multicall_calls(calls):
        try:
            value = call(view, *multicall_entry(one))
        except Fault as exc:
            results.append({"faultCode": exc.code, "faultString": exc.text})
        else:
            results.append(value)
    return results


def multicall_calls(calls: Any) -> list[Any]:
    """``system.multicall``'s argument, a list (Supervisor's fault otherwise)."""
    if not isinstance(calls, list):
        raise Fault("INCORRECT_PARAMETERS")
    return calls


def multicall_entry(one: Any) -> tuple[str, Any]:
    """One call of a multicall: ``(method name, params)``, or Supervisor's fault for it (no
    name; a multicall inside one). Shared by the early and the full server."""
    if not isinstance(one, dict) or not one.get("methodName"):
        raise Fault("INCORRECT_PARAMETERS", "No methodName")
    if one["methodName"] == "system.multicall":
        raise Fault("INCORRECT_PARAMETERS", "Recursive system.multicall forbidden")
    return one["methodName"], one.get("params", [])


#: method -> (function of the view and the params, least and most params)
_METHODS: dict[str, tuple[Callable[..., Any], int, int]] = {
    "supervisor.getAPIVersion": (lambda view: API_VERSION, 0, 0),
    "supervisor.getVersion": (lambda view: API_VERSION, 0, 0),
    "supervisor.getSupervisorVersion": (lambda view: SUPERVISOR_VERSION, 0, 0),
    "supervisor.getIdentification": (lambda view: "supervisor", 0, 0),
    "supervisor.getState": (_get_state, 0, 0),
    "supervisor.getPID": (lambda view: os.getpid(), 0, 0),
    "supervisor.getProcessInfo": (_get_process_info, 1, 1),
    "supervisor.getAllProcessInfo": (_get_all_process_info, 0, 0),
    "system.listMethods": (lambda view: sorted(ALL_METHODS), 0, 0),
    "system.methodHelp": (lambda view, name: _doc(name)[1], 1, 1),
    "system.methodSignature": (lambda view, name: list(_doc(name)[0]), 1, 1),
    "system.multicall": (_multicall, 1, 1),
}


#: The methods :func:`call` answers.
READ_ONLY = frozenset(_METHODS)


def call(view: View, method: object, params: object) -> Any:
    """The result of a read-only method; :class:`Fault` as the full interface raises it
    (an unknown method, wrong params); :class:`NotReadOnly` for any other method."""
    if not isinstance(method, str) or method not in ALL_METHODS:
        raise Fault("UNKNOWN_METHOD")
    entry = _METHODS.get(method)
    if entry is None:
        raise NotReadOnly(method)
    if not isinstance(params, list | tuple):
        raise Fault("INCORRECT_PARAMETERS")
    fn, least, most = entry
    if not least <= len(params) <= most:
        raise Fault("INCORRECT_PARAMETERS")
    return fn(view, *params)
