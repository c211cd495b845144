"""Supervisor's XML-RPC on the wire: the method table, the faults, and a safe codec.

The payloads are the standard library's (:mod:`xmlrpc.client`'s marshaller and unmarshaller);
the parser is expat's with every document type declaration refused: XML-RPC never needs one,
and refusing it closes the entity tricks (billion laughs, external entities) before they start,
without a dependency (expat 2.4+ also bounds entity amplification itself; the tests check both).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALIASES", "API_VERSION", "DOCS", "FAULTS", "SYSTEM_DOCS", "BadRequest", "Fault",
           "dump_fault", "dump_result", "load_call"]

API_VERSION = "3.0"
#: What ``getSupervisorVersion`` answers: the Supervisor release whose interface this is.
SUPERVISOR_VERSION = "4.2.5+tether"

FAULTS = {
    "UNKNOWN_METHOD": 1, "INCORRECT_PARAMETERS": 2, "BAD_ARGUMENTS": 3,
    "SIGNATURE_UNSUPPORTED": 4, "SHUTDOWN_STATE": 6, "BAD_NAME": 10, "BAD_SIGNAL": 11,
    "NO_FILE": 20, "NOT_EXECUTABLE": 21, "FAILED": 30, "ABNORMAL_TERMINATION": 40,
    "SPAWN_ERROR": 50, "ALREADY_STARTED": 60, "NOT_RUNNING": 70, "SUCCESS": 80,
    "ALREADY_ADDED": 90, "STILL_RUNNING": 91, "CANT_REREAD": 92,
}


class Fault(Exception):
    """Supervisor's RPCError: ``code`` and ``text`` (``NAME`` or ``NAME: extra``)."""

    def __init__(self, name: str, extra: str | None = None) -> None:
        self.code = FAULTS[name]
        self.text = name if extra is None else f"{name}: {extra}"
        super().__init__(self.text)


#: (signature: return type then param types, help) of every method, for system.method*.
DOCS: dict[str, tuple[list[str], str]] = {
    "getAPIVersion": (["string"], "Return the version of the RPC API used by supervisord"),
    "getVersion": (["string"], "Return the version of the RPC API used by supervisord"),
    "getSupervisorVersion": (["string"], "Return the version of the supervisor package"),
    "getIdentification": (["string"], "Return identifying string of supervisord"),
    "getState": (["struct"], "Return current state of supervisord as a struct"),
    "getPID": (["int"], "Return the PID of supervisord"),
    "readLog": (["string", "int", "int"], "Read length bytes from the main log (Tether: the "
                "event log, one line per event) starting at offset"),
    "shutdown": (["boolean"], "Shut down supervisord; programs keep running"),
    "restart": (["boolean"], "Re-execute supervisord; programs keep running"),
    "reloadConfig": (["array"], "Reread the configuration file: [[added, changed, removed]]"),
    "addProcessGroup": (["boolean", "string"], "Add (create, autostart) a group from the "
                        "configuration file"),
    "removeProcessGroup": (["boolean", "string"], "Remove a stopped group"),
    "startProcess": (["boolean", "string", "boolean"], "Start a process (name, group:name "
                     "or group:*)"),
    "startProcessGroup": (["array", "string", "boolean"], "Start every process of a group"),
    "startAllProcesses": (["array", "boolean"], "Start every process"),
    "stopProcess": (["boolean", "string", "boolean"], "Stop a process"),
    "stopProcessGroup": (["array", "string", "boolean"], "Stop every process of a group"),
    "stopAllProcesses": (["array", "boolean"], "Stop every process"),
    "signalProcess": (["boolean", "string", "string"], "Send a signal to a process"),
    "signalProcessGroup": (["array", "string", "string"], "Signal every process of a group"),
    "signalAllProcesses": (["array", "string"], "Signal every process"),
    "getAllConfigInfo": (["array"], "Info about every configured process"),
    "getProcessInfo": (["struct", "string"], "Info about a process"),
    "getAllProcessInfo": (["array"], "Info about every process"),
    "readProcessStdoutLog": (["string", "string", "int", "int"], "Read length bytes of a "
                             "process's stdout log from offset"),
    "readProcessStderrLog": (["string", "string", "int", "int"], "Read length bytes of a "
                             "process's stderr log from offset"),
    "tailProcessStdoutLog": (["array", "string", "int", "int"], "Tail a process's stdout log: "
                             "[string bytes, int offset, bool overflow]"),
    "tailProcessStderrLog": (["array", "string", "int", "int"], "Tail a process's stderr log"),
    "clearProcessLogs": (["boolean", "string"], "Clear a process's logs"),
    "clearAllProcessLogs": (["array"], "Clear every process's logs"),
}
SYSTEM_DOCS: dict[str, tuple[list[str], str]] = {
    "listMethods": (["array"], "Return an array listing the available method names"),
    "methodHelp": (["string", "string"], "Return a string showing the method's documentation"),
    "methodSignature": (["array", "string"], "Return [rtype, ptype, ...] of a method"),
    "multicall": (["array", "array"], "Process an array of calls {methodName, params}, "
                  "return an array of results (the value, or {faultCode, faultString}, as "
                  "Supervisor's)"),
}
#: Supervisor's aliases kept for old clients.
ALIASES = {"readProcessLog": "readProcessStdoutLog", "tailProcessLog": "tailProcessStdoutLog",
           "clearProcessLog": "clearProcessLogs", "readMainLog": "readLog"}




class BadRequest(ValueError):
    """A request body that is not an XML-RPC call (HTTP 400)."""


def _forbid(*args: object) -> None:
    raise BadRequest("document type declarations and entities are not accepted")


def load_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """``(method, params)`` of a ``methodCall``; :class:`BadRequest` for anything else."""
    import xmlrpc.client as xc  # at the first call: ~10 ms the daemon's start need not pay
    from xml.parsers import expat

    target = xc.Unmarshaller()
    parser = expat.ParserCreate(None, None)
    parser.StartElementHandler = target.start
    parser.EndElementHandler = target.end
    parser.CharacterDataHandler = target.data
    parser.StartDoctypeDeclHandler = _forbid
    parser.EntityDeclHandler = _forbid
    parser.ExternalEntityRefHandler = _forbid  # type: ignore[assignment]  # raises, never returns
    target.xml(None, None)  # type: ignore[arg-type]  # as xmlrpc.client's own parser: str data
    try:
        parser.Parse(body, True)
        params = target.close()
    except BadRequest:
        raise
    except (expat.ExpatError, xc.ResponseError, ValueError, TypeError, IndexError,
            KeyError) as exc:
        raise BadRequest(f"not an XML-RPC call: {exc}") from None
    method = target.getmethodname()
    if not method:
        raise BadRequest("no methodName")
    return method, params


def _capped(value: Any) -> Any:
    """XML-RPC ints are 32-bit: cap them as Supervisor does (``capped_int``); None has no
    XML-RPC form, so it becomes Supervisor's ``"none"``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return max(-(2**31), min(2**31 - 1, value))
    if value is None:
        return "none"
    if isinstance(value, dict):
        return {str(k): _capped(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_capped(v) for v in value]
    return value


def dump_result(value: Any) -> bytes:
    import xmlrpc.client as xc

    return xc.dumps((_capped(value),), methodresponse=True).encode()


def dump_fault(code: int, text: str) -> bytes:
    import xmlrpc.client as xc

    return xc.dumps(xc.Fault(code, text)).encode()
