"""Restart policies and health-check settings: their validation and the restart decision.

Pure functions, no I/O, no clock, no randomness of their own (the caller passes the jitter), so
that the shim -- the decider while it lives -- and the daemon -- the decider where no shim exists
(after a reboot, after a lost shim's task ended) -- decide alike, and so that every rule is
tested without a process. Standard library only: the shim imports this module.

The meanings are docker's (``--restart no|on-failure[:MAX]|always|unless-stopped``):

* ``no``: never restarted by policy;
* ``on-failure``: restarted when the task failed: an exit status not in ``exit_codes`` (``[0]``
  by default; Supervisor's ``exitcodes``), a signal, an unknown status (a lost task), or
  ``unhealthy`` with ``health.restart``; ``:MAX`` gives up after MAX restarts in a row;
* ``always`` and ``unless-stopped``: restarted whatever the status; they differ after a reboot
  (``always`` comes back even when it was stopped by hand, ``unless-stopped`` does not).

A stop by hand (``stop``, ``rm``) is final: no policy restart follows it, whatever the policy.

Back-off: the n-th restart in a row waits ``delay * 2**(n-1)``, times a jitter of about ±10 %
(so a fleet of containers that failed together does not restart in lock-step), capped at
``max_delay``. A task that ran at least ``reset`` seconds resets the count ("in a row"). These are
docker's defaults (100 ms doubling, reset after 10 s); the 60-s cap is Kubernetes' order of
magnitude for a crash loop, lower than its 5 min so that a fixed dependency is picked up soon.
"""

from __future__ import annotations

import math

from events.domain import HealthStatus, RestartPolicy, known

TYPE_CHECKING = False  # not typing's: the shim imports this module
if TYPE_CHECKING:
    from collections.abc import Mapping

    from events.domain import HealthSpec, RestartSpec

__all__ = [
    "DEFAULT_HEALTH",
    "DEFAULT_RESTART",
    "MAX_SECONDS",
    "Decision",
    "backoff",
    "decide",
    "health_spec",
    "health_status_after",
    "is_failure",
    "parse_restart",
    "restart_after_reboot",
    "restart_spec",
    "seconds",
]

#: The largest number of seconds any setting takes (a week): every duration is checked to be
#: finite and at most this, so no ``inf``, ``nan`` or ``1e308`` ever reaches a timer.
MAX_SECONDS = 7 * 24 * 3600.0

DEFAULT_RESTART: RestartSpec = {
    "policy": RestartPolicy.NO.value,
    "max_retries": None,
    "delay": 0.1,
    "max_delay": 60.0,
    "reset": 10.0,
    "exit_codes": [0],
}

#: docker's HEALTHCHECK defaults: every 30 s, 30 s timeout, unhealthy after 3 failures in a row.
DEFAULT_HEALTH: HealthSpec = {
    "cmd": "",
    "interval": 30.0,
    "timeout": 30.0,
    "retries": 3,
    "start_period": 0.0,
    "restart": False,
}


def seconds(value: object, name: str, *, minimum: float = 0.0,
            maximum: float = MAX_SECONDS) -> float:
    """*value* as a finite number of seconds within ``[minimum, maximum]``, else ValueError
    naming *name* (the flag or the spec field, as the caller's user knows it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float (10**400: a TOML file, Python callers)
        number = math.inf
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise ValueError(f"{name} must be a number of seconds from {minimum:g} to {maximum:g}, "
                         f"got {value!r}")
    return number


def _count(value: object, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if value > 1_000_000_000:
        raise ValueError(f"{name} must be at most 1000000000, got {value!r}")
    return value


def parse_restart(text: str) -> tuple[str, int | None]:
    """docker's ``--restart`` syntax -> ``(policy, max_retries)``.

    ``no``, ``always``, ``unless-stopped``, ``on-failure`` or ``on-failure:MAX`` (MAX >= 0: the
    restarts in a row before giving up). Anything else raises ValueError saying what is allowed.
    """
    name, sep, count = text.partition(":")
    if not known(RestartPolicy, name):
        raise ValueError(f"unknown restart policy {text!r}: use no, on-failure[:MAX], always or "
                         "unless-stopped")
    if not sep:
        return name, None
    if name != RestartPolicy.ON_FAILURE:
        raise ValueError(f"restart policy {text!r}: only on-failure takes a maximum (:MAX)")
    if not count.isdigit():
        raise ValueError(f"restart policy {text!r}: the maximum after ':' must be a whole "
                         "number of restarts, e.g. on-failure:3")
    return name, _count(int(count), "the maximum of on-failure")


def restart_spec(value: object, name: str = "restart") -> RestartSpec:
    """Normalise a spec's ``restart``: None, a docker string (``"on-failure:3"``) or a map with
    any of :data:`DEFAULT_RESTART`'s keys. Raises ValueError naming the bad field."""
    out: RestartSpec = {**DEFAULT_RESTART, "exit_codes": list(DEFAULT_RESTART["exit_codes"])}
    if value is None:
        return out
    if isinstance(value, str):
        out["policy"], out["max_retries"] = parse_restart(value)
        return out
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a policy string or a map, got {value!r}")
    unknown = sorted(set(value) - set(DEFAULT_RESTART))
    if unknown:
        raise ValueError(f"{name}: unknown fields {unknown}; known: {sorted(DEFAULT_RESTART)}")
    policy = value.get("policy", out["policy"])
    if not known(RestartPolicy, policy):
        raise ValueError(f"{name}.policy: unknown restart policy {policy!r}: use no, on-failure, "
                         "always or unless-stopped")
    out["policy"] = str(policy)
    retries = value.get("max_retries")
    out["max_retries"] = None if retries is None else _count(retries, f"{name}.max_retries")
    for key in ("delay", "max_delay", "reset"):
        if key in value:
            # mypy < 2 types ``key`` as str here, newer ones as the literal it is
            out[key] = seconds(value[key], f"{name}.{key}")  # type: ignore[literal-required, unused-ignore]
    if out["max_delay"] < out["delay"]:
        raise ValueError(f"{name}.max_delay ({out['max_delay']:g}) must be at least "
                         f"{name}.delay ({out['delay']:g})")
    codes = value.get("exit_codes", out["exit_codes"])
    if (not isinstance(codes, list) or not codes
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                       for c in codes)):
        raise ValueError(f"{name}.exit_codes must be a non-empty list of statuses 0-255, "
                         f"got {codes!r}")
    out["exit_codes"] = sorted(set(codes))
    return out


def health_spec(value: object, name: str = "health") -> HealthSpec | None:
    """Normalise a spec's ``health``: None (no check) or a map with ``cmd`` (run as
    ``sh -c CMD`` in the container) and any of :data:`DEFAULT_HEALTH`'s other keys."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a map with at least 'cmd', got {value!r}")
    unknown = sorted(set(value) - set(DEFAULT_HEALTH))
    if unknown:
        raise ValueError(f"{name}: unknown fields {unknown}; known: {sorted(DEFAULT_HEALTH)}")
    cmd = value.get("cmd")
    if not isinstance(cmd, str) or not cmd.strip() or "\0" in cmd:
        raise ValueError(f"{name}.cmd must be a non-empty shell command, got {cmd!r}")
    out: HealthSpec = {**DEFAULT_HEALTH, "cmd": cmd}
    if "interval" in value:
        out["interval"] = seconds(value["interval"], f"{name}.interval", minimum=0.01)
    if "timeout" in value:
        out["timeout"] = seconds(value["timeout"], f"{name}.timeout", minimum=0.01)
    if "start_period" in value:
        out["start_period"] = seconds(value["start_period"], f"{name}.start_period")
    if "retries" in value:
        out["retries"] = _count(value["retries"], f"{name}.retries", minimum=1)
    restart = value.get("restart", False)
    if not isinstance(restart, bool):
        raise ValueError(f"{name}.restart must be true or false, got {restart!r}")
    out["restart"] = restart
    return out


def is_failure(restart: Mapping[str, object], exit_status: int | None) -> bool:
    """Did the task fail? An unknown status (None: a lost task) counts as a failure."""
    if exit_status is None:
        return True
    codes = restart.get("exit_codes") or [0]
    # ``codes`` is an ``object`` to mypy (the map's values are); parse_restart made it a list
    return exit_status not in codes  # type: ignore[operator]  # see above


def backoff(restart: RestartSpec, attempt: int, jitter: float = 1.0) -> float:
    """Seconds to wait before the *attempt*-th restart in a row (1-based); *jitter* is the
    caller's random factor, about 0.9-1.1."""
    if restart["delay"] <= 0:
        return 0.0
    # 2**64 times any delay is past any cap: no float overflow however long the crash loop
    base = restart["delay"] * (2.0 ** min(max(0, attempt - 1), 64))
    return min(base * jitter, restart["max_delay"])


class Decision:
    """What to do after a task ended: restart (after ``delay``) as ``attempt`` in a row, give
    up (the policy's maximum was reached), or neither (the policy does not restart this end).
    ``reason`` is the sentence the events and ``inspect`` carry."""

    __slots__ = ("attempt", "delay", "give_up", "reason", "restart")

    def __init__(self, restart: bool, reason: str, attempt: int = 0, delay: float = 0.0,
                 give_up: bool = False) -> None:
        self.restart = restart
        self.reason = reason
        self.attempt = attempt
        self.delay = delay
        self.give_up = give_up

    def __repr__(self) -> str:
        return (f"Decision(restart={self.restart}, attempt={self.attempt}, "
                f"delay={self.delay:.3f}, give_up={self.give_up}, reason={self.reason!r})")


def _describe(exit_status: int | None, unhealthy: bool) -> str:
    if unhealthy:
        return "the health check failed (unhealthy)"
    if exit_status is None:
        return "the task ended with an unknown status"
    return f"exit status {exit_status}"


def decide(restart: RestartSpec, *, exit_status: int | None, streak: int, ran_for: float,
           stopped_by_user: bool = False, unhealthy: bool = False,
           jitter: float = 1.0) -> Decision:
    """The policy's answer to a task's end.

    *streak*: restarts in a row before this end (the previous decision's ``attempt``, 0 for the
    first task); *ran_for*: seconds the task ran (it resets the streak when at least
    ``restart["reset"]``); *unhealthy*: the task was ended because its health check failed and
    ``health.restart`` is set (a failure whatever its status).
    """
    what = _describe(exit_status, unhealthy)
    policy = restart["policy"]
    if stopped_by_user:
        return Decision(False, f"{what}: stopped by hand, the policy does not restart it")
    if policy == RestartPolicy.NO:
        return Decision(False, f"{what}: restart policy no")
    failed = unhealthy or is_failure(restart, exit_status)
    if policy == RestartPolicy.ON_FAILURE and not failed:
        return Decision(False, f"{what}: a success, on-failure does not restart it")
    if ran_for >= restart["reset"]:
        streak = 0
    limit = restart["max_retries"]
    if limit is not None and streak >= limit:
        return Decision(False, f"{what}: gave up after {streak} restart"
                        f"{'' if streak == 1 else 's'} in a row ({policy}:{limit})",
                        attempt=streak, give_up=True)
    attempt = streak + 1
    return Decision(True, f"{policy}: {what}", attempt=attempt,
                    delay=backoff(restart, attempt, jitter))


def restart_after_reboot(restart: RestartSpec, *, exit_status: int | None,
                         stopped_by_user: bool, gave_up: bool) -> bool:
    """Does the daemon start this container again after the host rebooted? docker's answer:
    ``always`` even when stopped by hand; ``unless-stopped`` unless stopped by hand;
    ``on-failure`` when its last end was a failure (a task the reboot ended counts: its status
    is unknown) and it had not given up or been stopped by hand; ``no`` never."""
    policy = restart["policy"]
    if policy == RestartPolicy.ALWAYS:
        return True
    if policy == RestartPolicy.UNLESS_STOPPED:
        return not stopped_by_user
    if policy == RestartPolicy.ON_FAILURE:
        return not stopped_by_user and not gave_up and is_failure(restart, exit_status)
    return False


def health_status_after(status: str, *, passed: bool, streak: int, retries: int,
                        in_start_period: bool) -> tuple[str, int]:
    """One health check's result -> ``(status, failing_streak)``, docker's rules: a pass makes
    it ``healthy`` and clears the streak; a failure adds to the streak, and ``retries`` failures
    in a row make it ``unhealthy``; failures during the start period do not count."""
    if passed:
        return HealthStatus.HEALTHY.value, 0
    if in_start_period:
        return status, streak
    streak += 1
    if streak >= retries:
        return HealthStatus.UNHEALTHY.value, streak
    return status, streak
