"""Supervisor's view of Tether's containers: names, groups, process states, process info.

Pure functions of a container record (the projection's map), the state ``ps`` shows for it, and
the time: the XML-RPC interface, ``supervisorctl status`` and the tests all use them.

Names: a container made from a program file is process ``name`` of group ``group`` (its labels,
:mod:`supervisor.programs`); any other container (made by ``run``) is its own group, as a
single program is in Supervisor. Supervisor's *namespec* is ``group:name``, or just ``name``
when the two are equal.

States (:func:`state_code`), Supervisor's from Tether's, one table:

==============================================  ============
Tether                                          Supervisor
==============================================  ============
``unknown`` (not reconciled yet)                UNKNOWN
``created``, never started                      STOPPED ("Not started")
``created``, a new task of a restart            STARTING
``running``, up less than ``startsecs``         STARTING
``running``                                     RUNNING
``restarting`` (waiting out its back-off)       BACKOFF
``stopped``, given up                           FATAL
``stopped``, its command could not run          FATAL
``stopped`` by hand (``stop``)                  STOPPED
``stopped`` (exited by itself)                  EXITED
==============================================  ============
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from supervisor import programs as P

__all__ = [
    "RUNNING_STATES",
    "SIGNALLABLE_STATES",
    "STATE_NAMES",
    "STOPPED_STATES",
    "config_info",
    "identity",
    "namespec",
    "process_info",
    "split_namespec",
    "state_code",
]

STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL, UNKNOWN = (
    0, 10, 20, 30, 40, 100, 200, 1000)
STATE_NAMES = {STOPPED: "STOPPED", STARTING: "STARTING", RUNNING: "RUNNING",
               BACKOFF: "BACKOFF", STOPPING: "STOPPING", EXITED: "EXITED", FATAL: "FATAL",
               UNKNOWN: "UNKNOWN"}
STOPPED_STATES = frozenset({STOPPED, EXITED, FATAL, UNKNOWN})
RUNNING_STATES = frozenset({RUNNING, BACKOFF, STARTING})
SIGNALLABLE_STATES = frozenset({RUNNING, STARTING, STOPPING})

#: Keys the projection may use for the supervision flags of docs/design.md section 8.
_STOPPED_BY_HAND = ("stopped_by_user", "stopped_by_hand")
_GAVE_UP = ("gave_up", "given_up")

_NS = 1_000_000_000


def namespec(group: str, name: str) -> str:
    return name if group == name else f"{group}:{name}"


def split_namespec(spec: str) -> tuple[str, str | None]:
    """Supervisor's: ``group:name`` -> (group, name); ``group:*`` or ``group:`` -> (group,
    None); ``name`` -> (name, name)."""
    group, sep, name = spec.partition(":")
    if not sep:
        return spec, spec
    return group, (name if name and name != "*" else None)


def identity(c: Mapping[str, Any]) -> tuple[str, str]:
    """``(group, name)`` of a container."""
    if P.is_program(c):
        return P.label(c, P.GROUP) or c["id"], c["id"]
    return c["id"], c["id"]


def startsecs(c: Mapping[str, Any]) -> float:
    try:
        return float(P.label(c, P.STARTSECS) or 0)
    except ValueError:
        return 0.0


def _flag(c: Mapping[str, Any], keys: Iterable[str]) -> bool:
    return any(c.get(k) is True for k in keys)


def state_code(c: Mapping[str, Any], shown: str, now_ns: int,
               stopped_by_hand: bool = False) -> int:
    """Supervisor's state of a container (see the module's table). ``shown`` is the state
    ``ps`` shows (``unknown`` before reconciliation); ``stopped_by_hand`` adds what the caller
    knows beyond the record."""
    if shown == "unknown":
        return UNKNOWN
    state = c.get("state")
    if state == "created":
        return STARTING if c.get("restarts") else STOPPED
    if state == "running":
        started = c.get("started") or now_ns
        return STARTING if (now_ns - started) / _NS < startsecs(c) else RUNNING
    if state == "restarting":
        return BACKOFF
    if state == "stopped":
        if _flag(c, _GAVE_UP):
            return FATAL
        if stopped_by_hand or _flag(c, _STOPPED_BY_HAND):
            return STOPPED
        if c.get("started") is None and c.get("exit_status") == 127:
            return FATAL  # the command could not be executed: Supervisor's spawn error
        return EXITED
    return UNKNOWN


def _seconds(ns: object) -> int:
    return int(ns) // _NS if isinstance(ns, int) and not isinstance(ns, bool) else 0


def uptime(seconds: int) -> str:
    """``str(datetime.timedelta(seconds=seconds))`` (Supervisor's uptime) without importing
    :mod:`datetime` at the early server's first answer."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    text = f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{days} day{'' if days == 1 else 's'}, {text}" if days else text


def describe(state: int, info: Mapping[str, Any]) -> str:
    """Supervisor's ``description`` of a process (what ``status`` prints after the state)."""
    if state == RUNNING:
        return f"pid {info['pid']}, uptime {uptime(max(0, info['now'] - info['start']))}"
    if state in (FATAL, BACKOFF):
        return info["spawnerr"] or f'unknown error (try "tail {info["name"]}")'
    if state in (STOPPED, EXITED):
        if info["start"]:
            return time.strftime("%b %d %I:%M %p", time.localtime(info["stop"]))
        return "Not started"
    return ""


def process_info(c: Mapping[str, Any], shown: str, now_ns: int, log_path: str = "",
                 stopped_by_hand: bool = False) -> dict[str, Any]:
    """Supervisor's process info struct (``getProcessInfo``) of one container."""
    group, name = identity(c)
    code = state_code(c, shown, now_ns, stopped_by_hand)
    spawnerr = ""
    if code == BACKOFF:
        spawnerr = "Exited too quickly (process log may have details)"
    elif code == FATAL:
        spawnerr = (c.get("exit_reason") or
                    ("spawn error: the command could not be executed" if c.get("started") is None
                     else "Exited too quickly (process log may have details)"))
    running = c.get("state") == "running"
    redirect = P.label(c, P.REDIRECT_STDERR) == "true"
    info: dict[str, Any] = {
        "name": name,
        "group": group,
        "start": _seconds(c.get("started")),
        "stop": _seconds(c.get("finished")),
        "now": now_ns // _NS,
        "state": code,
        "statename": STATE_NAMES[code],
        "spawnerr": spawnerr,
        "exitstatus": int(c.get("exit_status") or 0),
        "logfile": log_path,
        "stdout_logfile": log_path,
        "stderr_logfile": "" if redirect else log_path,
        "pid": int(c.get("pid") or 0) if running else 0,
    }
    info["description"] = describe(code, info)
    return info


def sort_key(c: Mapping[str, Any]) -> tuple[int, int, str]:
    """Supervisor's start order: group priority, process priority, name."""
    def number(key: str) -> int:
        try:
            return int(P.label(c, key) or P.DEFAULT_PRIORITY)
        except ValueError:
            return P.DEFAULT_PRIORITY

    return number(P.GROUP_PRIORITY), number(P.PRIORITY), c["id"]


def config_info(p: P.Process, inuse: bool) -> dict[str, Any]:
    """Supervisor's ``getAllConfigInfo`` struct of one configured process."""
    spec = p.spec
    restart = spec.get("restart") or {}
    autorestart = {"always": True, "unless-stopped": True, "on-failure": "unexpected",
                   "no": False}.get(restart.get("policy", "no"), False)
    user = spec.get("user") or {}
    return {
        "name": p.name, "group": p.group, "inuse": inuse, "autostart": p.autostart,
        "autorestart": autorestart,
        "command": " ".join(spec.get("command") or []), "directory": spec.get("cwd") or "none",
        "uid": user.get("uid", "none") if isinstance(user, dict) else "none",
        "exitcodes": list(restart.get("exit_codes") or [0]),
        "group_prio": p.group_priority, "process_prio": p.priority,
        "killasgroup": p.kill_as_group, "stopasgroup": p.stop_as_group,
        "redirect_stderr": p.redirect_stderr,
        "startretries": restart.get("max_retries") if restart.get("max_retries") is not None
        else 0,
        "startsecs": int(p.startsecs),
        "stopsignal": int(spec.get("stop_signal") or 15),
        "stopwaitsecs": int(spec.get("stop_timeout") or 10),
        "stdout_logfile": "auto", "stderr_logfile": "auto",
        "stdout_logfile_backups": int(spec.get("log_keep") or 3),
        "stdout_logfile_maxbytes": int(spec.get("log_max_size") or 16 * 2**20),
        "stderr_logfile_backups": int(spec.get("log_keep") or 3),
        "stderr_logfile_maxbytes": int(spec.get("log_max_size") or 16 * 2**20),
        "stdout_capture_maxbytes": 0, "stderr_capture_maxbytes": 0,
        "stdout_events_enabled": False, "stderr_events_enabled": False,
        "stdout_syslog": False, "stderr_syslog": False, "serverurl": "AUTO",
    }
