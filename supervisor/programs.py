"""Declarative programs: the desired state a file describes, and the plan that reaches it.

A *program* is what ``[programs.NAME]`` (Tether's TOML) or ``[program:NAME]`` (a
``supervisord.conf``) describes; ``numprocs`` makes several *processes* of it, and each process
is one container whose id is the process name (``web``, or ``worker_00``, ``worker_01``: the
``process_name`` Supervisor would give them). Everything Supervisor's interface needs to know
about a process beyond its spec (program, group, priority, autostart, startsecs, ...) travels
in the container's labels (:data:`LABEL_PREFIX`), so the desired state is durable exactly where
every other fact is: in ``container.create``. A digest of the process's settings
(:data:`DIGEST`) lets a second apply of the same file find nothing to do and append nothing.

:func:`plan` is pure: the desired processes and the projection's containers in, the changes
out. The daemon (:mod:`supervisor.apply`) carries them out; ``--dry-run`` prints them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DIGEST",
    "LABEL_PREFIX",
    "ConfigError",
    "Desired",
    "Plan",
    "Process",
    "from_wire",
    "is_program",
    "label",
    "plan",
]

#: Labels of a container made from a program file (all values are strings).
LABEL_PREFIX = "tether.program."
PROGRAM = LABEL_PREFIX + "name"           # [program:x] name
GROUP = LABEL_PREFIX + "group"            # Supervisor's group (the program, or [group:x])
PROCESS_NUM = LABEL_PREFIX + "process_num"
NUMPROCS = LABEL_PREFIX + "numprocs"
PRIORITY = LABEL_PREFIX + "priority"
GROUP_PRIORITY = LABEL_PREFIX + "group_priority"
AUTOSTART = LABEL_PREFIX + "autostart"
STARTSECS = LABEL_PREFIX + "startsecs"
REDIRECT_STDERR = LABEL_PREFIX + "redirect_stderr"
STOP_AS_GROUP = LABEL_PREFIX + "stopasgroup"
KILL_AS_GROUP = LABEL_PREFIX + "killasgroup"
SOURCE = LABEL_PREFIX + "source"          # the file it was applied from (informational)
DIGEST = LABEL_PREFIX + "digest"          # of everything above except the source, and the spec

#: Supervisor's defaults where a file says nothing.
DEFAULT_PRIORITY = 999
DEFAULT_STARTSECS = 1.0
#: The most processes one program may ask for (numprocs): far above real use, low enough that a
#: typo (numprocs=1000000000) is an error, not a daemon that builds a billion specs.
MAX_NUMPROCS = 10_000


class ConfigError(ValueError):
    """A file that cannot be applied: the message names the file, the line and the key."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True)
class Process:
    """One process of a program: one container. ``spec`` is the API spec without labels."""

    name: str                       # the container id, Supervisor's process name
    program: str
    group: str
    spec: Mapping[str, Any]
    process_num: int = 0
    numprocs: int = 1
    priority: int = DEFAULT_PRIORITY
    group_priority: int = DEFAULT_PRIORITY
    autostart: bool = True
    startsecs: float = DEFAULT_STARTSECS
    redirect_stderr: bool = False
    stop_as_group: bool = False
    kill_as_group: bool = False
    where: str = ""                 # "file:line" of its section, for messages

    def labels(self) -> dict[str, str]:
        """What the container's labels say about it, digest excluded."""
        return {
            PROGRAM: self.program, GROUP: self.group, PROCESS_NUM: str(self.process_num),
            NUMPROCS: str(self.numprocs), PRIORITY: str(self.priority),
            GROUP_PRIORITY: str(self.group_priority), AUTOSTART: _flag(self.autostart),
            STARTSECS: f"{self.startsecs:g}", REDIRECT_STDERR: _flag(self.redirect_stderr),
            STOP_AS_GROUP: _flag(self.stop_as_group), KILL_AS_GROUP: _flag(self.kill_as_group),
        }

    def digest(self) -> str:
        """A digest of every setting (the spec and the labels, not the source file): equal
        digests mean nothing to do."""
        spec = {k: v for k, v in self.spec.items() if k != "labels"}
        user_labels = dict(self.spec.get("labels") or {})
        blob = json.dumps({"spec": spec, "user_labels": user_labels, "labels": self.labels()},
                          sort_keys=True, separators=(",", ":"), default=str)
        import hashlib  # ~4 ms (OpenSSL): not before the early server's first answer

        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def container_spec(self, source: str) -> dict[str, Any]:
        """The spec sent to ``create``: the process's spec, its name, its labels."""
        labels = {**dict(self.spec.get("labels") or {}), **self.labels(),
                  SOURCE: source, DIGEST: self.digest()}
        return {**self.spec, "name": self.name, "labels": labels}

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "program": self.program, "group": self.group,
                "spec": dict(self.spec), "process_num": self.process_num,
                "numprocs": self.numprocs, "priority": self.priority,
                "group_priority": self.group_priority, "autostart": self.autostart,
                "startsecs": self.startsecs, "redirect_stderr": self.redirect_stderr,
                "stop_as_group": self.stop_as_group, "kill_as_group": self.kill_as_group,
                "where": self.where}


def _flag(value: bool) -> str:
    return "true" if value else "false"


def from_wire(obj: object) -> Process:
    """A :class:`Process` from the ``apply`` method's params; ValueError naming what is wrong
    (the daemon checks what any client sends, not only supervisorctl)."""
    if not isinstance(obj, dict):
        raise ValueError("each program must be a map")
    def word(key: str, default: object) -> str:
        value = obj.get(key, default)
        if not isinstance(value, str) or not value or ":" in value:
            raise ValueError(f"program {key} must be a non-empty string without ':', "
                             f"got {value!r}")
        return value

    name = word("name", None)
    program = word("program", name)
    group = word("group", program)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ValueError(f"program {name}: spec must be a map")

    def integer(key: str, default: int) -> int:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"program {name}: {key} must be a whole number, got {value!r}")
        return value

    def boolean(key: str, default: bool) -> bool:
        value = obj.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"program {name}: {key} must be true or false, got {value!r}")
        return value

    startsecs = obj.get("startsecs", DEFAULT_STARTSECS)
    if isinstance(startsecs, bool) or not isinstance(startsecs, int | float) or not (
            0 <= startsecs <= 7 * 24 * 3600):
        raise ValueError(f"program {name}: startsecs must be a number of seconds, "
                         f"got {startsecs!r}")
    where = obj.get("where", "")
    return Process(
        name=name, program=program, group=group, spec=spec,
        process_num=integer("process_num", 0), numprocs=integer("numprocs", 1),
        priority=integer("priority", DEFAULT_PRIORITY),
        group_priority=integer("group_priority", DEFAULT_PRIORITY),
        autostart=boolean("autostart", True), startsecs=float(startsecs),
        redirect_stderr=boolean("redirect_stderr", False),
        stop_as_group=boolean("stop_as_group", False),
        kill_as_group=boolean("kill_as_group", False),
        where=where if isinstance(where, str) else "")


@dataclass
class Desired:
    """What a file asks for: its processes (in file order) and what was noted on the way
    (sections and keys accepted without effect)."""

    source: str
    processes: list[Process] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the daemon's settings the file gives (:mod:`supervisor.limits`): setting key ->
    #: (its value, checked; where it was: ``PATH:LINE: key``), read at start only
    daemon: dict[str, tuple[float, str]] = field(default_factory=dict)

    def start_order(self) -> list[Process]:
        """Supervisor's start order: group priority, then process priority, then name."""
        return sorted(self.processes, key=lambda p: (p.group_priority, p.priority, p.name))


def label(c: Mapping[str, Any], key: str, default: str = "") -> str:
    """One of a container's labels (from its spec)."""
    labels = (c.get("spec") or {}).get("labels") or {}
    value = labels.get(key, default)
    return value if isinstance(value, str) else default


def is_program(c: Mapping[str, Any]) -> bool:
    """Was this container made from a program file (not by ``run``/``create``)?"""
    return bool(label(c, PROGRAM))


@dataclass
class Plan:
    """The changes that make the containers match a file.

    ``create``: new processes; ``replace``: processes whose settings changed (stopped, removed,
    created again); ``remove``: program containers the file no longer has (only with prune);
    ``keep``: unchanged; ``orphans``: program containers the file no longer has, left alone
    because prune was not asked for; ``conflicts``: ids the file wants that a container made by
    ``run`` already has (the whole apply is refused).
    """

    create: list[Process] = field(default_factory=list)
    replace: list[tuple[Process, list[str]]] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.replace or self.remove)

    def lines(self) -> list[str]:
        """One human line per change, in the order they are carried out."""
        out = [f"{cid}: remove" for cid in self.remove]
        out += [f"{p.name}: replace ({', '.join(why)} changed)" for p, why in self.replace]
        out += [f"{p.name}: create{'' if p.autostart else ' (autostart=false: not started)'}"
                for p in self.create]
        out += [f"{cid}: not in the file (kept; --prune removes it)" for cid in self.orphans]
        return out

    def to_wire(self) -> dict[str, Any]:
        return {"create": [p.name for p in self.create],
                "replace": [{"id": p.name, "changed": why} for p, why in self.replace],
                "remove": list(self.remove), "keep": list(self.keep),
                "orphans": list(self.orphans), "lines": self.lines()}

    def groups(self, containers: Mapping[str, Mapping[str, Any]], desired: Iterable[Process]
               ) -> tuple[list[str], list[str], list[str]]:
        """Supervisor's ``reread`` view: groups ``(added, changed, removed)``."""
        wanted_groups = {p.group for p in desired}
        current_groups = {label(c, GROUP) for c in containers.values() if is_program(c)}
        touched = ({p.group for p in self.create} | {p.group for p, _ in self.replace}
                   | {label(containers[cid], GROUP) for cid in [*self.remove, *self.orphans]
                      if cid in containers})
        added = sorted(wanted_groups - current_groups)
        removed = sorted(current_groups - wanted_groups)
        changed = sorted(touched & wanted_groups & current_groups)
        return added, changed, removed


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Which settings differ between a container's stored spec and the new one."""
    out = []
    old_labels = dict(old.get("labels") or {})
    new_labels = dict(new.get("labels") or {})
    for key in sorted(set(old) | set(new)):
        if key in ("labels", "name"):
            continue
        if old.get(key) != new.get(key):
            out.append(key)
    for key in sorted(set(old_labels) | set(new_labels)):
        if key in (DIGEST, SOURCE):
            continue
        if old_labels.get(key) != new_labels.get(key):
            out.append(key[len(LABEL_PREFIX):] if key.startswith(LABEL_PREFIX) else
                       f"label {key}")
    return out or ["settings"]


def plan(desired: Iterable[Process], containers: Mapping[str, Mapping[str, Any]],
         prune: bool, normalise: Any = None) -> Plan:
    """The changes that make ``containers`` (the projection's map) match ``desired``.

    ``normalise(spec) -> spec`` (the daemon's spec validation) makes the comparison of stored
    and new specs field by field meaningful; the decision itself is by digest.
    """
    result = Plan()
    wanted: dict[str, Process] = {}
    for p in desired:
        wanted[p.name] = p
    for name, p in wanted.items():
        c = containers.get(name)
        if c is None:
            result.create.append(p)
            continue
        if not is_program(c):
            result.conflicts.append(name)
            continue
        if label(c, DIGEST) == p.digest():
            result.keep.append(name)
            continue
        new_spec = p.container_spec(label(c, SOURCE))
        old_spec = c.get("spec") or {}
        if normalise is not None:
            new_spec = normalise(new_spec)
        result.replace.append((p, _changed_fields(old_spec, new_spec)))
    gone = sorted(cid for cid, c in containers.items() if is_program(c) and cid not in wanted)
    if prune:
        # stop order: the reverse of the start order
        gone.sort(key=lambda cid: (-_int(label(containers[cid], GROUP_PRIORITY)),
                                   -_int(label(containers[cid], PRIORITY)), cid))
        result.remove = gone
    else:
        result.orphans = gone
    order = {p.name: (p.group_priority, p.priority, p.name) for p in wanted.values()}
    result.create.sort(key=lambda p: order[p.name])
    result.replace.sort(key=lambda item: order[item[0].name])
    return result


def _int(text: str, default: int = DEFAULT_PRIORITY) -> int:
    try:
        return int(text)
    except ValueError:
        return default
