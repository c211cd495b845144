"""Lost history never kills a container: a snapshot ahead of the log is refused (and kept), a
shim the log does not know is adopted or left alone (issue 10, item 1), and the daemon never
goes through a symlink planted under ``ROOT/shims`` (item 8). Real daemons, real shims."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from daemon_helpers import Daemon, ctl

from events import shim_api, wire
from events.procfs import is_running


def types_of(d: Daemon, cid: str) -> list[str]:
    return [e["type"] for e in d.stream("events") if e["id"] == cid]


def exits_of(d: Daemon, cid: str) -> list[dict]:
    return [e for e in d.stream("events", types=["task.exit"]) if e["id"] == cid]


def shim_pid(d: Daemon, cid: str) -> int:
    return int((d.root / "shims" / cid / shim_api.PID_FILE).read_text())


def lose_history(d: Daemon, lost: tuple[str, ...], *, snapshot: bool) -> int:
    """Run ``old`` (kept) and the ``lost`` containers, then put back the copy of ``ROOT/events``
    taken before the lost ones were created (a restored backup). With ``snapshot``, a snapshot
    covering the lost events stays in place. Returns the log's last seq after the put-back."""
    d.run("sleep", "1000", name="old")
    d.stop()
    backup = d.root.parent / "events.bak"
    shutil.copytree(d.root / "events", backup)
    snapshot_bak = d.root.parent / "snapshot.bak"
    if (d.root / "snapshot").exists():
        shutil.copy2(d.root / "snapshot", snapshot_bak)
    d.start()
    last = d.call("status")["last_seq"]
    for cid in lost:
        d.run("sleep", "1000", name=cid)
    d.stop()  # a clean stop writes a snapshot at its last seq
    shutil.rmtree(d.root / "events")
    shutil.copytree(backup, d.root / "events")
    if not snapshot:
        (d.root / "snapshot").unlink()
        if snapshot_bak.exists():
            shutil.copy2(snapshot_bak, d.root / "snapshot")
    return last


def test_a_snapshot_ahead_of_the_log_is_refused_and_kept(daemon):
    daemon.stop()
    daemon.start()
    last = lose_history(daemon, ("new1", "new2"), snapshot=True)
    pids = [shim_pid(daemon, c) for c in ("new1", "new2")]
    evidence = (daemon.root / "snapshot").read_bytes()
    daemon.start(expect_fail=True)
    assert daemon.wait_exit() == 1
    err = daemon.stderr().rsplit("supervisord started", 1)[-1]
    found = re.search(r"the event log ends at seq (\d+) but \S+/snapshot covers up to seq "
                      r"(\d+)", err)
    assert found and int(found[1]) == last - 1 < int(found[2]), err  # - its supervisor.start
    assert "--repair" in err and "Nothing was changed" in err
    # never overwritten, and nothing was killed
    assert (daemon.root / "snapshot").read_bytes() == evidence
    assert all(is_running(p) for p in pids)
    assert "ended a shim" not in daemon.stderr()


def test_repair_keeps_the_snapshot_aside_and_adopts_the_survivors(daemon):
    lose_history(daemon, ("new1", "new2"), snapshot=True)
    rows_before = {c: shim_pid(daemon, c) for c in ("new1", "new2")}
    evidence = (daemon.root / "snapshot").read_bytes()
    daemon.args.append("--repair")
    daemon.start().reconciled()
    kept = list(daemon.root.glob("snapshot.ahead-of-log.*"))
    assert len(kept) == 1 and kept[0].read_bytes() == evidence
    rows = daemon.ps()
    for cid, spid in rows_before.items():
        assert rows[cid]["state"] == "running", rows
        assert is_running(spid) and rows[cid]["pid"] and is_running(rows[cid]["pid"])
        assert types_of(daemon, cid) == ["container.adopt"]
    assert rows["old"]["state"] == "running"
    # an ordinary container afterwards: stop records one exit, rm removes it
    assert daemon.call("stop", id="new1", timeout=5)["exit_status"] == 143
    assert len(exits_of(daemon, "new1")) == 1
    daemon.call("rm", id="new2", force=True)
    assert "new2" not in daemon.ps()
    seqs = [e["seq"] for e in daemon.stream("events")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_shortened_log_without_a_snapshot_adopts_running_containers(daemon):
    """``truncate`` the log (no snapshot to prove it): the shims whose task ran are adopted
    with their restart policy, never killed."""
    lose_history(daemon, ("new1",), snapshot=False)
    spid = shim_pid(daemon, "new1")
    daemon.start().reconciled()
    row = daemon.ps()["new1"]
    assert row["state"] == "running" and is_running(spid)
    assert "ended a shim" not in daemon.stderr()
    info = daemon.call("inspect", id="new1")
    assert info["spec"]["command"] == ["sleep", "1000"]
    # its later events are deduplicated like any other shim's: a restart is recorded once
    daemon.kill9()
    daemon.start().reconciled()
    assert types_of(daemon, "new1").count("container.adopt") == 1
    assert daemon.ps()["new1"]["pid"] == row["pid"]


def test_an_adopted_container_keeps_its_restart_policy(daemon):
    daemon.run("sleep", "1000", name="old")
    daemon.stop()
    backup = daemon.root.parent / "events.bak"
    shutil.copytree(daemon.root / "events", backup)
    daemon.start()
    daemon.run("sleep", "1000", name="keeper", restart={"policy": "always"})
    daemon.stop()
    (daemon.root / "snapshot").unlink()
    shutil.rmtree(daemon.root / "events")
    shutil.copytree(backup, daemon.root / "events")
    daemon.start().reconciled()
    row = daemon.ps()["keeper"]
    assert row["state"] == "running"
    assert daemon.call("inspect", id="keeper")["spec"]["restart"]["policy"] == "always"
    os.kill(row["pid"], signal.SIGKILL)
    daemon.wait_for(lambda: (r := daemon.ps()["keeper"])["state"] == "running"
                    and r["pid"] != row["pid"], timeout=15)
    assert exits_of(daemon, "keeper")[0]["data"]["exit_status"] == 137
    assert len(exits_of(daemon, "keeper")) == 1


def test_a_shim_whose_task_never_ran_is_still_ended(daemon):
    """A start the daemon died in before recording it: no one was told, nothing ran."""
    daemon.stop()
    directory = daemon.root / "shims" / "stray"
    directory.mkdir(parents=True)
    shim_api.write_spec(directory, {"id": "stray", "instance": "x1",
                                    "command": ["sleep", "100"], "env": {"PATH": "/bin:/usr/bin"}})
    subprocess.run([sys.executable, "-I", "-m", "shim", "start", "--root", str(daemon.root),
                    "--id", "stray"], capture_output=True, check=True)
    daemon.start()
    daemon.wait_for(lambda: not directory.exists(), timeout=5)
    assert "stray" not in daemon.ps()


def test_a_directory_without_a_shim_or_a_record_is_left_alone_and_reported(daemon):
    directory = daemon.root / "shims" / "leftover"
    directory.mkdir(parents=True)
    (directory / shim_api.CONTAINER_LOG).write_text("the last words\n")
    daemon.restart().reconciled()
    assert (directory / shim_api.CONTAINER_LOG).read_text() == "the last words\n"
    assert "no shim running in it: left alone" in daemon.stderr()
    assert "leftover" not in daemon.ps()


def test_a_removal_the_daemon_recorded_is_finished(daemon):
    """rm leaves a marker before container.delete: a daemon that died before removing the
    directory finishes the removal on its next start."""
    daemon.run("true", name="gone")
    daemon.call("wait", id="gone")
    daemon.call("rm", id="gone")
    directory = daemon.root / "shims" / "gone"
    directory.mkdir()  # as if the daemon had died between container.delete and the rmtree
    (directory / "removing").touch()
    (directory / shim_api.CONTAINER_LOG).write_text("x\n")
    daemon.restart().reconciled()
    daemon.wait_for(lambda: not directory.exists(), timeout=5)


def test_a_recreated_container_whose_delete_was_lost_is_adopted(daemon):
    """The log knows ``same`` (first life), lost its ``rm`` and the ``run`` that made it again:
    the live shim in its directory is the second life's. It is adopted, not ended."""
    daemon.run("sleep", "1000", name="same")
    daemon.stop()
    backup = daemon.root.parent / "events.bak"
    shutil.copytree(daemon.root / "events", backup)
    daemon.start()
    daemon.call("rm", id="same", force=True)
    daemon.run("sleep", "1001", name="same")
    second = daemon.ps()["same"]["pid"]
    daemon.stop()
    (daemon.root / "snapshot").unlink()
    shutil.rmtree(daemon.root / "events")
    shutil.copytree(backup, daemon.root / "events")
    daemon.start().reconciled()
    daemon.wait_for(lambda: "container.adopt" in types_of(daemon, "same"), timeout=10)
    row = daemon.ps()["same"]
    assert row["state"] == "running" and row["pid"] == second and is_running(second)
    assert daemon.call("inspect", id="same")["spec"]["command"] == ["sleep", "1001"]
    assert daemon.call("stop", id="same", timeout=5)["exit_status"] == 143


def test_rm_force_right_after_the_shim_died_records_the_exit(daemon):
    """Item 4: ``rm -f`` before the link noticed the shim's death."""
    for i in range(3):
        cid = f"L{i}"
        daemon.run("sleep", "1000", name=cid)
        task = daemon.ps()[cid]["pid"]
        os.kill(shim_pid(daemon, cid), signal.SIGKILL)
        proc = ctl(daemon, "rm", "-f", cid)
        assert proc.returncode == 0, proc.stderr
        assert cid not in daemon.ps()
        daemon.wait_for(lambda t=task: not is_running(t))
        ends = exits_of(daemon, cid)
        assert len(ends) == 1, ends


# -- symlinks under ROOT/shims (item 8) ----------------------------------------------------------

def test_run_refuses_a_symlink_where_its_directory_goes(daemon, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (daemon.root / "shims" / "evil").symlink_to(elsewhere)
    with pytest.raises(wire.RemoteError) as err:
        daemon.run("sleep", "100", name="evil")
    assert "symlink" in err.value.message
    assert list(elsewhere.iterdir()) == []
    assert "evil" not in daemon.ps()
    daemon.call("status")  # still serving


def test_rm_unlinks_a_planted_symlink_and_never_its_target(daemon, tmp_path):
    daemon.run("true", name="t")
    daemon.call("wait", id="t")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    (elsewhere / shim_api.CONTAINER_LOG).write_text("not t's log\n")
    directory = daemon.root / "shims" / "t"
    # its shim ends once the exit is acknowledged (it removes its pid file last)
    try:
        daemon.wait_for(lambda: not (directory / shim_api.PID_FILE).exists())
    except TimeoutError:
        raise AssertionError((sorted(os.listdir(directory)), daemon.ps(),
                              (directory / "shim.log").read_text()[-3000:],
                              daemon.stderr()[-3000:])) from None
    shutil.rmtree(directory)
    directory.symlink_to(elsewhere)
    with pytest.raises(wire.RemoteError) as err:  # logs never read through it
        daemon.stream("logs", id="t")
    assert "symlink" in err.value.message
    daemon.call("rm", id="t")
    assert not os.path.lexists(directory)
    assert (elsewhere / "precious").read_text() == "keep me"


def test_reconciliation_leaves_a_symlink_alone(daemon, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me")
    (daemon.root / "shims" / "planted").symlink_to(elsewhere)
    daemon.restart().reconciled()
    assert (elsewhere / "precious").read_text() == "keep me"
    assert os.path.islink(daemon.root / "shims" / "planted")
    assert "symlink" in daemon.stderr()


def test_repair_of_a_flipped_byte_turns_no_survivor_into_a_victim(daemon):
    """The issue's third reproduction: one byte flipped mid-log, then ``--repair``."""
    for i in range(6):
        daemon.run("sleep", "1000", name=f"s{i}")
    before = {cid: row["pid"] for cid, row in daemon.ps().items()}
    daemon.stop()
    seg = sorted((daemon.root / "events").glob("*.seg"))[-1]
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    daemon.start(expect_fail=True)
    assert daemon.wait_exit() == 1  # corrupt: refused until --repair
    daemon.args.append("--repair")
    daemon.start().reconciled()
    rows = daemon.ps()
    assert {cid: row["pid"] for cid, row in rows.items()} == before
    assert all(row["state"] == "running" and is_running(row["pid"])
               for row in rows.values()), ([(r["id"], r["state"]) for r in rows.values()],
                                           [(e["seq"], e["type"], e["id"])
                                            for e in daemon.stream("events")])
    adopted = [e["id"] for e in daemon.stream("events", types=["container.adopt"])]
    assert adopted and len(adopted) == len(set(adopted))  # the cut ones, once each
    assert "ended a shim" not in daemon.stderr()


def test_a_removal_whose_delete_was_lost_comes_back_stopped(daemon):
    """What --repair cannot give back (docs/design.md section 6): an ``rm -f`` whose events were
    all lost. The container comes back as the log last saw it, its end recorded as a lost
    shim's (status unknown); nothing runs, nothing is killed, and ``rm`` removes it again."""
    daemon.run("sleep", "1000", name="old")
    daemon.stop()
    backup = daemon.root.parent / "events.bak"
    shutil.copytree(daemon.root / "events", backup)
    daemon.start()
    task = daemon.ps()["old"]["pid"]
    daemon.call("rm", id="old", force=True)
    daemon.stop()
    (daemon.root / "snapshot").unlink()
    shutil.rmtree(daemon.root / "events")
    shutil.copytree(backup, daemon.root / "events")
    daemon.start().reconciled()
    result = daemon.call("wait", id="old", io_timeout=10)
    assert result["exit_status"] is None and not is_running(task)
    daemon.call("rm", id="old")
    assert "old" not in daemon.ps()
