"""Subscription filters: type prefixes on dot boundaries, ids, and their combination."""

from __future__ import annotations

import pytest

from events.filters import make_filter, matches, type_matches
from events.model import Event


def ev(etype: str, eid: str = "web") -> Event:
    return Event(1, 0, etype, eid, {})


@pytest.mark.parametrize(("prefix", "etype", "expected"), [
    ("task", "task.exit", True),
    ("task", "task.exec.start", True),
    ("task", "task", True),
    ("task", "taskfoo", False),
    ("task", "container.create", False),
    ("task.", "task.exit", True),
    ("task.", "taskfoo", False),
    ("task.exit", "task.exit", True),
    ("task.exit", "task.exit.x", True),
    ("task.exit", "task.exited", False),
    ("task.exit", "task", False),
    ("", "anything", True),
])
def test_type_prefix_on_dot_boundaries(prefix: str, etype: str, expected: bool) -> None:
    assert type_matches(etype, prefix) is expected
    assert matches(ev(etype), types=[prefix]) is expected


def test_no_filters_match_everything() -> None:
    assert matches(ev("whatever.new.type", ""))
    assert make_filter()(ev("x"))


def test_several_types_are_alternatives_and_ids_combine_with_and() -> None:
    f = make_filter(["task.exit", "container"], ["web", "db"])
    assert f(ev("task.exit", "web"))
    assert f(ev("container.create", "db"))
    assert not f(ev("task.start", "web"))
    assert not f(ev("task.exit", "cache"))
    assert not f(ev("container.delete", ""))


def test_a_lone_string_is_one_filter_not_letters() -> None:
    assert not matches(ev("t"), types="task")
    assert matches(ev("task.oom", "web"), types="task", ids="web")
    assert not matches(ev("task.oom", "w"), types="task", ids="web")


def test_daemon_events_have_the_empty_id() -> None:
    assert matches(ev("supervisor.start", ""), types=["supervisor"], ids=[""])
    assert not matches(ev("supervisor.start", ""), ids=["web"])
