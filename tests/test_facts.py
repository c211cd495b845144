"""The one home of each small fact: signal names, /proc, RFC 3339 times, the vocabulary."""

from __future__ import annotations

import os
import signal
import subprocess

import msgpack
import pytest

from events import procfs, timefmt
from events.domain import ContainerState, ErrorCode, known
from events.signals import InvalidSignal, parse_signal, signal_name


@pytest.mark.parametrize(("text", "number"), [
    ("TERM", 15), ("SIGTERM", 15), ("term", 15), ("15", 15), (9, 9), ("usr1", 10),
])
def test_signal_names_and_numbers(text: object, number: int) -> None:
    assert parse_signal(text) == number


@pytest.mark.parametrize("bad", ["SIG_SETMASK", "SETMASK", "IGN", "DFL", "NSIG", "0", 0, 65,
                                 -1, True, "", None, 1.5])
def test_what_is_not_a_signal_is_refused(bad: object) -> None:
    with pytest.raises(InvalidSignal):
        parse_signal(bad)


def test_signal_name() -> None:
    assert signal_name(signal.SIGKILL) == "SIGKILL"
    assert signal_name(40) in ("SIG40", signal.Signals(40).name if 40 in
                               signal.Signals._value2member_map_ else "SIG40")


def test_procfs_sees_a_process_and_its_zombie() -> None:
    me = procfs.read_stat(os.getpid())
    assert me is not None and me.alive and me.ppid == os.getppid()
    assert procfs.starttime(os.getpid()) == me.starttime
    child = subprocess.Popen(["true"])
    while (stat := procfs.read_stat(child.pid)) is not None and stat.alive:
        pass  # until it has exited: a zombie until we reap it
    assert stat is not None and stat.state == "Z" and not procfs.is_running(child.pid)
    child.wait()
    assert procfs.read_stat(child.pid) is None and procfs.starttime(None) is None


def test_boot_id_is_the_kernels_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TETHER_BOOT_ID", raising=False)
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert procfs.boot_id() == f.read().strip()
    monkeypatch.setenv("TETHER_BOOT_ID", "simulated")
    assert procfs.boot_id() == "simulated"


def test_rfc3339_round_trips_nanoseconds() -> None:
    ns = 1_700_000_000_000_000_001
    assert timefmt.rfc3339(ns) == "2023-11-14T22:13:20.000000001Z"
    assert timefmt.parse_rfc3339(timefmt.rfc3339(ns)) == ns
    half = timefmt.parse_rfc3339("2023-11-14T22:13:20.5+00:00")
    assert half == 1_700_000_000_500_000_000
    assert timefmt.parse_rfc3339("2023-11-14T22:13:20Z") == 1_700_000_000_000_000_000
    assert timefmt.parse_rfc3339("yesterday") is None
    assert timefmt.parse_rfc3339("2023-11-14T22:13:20.x1Z") is None


def test_enums_are_their_wire_strings() -> None:
    assert msgpack.unpackb(msgpack.packb(ContainerState.RUNNING)) == "running"
    assert known(ErrorCode, "no_space") and not known(ErrorCode, "nope") and not known(ErrorCode, 3)


def test_one_rendering_of_events_for_dump_and_supervisorctl() -> None:
    """``python -m events dump`` and ``supervisorctl events`` render through events.render:
    non-UTF-8 bytes are kept as base64 by both (they once disagreed)."""
    from events import render
    from events.__main__ import event_json as dump_json
    from events.model import Event
    from supervisor import ctl_render

    ev = Event(7, 1_700_000_000_000_000_001, "task.exit", "web",
               {"exited_at": 1_700_000_000_000_000_002, "blob": b"\xff\x00", "text": b"ok"})
    line = dump_json(ev)
    assert line == ctl_render.event_json(ev.to_record()) == render.event_json(ev.to_record())
    assert '"blob": {"base64": "/wA="}' in line and '"text": "ok"' in line
    human = ctl_render.event_line(ev.to_record())
    assert human.startswith("7 2023-11-14T22:13:20.000000001Z task.exit web ")
    assert "exited_at=2023-11-14T22:13:20.000000002Z" in human
