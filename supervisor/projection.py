"""The daemon's state as a pure fold over the event log: ``state = fold(apply, events)``.

Nothing here does I/O, reads a clock or logs: :func:`step` takes a state and an event and
returns the next state plus, when the event was skipped, the reason. That is what makes
recovery trustworthy (snapshot + replay gives exactly the state the daemon had) and what lets
the tests check the lifecycle without a process.

The container lifecycle is ONE table, :data:`TRANSITIONS`: ``(state, event type) -> state``.
An event whose type changes the lifecycle but whose transition is not in the table is skipped
with a reason (the daemon logs it); it never crashes the fold, because the log is history and a
daemon that cannot replay its own history cannot start. Unknown event types are skipped too.

Shim events carry ``data.instance`` and ``data.shim_seq``; the projection remembers, per
container, the highest ``shim_seq`` seen of each instance, so a shim event delivered twice
(the shim re-sends everything not acknowledged, and recovery reads exit files) is appended and
applied once.

A container is a :class:`Container`, a frozen record: the previous state stays valid when the
next is made, so callers may keep it (a snapshot is serialised from a thread while the daemon
goes on, and ``ps`` never sees half an update). A snapshot is ``msgpack(state.to_dict())``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from events.domain import ContainerState, EventType, HealthStatus
from events.model import Event

if TYPE_CHECKING:
    from supervisor.spec import Spec

__all__ = [
    "LIFECYCLE_TYPES",
    "TRANSITIONS",
    "Container",
    "Folder",
    "State",
    "apply",
    "fold",
    "is_duplicate",
    "step",
]

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
RESTARTING = ContainerState.RESTARTING
STOPPED = ContainerState.STOPPED

#: The lifecycle of a container (docs/design.md, section 8). ``None`` is "no such container"
#: (never created, or deleted: ``rm`` frees the id).
TRANSITIONS: dict[tuple[ContainerState | None, str], ContainerState | None] = {
    (None, EventType.CONTAINER_CREATE): CREATED,
    (CREATED, EventType.TASK_CREATE): CREATED,     # the first task, with the create
    (STOPPED, EventType.TASK_CREATE): CREATED,     # start or restart by command: a new shim
    (RESTARTING, EventType.TASK_CREATE): CREATED,  # a restart decided before, carried out
    (CREATED, EventType.TASK_START): RUNNING,
    (CREATED, EventType.TASK_EXIT): STOPPED,       # killed before start, or exec failed (127)
    (RUNNING, EventType.TASK_EXIT): STOPPED,
    (STOPPED, EventType.TASK_DELETE): STOPPED,
    (STOPPED, EventType.CONTAINER_RESTART): RESTARTING,  # a restart is decided: the back-off
    # a stop by hand is durable and final: recorded before the stop begins (it changes no
    # state but "stopped by hand"), and during a back-off it cancels the restart
    (CREATED, EventType.CONTAINER_STOP): CREATED,
    (RUNNING, EventType.CONTAINER_STOP): RUNNING,
    (STOPPED, EventType.CONTAINER_STOP): STOPPED,
    (RESTARTING, EventType.CONTAINER_STOP): STOPPED,
    (STOPPED, EventType.CONTAINER_GIVEUP): STOPPED,
    (RESTARTING, EventType.CONTAINER_GIVEUP): STOPPED,  # the daemon could not start the task
    (CREATED, EventType.CONTAINER_DELETE): None,
    (STOPPED, EventType.CONTAINER_DELETE): None,
}

#: Types that move a container through :data:`TRANSITIONS`; other types only annotate it.
LIFECYCLE_TYPES = frozenset(t for _, t in TRANSITIONS)

_ANY = frozenset({CREATED, RUNNING, RESTARTING, STOPPED})
#: Container types that annotate without moving the lifecycle, and the states they are legal in.
ANNOTATIONS: dict[str, frozenset[ContainerState]] = {
    EventType.CONTAINER_UPDATE: _ANY,
    EventType.CONTAINER_HEALTH: _ANY,
    EventType.TASK_OOM: _ANY,
    EventType.SHIM_LOST: _ANY,
    # stopped too: the shim may deliver an exec's start after the init's exit (they raced)
    EventType.TASK_EXEC_START: frozenset({RUNNING, STOPPED}),
    EventType.TASK_EXEC_EXIT: frozenset({RUNNING, STOPPED}),
}

#: The daemon's own events, and the key under which :attr:`State.daemon` keeps the latest.
_DAEMON_TYPES: dict[str, str] = {EventType.SUPERVISOR_START: "start",
                                 EventType.SUPERVISOR_STOP: "stop"}


@dataclass(frozen=True)
class Container(Mapping[str, Any]):
    """One container as the log tells it. Times are unix nanoseconds (the shim's clock for what
    the shim saw); ``instance`` names the shim of the current task.

    The daemon reads its fields as attributes; it is also a read-only mapping of the same
    fields (``c["state"]``, ``c.get("restarts")``) for code that treats records generically
    (Supervisor's view of them, :mod:`supervisor.sv_processes`)."""

    id: str
    state: ContainerState
    spec: Spec
    runtime: str
    created: int
    create_seq: int
    started: int | None = None
    finished: int | None = None
    pid: int | None = None
    shim_pid: int | None = None
    address: str | None = None
    instance: str | None = None
    exit_status: int | None = None
    signal: int | None = None
    #: why the exit status is unknown (None when it is known)
    exit_reason: str | None = None
    restarts: int = 0
    #: OOM kills of all tasks; and whether the current task's was one (ps: ``stopped (oom)``)
    oom: int = 0
    oom_killed: bool = False
    #: the shim of the current task was lost (``shim.lost``); its task is watched by pid
    lost: bool = False
    #: the lost task's start time (with its pid, its identity: pids are reused)
    lost_starttime: int | None = None
    #: instance -> the highest ``shim_seq`` applied (the deduplication of shim events)
    seen: Mapping[str, int] = field(default_factory=dict)
    #: the current task's start time (clock ticks since boot, as ``/proc``'s): with ``pid``,
    #: its identity, recorded when the task was created (pids are reused)
    starttime: int | None = None
    #: the kernel's boot id when the current task was created (a reboot ends every task)
    boot_id: str | None = None
    #: a ``stop`` or ``rm`` was recorded: no policy restart follows (until a start by command)
    stopped_by_user: bool = False
    #: the timeout that recorded stop asked for (``rm -f``: 0, SIGKILL at once; None: the
    #: spec's): a stop sent again after a crash is the one the user asked for
    stop_timeout: float | None = None
    #: the policy gave up (``on-failure:MAX``): no policy restart follows (until a new task)
    gave_up: bool = False
    #: restarts in a row, as the latest ``container.restart`` counted them (0: by command)
    attempt: int = 0
    #: when the decided restart's task starts (unix ns; while ``restarting``)
    start_at: int | None = None
    #: who decided the latest restart or give-up (``shim``, ``daemon``, ``user``), and why
    restart_by: str | None = None
    restart_reason: str | None = None
    #: the daemon created this task to carry out a restart: it also starts it (recovery
    #: finishes that start when the daemon died in between)
    autostart: bool = False
    #: the health check's status (None: no check, or no task) and failures in a row
    health: HealthStatus | None = None
    failing_streak: int = 0

    @classmethod
    def new(cls, **fields: Any) -> Container:
        """A new record: the defaults and ``fields``, without the frozen ``__init__``'s one
        ``object.__setattr__`` per field (see :meth:`evolve`)."""
        record = object.__new__(cls)
        object.__setattr__(record, "__dict__", {**_DEFAULTS, **fields})
        return record

    def evolve(self, **changes: Any) -> Container:
        """A copy with ``changes``: what :func:`dataclasses.replace` does, without its
        per-field ``__init__`` and field lookups (a replay makes one copy per event, so the
        copy must cost about what a dict's does)."""
        new = object.__new__(Container)
        object.__setattr__(new, "__dict__", {**self.__dict__, **changes})
        return new

    def __getitem__(self, key: str) -> Any:
        if key not in _FIELDS:
            raise KeyError(key)
        return self.__dict__[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def to_record(self) -> dict[str, Any]:
        """The snapshot's map of this container."""
        return dict(self.__dict__)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Container:
        """From a snapshot's map; fields an older version lacked take their defaults, fields a
        newer one added are dropped (raises ``KeyError``/``ValueError`` for a broken map)."""
        known_fields = {k: v for k, v in record.items() if k in _FIELDS}
        known_fields["state"] = ContainerState(record["state"])
        if record.get("health") is not None:
            known_fields["health"] = HealthStatus(record["health"])
        return cls(**known_fields)


_FIELDS = frozenset(f.name for f in fields(Container))
#: Every field's default (the required ones are always given to :meth:`Container.new`).
_DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not MISSING else f.default
    for f in fields(Container) if f.default is not MISSING or f.default_factory is not MISSING}


@dataclass(frozen=True, slots=True)
class State:
    """Everything the daemon knows: every container not removed, by id."""

    last_seq: int = 0
    containers: Mapping[str, Container] = field(default_factory=dict)
    #: pid/time of the daemon's latest ``supervisor.start`` / ``supervisor.stop`` (for ``info``)
    daemon: Mapping[str, Any] = field(default_factory=dict)

    #: The version of :meth:`to_dict`'s map; :meth:`from_dict` reads this one and older ones
    #: (2: supervision's fields and the ``restarting`` state; 1: containers as plain maps).
    VERSION = 2

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.VERSION, "last_seq": self.last_seq,
                "containers": {cid: c.to_record() for cid, c in self.containers.items()},
                "daemon": dict(self.daemon)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        version = data.get("v")
        if not isinstance(version, int) or not 1 <= version <= cls.VERSION:
            raise ValueError(f"unsupported snapshot state version {version!r}")
        containers = {cid: Container.from_record(c) for cid, c in data["containers"].items()}
        return cls(last_seq=int(data["last_seq"]), containers=containers,
                   daemon=dict(data.get("daemon", {})))


def is_duplicate(state: State, event_id: str, data: Mapping[str, Any]) -> bool:
    """True if a shim event with this ``(instance, shim_seq)`` is already in the log."""
    c = state.containers.get(event_id)
    instance, shim_seq = data.get("instance"), data.get("shim_seq")
    return (c is not None and isinstance(instance, str) and isinstance(shim_seq, int)
            and shim_seq <= c.seen.get(instance, 0))


# The event types as plain strings: a replay compares a million of them (an enum member's
# attribute lookup costs more than the comparison).
_KNOWN_TYPES = frozenset(t.value for t in EventType)
_CREATE = EventType.CONTAINER_CREATE.value
_TASK_CREATE = EventType.TASK_CREATE.value
_TASK_START = EventType.TASK_START.value
_TASK_EXIT = EventType.TASK_EXIT.value
_RESTART = EventType.CONTAINER_RESTART.value
_STOP = EventType.CONTAINER_STOP.value
_GIVEUP = EventType.CONTAINER_GIVEUP.value
_HEALTH = EventType.CONTAINER_HEALTH.value
_UPDATE = EventType.CONTAINER_UPDATE.value
_OOM = EventType.TASK_OOM.value
_LOST = EventType.SHIM_LOST.value
_ADOPT = EventType.CONTAINER_ADOPT.value

#: What a new task resets (``task.create``).
_NEW_TASK = {"started": None, "finished": None, "exit_status": None, "signal": None,
             "exit_reason": None, "lost": False, "lost_starttime": None, "gave_up": False,
             "start_at": None, "health": None, "failing_streak": 0, "oom_killed": False}


def _next(old: Container | None, event: Event) -> tuple[Container | None, str | None]:
    """The container after ``event``: ``(record, None)`` (None: deleted), or ``(old, reason)``
    when the event is skipped."""
    etype = event.type
    if etype not in _KNOWN_TYPES:
        return old, f"unknown event type {etype!r}"
    if not event.id:
        return old, f"{etype} without a container id"
    d = event.data
    instance, shim_seq = d.get("instance"), d.get("shim_seq")
    if not isinstance(instance, str) or not isinstance(shim_seq, int):
        shim_seq = None  # not a shim's event: nothing to deduplicate
    elif old is not None and shim_seq <= old.seen.get(instance, 0):
        return old, f"duplicate shim event (instance {instance}, shim_seq {shim_seq})"
    current = None if old is None else old.state
    if shim_seq is not None and old is not None:
        refused = _refused_from_shim(old, etype, d)
        if refused is not None:
            return old, refused
    if etype == _ADOPT:
        try:
            return _adopted(old, event), None
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            return old, f"{etype} with malformed data: {exc!r}"
    target: ContainerState | None
    if etype in LIFECYCLE_TYPES:
        if (current, etype) not in TRANSITIONS:
            return old, f"illegal transition: {etype} in state {current or 'absent'}"
        target = TRANSITIONS[(current, etype)]
    elif etype in ANNOTATIONS:
        if current not in ANNOTATIONS[etype]:
            return old, f"{etype} in state {current or 'absent'} ignored"
        target = current
    else:
        return old, f"{etype} is not a container event"
    if target is None:
        return None, None
    try:
        if old is None:
            return _created(target, event), None
        changes = _changes(old, etype, d, event.time)
        changes["state"] = target
        if shim_seq is not None:
            changes["seen"] = {**old.seen, instance: shim_seq}
        return old.evolve(**changes), None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # a record of the right type but the wrong shape (a buggy or foreign writer): history
        # is history, so it is skipped like an illegal transition, never a crash
        return old, f"{etype} with malformed data: {exc!r}"


def _refused_from_shim(old: Container, etype: str, d: Mapping[str, Any]) -> str | None:
    """What a shim may not do, whatever the table allows the daemon: create a task other
    than the next one of its own restart (only from ``restarting``), or decide a restart
    after a stop by hand or a give-up (both final)."""
    if etype == _TASK_CREATE and old.state != RESTARTING:
        return f"a shim's task.create in state {old.state} (only a restart's, from restarting)"
    if etype == _RESTART and d.get("by") == "shim" and (old.stopped_by_user or old.gave_up):
        return "a shim's restart after a stop by hand or a give-up (those are final)"
    return None


def _adopted(old: Container | None, event: Event) -> Container:
    """The record of a ``container.adopt``: the container as its live shim described it
    (its ``state`` reply at ``shim_seq``), replacing whatever the log had of its task. What
    the shim cannot know (``restarts`` before the adoption, when it was first created) is
    kept from the old record, or starts here."""
    d = event.data
    status = ContainerState(d["status"])
    if status == ContainerState.UNKNOWN:
        raise ValueError("an adopted container's status cannot be unknown")
    instance, shim_seq = d["instance"], d["shim_seq"]
    if not isinstance(instance, str) or not isinstance(shim_seq, int):
        raise TypeError("container.adopt needs instance (str) and shim_seq (int)")
    spec = dict(d.get("spec") or (old.spec if old is not None else {}))
    if not spec.get("command"):
        raise ValueError("container.adopt without a spec")
    restart = d.get("restart") or {}
    health = d.get("health") or {}
    ended = status in (STOPPED, RESTARTING)
    exit_record = (d.get("exit") or {}) if ended else {}
    started = d.get("started_at") if status != CREATED else None
    fields: dict[str, Any] = {
        "state": status, "spec": spec, "runtime": spec.get("runtime", "process"),
        "instance": instance, "pid": d.get("pid"), "shim_pid": d.get("shim_pid"),
        "address": d.get("address"), "starttime": d.get("starttime"),
        "started": started if isinstance(started, int) else None,
        "finished": exit_record.get("exited_at"), "exit_status": exit_record.get("exit_status"),
        "signal": exit_record.get("signal"), "exit_reason": None, "oom_killed": False,
        "lost": False, "lost_starttime": None, "boot_id": d.get("boot_id"),
        "stopped_by_user": bool(restart.get("final")), "gave_up": bool(restart.get("gave_up")),
        "attempt": int(restart.get("attempt") or 0),
        "start_at": restart.get("start_at") if status == RESTARTING else None,
        "autostart": False,
        "health": HealthStatus(health["status"]) if health.get("status") else None,
        "failing_streak": int(health.get("failing_streak") or 0),
        "seen": {**(old.seen if old is not None else {}),
                 instance: max(shim_seq, old.seen.get(instance, 0) if old is not None else 0)},
    }
    if old is not None:
        return old.evolve(**fields)
    created = d.get("created_at")
    return Container.new(id=event.id, created=created if isinstance(created, int) else event.time,
                         create_seq=event.seq, **fields)


def _created(state: ContainerState, event: Event) -> Container:
    """The record of a ``container.create``."""
    spec = dict(event.data.get("spec", event.data))
    return Container.new(id=event.id, state=state, spec=spec,
                         runtime=spec.get("runtime", "process"), created=event.time,
                         create_seq=event.seq)


def _changes(old: Container, etype: str, d: Mapping[str, Any], time: int) -> dict[str, Any]:
    """What an accepted event tells about its container (besides its state and ``seen``)."""
    if etype == _TASK_CREATE:
        instance = d.get("instance")
        changes = {**_NEW_TASK, "pid": d.get("pid"), "shim_pid": d.get("shim_pid", old.shim_pid),
                   "address": d.get("address", old.address),
                   "instance": instance if isinstance(instance, str) else old.instance,
                   "boot_id": d.get("boot_id"), "autostart": bool(d.get("start")),
                   "starttime": d.get("starttime")}
        if old.instance is None and isinstance(d.get("created_at"), int):
            changes["created"] = d["created_at"]  # the first task: the shim's clock
        if old.state == STOPPED:  # a start by command: the stop by hand is over
            changes["stopped_by_user"] = False
        return changes
    if etype == _TASK_START:
        # the shim's clock when present: exited_at is the shim's too, so the times of a
        # container that exits at once still read created <= started <= finished
        started_at = d.get("started_at")
        changes = {"pid": d.get("pid", old.pid), "autostart": False,
                   "started": started_at if isinstance(started_at, int) else time}
        if old.spec.get("health"):
            changes["health"] = HealthStatus.STARTING
        return changes
    if etype == _TASK_EXIT:
        return {"exit_status": d.get("exit_status"), "signal": d.get("signal"),
                "finished": d.get("exited_at") or time, "exit_reason": d.get("reason"),
                "autostart": False}
    if etype == _RESTART:
        changes = {"restarts": old.restarts + 1, "attempt": int(d.get("attempt") or 0),
                   "start_at": d.get("start_at"), "restart_by": d.get("by"),
                   "restart_reason": d.get("reason")}
        if d.get("by") == "user":
            changes.update(stopped_by_user=False, gave_up=False)
        return changes
    if etype == _STOP:
        timeout = d.get("timeout")
        return {"stopped_by_user": True, "start_at": None,
                "stop_timeout": float(timeout) if isinstance(timeout, int | float)
                and not isinstance(timeout, bool) else None}
    if etype == _GIVEUP:
        return {"gave_up": True, "start_at": None, "restart_by": d.get("by"),
                "restart_reason": d.get("reason")}
    if etype == _HEALTH:
        return {"health": HealthStatus(d["status"]),
                "failing_streak": int(d.get("failing_streak") or 0)}
    if etype == _UPDATE:
        return {"spec": {**old.spec, **d.get("spec", {})}}
    if etype == _OOM:
        return {"oom": old.oom + 1, "oom_killed": True}
    if etype == _LOST:
        return {"lost": True, "lost_starttime": d.get("task_starttime")}
    return {}


class Folder:
    """Applies events one by one to a private copy of a state, then hands the result over.

    The copy is made once (``O(containers)``) however many events follow, so a replay of a
    million events, or one batch of the log writer, is not ``O(containers)`` per event. No one
    sees the intermediate states: :meth:`state` is the only way out, and the folder must not be
    used after it.
    """

    __slots__ = ("containers", "daemon", "last_seq")

    def __init__(self, state: State) -> None:
        self.last_seq = state.last_seq
        self.containers = dict(state.containers)
        self.daemon: Mapping[str, Any] = state.daemon

    def apply(self, event: Event) -> str | None:
        """Apply one event; the reason it was skipped, or None. ``last_seq`` always advances
        (the event *is* in the log, even when it changes nothing)."""
        self.last_seq = event.seq
        which = _DAEMON_TYPES.get(event.type)
        if which is not None:
            self.daemon = {**self.daemon, which: {"time": event.time, **event.data}}
            return None
        old = self.containers.get(event.id)
        new, reason = _next(old, event)
        if reason is None:
            if new is None:
                del self.containers[event.id]
            else:
                self.containers[event.id] = new
        return reason

    def state(self) -> State:
        return State(self.last_seq, self.containers, self.daemon)


def step(state: State, event: Event) -> tuple[State, str | None]:
    """Apply one event; returns ``(new_state, None)`` or ``(state_with_seq, reason_skipped)``.
    ``state`` is left as it was (the containers map is copied only when the event changes it).
    """
    which = _DAEMON_TYPES.get(event.type)
    if which is not None:
        daemon = {**state.daemon, which: {"time": event.time, **event.data}}
        return State(event.seq, state.containers, daemon), None
    new, reason = _next(state.containers.get(event.id), event)
    if reason is not None:
        return State(event.seq, state.containers, state.daemon), reason
    containers = dict(state.containers)
    if new is None:
        del containers[event.id]
    else:
        containers[event.id] = new
    return State(event.seq, containers, state.daemon), None


def apply(state: State, event: Event) -> State:
    """The pure fold function: ``fold(apply, events)`` is the daemon's state."""
    return step(state, event)[0]


def fold(events: Iterable[Event], state: State | None = None) -> State:
    """``fold(apply, events)``, through one :class:`Folder`."""
    folder = Folder(state or State())
    for event in events:
        folder.apply(event)
    return folder.state()
