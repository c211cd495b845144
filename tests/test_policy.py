"""The restart policy and health rules (events.policy): pure functions, docker's meanings."""

from __future__ import annotations

import math

import pytest

from events import policy
from events.domain import HealthStatus, RestartPolicy


def spec(text: str | None = None, **fields: object) -> policy.RestartSpec:  # type: ignore[name-defined]
    if fields:
        name, retries = policy.parse_restart(text or "no")
        return policy.restart_spec({"policy": name, "max_retries": retries, **fields})
    return policy.restart_spec(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("no", ("no", None)), ("always", ("always", None)),
    ("unless-stopped", ("unless-stopped", None)), ("on-failure", ("on-failure", None)),
    ("on-failure:3", ("on-failure", 3)), ("on-failure:0", ("on-failure", 0)),
])
def test_docker_syntax(text: str, expected: tuple[str, int | None]) -> None:
    assert policy.parse_restart(text) == expected


@pytest.mark.parametrize(("text", "words"), [
    ("sometimes", "unknown restart policy"), ("on-failure:x", "whole number"),
    ("on-failure:-1", "whole number"), ("always:3", "only on-failure"), ("", "unknown"),
])
def test_bad_policies_say_what_is_allowed(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        policy.parse_restart(text)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 1e308, -0.1, "1", True, None])
def test_every_duration_is_finite_and_bounded(bad: object) -> None:
    with pytest.raises(ValueError, match=r"restart\.delay"):
        policy.restart_spec({"policy": "always", "delay": bad})


def test_normalised_spec_has_every_field_and_rejects_unknown_ones() -> None:
    assert policy.restart_spec(None) == policy.DEFAULT_RESTART
    assert spec("on-failure:2")["max_retries"] == 2
    with pytest.raises(ValueError, match="unknown fields"):
        policy.restart_spec({"policy": "always", "tries": 3})
    with pytest.raises(ValueError, match="max_delay"):
        policy.restart_spec({"policy": "always", "delay": 5, "max_delay": 1})
    assert spec("always", exit_codes=[2, 0, 2])["exit_codes"] == [0, 2]


def test_on_failure_max_3_gives_exactly_four_starts() -> None:
    """on-failure:3 on `exit 3`: 3 restarts in a row, then give up on the 4th exit."""
    conf = spec("on-failure:3")
    streak, starts, delays = 0, 1, []
    while True:
        d = policy.decide(conf, exit_status=3, streak=streak, ran_for=0.01)
        if not d.restart:
            break
        delays.append(d.delay)
        streak = d.attempt
        starts += 1
    assert starts == 4
    assert d.give_up and "gave up after 3 restarts" in d.reason
    assert delays == sorted(delays) and delays[0] < delays[-1]


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    conf = spec("always", delay=0.1, max_delay=1.0)
    assert [round(policy.backoff(conf, n), 3) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    assert policy.backoff(conf, 1, jitter=1.1) == pytest.approx(0.11)
    assert policy.backoff(conf, 30, jitter=1.1) == 1.0
    assert policy.backoff(spec("always", delay=0, max_delay=0), 7) == 0.0
    assert math.isfinite(policy.backoff(conf, 10_000))


def test_a_long_run_resets_the_streak() -> None:
    conf = spec("on-failure:1", reset=10.0)
    assert policy.decide(conf, exit_status=1, streak=1, ran_for=9.9).give_up
    d = policy.decide(conf, exit_status=1, streak=1, ran_for=10.0)
    assert d.restart and d.attempt == 1


@pytest.mark.parametrize(("name", "status", "restarts"), [
    ("no", 1, False), ("on-failure", 0, False), ("on-failure", 1, True),
    ("on-failure", 137, True), ("on-failure", None, True), ("always", 0, True),
    ("unless-stopped", 0, True),
])
def test_which_ends_restart(name: str, status: int | None, restarts: bool) -> None:
    assert policy.decide(spec(name), exit_status=status, streak=0, ran_for=0).restart is restarts


def test_exit_codes_are_supervisors_expected_statuses() -> None:
    conf = spec("on-failure", exit_codes=[0, 2])
    assert not policy.decide(conf, exit_status=2, streak=0, ran_for=0).restart
    assert policy.decide(conf, exit_status=1, streak=0, ran_for=0).restart


def test_a_stop_by_hand_is_final_and_unhealthy_is_a_failure() -> None:
    d = policy.decide(spec("always"), exit_status=143, streak=0, ran_for=5, stopped_by_user=True)
    assert not d.restart and not d.give_up
    d = policy.decide(spec("on-failure"), exit_status=0, streak=0, ran_for=5, unhealthy=True)
    assert d.restart and "unhealthy" in d.reason


@pytest.mark.parametrize(("name", "status", "by_hand", "gave_up", "expected"), [
    ("always", 0, True, False, True), ("unless-stopped", None, False, False, True),
    ("unless-stopped", 0, True, False, False), ("on-failure", None, False, False, True),
    ("on-failure", 0, False, False, False), ("on-failure", 3, False, True, False),
    ("on-failure", 3, True, False, False), ("no", None, False, False, False),
])
def test_after_a_reboot(name: str, status: int | None, by_hand: bool, gave_up: bool,
                        expected: bool) -> None:
    assert policy.restart_after_reboot(spec(name), exit_status=status, stopped_by_user=by_hand,
                                       gave_up=gave_up) is expected


def test_health_spec_validation_names_the_field() -> None:
    assert policy.health_spec(None) is None
    h = policy.health_spec({"cmd": "true", "retries": 2})
    assert h is not None and h["interval"] == 30.0 and h["retries"] == 2
    for bad, words in (({"interval": 1}, "health.cmd"), ({"cmd": "x", "retries": 0}, "retries"),
                       ({"cmd": "x", "timeout": float("inf")}, "health.timeout"),
                       ({"cmd": "x", "restart": "yes"}, "health.restart"),
                       ({"cmd": "x", "every": 1}, "unknown fields")):
        with pytest.raises(ValueError, match=words):
            policy.health_spec(bad)


def test_health_transitions_follow_docker() -> None:
    s, n = HealthStatus.STARTING.value, 0
    s, n = policy.health_status_after(s, passed=False, streak=n, retries=2, in_start_period=True)
    assert (s, n) == ("starting", 0)
    s, n = policy.health_status_after(s, passed=False, streak=n, retries=2, in_start_period=False)
    assert (s, n) == ("starting", 1)
    s, n = policy.health_status_after(s, passed=False, streak=n, retries=2, in_start_period=False)
    assert (s, n) == ("unhealthy", 2)
    s, n = policy.health_status_after(s, passed=True, streak=n, retries=2, in_start_period=False)
    assert (s, n) == ("healthy", 0)
    assert RestartPolicy.ON_FAILURE == "on-failure"
