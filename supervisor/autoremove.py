"""``run --rm``: docker's AutoRemove, carried out by the daemon.

A container whose spec has ``auto_remove`` is removed (``container.delete``, its directory
gone, its id free again) once it has exited for good: its ``task.exit`` is durable and no
restart can follow (``auto_remove`` is refused with a restart policy, as docker refuses
``--rm`` with ``--restart``). The removal is the ordinary ``rm``, so it takes the container's
lock and leaves the log exactly as a user's ``rm`` would.

Why the daemon and not the client: the client may be gone (``run --rm`` returns at once, as
it always does), and the daemon may crash between the exit and the removal. The service below
therefore first sweeps every container that is already due (a crash, or an exit recorded
while no daemon was up and delivered by reconciliation), then removes each container as its
exit is committed. It subscribes before the sweep, so no exit falls between the two.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
import trio

from events.filters import make_filter
from supervisor.errors import ApiError
from supervisor.subscribers import TooSlow

__all__ = ["due", "run", "wants_auto_remove"]

log = structlog.get_logger("supervisord.autoremove")

Remove = Callable[[dict[str, Any]], Awaitable[Any]]

#: Retries of a removal that failed for a reason that can pass (a full disk), in seconds.
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def wants_auto_remove(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("auto_remove"))


def restarts_by_policy(spec: Mapping[str, Any]) -> bool:
    """True when the spec's restart policy (a docker string or a normalised map) may restart
    the container by itself: such a container is never "exited for good"."""
    policy = spec.get("restart")
    if isinstance(policy, dict):
        policy = policy.get("policy")
    return isinstance(policy, str) and policy.split(":", 1)[0] not in ("", "no")


def due(c: Mapping[str, Any]) -> bool:
    """Exited for good and asked to be removed then."""
    spec = c.get("spec") or {}
    return (c.get("state") == "stopped" and wants_auto_remove(spec)
            and not restarts_by_policy(spec))


async def run(core: Any, remove: Remove, *,
              task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """The service (a task of the daemon's nursery): ``remove`` is the ``rm`` method."""
    matches = make_filter(["task.exit"], [])
    while True:
        sub = core.hub.subscribe(core.state.last_seq, matches, internal=True)
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        try:
            for cid in [cid for cid, c in core.state.containers.items() if due(c)]:
                await _remove(core, remove, cid)
            while True:
                for event in await sub.next_batch():
                    c = core.state.containers.get(event.id)
                    if c is not None and due(c):
                        await _remove(core, remove, event.id)
        except TooSlow:  # a burst of exits outran us: subscribe again, then sweep
            continue
        finally:
            core.hub.unsubscribe(sub)


async def _remove(core: Any, remove: Remove, cid: str) -> None:
    for delay in (*RETRY_DELAYS, None):
        c = core.state.containers.get(cid)
        if c is None or not due(c):
            return  # removed by hand, or started again meanwhile
        try:
            await remove({"id": cid})
        except ApiError as exc:
            if exc.code in ("not_found", "conflict"):
                return
            if delay is None:
                log.error("auto-remove failed; `supervisorctl rm` it by hand", id=cid,
                          error=exc.message)
                return
            log.warning("auto-remove failed; retrying", id=cid, error=exc.message,
                        retry_in=delay)
            await trio.sleep(delay)
        else:
            log.info("removed (auto_remove)", id=cid)
            return
