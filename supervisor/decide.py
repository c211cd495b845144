"""The restart policy applied to a container's record: pure functions over
:class:`~supervisor.projection.Container` and :mod:`events.policy`.

The shim decides while it lives; the daemon uses these where no shim exists (after a reboot,
after a lost shim's task ended) and to know whether a stopped container is stopped *for good*
(``wait`` and ``logs --follow`` end then, not at an exit the policy will restart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from events import policy
from events.domain import ContainerState, HealthStatus

if TYPE_CHECKING:
    from events.domain import RestartSpec
    from supervisor.projection import Container

__all__ = ["decision", "ran_for", "restart_after_reboot", "restart_spec", "stopped_for_good"]

_NS = 1_000_000_000


def restart_spec(c: Container) -> RestartSpec:
    """The container's normalised restart policy (a spec from before policies: ``no``).
    The daemon stores it normalised (``spec.validate_spec``): taken as it is when it has the
    normalised shape, normalised again otherwise (an older writer's, a docker string)."""
    value = c.spec.get("restart")
    if value is None:
        return _NO_RESTART
    if isinstance(value, dict) and value.keys() == _RESTART_KEYS:
        return value
    return policy.restart_spec(value)


_RESTART_KEYS = policy.DEFAULT_RESTART.keys()
_NO_RESTART = policy.restart_spec(None)


def ran_for(c: Container) -> float:
    """Seconds the last task ran (0 when it never started or has not ended)."""
    if c.started is None or c.finished is None:
        return 0.0
    return max(0, c.finished - c.started) / _NS


def decision(c: Container, jitter: float = 1.0) -> policy.Decision:
    """The policy's answer to the end of ``c``'s last task, as the shim would give it."""
    health = c.spec.get("health")
    unhealthy = bool(health and health.get("restart")) and c.health == HealthStatus.UNHEALTHY
    return policy.decide(restart_spec(c), exit_status=c.exit_status, streak=c.attempt,
                         ran_for=ran_for(c), stopped_by_user=c.stopped_by_user,
                         unhealthy=unhealthy, jitter=jitter)


def stopped_for_good(c: Container) -> bool:
    """Stopped, and nothing will start it again by itself: stopped by hand, given up (once
    that is recorded, so that whoever waited for it finds it in ``inspect``), or a policy
    that does not restart this end."""
    if c.state != ContainerState.STOPPED:
        return False
    if c.stopped_by_user or c.gave_up:
        return True
    verdict = decision(c)
    return not verdict.restart and not verdict.give_up


def restart_after_reboot(c: Container) -> bool:
    """Does the daemon start ``c`` again after the host rebooted (docker's meanings)? Never a
    container that was created and never started (nor restarted)."""
    if c.started is None and c.restarts == 0:
        return False
    return policy.restart_after_reboot(restart_spec(c), exit_status=c.exit_status,
                                       stopped_by_user=c.stopped_by_user, gave_up=c.gave_up)
