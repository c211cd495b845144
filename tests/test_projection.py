"""The projection is a pure fold: the lifecycle table, skipped events, dedup, snapshots."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from events.model import Event
from supervisor.projection import TRANSITIONS, State, apply, fold, is_duplicate, step


class Seq:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, etype: str, cid: str = "c", **data: object) -> Event:
        self.n += 1
        return Event(self.n, 1000 + self.n, etype, cid, dict(data))


def lifecycle(ev: Seq, cid: str = "c", instance: str = "i1") -> list[Event]:
    return [
        ev("container.create", cid, spec={"command": ["true"], "runtime": "process"}),
        ev("task.create", cid, pid=10, shim_pid=9, address="/s", instance=instance),
        ev("task.start", cid, pid=10, shim_seq=2, instance=instance),
        ev("task.exit", cid, pid=10, exit_status=3, signal=0, exited_at=5, shim_seq=3,
           instance=instance),
    ]


def test_the_lifecycle_walks_the_table():
    ev = Seq()
    states = []
    state = State()
    for event in lifecycle(ev):
        state = apply(state, event)
        states.append(state.containers["c"].state)
    assert states == ["created", "created", "running", "stopped"]
    c = state.containers["c"]
    assert (c.pid, c.exit_status, c.finished, c.instance) == (10, 3, 5, "i1")
    state = apply(state, ev("container.delete"))
    assert "c" not in state.containers
    assert state.last_seq == 5


def test_the_table_is_the_only_source_of_lifecycle_moves():
    assert TRANSITIONS[(None, "container.create")] == "created"
    assert TRANSITIONS[("running", "task.exit")] == "stopped"
    assert ("running", "container.delete") not in TRANSITIONS  # rm -f stops first
    assert ("stopped", "task.start") not in TRANSITIONS


def test_illegal_transitions_are_skipped_with_a_reason_never_raised():
    ev = Seq()
    state = fold(lifecycle(ev))
    before = state.containers
    for bad in (ev("task.start", pid=1), ev("container.create", spec={}),
                ev("task.exit", "ghost", exit_status=1), ev("task.start", "ghost")):
        state, reason = step(state, bad)
        assert reason is not None and ("illegal" in reason or "absent" in reason), reason
        assert state.containers == before
        assert state.last_seq == bad.seq  # the record is still part of history


def test_unknown_types_and_daemon_events_do_not_touch_containers():
    ev = Seq()
    state = fold(lifecycle(ev))
    state2, reason = step(state, ev("future.thing", x=1))
    assert reason is not None and "unknown" in reason
    assert state2.containers is state.containers
    state3, reason = step(state2, ev("supervisor.start", "", pid=7, version="x"))
    assert reason is None and state3.daemon["start"]["pid"] == 7


def test_shim_events_are_deduplicated_by_instance_and_shim_seq():
    ev = Seq()
    state = fold(lifecycle(ev))
    again = ev("task.exit", exit_status=99, shim_seq=3, instance="i1")
    assert is_duplicate(state, "c", again.data)
    state2, reason = step(state, again)
    assert reason is not None and "duplicate" in reason
    assert state2.containers["c"].exit_status == 3
    # the same shim_seq of another instance (a restarted task) is a different event
    assert not is_duplicate(state, "c", {"shim_seq": 3, "instance": "i2"})


def test_restart_gets_a_new_task_and_counts():
    ev = Seq()
    state = fold(lifecycle(ev))
    state = fold([ev("task.delete", exit_status=3, instance="i1"),
                  ev("container.restart", attempt=1, reason="restart command"),
                  ev("task.create", pid=20, instance="i2"),
                  ev("task.start", pid=20, shim_seq=2, instance="i2")], state)
    c = state.containers["c"]
    assert (c.state, c.restarts, c.pid, c.exit_status) == ("running", 1, 20, None)
    assert c.seen == {"i1": 3, "i2": 2}


def test_the_previous_state_is_never_mutated():
    ev = Seq()
    s1 = fold(lifecycle(ev)[:3])
    frozen = msgpack.packb(s1.to_dict())
    apply(s1, ev("task.exit", exit_status=1, shim_seq=3, instance="i1"))
    assert msgpack.packb(s1.to_dict()) == frozen


_ops = st.lists(st.tuples(st.sampled_from(["container.create", "task.create", "task.start",
                                           "task.exit", "task.delete", "container.delete",
                                           "container.restart", "container.stop",
                                           "container.giveup", "container.health",
                                           "shim.lost", "task.oom", "other.type"]),
                          st.sampled_from(["a", "b", "c"]),
                          st.integers(0, 4)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(_ops, st.integers(0, 60))
def test_snapshot_round_trip_equals_replay(ops, cut):
    """state(snapshot at k, then replay) == state(replay all), for every k, through msgpack."""
    events = [Event(i + 1, i, t, cid, {"spec": {"command": ["x"]}, "pid": n, "shim_seq": n,
                                       "instance": f"i{n % 2}", "exit_status": n,
                                       "status": ["starting", "healthy", "bogus"][n % 3],
                                       "attempt": n, "by": ["shim", "user"][n % 2]})
              for i, (t, cid, n) in enumerate(ops)]
    full = fold(events)
    one_by_one = State()
    for event in events:  # the pure, copying path gives the same state as fold's fast path
        one_by_one = apply(one_by_one, event)
    assert one_by_one.to_dict() == full.to_dict()
    k = min(cut, len(events))
    snap = msgpack.unpackb(msgpack.packb(fold(events[:k]).to_dict(), use_bin_type=True),
                           raw=False, strict_map_key=False)
    resumed = fold(events[k:], State.from_dict(snap))
    assert resumed.to_dict() == full.to_dict()


def test_malformed_data_is_skipped_not_raised():
    ev = Seq()
    state = fold(lifecycle(ev))
    for bad in (ev("container.create", "x", spec=[1, 2]),
                ev("container.update", spec="nope")):
        state2, reason = step(state, bad)
        assert reason is not None, bad
        assert state2.containers == state.containers


def test_a_container_is_a_frozen_record():
    import dataclasses

    import pytest

    c = fold(lifecycle(Seq())).containers["c"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.state = "running"  # type: ignore[misc]
    assert c.evolve(pid=99).pid == 99 and c.pid == 10


def test_a_snapshot_written_by_the_first_state_version_still_loads():
    """Version 1 (the maps the daemon wrote before containers were records): fields it lacked
    take their defaults."""
    v1 = {"v": 1, "last_seq": 4, "daemon": {"start": {"pid": 1, "time": 5}}, "containers": {
        "c": {"id": "c", "state": "stopped", "spec": {"command": ["true"]}, "runtime": "process",
              "created": 1, "create_seq": 1, "started": 2, "finished": 3, "pid": 10,
              "shim_pid": 9, "address": "/s", "instance": "i1", "exit_status": 3, "signal": 0,
              "exit_reason": None, "restarts": 0, "oom": 0, "lost": False, "seen": {"i1": 3}}}}
    state = State.from_dict(v1)
    c = state.containers["c"]
    assert (c.state, c.exit_status, c.seen, c.lost_starttime) == ("stopped", 3, {"i1": 3}, None)
    assert state.daemon["start"]["pid"] == 1
    # and what it writes back reads the same
    assert State.from_dict(state.to_dict()) == state


# -- supervision (docs/design.md, section 8) -----------------------------------------------------


def policy_restart(ev: Seq, instance: str = "i1", seq: int = 4, pid: int = 20) -> list[Event]:
    """What a shim reports for one policy restart of its task."""
    return [ev("container.restart", attempt=1, delay=0.1, reason="always: exit status 3",
               by="shim", start_at=2000, shim_seq=seq, instance=instance),
            ev("task.create", pid=pid, instance=instance, shim_seq=seq + 1, boot_id="b"),
            ev("task.start", pid=pid, instance=instance, shim_seq=seq + 2)]


def test_a_policy_restart_walks_through_restarting():
    ev = Seq()
    state = fold(lifecycle(ev))
    states = []
    for event in policy_restart(ev):
        state = apply(state, event)
        states.append(state.containers["c"].state)
    assert states == ["restarting", "created", "running"]
    c = state.containers["c"]
    assert (c.restarts, c.attempt, c.pid, c.exit_status, c.boot_id) == (1, 1, 20, None, "b")
    assert (c.restart_by, c.start_at) == ("shim", None)  # start_at only while restarting


def test_a_stop_by_hand_is_final_and_a_start_by_command_ends_it():
    ev = Seq()
    state = fold(lifecycle(ev)[:3])  # running
    state = apply(state, ev("container.stop", reason="stop"))
    c = state.containers["c"]
    assert (c.state, c.stopped_by_user) == ("running", True)  # recorded before the exit
    state = apply(state, ev("task.exit", exit_status=143, shim_seq=3, instance="i1"))
    assert state.containers["c"].stopped_by_user is True
    # a start by command (a new task in state stopped) ends the stop by hand
    state = apply(state, ev("task.create", pid=30, instance="i2"))
    assert (state.containers["c"].state, state.containers["c"].stopped_by_user) == \
        ("created", False)


def test_a_stop_during_a_back_off_cancels_it():
    ev = Seq()
    state = fold([*lifecycle(ev), policy_restart(ev)[0]])
    assert state.containers["c"].state == "restarting"
    state = apply(state, ev("container.stop", reason="stop"))
    c = state.containers["c"]
    assert (c.state, c.stopped_by_user, c.start_at) == ("stopped", True, None)


def test_a_restart_by_command_clears_the_stop_by_hand_and_the_streak():
    ev = Seq()
    state = fold([*lifecycle(ev), *policy_restart(ev)])
    state = fold([ev("container.stop", reason="restart"),
                  ev("task.exit", exit_status=143, instance="i1", shim_seq=7),
                  ev("container.restart", attempt=0, delay=0, reason="restart command",
                     by="user", start_at=1),
                  ev("task.create", pid=40, instance="i2", start=True)], state)
    c = state.containers["c"]
    assert (c.state, c.restarts, c.attempt, c.stopped_by_user, c.autostart) == \
        ("created", 2, 0, False, True)
    state = apply(state, ev("task.start", pid=40, instance="i2"))
    assert state.containers["c"].autostart is False


def test_giving_up_leaves_the_container_stopped_with_its_status():
    ev = Seq()
    state = fold([*lifecycle(ev),
                  ev("container.giveup", attempts=3, reason="gave up", exit_status=3,
                     shim_seq=4, instance="i1")])
    c = state.containers["c"]
    assert (c.state, c.gave_up, c.exit_status) == ("stopped", True, 3)
    assert step(state, ev("container.giveup", attempts=3, reason="again"))[1] is None
    # the next task (a start by command) is a fresh start
    assert apply(state, ev("task.create", pid=5, instance="i2")).containers["c"].gave_up is False


def test_health_changes_annotate_and_a_new_task_starts_over():
    ev = Seq()
    events = lifecycle(ev)
    events[0] = ev("container.create", spec={"command": ["x"], "health": {"cmd": "true"}})
    state = fold(events[:3])
    assert state.containers["c"].health == "starting"
    state = apply(state, ev("container.health", status="unhealthy", failing_streak=3,
                            shim_seq=3, instance="i1"))
    assert (state.containers["c"].health, state.containers["c"].failing_streak) == \
        ("unhealthy", 3)
    state2, reason = step(state, ev("container.health", status="bogus", shim_seq=4,
                                    instance="i1"))
    assert reason is not None and "malformed" in reason
    assert state2.containers["c"].health == "unhealthy"


def test_the_table_has_section_8s_rows():
    assert TRANSITIONS[("stopped", "container.restart")] == "restarting"
    assert TRANSITIONS[("restarting", "task.create")] == "created"
    assert TRANSITIONS[("restarting", "container.stop")] == "stopped"
    for state in ("created", "running", "stopped"):
        assert TRANSITIONS[(state, "container.stop")] == state
    assert ("running", "container.restart") not in TRANSITIONS  # a restart follows an end
    assert ("restarting", "task.exit") not in TRANSITIONS  # no task runs in a back-off
    assert ("restarting", "container.delete") not in TRANSITIONS  # rm stops it first


def test_what_a_shim_may_not_do_whatever_the_table_allows_the_daemon():
    """A stop by hand committed between a shim's restart decision and its next task (the two
    raced in the log): the shim's task is not a transition, its later restart is refused."""
    ev = Seq()
    state = fold([*lifecycle(ev), policy_restart(ev)[0],  # the shim decided: restarting
                  ev("container.stop", reason="stop")])   # the user's stop won the race
    assert state.containers["c"].state == "stopped"
    late = ev("task.create", pid=21, instance="i1", shim_seq=5)
    state, reason = step(state, late)
    assert reason is not None and "restarting" in reason
    assert state.containers["c"].state == "stopped"  # not a start by command
    again = ev("container.restart", attempt=2, by="shim", instance="i1", shim_seq=6)
    state, reason = step(state, again)
    assert reason is not None and "final" in reason
    # the daemon's own task.create (no shim_seq: a start by command) still is one
    assert apply(state, ev("task.create", pid=30, instance="i2")).containers["c"].state == \
        "created"


# -- container.adopt: a live shim the log lost the record of -----------------------------------

def adopt_data(**over: object) -> dict:
    data: dict = {"spec": {"command": ["sleep", "9"], "runtime": "process",
                           "restart": {"policy": "always"}},
                  "instance": "i9", "shim_seq": 4, "status": "running", "pid": 77,
                  "shim_pid": 76, "address": "/s9", "started_at": 500, "created_at": 400,
                  "starttime": 123, "exit": None, "boot_id": "b",
                  "restart": {"policy": "always", "attempt": 2, "start_at": None,
                              "gave_up": False, "final": False},
                  "health": None, "reason": "test"}
    data.update(over)
    return data


def test_adopt_makes_an_ordinary_container_of_an_unknown_one():
    ev = Seq()
    state = apply(State(), ev("container.adopt", "a", **adopt_data()))
    c = state.containers["a"]
    assert (c.state, c.pid, c.instance, c.started, c.created, c.attempt) == (
        "running", 77, "i9", 500, 400, 2)
    assert c.spec["restart"] == {"policy": "always"}
    # the shim's events up to the adopted shim_seq are duplicates; later ones apply
    assert is_duplicate(state, "a", {"instance": "i9", "shim_seq": 4})
    assert not is_duplicate(state, "a", {"instance": "i9", "shim_seq": 5})
    state = apply(state, ev("task.exit", "a", pid=77, exit_status=0, signal=None,
                            exited_at=900, shim_seq=5, instance="i9"))
    assert state.containers["a"].state == "stopped"
    state = apply(state, ev("container.delete", "a"))
    assert "a" not in state.containers


def test_adopt_replaces_what_the_log_had_and_keeps_its_dedup():
    """The log knows an older life (instance i1); the live shim is another one (i9)."""
    ev = Seq()
    state = fold(lifecycle(ev)[:3])  # i1 running, seen up to 2
    state = apply(state, ev("container.adopt", "c", **adopt_data()))
    c = state.containers["c"]
    assert (c.state, c.instance, c.pid) == ("running", "i9", 77)
    assert c.seen == {"i1": 2, "i9": 4}
    assert is_duplicate(state, "c", {"instance": "i1", "shim_seq": 2})


def test_adopt_of_a_stopped_task_carries_its_exit_and_the_stop_by_hand():
    ev = Seq()
    data = adopt_data(status="stopped",
                      exit={"exit_status": 143, "signal": 15, "exited_at": 800, "pid": 77},
                      restart={"policy": "always", "attempt": 0, "final": True})
    c = apply(State(), ev("container.adopt", "a", **data)).containers["a"]
    assert (c.state, c.exit_status, c.signal, c.finished, c.stopped_by_user) == (
        "stopped", 143, 15, 800, True)


def test_a_malformed_adopt_is_skipped_with_a_reason():
    ev = Seq()
    for bad in (adopt_data(status="unknown"), adopt_data(status="bogus"),
                adopt_data(instance=None), adopt_data(spec={}), adopt_data(shim_seq="4")):
        state, reason = step(State(), ev("container.adopt", "a", **bad))
        assert reason is not None and "a" not in state.containers


def test_an_adopted_container_survives_a_snapshot():
    ev = Seq()
    state = apply(State(), ev("container.adopt", "a", **adopt_data()))
    again = State.from_dict(msgpack.unpackb(msgpack.packb(state.to_dict())))
    assert again.containers == state.containers


def test_adopt_never_lowers_what_was_seen_of_its_instance():
    ev = Seq()
    state = fold(lifecycle(ev)[:3])  # i1 seen up to 2
    state = apply(state, ev("container.adopt", "c", **adopt_data(instance="i1", shim_seq=1)))
    assert state.containers["c"].seen["i1"] == 2
