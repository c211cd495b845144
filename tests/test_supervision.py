"""Supervision, what the daemon decides alone: reboots, lost shims, durable stops, bad input.

Real daemons, shims and containers. A shim decides restarts while it lives (its side is in
test_supervision_e2e.py); these tests make the shim go away (SIGKILL, a simulated reboot) or
interrupt the daemon, and check that the daemon applies docker's policies exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import pytest
from conftest import kill_and_wait, processes_naming, reap_adopted_orphans
from daemon_helpers import Daemon, ctl, ok

from events import shim_api, wire
from events.log import EventLog
from events.procfs import is_running
from supervisor import ctl_render, protocol

NS = 1_000_000_000


def events_of(d: Daemon, cid: str) -> list[dict[str, Any]]:
    return [e for e in d.stream("events") if e["id"] == cid]


def types_of(d: Daemon, cid: str) -> list[str]:
    return [e["type"] for e in events_of(d, cid)]


def shim_pid(d: Daemon, cid: str) -> int:
    return int((d.root / "shims" / cid / shim_api.PID_FILE).read_text())


def lose_shim_and_task(d: Daemon, cid: str) -> int:
    """SIGKILL the container's shim, then its task: what the daemon sees of a lost shim whose
    task then ended. Returns the task's pid."""
    pid = d.ps()[cid]["pid"]
    shim = shim_pid(d, cid)
    os.kill(shim, signal.SIGKILL)
    d.wait_for(lambda: "shim.lost" in types_of(d, cid))
    os.kill(pid, signal.SIGKILL)
    return pid


def boot(name: str) -> dict[str, str]:
    """The environment of a daemon that believes it runs in boot ``name``."""
    return {**os.environ, "TETHER_BOOT_ID": name}


def reboot(d: Daemon) -> None:
    """What a reboot does to a root: the daemon, its launcher, every shim and container gone,
    all at once (the shims first here, so that none sees its container die and records it)."""
    everything = processes_naming(str(d.root))
    d.kill9()
    kill_and_wait([pid for pid in everything if str(d.root) in _cmdline(pid)])
    kill_and_wait(everything)
    reap_adopted_orphans()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# -- the spec and bad input -------------------------------------------------------------------


def test_restart_and_health_are_stored_normalised(daemon):
    daemon.call("create", spec={"command": ["true"], "name": "a", "restart": "on-failure:3",
                                "health": {"cmd": "true", "interval": 2}})
    spec = daemon.call("inspect", id="a")["spec"]
    assert spec["restart"] == {"policy": "on-failure", "max_retries": 3, "delay": 0.1,
                               "max_delay": 60.0, "reset": 10.0, "exit_codes": [0]}
    assert spec["health"] == {"cmd": "true", "interval": 2.0, "timeout": 30.0, "retries": 3,
                              "start_period": 0.0, "restart": False}
    daemon.call("create", spec={"command": ["true"], "name": "b"})
    info = daemon.call("inspect", id="b")
    assert info["spec"]["restart"] is None  # the default, policy no, is stored as null
    assert info["restart"]["policy"] == "no"
    assert shim_api.read_spec(daemon.root / "shims" / "b")["restart"]["policy"] == "no"
    # and so the shim gets them, in its spec.json
    shim = shim_api.read_spec(daemon.root / "shims" / "a")
    assert (shim["restart"], shim["health"], shim["restart_attempt"]) == (
        spec["restart"], spec["health"], 0)


@pytest.mark.parametrize("spec,field", [
    ({"restart": "sometimes"}, "unknown restart policy"),
    ({"restart": "on-failure:x"}, "on-failure:x"),
    ({"restart": {"policy": "always", "delay": -1}}, "spec.restart.delay"),
    ({"restart": {"policy": "always", "max_delay": float("inf")}}, "spec.restart.max_delay"),
    ({"restart": {"policy": "always", "reset": float("nan")}}, "spec.restart.reset"),
    ({"restart": {"policy": "always", "bogus": 1}}, "spec.restart: unknown fields"),
    ({"health": {"interval": 5}}, "spec.health.cmd"),
    ({"health": {"cmd": "true", "retries": 0}}, "spec.health.retries"),
    ({"health": {"cmd": "true", "restart": True}}, "spec.health.restart"),
    ({"stop_timeout": 1e308}, "spec.stop_timeout"),
    ({"stop_timeout": float("inf")}, "spec.stop_timeout"),
    ({"memory": 2**63}, "spec.memory"),
    ({"cpus": float("nan")}, "spec.cpus"),
    ({"pids_limit": -1}, "spec.pids_limit"),
    ({"log_keep": 10**9}, "spec.log_keep"),
    ({"user": {"uid": -1}}, "spec.user.uid"),
    ({"labels": {"a": 1}}, "spec.labels"),
    ({"rlimits": {"nofile": [10, 1]}}, "spec.rlimits.nofile"),
])
def test_bad_specs_are_refused_naming_the_field_and_nothing_is_created(daemon, spec, field):
    with pytest.raises(wire.RemoteError) as err:
        daemon.call("run", spec={"command": ["true"], "name": "bad", **spec})
    assert err.value.code == "invalid" and field in err.value.message, err.value
    assert daemon.ps() == {}
    assert not (daemon.root / "shims" / "bad").exists()


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), -1, 1e308, "soon", True])
def test_stop_and_restart_timeouts_are_checked_before_anything_happens(daemon, timeout):
    daemon.run("sleep", "1000", name="s")
    for method in ("stop", "restart"):
        with pytest.raises(wire.RemoteError) as err:
            daemon.call(method, id="s", timeout=timeout)
        assert err.value.code == "invalid" and "timeout" in err.value.message
    assert daemon.ps()["s"]["state"] == "running"
    assert "container.stop" not in types_of(daemon, "s")


@pytest.mark.parametrize("argv,flag", [
    (["--restart", "sometimes"], "--restart"),
    (["--restart", "on-failure:x"], "--restart"),
    (["--restart", "always:3"], "--restart"),
    (["--restart-delay", "-1"], "--restart-delay"),
    (["--restart-max-delay", "inf"], "--restart-max-delay"),
    (["--restart", "always", "--restart-delay", "9", "--restart-max-delay", "2"],
     "--restart-max-delay"),
    (["--health-interval", "5"], "--health-interval"),
    (["--health-retries", "2"], "--health-retries"),
    (["--health-restart", "--health-cmd", "true"], "--health-restart"),
    (["--health-cmd", ""], "--health-cmd"),
    (["--health-cmd", "true", "--health-timeout", "nan"], "--health-timeout"),
])
def test_bad_supervision_flags_are_usage_errors_naming_the_flag(daemon, argv, flag):
    proc = ctl(daemon, "run", "--name", "bad", *argv, "--", "true")
    assert proc.returncode == 2, proc
    assert flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert daemon.ps() == {}


def test_the_flags_become_the_spec(daemon):
    ok(daemon, "create", "--name", "f", "--restart", "on-failure:4", "--restart-delay", "0.5",
       "--restart-max-delay", "8", "--restart-reset", "20", "--health-cmd", "test -e /",
       "--health-interval", "2", "--health-timeout", "1", "--health-retries", "5",
       "--health-start-period", "3", "--health-restart", "--", "sleep", "1000")
    spec = daemon.call("inspect", id="f")["spec"]
    assert spec["restart"] == {"policy": "on-failure", "max_retries": 4, "delay": 0.5,
                               "max_delay": 8.0, "reset": 20.0, "exit_codes": [0]}
    assert spec["health"] == {"cmd": "test -e /", "interval": 2.0, "timeout": 1.0,
                              "retries": 5, "start_period": 3.0, "restart": True}


# -- what ps and inspect show -------------------------------------------------------------------


def test_ps_keeps_its_json_fields_and_the_table_shows_health(daemon):
    daemon.run("sleep", "1000", name="h", health={"cmd": "true"}, restart="always")
    row = daemon.call("ps")[0]
    assert row["health"] == "starting"
    import json

    line = json.loads(ok(daemon, "ps", "--json"))
    assert list(line) == list(ctl_render.PS_JSON_FIELDS)  # health adds nothing to --json
    assert list(line)[: len(protocol.PS_FIELDS)] == list(protocol.PS_FIELDS)
    assert "running (starting)" in ok(daemon, "ps")


def test_inspect_tells_the_restart_policy_and_health(daemon):
    daemon.run("sleep", "1000", name="i", restart="on-failure:3", health={"cmd": "true"})
    info = daemon.call("inspect", id="i")
    assert info["restart"] == {"policy": "on-failure", "max_retries": 3, "attempt": 0,
                               "start_at": None, "gave_up": False, "stopped_by_user": False,
                               "by": None, "reason": None}
    assert info["health"]["status"] == "starting" and info["health"]["failing_streak"] == 0
    assert isinstance(info["health"]["log"], list)
    daemon.run("true", name="plain")
    assert daemon.call("inspect", id="plain")["health"] is None


def test_a_command_that_cannot_run_is_not_a_crash_loop(daemon):
    """docker's behaviour: ``run`` of a missing binary is an error for the caller, recorded
    (exit 127) and settled: no policy restart, and ``wait`` answers at once."""
    with pytest.raises(wire.RemoteError) as err:
        daemon.run("/nonexistent/binary", name="typo", restart="always")
    assert err.value.code == "exec_failed"
    assert daemon.call("wait", id="typo", io_timeout=10)["exit_status"] == 127
    info = daemon.call("inspect", id="typo")
    assert (info["state"], info["restarts"], info["restart"]["gave_up"]) == ("stopped", 0, True)
    assert types_of(daemon, "typo")[-2:] == ["task.exit", "container.giveup"]


# -- durable stops ------------------------------------------------------------------------------


def test_stop_is_recorded_before_the_exit_and_wait_returns(daemon):
    daemon.run("sleep", "1000", name="w", restart="always")
    got: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: got.update(daemon.call("wait", id="w")))
    waiter.start()
    daemon.call("stop", id="w", timeout=5)
    waiter.join(10)
    assert got["exit_status"] == 143
    tail = types_of(daemon, "w")[-2:]
    assert tail == ["container.stop", "task.exit"]
    assert daemon.call("inspect", id="w")["restart"]["stopped_by_user"] is True
    assert daemon.ps()["w"]["state"] == "stopped"


def test_a_recorded_stop_the_daemon_died_in_is_sent_again(daemon):
    """The daemon appended container.stop and died before its shim heard of it: the next
    daemon sends the stop again, and the container stays stopped."""
    daemon.run("sleep", "1000", name="s", restart="always")
    pid = daemon.ps()["s"]["pid"]
    daemon.stop()  # the container keeps running
    log = EventLog.open(daemon.root)
    log.append([("container.stop", "s", {"reason": "stop"})])
    log.close()
    daemon.start()
    result = daemon.call("wait", id="s", io_timeout=30)
    assert result["exit_status"] == 143
    assert not is_running(pid)
    assert types_of(daemon, "s")[-2:] == ["container.stop", "task.exit"]
    assert daemon.ps()["s"]["restarts"] == 0


@pytest.mark.parametrize(("data", "status"), [
    ({"reason": "rm", "timeout": 0}, 137),   # rm -f: SIGKILL at once, not the stop signal
    ({"reason": "stop", "timeout": 0.2}, 137),  # stop -t 0.2: its grace time, not the spec's
    ({"reason": "stop"}, None),  # the spec's 30 s: still waiting for a TERM it ignores
])
def test_a_recorded_stop_is_sent_again_as_it_was_asked(daemon, data, status):
    """``rm -f`` (or ``stop -t N``) appended its container.stop and the daemon died before
    the shim heard of it: the next daemon sends that very stop (its timeout is in the event),
    not a stop with the spec's signal and grace time."""
    daemon.run("sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done", name="s",
               restart="always", stop_timeout=30)
    daemon.wait_for_line("s", "ready")
    daemon.stop()
    log = EventLog.open(daemon.root)
    log.append([("container.stop", "s", data)])
    log.close()
    daemon.start()
    if status is None:
        time.sleep(1.0)
        assert daemon.ps()["s"]["state"] == "running"  # TERM ignored, 29 s of grace left
        return
    result = daemon.call("wait", id="s", io_timeout=20)
    assert (result["exit_status"], result["signal"]) == (status, 9)
    assert daemon.ps()["s"]["restarts"] == 0


# -- a lost shim: the daemon decides ---------------------------------------------------------


def test_after_a_lost_shims_task_ended_the_daemon_applies_the_policy(daemon):
    daemon.run("sleep", "1000", name="a", restart="always")
    daemon.run("sleep", "1000", name="n")
    old = lose_shim_and_task(daemon, "a")
    lose_shim_and_task(daemon, "n")
    row = daemon.wait_for(lambda: (r := daemon.ps()["a"])["state"] == "running"
                          and r["pid"] != old and r)
    assert row["restarts"] == 1 and is_running(row["pid"])
    events = events_of(daemon, "a")
    assert [e["type"] for e in events] == [
        "container.create", "task.create", "task.start", "shim.lost", "task.exit",
        "container.restart", "task.create", "task.start"]
    exit_, restart = events[4], events[5]
    assert exit_["data"]["exit_status"] is None and "shim lost" in exit_["data"]["reason"]
    assert restart["data"]["by"] == "daemon" and restart["data"]["attempt"] == 1
    assert restart["data"]["start_at"] >= restart["time"]
    assert events[-1]["data"]["pid"] == row["pid"]
    # the new shim carries the crash loop's count on (on-failure:MAX counts across shims)
    spec = shim_api.read_spec(daemon.root / "shims" / "a")
    assert spec["restart"]["policy"] == "always" and spec["restart_attempt"] == 1
    n = daemon.wait_for(lambda: (r := daemon.ps()["n"])["state"] == "stopped" and r)
    assert n["restarts"] == 0 and "container.restart" not in types_of(daemon, "n")


def test_a_shim_gone_after_its_container_stopped_is_not_lost(daemon):
    """A stopped container's shim that goes (by itself once its exit is durable, or killed)
    is no loss: its logs stay readable and start makes a new shim."""
    daemon.run("sh", "-c", "echo hello", name="done")
    first = daemon.call("inspect", id="done")["shim_pid"]
    daemon.call("wait", id="done")
    with contextlib.suppress(ProcessLookupError):
        os.kill(first, signal.SIGKILL)
    daemon.wait_for(lambda: not is_running(first))
    daemon.wait_for(lambda: daemon.call("info")["shims"] == 0)
    assert "shim.lost" not in types_of(daemon, "done")
    assert [i["line"] for i in daemon.stream("logs", id="done")] == [b"hello"]
    daemon.call("start", id="done")
    assert daemon.call("wait", id="done")["exit_status"] == 0
    assert daemon.call("inspect", id="done")["shim_pid"] != first
    assert [i["line"] for i in daemon.stream("logs", id="done")] == [b"hello", b"hello"]
    assert types_of(daemon, "done")[-4:] == ["task.delete", "task.create", "task.start",
                                              "task.exit"]


def _restarting(d: Daemon, cid: str) -> dict[str, Any]:
    """Until ``cid`` waits out a back-off; its inspect."""
    d.wait_for(lambda: d.ps()[cid]["state"] == "restarting")
    return d.call("inspect", id=cid)


def test_a_daemon_killed_during_its_own_back_off_restarts_once(daemon):
    daemon.run("sleep", "1000", name="b", restart={"policy": "always", "delay": 2})
    lose_shim_and_task(daemon, "b")
    info = _restarting(daemon, "b")
    assert info["restart"]["by"] == "daemon" and info["restart"]["start_at"] > time.time_ns()
    daemon.kill9()
    daemon.start()
    row = daemon.wait_for(lambda: (r := daemon.ps()["b"])["state"] == "running" and r,
                          timeout=15)
    daemon.restart(kill=True)
    daemon.reconciled()
    types = types_of(daemon, "b")
    assert types.count("container.restart") == 1 and types.count("task.create") == 2
    assert types.count("task.start") == 2
    assert daemon.ps()["b"] == row


def test_stop_during_a_back_off_cancels_the_restart(daemon):
    daemon.run("sleep", "1000", name="c", restart={"policy": "always", "delay": 1})
    lose_shim_and_task(daemon, "c")
    start_at = _restarting(daemon, "c")["restart"]["start_at"]
    daemon.call("stop", id="c")
    assert daemon.ps()["c"]["state"] == "stopped"
    daemon.wait_for(lambda: time.time_ns() > start_at + NS // 2)  # past the restart's time
    assert daemon.ps()["c"]["state"] == "stopped"
    assert types_of(daemon, "c")[-2:] == ["container.restart", "container.stop"]


def test_restart_during_a_back_off_starts_now_and_resets_it(daemon):
    daemon.run("sleep", "1000", name="r", restart={"policy": "always", "delay": 1})
    lose_shim_and_task(daemon, "r")
    start_at = _restarting(daemon, "r")["restart"]["start_at"]
    result = daemon.call("restart", id="r")
    info = daemon.call("inspect", id="r")
    assert info["state"] == "running" and info["pid"] == result["pid"]
    assert info["restarts"] == 2 and info["restart"]["attempt"] == 0
    assert info["restart"]["by"] == "user"
    daemon.wait_for(lambda: time.time_ns() > start_at + NS // 2)
    assert daemon.ps()["r"]["pid"] == result["pid"]  # the cancelled back-off did nothing
    assert types_of(daemon, "r").count("task.create") == 2  # the first and the user's


# -- reboots -----------------------------------------------------------------------------------


def test_a_reboot_starts_again_what_the_policies_say_once(daemon_factory):
    d = daemon_factory(env=boot("boot-1"))
    for name, restart in (("always", "always"), ("always-stopped", "always"),
                          ("unless", "unless-stopped"), ("unless-stopped", "unless-stopped"),
                          ("onfail", "on-failure"), ("no", "no")):
        d.run("sleep", "1000", name=name, restart=restart)
    d.run("true", name="onfail-ok", restart="on-failure")
    d.call("create", spec={"command": ["sleep", "1000"], "name": "never", "restart": "always"})
    assert d.call("wait", id="onfail-ok")["exit_status"] == 0
    for name in ("always-stopped", "unless-stopped"):
        d.call("stop", id=name, timeout=5)
    before = {cid: row["pid"] for cid, row in d.ps().items()}
    reboot(d)
    d.env = boot("boot-2")
    d.start()
    restarted = {"always", "always-stopped", "unless", "onfail"}
    rows = d.wait_for(lambda: (r := d.ps()) and all(r[c]["state"] == "running"
                                                    for c in restarted) and r, timeout=15)
    for cid in restarted:
        assert rows[cid]["pid"] != before[cid] and is_running(rows[cid]["pid"])
        assert rows[cid]["restarts"] == 1
    for cid in ("unless-stopped", "onfail-ok", "no", "never"):
        assert rows[cid]["state"] == "stopped" and rows[cid]["restarts"] == 0, rows[cid]
    # each task the reboot ended has its end recorded once, status unknown, with the reason
    for cid in ("always", "unless", "onfail", "no", "never"):
        ends = [e for e in events_of(d, cid) if e["type"] == "task.exit"]
        assert len(ends) == 1 and ends[0]["data"]["exit_status"] is None, ends
        assert "host rebooted" in ends[0]["data"]["reason"]
    restart = next(e for e in events_of(d, "always") if e["type"] == "container.restart")
    assert restart["data"]["by"] == "daemon" and "rebooted" in restart["data"]["reason"]
    creates = [e for e in events_of(d, "always") if e["type"] == "task.create"]
    assert [e["data"]["boot_id"] for e in creates] == ["boot-1", "boot-2"]
    starts = [e["data"]["boot_id"] for e in d.stream("events", types=["supervisor.start"])]
    assert starts == ["boot-1", "boot-2"]
    # nothing is started twice: not by another daemon of the same boot, nor after a kill -9
    counts = {cid: types_of(d, cid).count("task.start") for cid in rows}
    d.restart()
    d.restart(kill=True)
    d.reconciled()
    assert {cid: row["pid"] for cid, row in d.ps().items()} == \
        {cid: row["pid"] for cid, row in rows.items()}
    assert {cid: types_of(d, cid).count("task.start") for cid in rows} == counts


def test_a_reboot_during_a_back_off_starts_the_container_once(daemon_factory):
    d = daemon_factory(env=boot("boot-1"))
    d.run("sleep", "1000", name="b", restart={"policy": "always", "delay": 2})
    lose_shim_and_task(d, "b")
    _restarting(d, "b")
    reboot(d)
    d.env = boot("boot-2")
    d.start()
    row = d.wait_for(lambda: (r := d.ps()["b"])["state"] == "running" and r, timeout=15)
    d.restart(kill=True)
    d.reconciled()
    assert d.ps()["b"] == row
    types = types_of(d, "b")
    assert types.count("container.restart") == 1 and types.count("task.create") == 2
    assert types.count("task.exit") == 1  # the lost task's; a back-off has no task to end


# -- the daemon's rules for what a shim reports (in-process, a real log) ---------------------------


async def test_what_a_shim_reports_is_recorded_only_when_it_may_be(tmp_path):
    """A shim's own restart follows an exit it saw, never a stop by hand; its next task is a
    transition only from restarting (and gets this boot's id); events only the daemon writes
    are not taken from a shim."""
    import trio

    from supervisor.core import Config, Core
    from supervisor.projection import State

    log = EventLog.open(tmp_path)
    core = Core(Config(tmp_path), log, State(), 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(core.writer.run)
        shim = {"instance": "i1"}
        await core.append([("container.create", "c", {"spec": {"command": ["x"],
                                                               "restart": "always"}}),
                           ("task.create", "c", {"pid": 1, **shim}),
                           ("task.start", "c", {"pid": 1, **shim})])
        assert await core.append_shim_event("c", "task.create", {"pid": 9, **shim,
                                                                  "shim_seq": 1}) is None
        await core.append_shim_event("c", "task.exit", {"exit_status": 3, **shim, "shim_seq": 2})
        assert await core.append_shim_event("c", "container.stop", {**shim, "shim_seq": 3}) \
            is None  # only the daemon stops
        restart = {"attempt": 1, "delay": 0.1, "by": "shim", "start_at": 5, **shim}
        assert await core.append_shim_event("c", "container.restart",
                                            {**restart, "shim_seq": 4}) is not None
        created = await core.append_shim_event("c", "task.create",
                                               {"pid": 2, **shim, "shim_seq": 5})
        assert created is not None and created[0].data["boot_id"] == core.boot_id
        await core.append_shim_event("c", "task.start", {"pid": 2, **shim, "shim_seq": 6})
        await core.append_shim_event("c", "task.exit", {"exit_status": 3, **shim, "shim_seq": 7})
        # the user's stop is recorded before the shim hears of it: its restart comes too late
        await core.append([("container.stop", "c", {"reason": "stop"})])
        assert await core.append_shim_event("c", "container.restart",
                                            {**restart, "shim_seq": 8}) is None
        c = core.container("c")
        assert c is not None and (c.state, c.restarts, c.stopped_by_user) == ("stopped", 1, True)
        nursery.cancel_scope.cancel()
    log.close()


def test_a_task_a_lost_shim_never_delivered_is_recorded_not_doubled(daemon, tmp_path):
    """The shim restarted its task while the daemon was down and was SIGKILLed before it
    delivered that: its task file (written here as the shim's contract says) lets the daemon
    account for the running task instead of starting a second one, then supervise on."""
    import json

    marker = f"mark-unseen-{tmp_path.name}"
    daemon.run("sh", "-c", "sleep 1.5; exit 1", marker, name="u",
               restart={"policy": "always", "delay": 0.1})
    info = daemon.call("inspect", id="u")
    daemon.kill9()
    # what the shim would have run, unseen, when it was lost: a task of the same command
    import subprocess

    unseen = subprocess.Popen(["sh", "-c", "sleep 1.5; exit 1", marker])
    os.kill(info["shim_pid"], signal.SIGKILL)
    os.kill(info["pid"], signal.SIGKILL)
    with open(f"/proc/{unseen.pid}/stat", "rb") as f:
        started = int(f.read().rsplit(b")", 1)[1].split()[19])
    (daemon.root / "shims" / "u" / "task").write_text(json.dumps({
        "instance": info["instance"], "shim_seq": 10**6, "pid": unseen.pid,
        "starttime": started, "attempt": 1}))
    daemon.start()
    daemon.wait_for(lambda: (r := daemon.ps()["u"])["state"] == "running"
                    and r["pid"] == unseen.pid)
    unseen.wait()  # it ends (status 1, unseen by any shim): the daemon restarts the container
    row = daemon.wait_for(lambda: (r := daemon.ps()["u"])["state"] == "running"
                          and r["pid"] != unseen.pid and r)
    types = [e["type"] for e in events_of(daemon, "u")]
    assert types[types.index("container.restart"):][:5] == [
        "container.restart", "task.create", "task.start", "shim.lost", "task.exit"], types
    restarts = [e["data"] for e in events_of(daemon, "u") if e["type"] == "container.restart"]
    assert [r["by"] for r in restarts] == ["shim", "daemon"]
    assert row["restarts"] == 2


def test_a_lost_shim_that_ran_several_tasks_has_its_last_tasks_end_recorded(daemon):
    """The lost shim's exit file holds an earlier task's exit (it restarted the container
    since): the watched task's own end is recorded, and the daemon restarts the container."""
    daemon.run("sh", "-c", "sleep 1; exit 1", name="s", restart={"policy": "always",
                                                                  "delay": 0.1})
    daemon.wait_for(lambda: (r := daemon.ps()["s"])["restarts"] >= 1
                    and r["state"] == "running", timeout=15)
    task = daemon.ps()["s"]["pid"]
    lose_shim_and_task(daemon, "s")
    row = daemon.wait_for(lambda: (r := daemon.ps()["s"])["state"] == "running"
                          and r["pid"] != task and r)
    ends = [e["data"] for e in events_of(daemon, "s") if e["type"] == "task.exit"]
    assert ends[-1]["pid"] == task and ends[-1]["exit_status"] is None, ends
    restarts = [e["data"] for e in events_of(daemon, "s") if e["type"] == "container.restart"]
    assert restarts[-1]["by"] == "daemon" and row["restarts"] == len(restarts)
