"""Recovery: kill -9 of the daemon, of shims, exits while down, corrupt logs, unknown shims."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from daemon_helpers import Daemon

from events import shim_api, wire
from events.procfs import group_members, is_running
from events.rpc import BlockingConnection


def types_of(d: Daemon, cid: str) -> list[str]:
    return [e["type"] for e in d.stream("events") if e["id"] == cid]


def exits_of(d: Daemon, cid: str) -> list[dict]:
    return [e for e in d.stream("events", types=["task.exit"]) if e["id"] == cid]


def test_kill9_keeps_containers_and_reconciles_with_the_same_pids(daemon):
    for i in range(5):
        daemon.run("sleep", "100", name=f"c{i}")
    before = {cid: row["pid"] for cid, row in daemon.ps().items()}
    daemon.kill9()
    for pid in before.values():
        os.kill(pid, 0)
    daemon.start()
    rows = daemon.wait_for(lambda: (r := daemon.ps()) and all(
        x["state"] == "running" for x in r.values()) and r)
    assert {cid: row["pid"] for cid, row in rows.items()} == before
    # they are still under control: stop works through the re-established link
    assert daemon.call("stop", id="c0", timeout=5)["exit_status"] == 143
    seqs = [e["seq"] for e in daemon.stream("events")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_exit_while_daemon_is_down_is_recorded_exactly_once(daemon):
    daemon.run("sh", "-c", "sleep 0.3; exit 5", name="quick")
    pid = daemon.ps()["quick"]["pid"]
    daemon.kill9()
    daemon.wait_for(lambda: not is_running(pid))  # it exits while nobody listens
    daemon.start()
    result = daemon.call("wait", id="quick")
    assert result["exit_status"] == 5
    daemon.restart(kill=True)  # the shim may re-send; the log must not grow a duplicate
    daemon.restart()
    assert len(exits_of(daemon, "quick")) == 1


@pytest.mark.slow
def test_exits_during_a_20s_downtime_are_recorded(daemon):
    """containerd drops an exit after its 15 s retry window; we keep it as long as needed."""
    daemon.run("sh", "-c", "sleep 0.5; exit 9", name="late1")
    daemon.run("sh", "-c", "sleep 1; kill -TERM $$", name="late2")
    daemon.kill9()
    time.sleep(20)
    daemon.start()
    assert daemon.call("wait", id="late1")["exit_status"] == 9
    assert daemon.call("wait", id="late2")["exit_status"] == 143
    assert len(exits_of(daemon, "late1")) == len(exits_of(daemon, "late2")) == 1


def test_a_stop_in_flight_when_the_daemon_dies_completes(daemon):
    daemon.run("sh", "-c", "trap 'echo term' TERM; echo ready; while :; do sleep 0.1; done",
               name="stubborn")
    daemon.wait_for_line("stubborn", "ready")
    errors: list[BaseException] = []

    def stopper():
        try:
            daemon.call("stop", id="stubborn", timeout=1.5)
        except BaseException as exc:  # the daemon dies under it: expected
            errors.append(exc)

    t = threading.Thread(target=stopper)
    t.start()
    daemon.wait_for_line("stubborn", "term")  # the shim sent SIGTERM: the stop is under way
    daemon.kill9()
    t.join()
    assert errors
    daemon.start()
    result = daemon.call("wait", id="stubborn")
    assert result["exit_status"] == 137 and result["signal"] == 9
    assert len(exits_of(daemon, "stubborn")) == 1


def test_a_sigkilled_shim_gives_shim_lost(daemon):
    """(bench/daemon.py measures how soon.)"""
    daemon.run("sleep", "100", name="orphaned")
    shim_pid = int((daemon.root / "shims/orphaned" / shim_api.PID_FILE).read_text())
    task_pid = daemon.ps()["orphaned"]["pid"]
    os.kill(shim_pid, signal.SIGKILL)
    daemon.wait_for(lambda: "shim.lost" in types_of(daemon, "orphaned"), interval=0.01)
    lost = next(e for e in daemon.stream("events") if e["type"] == "shim.lost")
    assert lost["data"]["pid"] == task_pid and lost["data"]["task_alive"] is True
    # the container outlived its shim; its end is still recorded (status unknown)
    assert daemon.ps()["orphaned"]["state"] == "running"
    os.kill(task_pid, signal.SIGKILL)
    result = daemon.call("wait", id="orphaned", io_timeout=5)
    assert result["exit_status"] is None and "shim lost" in result["reason"]
    daemon.call("rm", id="orphaned")


def test_a_lost_shim_and_task_found_at_start_are_recorded(daemon):
    daemon.run("sleep", "100", name="gone")
    shim_pid = int((daemon.root / "shims/gone" / shim_api.PID_FILE).read_text())
    task_pid = daemon.ps()["gone"]["pid"]
    daemon.kill9()
    os.kill(shim_pid, signal.SIGKILL)
    os.kill(task_pid, signal.SIGKILL)
    daemon.wait_for(lambda: not is_running(shim_pid) and not is_running(task_pid))
    daemon.start()
    result = daemon.call("wait", id="gone", io_timeout=5)
    assert result["exit_status"] is None
    assert types_of(daemon, "gone")[-2:] == ["shim.lost", "task.exit"]


def test_a_shim_the_log_does_not_know_is_ended(daemon):
    """A crash between starting a shim and recording container.create leaves a shim on
    disk that no one was told about: the next start ends it and says so."""
    daemon.stop()
    directory = daemon.root / "shims" / "stray"
    directory.mkdir(parents=True)
    shim_api.write_spec(directory, {"id": "stray", "instance": "x1",
                                    "command": ["sleep", "100"], "env": {"PATH": "/bin:/usr/bin"}})
    out = subprocess.run([sys.executable, "-I", "-m", "shim", "start", "--root",
                          str(daemon.root), "--id", "stray"], capture_output=True, check=True)
    assert b"task_pid" in out.stdout
    daemon.start()
    daemon.wait_for(lambda: not directory.exists()
                    and "ended a shim the log does not know" in daemon.stderr(), timeout=5)
    assert "stray" not in daemon.ps()


def test_ps_shows_unknown_until_a_container_is_reconciled(daemon):
    # in its back-off, its shim frozen: nothing but reconciliation can tell what it does
    daemon.run("sh", "-c", "exit 1", name="frozen", restart={"policy": "always", "delay": 60})
    # running, its shim frozen too: the kernel proves its task runs under that shim
    daemon.run("sleep", "100", name="sleeper")
    daemon.wait_for(lambda: daemon.ps()["frozen"]["state"] == "restarting")
    shims = [int((daemon.root / "shims" / cid / shim_api.PID_FILE).read_text())
             for cid in ("frozen", "sleeper")]
    daemon.kill9()
    for pid in shims:
        os.kill(pid, signal.SIGSTOP)
    try:
        daemon.start()
        rows = daemon.ps()
        assert rows["frozen"]["state"] == "unknown"
        assert rows["sleeper"]["state"] == "running"  # docs/design.md 6: proven running
        assert daemon.call("status")["reconciling"] is True
    finally:
        for pid in shims:
            os.kill(pid, signal.SIGCONT)
    daemon.wait_for(lambda: daemon.ps()["frozen"]["state"] == "restarting", timeout=10)


def _corrupt_middle_record(root) -> None:
    seg = sorted((root / "events").glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    pos = len(data) // 2
    data[pos] ^= 0xFF
    seg.write_bytes(bytes(data))


def test_a_corrupt_log_is_refused_with_file_and_offset_then_repaired(daemon):
    for _ in range(5):
        daemon.run("true")
    daemon.stop()
    _corrupt_middle_record(daemon.root)
    daemon.start(expect_fail=True)
    assert daemon.wait_exit() == 1
    err = daemon.stderr()
    assert ".seg" in err and "offset" in err and "--repair" in err
    daemon.args.append("--repair")
    daemon.start()
    assert daemon.call("status")["ok"]
    seqs = [e["seq"] for e in daemon.stream("events")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_snapshots_make_restart_replay_only_the_tail(daemon_factory):
    d = daemon_factory("--snapshot-every", "5", "--retain-events", "0",
                       "--segment-size", "4096")
    for i in range(8):
        d.run("true", name=f"t{i}")
    for i in range(8):
        d.call("wait", id=f"t{i}")
    before = d.ps()
    d.kill9()
    d.start()
    after = d.ps()
    for cid in before:
        assert {k: v for k, v in after[cid].items()} == before[cid]
    info = d.call("info")
    assert info["snapshot_seq"] > 0
    # compaction removed old segments, but never past the snapshot
    segs = sorted((d.root / "events").glob("*.seg"))
    first = int(segs[0].name.split(".")[0])
    assert 1 < first <= info["snapshot_seq"] + 1
    # a subscriber asking for compacted history is told so, not handed a gap
    with pytest.raises(wire.RemoteError) as err:
        d.stream("events", since=0)
    assert err.value.code == "not_found" and "compacted" in err.value.message
    assert d.stream("events", since=first - 1)[0]["seq"] == first


@pytest.mark.root
def test_a_full_disk_fails_commands_with_no_space_and_loses_nothing(root):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    events_dir = root / "events"
    events_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(events_dir)],
                   check=True)
    d = Daemon(root)
    try:
        d.start()
        d.run("sleep", "100", name="before")
        fill = events_dir / "fill"
        with contextlib.suppress(OSError), open(fill, "wb", buffering=0) as f:
            while True:
                f.write(b"\0" * 4096)
        pad = {"PAD": "x" * 6000}  # needs fresh pages: the append cannot fit in slack
        with pytest.raises(Exception) as err:
            d.run("sleep", "100", name="big", env=pad)
        assert getattr(err.value, "code", None) == "no_space", err.value
        assert "nothing was changed" in err.value.message
        assert "big" not in d.ps()
        assert not (root / "shims/big").exists()
        d.wait_for(lambda: not _pids_with(f"{root} --id big"))  # ended (it exits just after)
        assert d.running() and d.call("status")["ok"]
        fill.unlink()
        assert d.run("sleep", "100", name="big", env=pad) == "big"
        d.kill9()
        d.start().reconciled()
        rows = d.ps()
        assert rows["before"]["state"] == rows["big"]["state"] == "running"
        seqs = [e["seq"] for e in d.stream("events")]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        d.cleanup()
        subprocess.run(["umount", "-l", str(events_dir)], check=False)


def _pids_with(text: str) -> list[int]:
    from conftest import processes_naming

    return processes_naming(text)


def test_blocking_client_survives_daemon_restart(daemon):
    daemon.restart(kill=True)
    with BlockingConnection(daemon.socket) as conn:
        assert conn.call("status")["ok"]


def test_a_log_with_foreign_or_malformed_records_still_starts(root, daemon_factory):
    from events.log import EventLog

    log = EventLog.open(root)
    log.append([("container.create", "ok", {"spec": {"command": ["true"]}}),
                ("container.create", "bad", {"spec": [1, 2, 3]}),
                ("task.start", "ghost", {"pid": 1}),
                ("future.type", "ok", {"x": 1})])
    log.close()
    d = daemon_factory()
    assert set(d.ps()) == {"ok"}
    assert d.call("info")["skipped_events"] == 0  # counted at replay, logged there
    # written once the daemon has loaded its logging (info may be answered before: early)
    d.wait_for(lambda: "event skipped during replay" in d.stderr())


def test_a_torn_tail_is_cut_and_the_daemon_starts(daemon):
    daemon.run("true", name="t")
    daemon.call("wait", id="t")
    last = daemon.call("status")["last_seq"]
    daemon.kill9()
    seg = sorted((daemon.root / "events").glob("*.seg"))[-1]
    with open(seg, "ab") as f:
        f.write(b"\x00\x00\x01\x00\xde\xad")  # half a record: a crash mid-append
    daemon.start()
    events = daemon.stream("events")
    assert [e["seq"] for e in events] == list(range(1, last + 2))
    assert events[-1]["type"] == "supervisor.start"


def test_rm_force_ends_what_a_lost_shims_ended_task_left_in_its_group(daemon, tmp_path):
    """The shim is killed, then its task exits leaving a child behind (in the task's process
    group, with no shim to end it): the daemon ends that child as the shim would have, and
    records one exit; ``rm -f`` then finds nothing left."""
    child_file, go = tmp_path / "child", tmp_path / "go"
    daemon.run("sh", "-c", f"sleep 1000 & echo $! > {child_file}; "
               f"while [ ! -e {go} ]; do sleep 0.02; done", name="leaver")
    task_pid = daemon.ps()["leaver"]["pid"]
    daemon.wait_for(lambda: child_file.exists() and child_file.read_text().strip())
    child = int(child_file.read_text())
    os.kill(int((daemon.root / "shims/leaver" / shim_api.PID_FILE).read_text()), signal.SIGKILL)
    daemon.wait_for(lambda: "shim.lost" in types_of(daemon, "leaver"))
    assert is_running(child)
    go.touch()
    daemon.wait_for(lambda: not is_running(task_pid))
    daemon.wait_for(lambda: not is_running(child))
    daemon.call("rm", id="leaver", force=True)
    ends = exits_of(daemon, "leaver")
    assert len(ends) == 1 and ends[0]["data"]["exit_status"] is None, ends


def test_stop_ends_the_task_of_a_lost_shim_as_its_shim_would(daemon):
    """docker's ``stop`` with the shim gone (killed): the stop signal to the task, provably
    still it, and SIGKILL to it and its group after the timeout; one exit recorded each, the
    container stopped and startable again (it used to answer 'no exit was recorded')."""
    daemon.run("sh", "-c", "trap '' TERM; while :; do sleep 0.05; done", name="deaf")
    daemon.run("sleep", "1000", name="polite")
    pids = {cid: daemon.ps()[cid]["pid"] for cid in ("deaf", "polite")}
    for cid in pids:
        os.kill(int((daemon.root / "shims" / cid / shim_api.PID_FILE).read_text()),
                signal.SIGKILL)
        daemon.wait_for(lambda cid=cid: "shim.lost" in types_of(daemon, cid))
    daemon.call("stop", id="polite", timeout=30)  # SIGTERM ends it: no wait for the timeout
    began = time.monotonic()
    daemon.call("stop", id="deaf", timeout=1)  # ignores SIGTERM: SIGKILL after 1 s
    assert time.monotonic() - began >= 1.0
    for cid, pid in pids.items():
        assert not is_running(pid)
        assert daemon.ps()[cid]["state"] == "stopped"
        assert len(exits_of(daemon, cid)) == 1, exits_of(daemon, cid)
    assert group_members(pids["deaf"]) == []  # its sleeps too
    daemon.call("start", id="polite")
    assert daemon.ps()["polite"]["state"] == "running"


def test_rm_force_ends_the_task_of_a_lost_shim(daemon):
    daemon.run("sleep", "1000", name="orphan")
    task_pid = daemon.ps()["orphan"]["pid"]
    os.kill(int((daemon.root / "shims/orphan" / shim_api.PID_FILE).read_text()), signal.SIGKILL)
    daemon.wait_for(lambda: "shim.lost" in types_of(daemon, "orphan"))
    daemon.call("rm", id="orphan", force=True)
    assert "orphan" not in daemon.ps()
    daemon.wait_for(lambda: not is_running(task_pid))
    ends = exits_of(daemon, "orphan")
    assert len(ends) == 1 and ends[0]["data"]["exit_status"] is None, ends


def test_what_an_ended_task_left_is_ended_only_when_provably_its_own(tmp_path):
    """``links.end_leftovers``: the group of a task that ended is killed when one of its
    members started before the task ended (while it lives, the kernel gives the group's id to no
    new process); a group whose members all started after that moment may be another
    process's, which was given the task's pid since: left alone."""
    from supervisor.links import end_leftovers

    child_file = tmp_path / "child"
    before = time.time_ns() - 10**9  # a second before the task began: proves nothing
    task = subprocess.Popen(["sh", "-c", f"sleep 1000 & echo $! > {child_file}; sleep 0.1"],
                            start_new_session=True)
    task.wait()
    ended = time.time_ns()
    child = int(child_file.read_text())
    try:
        assert is_running(child)
        assert end_leftovers(task.pid, before) == []
        assert end_leftovers(task.pid, None) == []
        assert is_running(child)
        assert end_leftovers(task.pid, ended) == [child]
        deadline = time.monotonic() + 5
        while is_running(child) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not is_running(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
