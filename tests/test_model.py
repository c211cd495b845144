"""Event records and container ids."""

from __future__ import annotations

import pytest

from events.model import Event, InvalidEvent, InvalidId, is_known_type, validate_id


@pytest.mark.parametrize("good", ["a", "A9", "web-1", "x.y_z", "0" * 64])
def test_valid_ids(good):
    assert validate_id(good) == good


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".", "..", ".hidden", "-x", "a" * 65,
                                 "x" * 300, "a b", "é", "a\0b", None, 5])
def test_invalid_ids_are_refused_with_a_message(bad):
    with pytest.raises(InvalidId, match="container id"):
        validate_id(bad)


def test_record_round_trip_and_unknown_types_are_carried():
    ev = Event(seq=1, time=5, type="future.thing", id="a", data={"k": 1})
    assert Event.from_record(ev.to_record()) == ev
    assert not is_known_type("future.thing")
    assert is_known_type("task.exit")


def test_records_from_older_writers_take_defaults_and_extra_keys_are_ignored():
    ev = Event.from_record({"seq": 2, "time": 1, "type": "supervisor.start", "new": 1})
    assert ev.id == "" and ev.data == {}


@pytest.mark.parametrize("bad", [[], {"seq": 0, "time": 1, "type": "x"},
                                 {"seq": 1, "time": "t", "type": "x"},
                                 {"seq": 1, "time": 1, "type": ""},
                                 {"seq": 1, "time": 1, "type": "x", "data": []},
                                 {"seq": True, "time": 1, "type": "x"}])
def test_malformed_records(bad):
    with pytest.raises(InvalidEvent):
        Event.from_record(bad)
