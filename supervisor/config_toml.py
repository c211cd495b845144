"""Tether's own program file (TOML, read by the standard library's :mod:`tomllib`).

One table per program; its keys are the ``run`` flags and spec fields, plus Supervisor's
``numprocs``, ``priority``, ``autostart`` and ``startsecs``::

    [programs.web]
    command = ["python3", "-m", "http.server", "8000"]   # or a string, split as a shell would
    restart = "always"                                   # or a map (events.policy.restart_spec)
    env = { MODE = "prod" }
    numprocs = 2            # ids web_00, web_01 (Supervisor's default process_name)
    priority = 10           # start order, lower first

A program with ``numprocs`` above 1 is the group of its processes, as in Supervisor; a
``group`` key puts several programs in one named group. Unknown keys are errors naming the
file, the line and the key (tomllib keeps no lines, so the key is found again in the text).
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Callable
from typing import Any

from events.ids import InvalidId, validate_id
from supervisor.limits import SETTINGS, check
from supervisor.programs import (
    DEFAULT_PRIORITY,
    DEFAULT_STARTSECS,
    MAX_NUMPROCS,
    ConfigError,
    Desired,
    Process,
)

__all__ = ["SPEC_KEYS", "load"]

#: Keys that go into the container spec as they are (``command`` is normalised to argv).
SPEC_KEYS = frozenset({"command", "env", "cwd", "runtime", "rootfs", "bundle", "init",
                       "memory", "cpus", "pids_limit", "user", "stop_signal", "stop_timeout",
                       "restart", "labels", "log_max_size", "log_keep", "shim_group"})
#: Keys about the program rather than its containers.
PROGRAM_KEYS = frozenset({"numprocs", "priority", "autostart", "startsecs", "group",
                          "redirect_stderr", "stop_as_group"})
_TOP_KEYS = frozenset({"programs", "supervisord"})


def _line_of(text: str, table: str, key: str | None) -> int | None:
    """The line of ``[programs.NAME]`` (or of ``key`` inside it): best effort, for messages."""
    return _line_in(text, re.compile(r"^\s*\[\s*programs\s*\.\s*\"?" + re.escape(table)
                                     + r"\"?\s*\]"), key)


_DAEMON_TABLE = re.compile(r"^\s*\[\s*supervisord\s*\]")


def _line_in(text: str, header: re.Pattern[str], key: str | None) -> int | None:
    """The line of the table ``header`` matches (or of ``key`` inside it)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if header.match(line):
            if key is None:
                return i + 1
            pattern = re.compile(r"^\s*\"?" + re.escape(key) + r"\"?\s*=")
            for j in range(i + 1, len(lines)):
                if lines[j].lstrip().startswith("["):
                    break
                if pattern.match(lines[j]):
                    return j + 1
            return i + 1
    return None


def _size(value: object) -> object:
    """``memory = "64m"`` as the CLI's ``--memory 64m``; whole numbers stay bytes."""
    if isinstance(value, str):
        from supervisor.ctl_grammar import parse_size

        try:
            return parse_size(value)
        except Exception as exc:  # argparse's error type; the message is what matters
            raise ValueError(str(exc)) from None
    return value


def load(path: str) -> Desired:
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    text = raw.decode("utf-8", "replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) if match else (
            len(text.splitlines()) if "end of document" in str(exc) else None)
        raise ConfigError(path, line,
                          f"not valid TOML: {exc}") from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise ConfigError(path, _top_line(text, key),
                              f"unknown top-level key {key!r} (programs go in "
                              "[programs.NAME] tables)")
    programs = doc.get("programs", {})
    if not isinstance(programs, dict):
        raise ConfigError(path, _top_line(text, "programs"), "'programs' must be a table")
    desired = Desired(source=path)
    _daemon_settings(path, text, doc.get("supervisord", {}), desired)
    seen: dict[str, str] = {}
    for name, table in programs.items():
        line = _line_of(text, name, None)
        if not isinstance(table, dict):
            raise ConfigError(path, line, f"programs.{name} must be a table")

        def fail(key: str | None, message: str, name: str = name) -> ConfigError:
            return ConfigError(path, _line_of(text, name, key), f"programs.{name}"
                               f"{'.' + key if key else ''}: {message}")

        for key in table:
            if key not in SPEC_KEYS and key not in PROGRAM_KEYS:
                known = ", ".join(sorted(SPEC_KEYS | PROGRAM_KEYS))
                raise fail(key, f"unknown key (known: {known})")
        for process in _processes(name, table, fail, f"{path}:{line or 0}"):
            if process.name in seen:
                raise fail(None, f"process name {process.name!r} is also made by "
                           f"programs.{seen[process.name]}")
            seen[process.name] = name
            desired.processes.append(process)
    return desired


def _daemon_settings(path: str, text: str, table: object, desired: Desired) -> None:
    """The ``[supervisord]`` table: the daemon's settings (:mod:`supervisor.limits`), read at
    start only; any other key is an error."""
    if not isinstance(table, dict):
        raise ConfigError(path, _top_line(text, "supervisord"), "'supervisord' must be a table")
    keys = {s.key: s for s in SETTINGS}
    for key, value in table.items():
        line = _line_in(text, _DAEMON_TABLE, key) or _top_line(text, "supervisord")
        setting = keys.get(key)
        if setting is None:
            raise ConfigError(path, line, f"supervisord.{key}: unknown key (known: "
                              f"{', '.join(sorted(keys))})")
        try:
            checked = check(setting, value)
        except ValueError as exc:
            raise ConfigError(path, line, f"supervisord.{key}: {exc}") from None
        desired.daemon[key] = (checked, f"{path}:{line or 0}: supervisord.{key}")


def _top_line(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines()):
        if re.match(r"^\s*\[?\s*" + re.escape(key) + r"\b", line):
            return i + 1
    return None


def _processes(name: str, table: dict[str, Any], fail: Callable[..., ConfigError],
               where: str) -> list[Process]:
    spec: dict[str, Any] = {k: v for k, v in table.items() if k in SPEC_KEYS}
    if "command" not in spec:
        raise fail(None, "has no command")
    command = spec["command"]
    if isinstance(command, str):
        try:
            command = shlex.split(command)
        except ValueError as exc:
            raise fail("command", str(exc)) from None
    if (not isinstance(command, list) or not command
            or not all(isinstance(a, str) for a in command)):
        raise fail("command", "must be a non-empty list of strings or a command line")
    spec["command"] = command
    for key in ("env", "labels"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, dict) or not all(
                isinstance(v, str) for v in value.values())):
            raise fail(key, "must be a table of strings")
    if "memory" in spec:
        try:
            spec["memory"] = _size(spec["memory"])
        except ValueError as exc:
            raise fail("memory", str(exc)) from None
    if "stop_signal" in spec:
        from events.signals import InvalidSignal, parse_signal

        try:
            spec["stop_signal"] = parse_signal(spec["stop_signal"])
        except InvalidSignal as exc:
            raise fail("stop_signal", str(exc)) from None
    if "restart" in spec:
        from events.policy import restart_spec

        try:
            spec["restart"] = dict(restart_spec(spec["restart"]))
        except ValueError as exc:
            raise fail("restart", str(exc)) from None
    if isinstance(spec.get("user"), str | int):
        from supervisor.config_supervisor import _user

        try:
            spec["user"] = _user(str(spec["user"]))
        except ValueError as exc:
            raise fail("user", str(exc)) from None

    def integer(key: str, default: int, minimum: int | None = None) -> int:
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or (
                minimum is not None and value < minimum):
            least = f" >= {minimum}" if minimum is not None else ""
            raise fail(key, f"must be a whole number{least}, got {value!r}")
        return value

    def boolean(key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise fail(key, f"must be true or false, got {value!r}")
        return value

    numprocs = integer("numprocs", 1, 1)
    if numprocs > MAX_NUMPROCS:
        raise fail("numprocs", f"must be at most {MAX_NUMPROCS}, got {numprocs}")
    priority = integer("priority", DEFAULT_PRIORITY)

    def duration(key: str, default: float) -> float:
        """TOML has inf and nan: every duration is bounded here (events.policy.seconds), with
        its line."""
        from events.policy import seconds

        try:
            return seconds(table.get(key, default), "the value")
        except ValueError as exc:
            raise fail(key, str(exc)) from None

    startsecs = duration("startsecs", DEFAULT_STARTSECS)
    if "stop_timeout" in spec:
        spec["stop_timeout"] = duration("stop_timeout", 0.0)
    group = table.get("group", name)
    if not isinstance(group, str) or not group or ":" in group:
        raise fail("group", f"must be a name without ':', got {group!r}")
    out = []
    for num in range(numprocs):
        pname = name if numprocs == 1 else f"{name}_{num:02d}"
        try:
            validate_id(pname)
        except InvalidId as exc:
            raise fail(None, f"the process name cannot be a container id: {exc}") from None
        out.append(Process(
            name=pname, program=name, group=group, spec=spec, process_num=num,
            numprocs=numprocs, priority=priority, group_priority=priority,
            autostart=boolean("autostart", True), startsecs=float(startsecs),
            redirect_stderr=boolean("redirect_stderr", False),
            stop_as_group=boolean("stop_as_group", False),
            kill_as_group=boolean("stop_as_group", False), where=where))
    return out
