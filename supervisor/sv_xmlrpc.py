"""Supervisor's XML-RPC on the wire: the method table, the faults, and a safe codec.

The payloads are the standard library's (:mod:`xmlrpc.client`'s marshaller and unmarshaller);
the parser is expat's with every document type declaration refused: XML-RPC never needs one,
and refusing it closes the entity tricks (billion laughs, external entities) before they start,
without a dependency (expat 2.4+ also bounds entity amplification itself; the tests check both).

The plainest documents -- a call of strings, ints, booleans, arrays and structs, a result of
the same -- are read and written by a few lines of our own first, to the same values and the
same bytes as :mod:`xmlrpc.client`'s (``tests/test_sv_xmlrpc.py`` compares them): importing it
costs ~15 ms (``http.client``, ``email``, ``ssl``...), which the early server
(:mod:`supervisor.early`) would pay at the first call after a restart, while the daemon loads
the rest. Anything else, a malformed document included, goes to :mod:`xmlrpc.client`, so its
values and its errors are the standard library's.
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


class _NotPlain(Exception):
    """A document the plain codec leaves to :mod:`xmlrpc.client`."""


#: Elements of a plain call, and which of them are scalars (text only).
_SCALARS = frozenset({"string", "int", "i4", "boolean", "name", "methodName"})
_PLAIN = _SCALARS | {"methodCall", "params", "param", "value", "array", "data", "struct",
                     "member"}


def _plain_value(tag: str, text: str, kids: list[tuple[str, Any]]) -> Any:
    """The value of one closed element, as :class:`xmlrpc.client.Unmarshaller` makes it."""
    if tag in _SCALARS:
        if kids:
            raise _NotPlain(tag)
        if tag in ("int", "i4"):
            return int(text)  # ValueError: xmlrpc.client says why
        if tag == "boolean":
            if text not in ("0", "1"):
                raise _NotPlain(tag)
            return text == "1"
        return text
    if tag == "value":
        if len(kids) > 1:
            raise _NotPlain(tag)
        return kids[0][1] if kids else text
    if tag in ("param", "array") and len(kids) == 1:
        return kids[0][1]
    if tag in ("data", "params"):
        return [v for _, v in kids]
    if tag == "member" and [k for k, _ in kids] == ["name", "value"]:
        return (kids[0][1], kids[1][1])
    if tag == "struct":
        return dict(v for _, v in kids)
    if tag == "methodCall" and kids and kids[0][0] == "methodName" and len(kids) <= 2:
        return kids[0][1], tuple(kids[1][1]) if len(kids) == 2 else ()
    raise _NotPlain(tag)


def _load_plain(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """:func:`load_call` of a plain document (see the module's docstring), or
    :class:`_NotPlain`."""
    from xml.parsers import expat

    stack: list[tuple[str, list[str], list[tuple[str, Any]]]] = []
    done: list[Any] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag not in _PLAIN or attrs or done:
            raise _NotPlain(tag)
        stack.append((tag, [], []))

    def end(tag: str) -> None:
        name, text, kids = stack.pop()
        value = _plain_value(name, "".join(text), kids)
        (stack[-1][2] if stack else done).append((name, value))

    def data(text: str) -> None:
        if stack:
            stack[-1][1].append(text)

    parser = expat.ParserCreate(None, None)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.StartDoctypeDeclHandler = _forbid
    parser.EntityDeclHandler = _forbid
    parser.ExternalEntityRefHandler = _forbid  # type: ignore[assignment]  # raises
    try:
        parser.Parse(body, True)
    except (expat.ExpatError, BadRequest, ValueError):
        raise _NotPlain("malformed") from None
    if len(done) != 1 or done[0][0] != "methodCall" or not done[0][1][0]:
        raise _NotPlain("not a call")
    method, params = done[0][1]
    return method, params


def load_call(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """``(method, params)`` of a ``methodCall``; :class:`BadRequest` for anything else."""
    try:
        return _load_plain(body)
    except _NotPlain:
        return _load_standard(body)


def _load_standard(body: bytes) -> tuple[str, tuple[Any, ...]]:
    """:func:`load_call` by :mod:`xmlrpc.client`'s unmarshaller (any document)."""
    import xmlrpc.client as xc  # a document that is not plain: ~15 ms, once
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


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _dump_plain(value: Any, out: list[str]) -> None:
    """``xmlrpc.client.Marshaller``'s bytes for a plain value; :class:`_NotPlain` else."""
    if isinstance(value, bool):
        out.append(f"<value><boolean>{int(value)}</boolean></value>\n")
    elif isinstance(value, int):
        if not -(2**31) <= value < 2**31:
            raise _NotPlain("int")
        out.append(f"<value><int>{value}</int></value>\n")
    elif isinstance(value, str):
        out.append(f"<value><string>{_escape(value)}</string></value>\n")
    elif isinstance(value, list | tuple):
        out.append("<value><array><data>\n")
        for item in value:
            _dump_plain(item, out)
        out.append("</data></array></value>\n")
    elif isinstance(value, dict):
        out.append("<value><struct>\n")
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotPlain("key")
            out.append(f"<member>\n<name>{_escape(key)}</name>\n")
            _dump_plain(item, out)
            out.append("</member>\n")
        out.append("</struct></value>\n")
    else:
        raise _NotPlain(type(value).__name__)


_HEAD = "<?xml version='1.0'?>\n<methodResponse>\n"


def dump_result(value: Any) -> bytes:
    value = _capped(value)
    out = [_HEAD, "<params>\n<param>\n"]
    try:
        _dump_plain(value, out)
    except _NotPlain:
        import xmlrpc.client as xc

        return xc.dumps((value,), methodresponse=True).encode()
    out.append("</param>\n</params>\n</methodResponse>\n")
    return "".join(out).encode()


def dump_fault(code: int, text: str) -> bytes:
    out = [_HEAD, "<fault>\n"]
    _dump_plain({"faultCode": code, "faultString": text}, out)
    out.append("</fault>\n</methodResponse>\n")
    return "".join(out).encode()
