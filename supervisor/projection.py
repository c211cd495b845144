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
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from events.domain import ContainerState, EventType, HealthStatus, known
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
    oom: int = 0
    #: the shim of the current task was lost (``shim.lost``); its task is watched by pid
    lost: bool = False
    #: the lost task's start time (with its pid, its identity: pids are reused)
    lost_starttime: int | None = None
    #: instance -> the highest ``shim_seq`` applied (the deduplication of shim events)
    seen: Mapping[str, int] = field(default_factory=dict)
    #: the kernel's boot id when the current task was created (a reboot ends every task)
    boot_id: str | None = None
    #: a ``stop`` or ``rm`` was recorded: no policy restart follows (until a start by command)
    stopped_by_user: bool = False
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
    return _duplicate(state.containers.get(event_id), data)


def _duplicate(c: Container | None, data: Mapping[str, Any]) -> bool:
    shim_seq = data.get("shim_seq")
    instance = data.get("instance")
    if c is None or not isinstance(shim_seq, int) or not isinstance(instance, str):
        return False
    return shim_seq <= c.seen.get(instance, 0)


def _next(old: Container | None, event: Event) -> tuple[Container | None, str | None]:
    """The container after ``event``: ``(record, None)`` (None: deleted), or ``(old, reason)``
    when the event is skipped."""
    etype = event.type
    if not known(EventType, etype):
        return old, f"unknown event type {etype!r}"
    if not event.id:
        return old, f"{etype} without a container id"
    if _duplicate(old, event.data):
        return old, (f"duplicate shim event (instance {event.data.get('instance')}, "
                     f"shim_seq {event.data.get('shim_seq')})")
    current = None if old is None else old.state
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
        return _annotate(old, target, event), None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # a record of the right type but the wrong shape (a buggy or foreign writer): history
        # is history, so it is skipped like an illegal transition, never a crash
        return old, f"{etype} with malformed data: {exc!r}"


def _annotate(old: Container | None, target: ContainerState, event: Event) -> Container:
    """The container after an accepted event: ``target`` state plus what the event tells."""
    d = event.data
    etype = event.type
    if old is None:  # container.create
        spec = dict(d.get("spec", d))
        return Container(id=event.id, state=target, spec=spec,  # type: ignore[arg-type]
                         runtime=spec.get("runtime", "process"), created=event.time,
                         create_seq=event.seq)
    changes: dict[str, Any] = {"state": target}
    instance = d.get("instance")
    shim_seq = d.get("shim_seq")
    if isinstance(instance, str) and isinstance(shim_seq, int):
        changes["seen"] = {**old.seen, instance: max(shim_seq, old.seen.get(instance, 0))}
    if etype == EventType.TASK_CREATE:
        if old.instance is None and isinstance(d.get("created_at"), int):
            changes["created"] = d["created_at"]  # the first task: the shim's clock
        changes.update(pid=d.get("pid"), shim_pid=d.get("shim_pid", old.shim_pid),
                       address=d.get("address", old.address),
                       instance=instance if isinstance(instance, str) else old.instance,
                       started=None, finished=None, exit_status=None, signal=None,
                       exit_reason=None, lost=False, lost_starttime=None,
                       boot_id=d.get("boot_id"), gave_up=False, start_at=None,
                       autostart=bool(d.get("start")), health=None, failing_streak=0)
        if old.state == STOPPED:  # a start by command: the stop by hand is over
            changes["stopped_by_user"] = False
    elif etype == EventType.TASK_START:
        changes["pid"] = d.get("pid", old.pid)
        # the shim's clock when present: exited_at is the shim's too, so the times of a
        # container that exits at once still read created <= started <= finished
        started_at = d.get("started_at")
        changes["started"] = started_at if isinstance(started_at, int) else event.time
        changes["autostart"] = False
        if old.spec.get("health"):
            changes["health"] = HealthStatus.STARTING
    elif etype == EventType.TASK_EXIT:
        changes.update(exit_status=d.get("exit_status"), signal=d.get("signal"),
                       finished=d.get("exited_at") or event.time, exit_reason=d.get("reason"),
                       autostart=False)
    elif etype == EventType.CONTAINER_RESTART:
        by = d.get("by")
        changes.update(restarts=old.restarts + 1, attempt=int(d.get("attempt") or 0),
                       start_at=d.get("start_at"), restart_by=by,
                       restart_reason=d.get("reason"))
        if by == "user":
            changes.update(stopped_by_user=False, gave_up=False)
    elif etype == EventType.CONTAINER_STOP:
        changes.update(stopped_by_user=True, start_at=None)
    elif etype == EventType.CONTAINER_GIVEUP:
        changes.update(gave_up=True, start_at=None, restart_by=d.get("by"),
                       restart_reason=d.get("reason"))
    elif etype == EventType.CONTAINER_HEALTH:
        changes.update(health=HealthStatus(d["status"]),
                       failing_streak=int(d.get("failing_streak") or 0))
    elif etype == EventType.CONTAINER_UPDATE:
        changes["spec"] = {**old.spec, **d.get("spec", {})}
    elif etype == EventType.TASK_OOM:
        changes["oom"] = old.oom + 1
    elif etype == EventType.SHIM_LOST:
        changes.update(lost=True, lost_starttime=d.get("task_starttime"))
    return old.evolve(**changes)


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
