"""``ps``'s rows and ``inspect``'s record, from a state and what each container is shown as:
one function for the full server (:class:`supervisor.commands.Commands`) and the early one
(:mod:`supervisor.early`), so what is answered before the handover is what is answered after
it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from events.domain import ContainerState
from supervisor.projection import Container

if TYPE_CHECKING:
    from events.log import EventLog

__all__ = ["history", "inspect_row", "ps_row", "ps_rows"]


def ps_row(c: Container, shown: str) -> dict[str, Any]:
    """A ``ps`` row: :data:`supervisor.protocol.PS_FIELDS`, then ``command``, ``labels``,
    ``oom`` (this task was OOM-killed), ``exit_reason`` and ``health``; ``shown`` is the state
    ``ps`` shows (``unknown`` until a recovered container is reconciled)."""
    return {"id": c.id, "state": shown, "pid": c.pid,
            "exit_status": c.exit_status, "restarts": c.restarts, "runtime": c.runtime,
            "created": c.created, "started": c.started, "finished": c.finished,
            "command": c.spec.get("command"), "labels": c.spec.get("labels") or {},
            "oom": c.oom_killed, "exit_reason": c.exit_reason, "health": c.health}


def ps_rows(containers: Iterable[Container], shown: Callable[[Container], str],
            params: dict[str, Any]) -> list[dict[str, Any]]:
    """``ps``'s result: without ``all``, not the stopped ones; by creation time."""
    show_all = bool(params.get("all"))
    rows = [ps_row(c, shown(c)) for c in containers
            if show_all or c.state != ContainerState.STOPPED]
    rows.sort(key=lambda r: (r["created"] or 0, r["id"]))
    return rows


def history(eventlog: EventLog, c: Container, last_seq: int) -> list[dict[str, Any]]:
    """``inspect``'s ``history``: the container's event records up to ``last_seq`` (the
    state's), read from its ``container.create`` on. Blocking: a thread's work."""
    out = []
    for event in eventlog.read(max(0, c.create_seq - 1)):
        if event.seq > last_seq:
            break
        if event.id == c.id:
            out.append(event.to_record())
    return out


def inspect_row(c: Container, shown: str, hist: list[dict[str, Any]],
                health: dict[str, Any] | None) -> dict[str, Any]:
    """``inspect``'s result: the ``ps`` row and the record, ``history`` and ``health`` as
    the caller found them (section 6 of docs/design.md)."""
    from supervisor.decide import restart_spec  # events.policy: not before the first answer

    restart = restart_spec(c)
    return {**ps_row(c, shown), "spec": c.spec, "instance": c.instance,
            "shim_pid": c.shim_pid, "address": c.address, "signal": c.signal,
            "exit_reason": c.exit_reason, "oom": c.oom, "lost": c.lost,
            "restart": {"policy": restart["policy"], "max_retries": restart["max_retries"],
                        "attempt": c.attempt, "start_at": c.start_at,
                        "gave_up": c.gave_up, "stopped_by_user": c.stopped_by_user,
                        "by": c.restart_by, "reason": c.restart_reason},
            "health": health,
            "history": hist}
