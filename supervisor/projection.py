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

States are plain dicts and lists so that a snapshot is just ``msgpack(state.to_dict())``.
``apply`` copies only what it changes (the container's map and the top-level dict), so the
previous state stays valid: callers may keep it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from events.model import Event, is_known_type

__all__ = [
    "LIFECYCLE_TYPES",
    "TRANSITIONS",
    "State",
    "apply",
    "fold",
    "is_duplicate",
    "step",
]

#: The lifecycle of a container. ``None`` is "no such container" (never created, or deleted:
#: ``rm`` frees the id). A stopped container gets a new task (``task.create``) on restart.
TRANSITIONS: dict[tuple[str | None, str], str | None] = {
    (None, "container.create"): "created",
    ("created", "task.create"): "created",
    ("stopped", "task.create"): "created",
    ("created", "task.start"): "running",
    ("created", "task.exit"): "stopped",     # killed before start, or exec failed (127)
    ("running", "task.exit"): "stopped",
    ("stopped", "task.delete"): "stopped",
    ("created", "container.delete"): None,
    ("stopped", "container.delete"): None,
}

#: Types that move a container through :data:`TRANSITIONS`; other types only annotate it.
LIFECYCLE_TYPES = frozenset(t for _, t in TRANSITIONS)

#: Container types that annotate without moving the lifecycle, and the states they are legal in.
ANNOTATIONS: dict[str, frozenset[str]] = {
    "container.update": frozenset({"created", "running", "stopped"}),
    "container.restart": frozenset({"created", "running", "stopped"}),
    "task.oom": frozenset({"created", "running", "stopped"}),
    "shim.lost": frozenset({"created", "running", "stopped"}),
    # stopped too: the shim may deliver an exec's start after the init's exit (they raced)
    "task.exec.start": frozenset({"running", "stopped"}),
    "task.exec.exit": frozenset({"running", "stopped"}),
}


@dataclass(frozen=True, slots=True)
class State:
    """Everything the daemon knows: ``containers[id]`` is a map (see :func:`_new_container`)."""

    last_seq: int = 0
    containers: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    #: pid/time of the daemon's latest ``supervisor.start`` (for ``info``).
    daemon: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "last_seq": self.last_seq, "containers": dict(self.containers),
                "daemon": dict(self.daemon)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> State:
        if data.get("v") != 1:
            raise ValueError(f"unsupported snapshot state version {data.get('v')!r}")
        return cls(last_seq=int(data["last_seq"]), containers=dict(data["containers"]),
                   daemon=dict(data.get("daemon", {})))


def _new_container(event: Event) -> dict[str, Any]:
    spec = dict(event.data.get("spec", event.data))
    return {
        "id": event.id,
        "state": "created",
        "spec": spec,
        "runtime": spec.get("runtime", "process"),
        "created": event.time,
        "create_seq": event.seq,
        "started": None,
        "finished": None,
        "pid": None,
        "shim_pid": None,
        "address": None,
        "instance": None,
        "exit_status": None,
        "signal": None,
        "exit_reason": None,
        "restarts": 0,
        "oom": 0,
        "lost": False,
        "seen": {},  # instance -> highest shim_seq appended
    }


def is_duplicate(state: State, event_id: str, data: Mapping[str, Any]) -> bool:
    """True if a shim event with this ``(instance, shim_seq)`` is already in the log."""
    shim_seq = data.get("shim_seq")
    instance = data.get("instance")
    if not isinstance(shim_seq, int) or not isinstance(instance, str):
        return False
    c = state.containers.get(event_id)
    if c is None:
        return False
    return shim_seq <= c["seen"].get(instance, 0)


def step(state: State, event: Event, *, owned: bool = False) -> tuple[State, str | None]:
    """Apply one event; returns ``(new_state, None)`` or ``(state_with_seq, reason_skipped)``.

    ``last_seq`` always advances (the event *is* in the log, even when it changes nothing).
    ``owned=True`` lets the step reuse ``state.containers`` instead of copying it: only for a
    caller that owns that dict and never shows the intermediate states to anyone (replay, or
    one batch of the log writer after one copy), so a 1,000-container replay is not O(n) per
    event. The result is the same either way.
    """
    base = State(event.seq, state.containers, state.daemon)
    etype = event.type
    if etype in ("supervisor.start", "supervisor.stop"):
        daemon = {**state.daemon, etype.split(".")[1]: {"time": event.time, **event.data}}
        return State(event.seq, state.containers, daemon), None
    if not is_known_type(etype):
        return base, f"unknown event type {etype!r}"
    if not event.id:
        return base, f"{etype} without a container id"
    if is_duplicate(state, event.id, event.data):
        return base, (f"duplicate shim event (instance {event.data.get('instance')}, "
                      f"shim_seq {event.data.get('shim_seq')})")
    old = state.containers.get(event.id)
    current = None if old is None else old["state"]
    if etype in LIFECYCLE_TYPES:
        if (current, etype) not in TRANSITIONS:
            return base, f"illegal transition: {etype} in state {current or 'absent'}"
        target = TRANSITIONS[(current, etype)]
    elif etype in ANNOTATIONS:
        if current not in ANNOTATIONS[etype]:
            return base, f"{etype} in state {current or 'absent'} ignored"
        target = current
    else:
        return base, f"{etype} is not a container event"
    if target is None:
        containers = state.containers if owned else dict(state.containers)
        del containers[event.id]  # type: ignore[attr-defined]
        return State(event.seq, containers, state.daemon), None
    try:
        c = _new_container(event) if old is None else dict(old)
        c["state"] = target
        _annotate(c, event)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # a record of the right type but the wrong shape (a buggy or foreign writer): history
        # is history, so it is skipped like an illegal transition, never a crash
        return base, f"{etype} with malformed data: {exc!r}"
    containers = state.containers if owned else dict(state.containers)
    containers[event.id] = c  # type: ignore[index]
    return State(event.seq, containers, state.daemon), None


def _annotate(c: dict[str, Any], event: Event) -> None:
    """Record what an (accepted) event tells about its container; ``c`` is a fresh copy."""
    d = event.data
    instance = d.get("instance")
    shim_seq = d.get("shim_seq")
    if isinstance(instance, str) and isinstance(shim_seq, int):
        c["seen"] = {**c["seen"], instance: max(shim_seq, c["seen"].get(instance, 0))}
    etype = event.type
    if etype == "task.create":
        if c.get("instance") is None and isinstance(d.get("created_at"), int):
            c["created"] = d["created_at"]  # the first task: the shim's clock, like the rest
        c.update(pid=d.get("pid"), shim_pid=d.get("shim_pid"), address=d.get("address"),
                 instance=instance, started=None, finished=None, exit_status=None,
                 signal=None, exit_reason=None, lost=False, oom_killed=False)
    elif etype == "task.start":
        c["pid"] = d.get("pid", c["pid"])
        # the shim's clock when present: exited_at is the shim's too, so the times of a
        # container that exits at once still read created <= started <= finished
        started_at = d.get("started_at")
        c["started"] = started_at if isinstance(started_at, int) else event.time
    elif etype == "task.exit":
        c.update(exit_status=d.get("exit_status"), signal=d.get("signal"),
                 finished=d.get("exited_at") or event.time, exit_reason=d.get("reason"))
    elif etype == "container.restart":
        c["restarts"] += 1
    elif etype == "container.update":
        c["spec"] = {**c["spec"], **d.get("spec", {})}
    elif etype == "task.oom":
        c["oom"] += 1
        c["oom_killed"] = True  # this task's (ps: `stopped (oom)`); `oom` counts them all
    elif etype == "shim.lost":
        c["lost"] = True
        c["lost_starttime"] = d.get("task_starttime")


def apply(state: State, event: Event) -> State:
    """The pure fold function: ``fold(apply, events)`` is the daemon's state."""
    return step(state, event)[0]


def fold(events: Iterable[Event], state: State | None = None) -> State:
    """``fold(apply, events)``; copies the containers map once, not once per event."""
    state = state or State()
    state = State(state.last_seq, dict(state.containers), state.daemon)
    for event in events:
        state = step(state, event, owned=True)[0]
    return state
