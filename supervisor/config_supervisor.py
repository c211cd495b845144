"""Supervisor's ``supervisord.conf``, read with Supervisor's meanings, into :class:`Desired`.

The file is read by a small INI reader of our own rather than :mod:`configparser`, because every
error must name the file and the line (configparser forgets lines), and because a key Tether
cannot honour must be refused, never dropped. The syntax is what Supervisor's parser accepts:
``key = value`` or ``key: value``, indented continuation lines, ``;``/``#`` comments (inline
after whitespace), case-insensitive keys, ``%(name)s`` expansions (``here``, ``ENV_X``,
``program_name``, ``process_num``, ``group_name``, ``numprocs``, ``host_node_name``).

Sections: ``[program:x]`` (the keys of :data:`PROGRAM_KEYS`; the keys of :data:`NOTED_KEYS` are
accepted with a note saying what Tether does instead), ``[group:x]`` (``programs``,
``priority``, and Tether's ``tether_shared_shim = true``: the group's programs share one shim
process), ``[include]`` (``files``, globs relative to the including file). The sections
of :data:`IGNORED_SECTIONS` configure Supervisor's own daemon and are accepted with one note
each. Anything else (an ``[eventlistener:x]``, an unknown section, an unknown key) is an error.

The restart settings become the spec's normalised ``restart`` map (:func:`restart_map`):
``autorestart`` true -> ``always``, ``unexpected`` -> ``on-failure`` with ``exitcodes`` as the
expected statuses, false -> ``no``; ``startretries`` -> ``max_retries`` and ``startsecs`` ->
``reset`` (a process that ran ``startsecs`` counts as started, which is what resets Supervisor's
retries); the back-off starts at 1 s like Supervisor's and is capped at ``startretries`` seconds,
so the default (3 retries) waits 1, 2, 3 s as Supervisor does.
"""

from __future__ import annotations

import glob
import os
import platform
import pwd
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from events.ids import InvalidId, validate_id
from events.signals import InvalidSignal, parse_signal
from supervisor.limits import FILE_KEYS, check
from supervisor.programs import MAX_NUMPROCS, ConfigError, Desired, Process

__all__ = ["IGNORED_SECTIONS", "NOTED_KEYS", "PROGRAM_KEYS", "load", "restart_map"]

#: Keys of ``[program:x]`` with an effect.
PROGRAM_KEYS = frozenset({
    "command", "process_name", "numprocs", "numprocs_start", "priority", "autostart",
    "autorestart", "startsecs", "startretries", "exitcodes", "stopsignal", "stopwaitsecs",
    "stopasgroup", "killasgroup", "user", "redirect_stderr", "stdout_logfile_maxbytes",
    "stdout_logfile_backups", "stderr_logfile_maxbytes", "stderr_logfile_backups",
    "environment", "directory",
})

#: Keys accepted with a note: what Tether does instead.
NOTED_KEYS = {
    "stdout_logfile": "the output is kept in Tether's own log (`supervisorctl tail NAME`, "
                      "`supervisorctl logs NAME`); this path is not written",
    "stderr_logfile": "the output is kept in Tether's own log (`supervisorctl tail NAME "
                      "stderr`); this path is not written",
    "stdout_capture_maxbytes": "Tether has no event listeners; ignored",
    "stderr_capture_maxbytes": "Tether has no event listeners; ignored",
    "stdout_events_enabled": "Tether has no event listeners (`supervisorctl events` instead); "
                             "ignored",
    "stderr_events_enabled": "Tether has no event listeners (`supervisorctl events` instead); "
                             "ignored",
    "stdout_syslog": "Tether does not write to syslog; ignored",
    "stderr_syslog": "Tether does not write to syslog; ignored",
    "serverurl": "programs reach Tether at ROOT/supervisor.sock; ignored",
}

#: Sections that configure Supervisor's own daemon and client: nothing for Tether to do.
IGNORED_SECTIONS = {
    "supervisord": "supervisord's own settings are its command line in Tether (--root, ...); "
                   "only its tether_* keys are read (the client limits: --max-connections ...)",
    "unix_http_server": "Tether serves Supervisor's XML-RPC on ROOT/supervisor.sock",
    "inet_http_server": "use supervisord --http-listen HOST:PORT (--http-user/--http-password)",
    "supervisorctl": "Tether's supervisorctl finds the daemon by --root",
    "rpcinterface": "Tether always serves Supervisor's XML-RPC interface",
}

_GROUP_KEYS = frozenset({"programs", "priority", "tether_shared_shim"})
#: Tether's own key of ``[group:x]`` (a name Supervisor's parser never uses): its programs
#: share one shim process (``shim_group`` x; docs/design.md, section 7). Off by default.
SHARED_SHIM_KEY = "tether_shared_shim"


@dataclass
class _Key:
    value: str
    line: int


@dataclass
class _Section:
    name: str
    path: str
    line: int
    keys: dict[str, _Key] = field(default_factory=dict)


def _strip_inline_comment(text: str) -> str:
    for i, ch in enumerate(text):
        if ch in ";#" and i > 0 and text[i - 1].isspace():
            return text[:i].rstrip()
    return text


def _read_ini(path: str, sections: dict[str, _Section], order: list[str]) -> None:
    """Add the sections of one file (a section seen again is merged, later keys winning, as
    Supervisor's non-strict parser does)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    current: _Section | None = None
    last: _Key | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped[0] in ";#":
            continue
        if raw[0].isspace() and last is not None:  # a continuation of the last value
            last.value += "\n" + _strip_inline_comment(stripped)
            continue
        last = None
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError(path, number, f"a section header must end with ']': {raw!r}")
            name = stripped[1:-1].strip()
            if not name:
                raise ConfigError(path, number, "an empty section name")
            current = sections.get(name)
            if current is None:
                current = sections[name] = _Section(name, path, number)
                order.append(name)
            continue
        if current is None:
            raise ConfigError(path, number, "a setting before any [section]")
        cut = min((i for i in (stripped.find("="), stripped.find(":")) if i > 0), default=-1)
        if cut < 0:
            raise ConfigError(path, number, f"[{current.name}]: expected 'key = value', got "
                              f"{stripped[:40]!r}")
        key = stripped[:cut].strip().lower()
        value = _strip_inline_comment(stripped[cut + 1:].strip())
        last = current.keys[key] = _Key(value, number)


def _expand(text: str, expansions: Mapping[str, Any], section: _Section, key: str) -> str:
    try:
        return text % expansions
    except KeyError as exc:
        names = ", ".join(sorted(k for k in expansions if not k.startswith("ENV_")))
        raise ConfigError(section.path, section.keys[key].line if key in section.keys else
                          section.line,
                          f"[{section.name}] {key}: %({exc.args[0]})s cannot be expanded "
                          f"(known: {names}, ENV_*)") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(section.path, section.keys[key].line if key in section.keys else
                          section.line,
                          f"[{section.name}] {key}: a bad %-expansion: {exc}") from None


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "on", "1"):
        return True
    if value in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _byte_size(text: str) -> int:
    value = text.strip().upper()
    for suffix, factor in (("KB", 1024), ("MB", 1024**2), ("GB", 1024**3)):
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(value)


def _non_negative(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    """``startsecs``, ``stopwaitsecs``: whole seconds as Supervisor reads them, bounded as every
    duration is (events.policy.seconds: 0 to a week), so ``10**400`` is an error, not an
    OverflowError."""
    from events.policy import seconds

    return seconds(_non_negative(text), "the value")


def _count(text: str, maximum: int = 1_000_000_000) -> int:
    value = _non_negative(text)
    if value > maximum:
        raise ValueError(f"{value} is more than {maximum}")
    return value


def _numprocs(text: str) -> int:
    return _count(text, MAX_NUMPROCS)


def _exitcodes(text: str) -> list[int]:
    codes = [int(part) for part in text.replace(" ", "").split(",") if part]
    if not codes or not all(0 <= c <= 255 for c in codes):
        raise ValueError(f"{text!r} is not a list of exit codes 0-255 (e.g. 0,2)")
    return codes


def _environment(text: str) -> dict[str, str]:
    """``KEY=val,KEY2="val 2"``: Supervisor's own tokenizer (shlex), so quoting works alike."""
    lexer = shlex.shlex(text)
    lexer.wordchars += "/.+-():"
    tokens = list(lexer)
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        kv = tokens[i:i + 3]
        if len(kv) != 3 or kv[1] != "=":
            raise ValueError(f"unexpected end of KEY=value pairs in {text!r}")
        out[kv[0]] = kv[2].strip("'\"")
        i += 4
    return out


def _user(text: str) -> dict[str, int]:
    name = text.strip()
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError):
        raise ValueError(f"no such user {name!r}") from None
    return {"uid": entry.pw_uid, "gid": entry.pw_gid}


def restart_map(autorestart: str, exitcodes: list[int], startretries: int,
                startsecs: float) -> dict[str, Any]:
    """Supervisor's restart settings as the spec's ``restart`` map (see the module's text)."""
    policy = {"true": "always", "unexpected": "on-failure", "false": "no"}[autorestart]
    return {"policy": policy, "max_retries": startretries, "delay": 1.0,
            "max_delay": float(max(1, startretries)), "reset": float(startsecs),
            "exit_codes": sorted(set(exitcodes))}


class _Reader:
    """Typed access to one section's keys, every error naming the file and line."""

    def __init__(self, section: _Section, expansions: Mapping[str, Any]) -> None:
        self.section = section
        self.expansions = expansions

    def line(self, key: str) -> int:
        k = self.section.keys.get(key)
        return k.line if k else self.section.line

    def raw(self, key: str, default: str | None = None) -> str | None:
        k = self.section.keys.get(key)
        return default if k is None else k.value

    def get(self, key: str, convert: Any, default: Any) -> Any:
        text = self.raw(key)
        if text is None:
            return default
        text = _expand(text, self.expansions, self.section, key)
        try:
            return convert(text)
        except (ValueError, TypeError, InvalidSignal) as exc:
            raise ConfigError(self.section.path, self.line(key),
                              f"[{self.section.name}] {key}: {exc}") from None


def load(path: str, environ: Mapping[str, str] | None = None) -> Desired:
    """Read a supervisord.conf (and its includes) into the processes it describes."""
    path = os.path.abspath(path)
    env = dict(os.environ if environ is None else environ)
    sections: dict[str, _Section] = {}
    order: list[str] = []
    _read_ini(path, sections, order)
    base = {"here": os.path.dirname(path), "host_node_name": platform.node(),
            **{f"ENV_{k}": v for k, v in env.items()}}
    include = sections.get("include")
    if include is not None:
        files = include.keys.get("files")
        if files is None:
            raise ConfigError(include.path, include.line, "[include] has no 'files' setting")
        for key in include.keys:
            if key != "files":
                raise ConfigError(include.path, include.keys[key].line,
                                  f"[include]: unknown key {key!r} (only 'files')")
        here = os.path.dirname(include.path)
        for pattern in _expand(files.value, base, include, "files").split():
            matches = sorted(glob.glob(os.path.join(here, pattern)))
            for included in matches:
                _read_ini(os.path.abspath(included), sections, order)
    desired = Desired(source=path)
    notes = desired.notes
    groups: dict[str, tuple[str, int]] = {}  # program -> (group, group priority)
    shared: set[str] = set()  # groups whose programs share a shim (tether_shared_shim)
    for name in order:
        section = sections[name]
        kind, _, rest = name.partition(":")
        if name == "include":
            continue
        if kind == "supervisord":
            _daemon_settings(section, desired)
        if kind in IGNORED_SECTIONS and not all(k in FILE_KEYS for k in section.keys):
            notes.append(f"{section.path}:{section.line}: [{name}] ignored: "
                         f"{IGNORED_SECTIONS[kind]}")
            continue
        if kind in IGNORED_SECTIONS:
            continue
        if kind == "group" and rest:
            reader = _Reader(section, {**base, "here": os.path.dirname(section.path)})
            for key in section.keys:
                if key not in _GROUP_KEYS:
                    raise ConfigError(section.path, section.keys[key].line,
                                      f"[{name}]: unknown key {key!r} (a group takes "
                                      f"programs, priority, {SHARED_SHIM_KEY})")
            if reader.get(SHARED_SHIM_KEY, _boolean, False):
                try:
                    validate_id(rest)
                except InvalidId as exc:
                    raise ConfigError(section.path, reader.line(SHARED_SHIM_KEY),
                                      f"[{name}] {SHARED_SHIM_KEY}: the group's name cannot "
                                      f"name a shared shim: {exc}") from None
                shared.add(rest)
            members = reader.get("programs", lambda t: [p.strip() for p in t.split(",")
                                                        if p.strip()], None)
            if not members:
                raise ConfigError(section.path, section.line, f"[{name}] has no 'programs'")
            priority = reader.get("priority", int, 999)
            for member in members:
                if f"program:{member}" not in sections:
                    raise ConfigError(section.path, reader.line("programs"),
                                      f"[{name}] names unknown program {member!r}")
                if member in groups:
                    raise ConfigError(section.path, reader.line("programs"),
                                      f"program {member!r} is in two groups")
                groups[member] = (rest, priority)
            continue
        if kind == "program" and rest:
            continue
        if kind in ("eventlistener", "fcgi-program"):
            raise ConfigError(section.path, section.line,
                              f"[{name}]: Tether does not support {kind} sections")
        raise ConfigError(section.path, section.line, f"unknown section [{name}]")
    seen: dict[str, str] = {}
    for name in order:
        kind, _, program = name.partition(":")
        if kind != "program" or not program:
            continue
        section = sections[name]
        group, group_priority = groups.get(program, (program, -1))
        shim_group = group if program in groups and group in shared else None
        for process in _program(section, program, group, group_priority, base, notes,
                                shim_group):
            if process.name in seen:
                raise ConfigError(section.path, section.line,
                                  f"[{name}]: process name {process.name!r} is also made by "
                                  f"{seen[process.name]}")
            seen[process.name] = f"[{name}]"
            desired.processes.append(process)
    return desired


def _daemon_settings(section: _Section, desired: Desired) -> None:
    """Tether's keys of ``[supervisord]`` (:data:`supervisor.limits.FILE_KEYS`), checked;
    Supervisor's own keys there stay ignored (its daemon's settings are our flags)."""
    for key, entry in section.keys.items():
        setting = FILE_KEYS.get(key)
        if setting is None:
            continue
        try:
            value = check(setting, entry.value.strip())
        except ValueError as exc:
            raise ConfigError(section.path, entry.line, f"[supervisord] {key}: {exc}") from None
        desired.daemon[setting.key] = (value, f"{section.path}:{entry.line}: {key}")


def _program(section: _Section, program: str, group: str, group_priority: int,
             base: Mapping[str, Any], notes: list[str], shim_group: str | None = None
             ) -> list[Process]:
    name = section.name
    for key in section.keys:
        if key in NOTED_KEYS:
            notes.append(f"{section.path}:{section.keys[key].line}: [{name}] {key}: "
                         f"{NOTED_KEYS[key]}")
        elif key not in PROGRAM_KEYS:
            raise ConfigError(section.path, section.keys[key].line,
                              f"[{name}]: unsupported key {key!r} (supported: "
                              f"{', '.join(sorted(PROGRAM_KEYS))})")
    common = {**base, "here": os.path.dirname(section.path), "program_name": program,
              "group_name": group}
    r = _Reader(section, common)
    if r.raw("command") is None:
        raise ConfigError(section.path, section.line, f"[{name}] has no command")
    numprocs = r.get("numprocs", _numprocs, 1)
    numprocs_start = r.get("numprocs_start", _count, 0)
    priority = r.get("priority", int, 999)
    autostart = r.get("autostart", _boolean, True)

    def autorestart_value(text: str) -> str:
        value = text.strip().lower()
        if value == "unexpected":
            return value
        return "true" if _boolean(value) else "false"

    autorestart = r.get("autorestart", autorestart_value, "unexpected")
    startsecs = r.get("startsecs", _seconds, 1)
    startretries = r.get("startretries", _count, 3)
    exitcodes = r.get("exitcodes", _exitcodes, [0])
    stopsignal = r.get("stopsignal", parse_signal, 15)
    stopwaitsecs = r.get("stopwaitsecs", _seconds, 10)
    stopasgroup = r.get("stopasgroup", _boolean, False)
    killasgroup = r.get("killasgroup", _boolean, stopasgroup)
    if stopasgroup and not killasgroup:
        raise ConfigError(section.path, r.line("killasgroup"),
                          f"[{name}]: stopasgroup=true needs killasgroup=true")
    redirect_stderr = r.get("redirect_stderr", _boolean, False)
    user = r.get("user", _user, None)
    maxbytes = [r.get(f"{s}_logfile_maxbytes", _byte_size, None) for s in ("stdout", "stderr")]
    backups = [r.get(f"{s}_logfile_backups", _count, None) for s in ("stdout", "stderr")]
    process_name = r.raw("process_name", "%(program_name)s") or ""
    if numprocs > 1 and "%(process_num)" not in process_name:
        raise ConfigError(section.path, r.line("process_name"),
                          f"[{name}]: numprocs > 1 needs %(process_num) in process_name "
                          "(e.g. process_name=%(program_name)s_%(process_num)02d)")
    restart = restart_map(autorestart, exitcodes, startretries, startsecs)
    out = []
    for num in range(numprocs_start, numprocs_start + numprocs):
        expansions = {**common, "process_num": num, "numprocs": numprocs}
        env: dict[str, str] = {}
        raw_env = r.raw("environment")
        if raw_env is not None:
            try:
                env = _environment(_expand(raw_env, expansions, section, "environment"))
            except ValueError as exc:
                raise ConfigError(section.path, r.line("environment"),
                                  f"[{name}] environment: {exc}") from None
        # the program's own environment can be used in its other settings, as Supervisor does
        expansions.update({f"ENV_{k}": v for k, v in env.items()})
        per = _Reader(section, expansions)
        pname = _expand(process_name, expansions, section, "process_name")
        try:
            validate_id(pname)
        except InvalidId as exc:
            raise ConfigError(section.path, per.line("process_name"),
                              f"[{name}]: the process name cannot be a container id: {exc}"
                              ) from None
        command_text = per.get("command", str, "")
        try:
            argv = shlex.split(command_text)
        except ValueError as exc:
            raise ConfigError(section.path, per.line("command"),
                              f"[{name}] command: {exc}") from None
        if not argv:
            raise ConfigError(section.path, per.line("command"), f"[{name}] command is empty")
        spec: dict[str, Any] = {
            "command": argv,
            "env": {**env, "SUPERVISOR_ENABLED": "1", "SUPERVISOR_PROCESS_NAME": pname,
                    "SUPERVISOR_GROUP_NAME": group},
            "restart": restart,
            "stop_signal": stopsignal,
            "stop_timeout": float(stopwaitsecs),
        }
        if shim_group is not None:
            spec["shim_group"] = shim_group
        directory = per.get("directory", str, None)
        if directory:
            spec["cwd"] = directory
        if user is not None:
            spec["user"] = user
        sizes = [m for m in maxbytes if m]
        if sizes:
            spec["log_max_size"] = max(sizes)
        kept = [b for b in backups if b is not None]
        if kept:
            spec["log_keep"] = max(kept)
        out.append(Process(
            name=pname, program=program, group=group, spec=spec, process_num=num,
            numprocs=numprocs, priority=priority,
            group_priority=group_priority if group_priority >= 0 else priority,
            autostart=autostart, startsecs=float(startsecs), redirect_stderr=redirect_stderr,
            stop_as_group=stopasgroup, kill_as_group=killasgroup,
            where=f"{section.path}:{section.line}"))
    return out
