"""``ps``'s rows, from a state and what each container is shown as: one function for the full
server (:class:`supervisor.commands.Commands`) and the early one (:mod:`supervisor.early`),
so a ``ps`` answered before the handover is the one answered after it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from events.domain import ContainerState
from supervisor.projection import Container

__all__ = ["ps_row", "ps_rows"]


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
