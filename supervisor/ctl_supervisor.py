"""Supervisor's verbs in Tether's ``supervisorctl``, and ``apply -f FILE``.

Where a verb exists in both, Supervisor's meaning wins (DESIGN.md): ``status [NAME|GROUP:*|all]``
prints Supervisor's table and exits 3 when something listed is not running (4 for an unknown
name), ``start|stop|restart NAME|GROUP:*|all`` answer ``name: started`` / ``name: stopped`` and
``name: ERROR (...)``, and so on for ``signal``, ``tail``, ``pid``, ``avail``, ``reread``,
``update``, ``clear``. Daemon health is ``info``.

Every verb is Supervisor's own ``supervisorctl`` logic (same output, same exit statuses) over
Supervisor's interface, reached through the daemon's socket (method ``xmlrpc``) instead of
HTTP: one implementation of the semantics (:mod:`supervisor.sv_rpc`) behind both clients.

Over 500 lines on purpose: one module per client interface (each verb a short port of
Supervisor's supervisorctl), so the whole of Supervisor's CLI reads in one place.

Imported only by a command of its own (:data:`supervisor.ctl_commands.COMMANDS` names them);
their grammar is :mod:`supervisor.ctl_svgrammar`, which every command reads. Only ``os`` and
``sys`` at import.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: every one-shot command imports this module
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from events.rpc import BlockingConnection
    from supervisor.ctl import Target

__all__ = ["COMMANDS"]

#: Supervisor's LSB exit statuses (its supervisorctl's).
GENERIC, INVALID_ARGS, NOT_RUNNING_INIT = 1, 2, 7
STATUS_NOT_RUNNING, STATUS_UNKNOWN = 3, 4

SUCCESS, BAD_NAME, BAD_SIGNAL, NO_FILE, NOT_EXECUTABLE, FAILED = 80, 10, 11, 20, 21, 30
ABNORMAL_TERMINATION, SPAWN_ERROR, ALREADY_STARTED, NOT_RUNNING = 40, 50, 60, 70
DEAD_PROGRAM_FAULTS = (SPAWN_ERROR, ABNORMAL_TERMINATION, NOT_RUNNING)
STOPPED_STATES = (0, 100, 200, 1000)
#: The largest XML-RPC <int> (32 bits, signed): `tail -N` bytes beyond it cannot be sent.
_MAX_XMLRPC_INT = 2**31 - 1


class SvFault(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def rpc(c: BlockingConnection | Target, method: str, *params: Any) -> Any:
    """One call of Supervisor's interface, on a connection (several calls) or a target (one,
    written with the hello); a fault raises :class:`SvFault`."""
    reply: dict[str, Any] = c.call("xmlrpc", name=method, args=list(params))
    if "fault" in reply:
        raise SvFault(int(reply["fault"]["code"]), str(reply["fault"]["string"]))
    return reply.get("result")


def split_namespec(spec: str) -> tuple[str, str | None]:
    group, sep, name = spec.partition(":")
    if not sep:
        return spec, spec
    return group, (name if name and name != "*" else None)


def namespec(group: str, name: str) -> str:
    return name if group == name else f"{group}:{name}"


class _Status:
    """The exit status, set the way Supervisor's ``set_exitstatus_from_xmlrpc_fault`` does."""

    def __init__(self) -> None:
        self.code = 0

    def fault(self, code: int, ignored: int | None = None) -> None:
        if code in (ignored, SUCCESS):
            return
        self.code = NOT_RUNNING_INIT if code in DEAD_PROGRAM_FAULTS else GENERIC


# -- status, pid, avail --------------------------------------------------------------------


def status_lines(infos: list[dict[str, Any]]) -> list[str]:
    """Supervisor's ``_show_statuses``: ``name  STATE  description`` aligned."""
    specs = [namespec(i["group"], i["name"]) for i in infos]
    width = max([30, *map(len, specs)]) + 3
    return [f"{spec:<{width}}{i['statename']:<10}{i['description']}"
            for spec, i in zip(specs, infos, strict=True)]


def cmd_status(t: Target, args: argparse.Namespace) -> int:
    infos = rpc(t, "supervisor.getAllProcessInfo")
    code = 0
    lines = []
    names = args.names
    if not names or "all" in names:
        matching = infos
    else:
        matching = []
        for name in names:
            group, process = split_namespec(name)
            found = [i for i in infos if i["group"] == group
                     and (process is None or i["name"] == process)]
            if not found:
                lines.append(f"{group}: ERROR (no such group)" if process is None
                             else f"{name}: ERROR (no such process)")
                code = STATUS_UNKNOWN
            matching += found
    if args.json:
        from supervisor import ctl_render

        lines += [ctl_render.dumps(info) for info in matching]
    else:
        lines += status_lines(matching)
    sys.stdout.write("".join(f"{line}\n" for line in lines))  # one write, even to a terminal
    if any(i["state"] in STOPPED_STATES for i in matching):
        code = STATUS_NOT_RUNNING
    return code


def cmd_pid(t: Target, args: argparse.Namespace) -> int:
    code = 0
    with t.connect() as c:
        if not args.names:
            _out(str(rpc(c, "supervisor.getPID")))
        elif "all" in args.names:
            for info in rpc(c, "supervisor.getAllProcessInfo"):
                _out(str(info["pid"]))
        else:
            for name in args.names:
                try:
                    info = rpc(c, "supervisor.getProcessInfo", name)
                except SvFault as exc:
                    if exc.code != BAD_NAME:
                        raise
                    _out(f"No such process {name}")
                    code = GENERIC
                    continue
                _out(str(info["pid"]))
                if info["pid"] == 0:
                    code = NOT_RUNNING_INIT
    return code


def cmd_avail(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        infos = rpc(c, "supervisor.getAllConfigInfo")
    for info in infos:
        name = namespec(info["group"], info["name"])
        inuse = "in use" if info["inuse"] else "avail"
        auto = "auto" if info["autostart"] else "manual"
        _out(f"{name:<32} {inuse:<9} {auto:<9} {info['group_prio']}:{info['process_prio']}")
    return 0


# -- start, stop, restart, signal, clear ---------------------------------------------------


_START_ERRORS = {BAD_NAME: "no such process", NO_FILE: "no such file",
                 NOT_EXECUTABLE: "file is not executable", ALREADY_STARTED: "already started",
                 SPAWN_ERROR: "spawn error", ABNORMAL_TERMINATION: "abnormal termination"}
_SIGNAL_ERRORS = {BAD_NAME: "no such process", BAD_SIGNAL: "bad signal name",
                  NOT_RUNNING: "not running"}


def _start_result(r: dict[str, Any]) -> str:
    name = namespec(r["group"], r["name"])
    if r["status"] == SUCCESS:
        return f"{name}: started"
    return f"{name}: ERROR ({_START_ERRORS.get(r['status'], r.get('description'))})"


def _signal_result(r: dict[str, Any], success: str = "signalled") -> str:
    name = namespec(r["group"], r["name"])
    if r["status"] == SUCCESS:
        return f"{name}: {success}"
    if r["status"] in _SIGNAL_ERRORS:
        return f"{name}: ERROR ({_SIGNAL_ERRORS[r['status']]})"
    return str(r.get("description"))


def _fault_result(exc: SvFault, name: str) -> dict[str, Any]:
    group, process = split_namespec(name)
    return {"status": exc.code, "name": process, "group": group, "description": exc.text}


def _verb(c: BlockingConnection, names: list[str], status: _Status, *, all_method: str,
          group_method: str, one_method: str, extra: tuple[Any, ...], render: Callable[..., str],
          done: str, ignored: int | None) -> None:
    """Supervisor's do_start/do_stop/do_signal: ``all``, ``group:*`` and names."""
    if "all" in names:
        for r in rpc(c, all_method, *extra):
            _out(render(r))
            status.fault(r["status"], ignored)
        return
    for name in names:
        group, process = split_namespec(name)
        if process is None:
            try:
                results = rpc(c, group_method, group, *extra)
            except SvFault as exc:
                if exc.code != BAD_NAME:
                    raise
                _out(f"{group}: ERROR (no such group)")
                status.code = INVALID_ARGS if one_method.endswith("startProcess") else GENERIC
                continue
            for r in results:
                _out(render(r))
                status.fault(r["status"], ignored)
            continue
        try:
            rpc(c, one_method, name, *extra)
        except SvFault as exc:
            r = _fault_result(exc, name)
            _out(render(r))
            status.fault(r["status"], ignored)
        else:
            _out(f"{namespec(group, process)}: {done}")


def cmd_start(t: Target, args: argparse.Namespace) -> int:
    status = _Status()
    with t.connect(call_timeout=None) as c:
        _verb(c, args.names, status, all_method="supervisor.startAllProcesses",
              group_method="supervisor.startProcessGroup", one_method="supervisor.startProcess",
              extra=(), render=_start_result, done="started", ignored=ALREADY_STARTED)
    return status.code


def _names_or_all(args: argparse.Namespace) -> None:
    """``stop``/``restart``: names, or docker's ``--all`` (the name ``all``), not both."""
    from supervisor.ctl_grammar import usage_error
    from supervisor.ctl_svgrammar import NAMES

    if args.all and args.names:
        raise usage_error(args, "give names or --all, not both")
    if args.all:
        args.names = ["all"]
    if not args.names:
        raise usage_error(args, f"the following arguments are required: {NAMES} (or --all)")


def _stop(t: Target, args: argparse.Namespace, status: _Status) -> None:
    with t.connect(call_timeout=None) as c:
        if getattr(args, "time", None) is not None:  # docker's stop -t: the grace time
            _stop_with_grace(c, args.names, args.time, status)
            return
        _verb(c, args.names, status, all_method="supervisor.stopAllProcesses",
              group_method="supervisor.stopProcessGroup", one_method="supervisor.stopProcess",
              extra=(), render=lambda r: _signal_result(r, "stopped"), done="stopped",
              ignored=NOT_RUNNING)


def _stop_with_grace(c: BlockingConnection, names: list[str], grace: float,
                     status: _Status) -> None:
    """docker's ``stop -t``: the daemon's ``stop`` with a grace time, per container id (a plain
    name is an id; ``GROUP:*``, ``GROUP:NAME`` and ``all`` are resolved first)."""
    from events import wire

    chosen: list[tuple[str, str]] = []
    infos: list[dict[str, Any]] | None = None
    for name in names:
        if ":" not in name and name != "all":
            chosen.append((name, name))
            continue
        if infos is None:
            infos = rpc(c, "supervisor.getAllProcessInfo")
        group, process = split_namespec(name)
        named = [i for i in infos
                 if name == "all" or (i["group"] == group
                                      and (process is None or i["name"] == process))]
        # as stopAllProcesses/stopProcessGroup: what is already stopped is left alone
        found = [(i["name"], namespec(i["group"], i["name"])) for i in named
                 if (name != "all" and process is not None)
                 or i["state"] not in STOPPED_STATES]
        if not named:
            _out(f"{name}: ERROR (no such process)")
            status.code = GENERIC
        chosen += found
    for cid, shown in chosen:
        try:
            c.call("stop", id=cid, timeout=grace)
        except wire.RemoteError as exc:
            _out(f"{shown}: ERROR ({exc.message})")
            status.code = GENERIC
        else:
            _out(f"{shown}: stopped")


def cmd_stop(t: Target, args: argparse.Namespace) -> int:
    _names_or_all(args)
    status = _Status()
    _stop(t, args, status)
    return status.code


def cmd_restart(t: Target, args: argparse.Namespace) -> int:
    _names_or_all(args)
    status = _Status()
    _stop(t, args, status)
    with t.connect(call_timeout=None) as c:
        _verb(c, args.names, status, all_method="supervisor.startAllProcesses",
              group_method="supervisor.startProcessGroup", one_method="supervisor.startProcess",
              extra=(), render=_start_result, done="started", ignored=ALREADY_STARTED)
    return status.code


def cmd_signal(t: Target, args: argparse.Namespace) -> int:
    status = _Status()
    with t.connect() as c:
        _verb(c, args.names, status, all_method="supervisor.signalAllProcesses",
              group_method="supervisor.signalProcessGroup",
              one_method="supervisor.signalProcess", extra=(args.signal,),
              render=_signal_result, done="signalled", ignored=None)
    return status.code


def cmd_clear(t: Target, args: argparse.Namespace) -> int:
    status = _Status()

    def render(r: dict[str, Any]) -> str:
        name = namespec(r["group"], r["name"])
        if r["status"] == SUCCESS:
            return f"{name}: cleared"
        return f"{name}: ERROR ({'no such process' if r['status'] == BAD_NAME else 'failed'})"

    with t.connect() as c:
        if "all" in args.names:
            for r in rpc(c, "supervisor.clearAllProcessLogs"):
                _out(render(r))
                status.fault(r["status"])
            return status.code
        for name in args.names:
            try:
                rpc(c, "supervisor.clearProcessLogs", name)
            except SvFault as exc:
                r = _fault_result(exc, name)
                _out(render(r))
                status.fault(r["status"])
            else:
                group, process = split_namespec(name)
                _out(f"{namespec(group, process or group)}: cleared")
    return status.code


# -- add, remove ---------------------------------------------------------------------------


#: Supervisor's fault codes that ``add``/``remove`` tell apart.
SHUTDOWN_STATE, ALREADY_ADDED, STILL_RUNNING = 6, 90, 91


def _group_verb(t: Target, names: list[str], method: str, done: str,
                refusals: dict[int, tuple[str, int]]) -> int:
    """``add``/``remove``: ``method`` for each group, ``NAME: done`` or Supervisor's words for
    a fault (``refusals``: code -> (message with ``{name}``, exit status))."""
    code = 0
    with t.connect() as c:
        for name in names:
            try:
                rpc(c, method, name)
            except SvFault as exc:
                text, status = refusals.get(exc.code, ("ERROR: {name}: {text}", GENERIC))
                _out(text.format(name=name, text=exc.text))
                code = code or status
            else:
                _out(f"{name}: {done}")
    return code


def cmd_add(t: Target, args: argparse.Namespace) -> int:
    """Supervisor's ``add GROUP...``: create and start a group of the program file that is not
    in use (``addProcessGroup``), with Supervisor's words (ansible's module reads them)."""
    return _group_verb(t, args.names, "supervisor.addProcessGroup", "added process group", {
        ALREADY_ADDED: ("ERROR: process group already active", 0),
        SHUTDOWN_STATE: ("ERROR: shutting down", GENERIC),
        BAD_NAME: ("ERROR: no such process/group: {name}", GENERIC)})


def cmd_remove(t: Target, args: argparse.Namespace) -> int:
    """Supervisor's ``remove GROUP...``: remove a stopped group's containers
    (``removeProcessGroup``); the program file keeps it, so ``add`` brings it back."""
    return _group_verb(t, args.names, "supervisor.removeProcessGroup", "removed process group", {
        STILL_RUNNING: ("ERROR: process/group still running: {name}", GENERIC),
        BAD_NAME: ("ERROR: no such process/group: {name}", GENERIC)})


# -- tail ----------------------------------------------------------------------------------


def cmd_tail(t: Target, args: argparse.Namespace) -> int:
    """``tail [-f|-N] NAME [stdout|stderr]``: the last N (1600) bytes, or follow."""
    from supervisor.ctl import EXIT_USAGE, CtlError

    words = list(args.words)
    modifier = words.pop(0) if words and words[0].startswith("-") else None
    if not 1 <= len(words) <= 2:
        raise CtlError("Error: tail [-f|-N] NAME [stdout|stderr]", EXIT_USAGE)
    name = words[0]
    channel = words[1].lower() if len(words) == 2 else "stdout"
    if channel not in ("stdout", "stderr"):
        raise CtlError(f"Error: bad channel {channel!r}", EXIT_USAGE)
    size = 1600
    if modifier is not None and modifier != "-f":
        try:
            size = int(modifier[1:])
        except ValueError:
            raise CtlError(f"Error: bad argument {modifier}", EXIT_USAGE) from None
        if not 0 <= size <= _MAX_XMLRPC_INT:  # an XML-RPC <int> is 32 bits
            raise CtlError(f"Error: bad argument {modifier}: a number of bytes from 0 to "
                           f"{_MAX_XMLRPC_INT}", EXIT_USAGE)
    method = ("supervisor.readProcessStdoutLog" if channel == "stdout"
              else "supervisor.readProcessStderrLog")
    with t.connect(call_timeout=None if modifier == "-f" else 30.0) as c:
        try:
            info = rpc(c, "supervisor.getProcessInfo", name)
            if modifier != "-f":
                _out(rpc(c, method, name, -size, 0))  # with Supervisor's extra newline
                return 0
        except SvFault as exc:
            what = {NO_FILE: "no log file", FAILED: "unknown error reading log",
                    BAD_NAME: "no such process name"}.get(exc.code, exc.text)
            _out(f"{name}: ERROR ({what})")
            return GENERIC
        wanted = {"stdout", "stderr"} if (channel == "stdout" and not info["stderr_logfile"]
                                          and info["stdout_logfile"]) else {channel}
        _out("==> Press Ctrl-C to exit <==")
        sys.stdout.flush()
        for item in c.stream("logs", id=info["name"], tail=10, follow=True):
            if item.get("stream") not in wanted:
                continue
            line = item.get("line", "")
            data = line.encode() if isinstance(line, str) else bytes(line)
            sys.stdout.buffer.write(data if item.get("partial") else data + b"\n")
            sys.stdout.buffer.flush()
    return 0


# -- configuration: reread, update, apply --------------------------------------------------


def _load(path: str) -> Any:
    from supervisor.ctl import CtlError
    from supervisor.program_files import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        raise CtlError(f"apply: {exc}\n  nothing was changed") from None


def _print_changes(groups: list[list[str]]) -> None:
    added, changed, removed = groups
    marks = {**dict.fromkeys(added, "available"), **dict.fromkeys(changed, "changed"),
             **dict.fromkeys(removed, "disappeared")}
    if not marks:
        _out("No config updates to processes")
    for name in sorted(marks):
        _out(f"{name}: {marks[name]}")


def _file_apply(c: BlockingConnection, desired: Any, *, prune: bool, dry_run: bool
                ) -> dict[str, Any]:
    for note in desired.notes:
        sys.stderr.write(f"note: {note}\n")
    result: dict[str, Any] = c.call(
        "apply", programs=[p.to_wire() for p in desired.processes], source=desired.source,
        prune=prune, dry_run=dry_run)
    return result


def _config_or_source(c: BlockingConnection) -> str | None:
    """None when the daemon has a ``--config`` (it rereads it); else the one file the programs
    were applied from, which this supervisorctl reads itself (with its user's rights)."""
    from supervisor.ctl import CtlError

    where = c.call("program_sources")
    if where.get("config"):
        return None
    sources = where.get("sources") or []
    if len(sources) != 1:
        raise CtlError("no file to read again: start supervisord with --config FILE, or apply "
                       "one with `supervisorctl apply -f FILE`"
                       + (f" (programs come from {', '.join(sources)})" if sources else ""))
    return str(sources[0])


def cmd_reread(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        source = _config_or_source(c)
        if source is None:
            try:
                groups = rpc(c, "supervisor.reloadConfig")[0]
            except SvFault as exc:
                _out(f"ERROR: {exc.text}")
                return GENERIC
        else:
            groups = _file_apply(c, _load(source), prune=True, dry_run=True)["groups"]
    _print_changes(groups)
    return 0


def _print_result(result: dict[str, Any]) -> int:
    for line in result.get("lines") or []:
        _out(line)
    if not result.get("lines"):
        _out(f"nothing to do: {len(result.get('keep') or [])} processes up to date")
    for failure in result.get("failed") or []:
        sys.stderr.write(f"supervisorctl: {failure['id']}: {failure['error']}\n")
    return GENERIC if result.get("failed") else 0


def cmd_update(t: Target, args: argparse.Namespace) -> int:
    with t.connect(call_timeout=None) as c:
        source = _config_or_source(c)
        if source is None:
            result = c.call("update", dry_run=False)
            for note in result.get("notes") or []:
                sys.stderr.write(f"note: {note}\n")
        else:
            result = _file_apply(c, _load(source), prune=True, dry_run=False)
    return _print_result(result)


def cmd_apply(t: Target, args: argparse.Namespace) -> int:
    desired = _load(os.path.abspath(args.file))
    with t.connect(call_timeout=None) as c:
        result = _file_apply(c, desired, prune=args.prune, dry_run=args.dry_run)
    if args.dry_run:
        _out(f"dry run: {len(result.get('lines') or [])} changes, nothing done")
    return _print_result(result)


def cmd_info(t: Target, args: argparse.Namespace) -> int:
    """Daemon health (what ``status`` printed before Supervisor's ``status`` took its name)."""
    from supervisor.ctl_commands import _print_map

    with t.connect() as c:
        health = c.call("status")
        info = c.call("info")
    merged = {**info, **{k: v for k, v in (health or {}).items() if k not in info}}
    _print_map(merged, args.json)
    return 0 if merged.get("ok", True) else GENERIC


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "status": cmd_status, "start": cmd_start, "stop": cmd_stop, "restart": cmd_restart,
    "signal": cmd_signal, "tail": cmd_tail, "pid": cmd_pid, "avail": cmd_avail,
    "reread": cmd_reread, "update": cmd_update, "clear": cmd_clear, "apply": cmd_apply,
    "info": cmd_info, "add": cmd_add, "remove": cmd_remove,
}
