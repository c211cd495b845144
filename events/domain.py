"""The domain's vocabulary: states, policies, error codes and event types, in one module.

The projection, the commands, supervisorctl and the shim all name the same things; this module
is where each name is defined once. It depends on nothing but :mod:`enum` (already imported by
:mod:`re` and :mod:`signal`, so it costs the shim and the one-shot CLI nothing), so every side of
the system can import it.

Every enum is a :class:`~enum.StrEnum`: its members *are* the strings that travel on the wire and
sit in the log, so ``ContainerState.RUNNING == "running"`` and msgpack encodes a member as its
string. Old logs and newer peers stay readable: code that reads a state from the outside keeps
it as a plain string when it is not a member (see :func:`known`), never crashes on it.

The record shapes (container, spec, exit record) are :class:`~typing.TypedDict` s defined only
for the type checker (``TYPE_CHECKING``): at run time they are the plain dicts msgpack gives, at
no import cost.
"""

from __future__ import annotations

from enum import StrEnum

TYPE_CHECKING = False  # not typing's: the shim and supervisorctl import this module
if TYPE_CHECKING:
    from typing import Any, TypedDict

__all__ = [
    "DEFAULT_STOP_SIGNAL",
    "DEFAULT_STOP_TIMEOUT",
    "ContainerState",
    "ErrorCode",
    "EventType",
    "HealthStatus",
    "RestartPolicy",
    "known",
]

#: What ``stop`` sends first, and how long it waits before SIGKILL, unless the spec says
#: otherwise: docker's defaults (SIGTERM, 10 s), so a container built for docker stops the same.
DEFAULT_STOP_SIGNAL = 15
DEFAULT_STOP_TIMEOUT = 10.0


class ContainerState(StrEnum):
    """A container's lifecycle state, as the projection folds it from the log.

    ``restarting``: its task ended and a restart was decided; it waits out its back-off.
    ``unknown`` is never in the log: ``ps`` shows it for a container recovered from the log whose
    shim has not been reconciled yet.
    """

    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    UNKNOWN = "unknown"


class RestartPolicy(StrEnum):
    """docker's four restart policies, with docker's meanings (see :mod:`events.policy`)."""

    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


class HealthStatus(StrEnum):
    """docker's HEALTHCHECK states: ``starting`` until the first pass or the start period ends."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class ErrorCode(StrEnum):
    """The ``code`` of every error frame, on every socket (daemon API and shim)."""

    INVALID = "invalid"  # bad params, bad id, bad spec: nothing was changed
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the wrong state for this request, or an id in use
    UNKNOWN_METHOD = "unknown_method"
    PROTOCOL = "protocol"  # a bad frame or hello: the connection is closed
    EXEC_FAILED = "exec_failed"  # the command could not be executed (status 127 recorded)
    START_FAILED = "start_failed"  # the shim launcher could not start the container
    NO_SPACE = "no_space"  # the log (or a shim's files) cannot be written: disk full
    UNAVAILABLE = "unavailable"  # the shim cannot be reached
    UNSUPPORTED = "unsupported"
    PERMISSION_DENIED = "permission_denied"
    TOO_SLOW = "too_slow"  # a subscriber fell behind its buffer and was cut off
    INTERNAL = "internal"  # a bug: the request failed, the process goes on


class EventType(StrEnum):
    """The event types of DESIGN.md's table, named like containerd's topics.

    Readers skip types they do not know (a newer writer's) with a warning: a type that is not a
    member here is carried as a plain string, never rejected.
    """

    SUPERVISOR_START = "supervisor.start"
    SUPERVISOR_STOP = "supervisor.stop"
    CONTAINER_CREATE = "container.create"
    CONTAINER_UPDATE = "container.update"
    CONTAINER_DELETE = "container.delete"
    CONTAINER_RESTART = "container.restart"
    CONTAINER_STOP = "container.stop"
    CONTAINER_GIVEUP = "container.giveup"
    CONTAINER_HEALTH = "container.health"
    #: a live shim the log did not account for (its history was lost), recorded as it is
    CONTAINER_ADOPT = "container.adopt"
    TASK_CREATE = "task.create"
    TASK_START = "task.start"
    TASK_EXIT = "task.exit"
    TASK_DELETE = "task.delete"
    TASK_OOM = "task.oom"
    TASK_EXEC_START = "task.exec.start"
    TASK_EXEC_EXIT = "task.exec.exit"
    SHIM_LOST = "shim.lost"


def known(enum: type[StrEnum], value: object) -> bool:
    """Is *value* one of *enum*'s strings? (``value in enum`` raises for non-strings in 3.11.)"""
    return isinstance(value, str) and value in enum._value2member_map_


if TYPE_CHECKING:

    class RestartSpec(TypedDict):
        """The normalised ``restart`` of a spec (:func:`events.policy.restart_spec`)."""

        policy: str
        max_retries: int | None
        delay: float
        max_delay: float
        reset: float
        exit_codes: list[int]

    class HealthSpec(TypedDict):
        """The normalised ``health`` of a spec (:func:`events.policy.health_spec`)."""

        cmd: str
        interval: float
        timeout: float
        retries: int
        start_period: float
        restart: bool

    class ExitRecord(TypedDict, total=False):
        """A task's end, as the shim writes it to its exit file and reports it."""

        pid: int
        exit_status: int | None
        signal: int | None
        exited_at: int
        shim_seq: int
        instance: str
        reason: str | None

    #: A decoded map of the wire or the log whose shape is checked where it is read.
    Record = dict[str, Any]
