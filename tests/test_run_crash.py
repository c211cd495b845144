"""``run`` in one request to the shim: its crash window, and its exactly-once records.

``run`` asks the launcher for a shim that creates *and starts* the task before it reports
ready, then appends ``container.create`` + ``task.create`` + ``task.start`` at once. So, unlike
``create``, a task runs before its record is durable: a daemon killed between the shim's ready
and the append leaves a live shim the log does not know, whose task runs. Start-up must end it
(no one was told of it: an unacknowledged run, like an unacknowledged create), never adopt it
as a container that appears from nowhere; a run that was acknowledged and whose record the log
later lost is adopted (tests/test_adopt.py).

The window is hit for real: the launcher (which carries the shim's ready map to the daemon) is
SIGSTOPped as soon as the shim exists, so the daemon never hears the ready; once the shim says
its task runs, the daemon is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

from conftest import _proc_table
from daemon_helpers import Daemon
from shim_helpers import start_command

from events import shim_api, wire
from events.procfs import group_members, is_running
from events.rpc import BlockingConnection
from supervisor.logid import LOG_ID_FILE
from supervisor.shims import new_instance, shim_spec
from supervisor.spec import validate_spec

RUN = f"{os.getpid():x}{random.getrandbits(24):06x}"


def marked(cid: str) -> list[int]:
    """The container's processes (its command carries a marker)."""
    return [pid for pid, (_, cmd) in _proc_table().items()
            if f"mark-{RUN}-{cid} " in cmd + " "]


def launcher_pid(d: Daemon) -> int:
    needle = f"-m shim launcher --root {d.root} "
    pids = [pid for pid, (ppid, cmd) in _proc_table().items()
            if needle in cmd and ppid == d.pid]
    assert len(pids) == 1, pids
    return pids[0]


def shim_state(d: Daemon, cid: str) -> dict[str, Any] | None:
    try:
        address = (d.root / "shims" / cid / shim_api.ADDRESS_FILE).read_text()
        with BlockingConnection(address, role="client", timeout=5) as conn:
            return conn.call("state")
    except (OSError, wire.ProtocolError, wire.RemoteError, EOFError):
        return None


def run_in_background(d: Daemon, cid: str) -> threading.Thread:
    def call() -> None:
        # the daemon is killed under it
        with contextlib.suppress(Exception), BlockingConnection(d.socket, timeout=20) as conn:
            conn.call("run", spec={"name": cid, "command": [
                "sh", "-c", "sleep 1000; true", f"mark-{RUN}-{cid}"]})

    thread = threading.Thread(target=call)
    thread.start()
    return thread


def stop_launcher_when_the_shim_exists(d: Daemon, cid: str, lpid: int) -> bool:
    """SIGSTOP the launcher as soon as ``cid``'s shim has written its address (it reports
    ready only after it started the task). True if the daemon had not recorded it by then."""
    address = d.root / "shims" / cid / shim_api.ADDRESS_FILE
    deadline = time.monotonic() + 10
    while not address.exists():
        assert time.monotonic() < deadline, "the shim never started"
    os.kill(lpid, signal.SIGSTOP)
    return cid not in d.ps()


def run_into_the_window(d: Daemon, cid: str
                        ) -> tuple[dict[str, Any], threading.Thread] | None:
    """Run ``cid`` with the launcher SIGSTOPped as soon as its shim exists, so the shim
    reports ready into the stopped launcher: ``(its shim's state, its task running and
    unrecorded; the client's thread)``, or None when the daemon had recorded the run by then
    (the launcher is let go, the run runs: try another id)."""
    lpid = launcher_pid(d)
    worker = run_in_background(d, cid)
    if not stop_launcher_when_the_shim_exists(d, cid, lpid):
        os.kill(lpid, signal.SIGCONT)  # too late: the run was recorded
        worker.join(20)
        assert d.ps()[cid]["state"] == "running"
        return None
    state = d.wait_for(lambda: (s := shim_state(d, cid)) is not None
                       and s["status"] == "running" and s, timeout=10)
    return state, worker


def window_hits(d: Daemon, prefix: str, attempts: int = 6
                ) -> Iterator[tuple[str, dict[str, Any], threading.Thread]]:
    """:func:`run_into_the_window` with ids ``PREFIX0``, ``PREFIX1``...: ``(id, state,
    client thread)`` of each run that hit it, out of *attempts* tries."""
    for attempt in range(attempts):
        cid = f"{prefix}{attempt}"
        hit = run_into_the_window(d, cid)
        if hit is not None:
            yield cid, *hit


def test_a_run_the_daemon_died_in_before_its_append_is_ended(daemon: Daemon) -> None:
    daemon.wait_for(lambda: '"shim launcher ready"' in daemon.stderr(), timeout=15)
    kept = daemon.run("sleep", "1000", name="kept")
    hits = 0
    ended = ""
    for cid, state, worker in window_hits(daemon, "r"):
        assert state["started_by_run"] is True and state["acked"] == 0, state
        shim_pid, task_pid = state["shim_pid"], state["pid"]
        assert marked(cid)
        daemon.kill9()  # the launcher dies with it (PDEATHSIG), stopped or not
        worker.join(20)
        hits += 1
        ended = cid
        daemon.start().reconciled()
        rows = daemon.ps()
        assert cid not in rows, f"{cid} appeared from nowhere: {rows[cid]}"
        assert [e for e in daemon.stream("events") if e["id"] == cid] == []
        daemon.wait_for(lambda p=shim_pid, t=task_pid: not is_running(p) and not is_running(t),
                        timeout=10)
        assert marked(cid) == [], "a task no one recorded still runs"
        assert not (daemon.root / "shims" / cid).exists()
        assert rows[kept]["state"] == "running"
        daemon.wait_for(lambda: daemon.stderr().count('"shim launcher ready"') >= daemon.starts,
                        timeout=15)
        if hits >= 2:
            break
    print(f"window hit {hits} times (the last in {ended})")
    assert hits >= 1, "the window between the shim's ready and the append was never hit"
    assert "ended a shim the log does not know" in daemon.stderr()
    # the ended run's id is free again: an ordinary run of it works (not r0: a run the
    # launcher was stopped too late for was recorded, and runs)
    daemon.call("run", spec={"name": ended, "command": ["sleep", "1000"]})
    assert daemon.ps()[ended]["state"] == "running"


def test_a_run_whose_shim_died_with_the_daemon_before_its_append_is_ended(
        daemon: Daemon) -> None:
    """As above, and the shim is SIGKILLed too before the daemon is back (the soak's faults
    did this: a daemon kill, then a shim kill): no shim answers for the task, which runs on,
    reparented. Start-up finds it by the task file the shim wrote before it let it run, ends
    it and its process group (no one was told of it), and removes the directory; the id is
    free again."""
    daemon.wait_for(lambda: '"shim launcher ready"' in daemon.stderr(), timeout=15)
    kept = daemon.run("sleep", "1000", name="kept")
    for cid, state, worker in window_hits(daemon, "d"):
        shim_pid, task_pid = state["shim_pid"], state["pid"]
        task = shim_api.read_task_file(daemon.root / "shims" / cid)
        assert task is not None and task["pid"] == task_pid and task["started_by_run"], task
        daemon.kill9()
        worker.join(20)
        os.kill(shim_pid, signal.SIGKILL)
        daemon.wait_for(lambda p=shim_pid: not is_running(p), timeout=10)
        assert len(group_members(task_pid)) == 2, "sh and its sleep run on, their shim gone"
        daemon.start().reconciled()
        daemon.wait_for(lambda t=task_pid: group_members(t) == [], timeout=10)
        rows = daemon.ps()
        assert cid not in rows and rows[kept]["state"] == "running"
        assert not (daemon.root / "shims" / cid).exists()
        assert "ended the task of a run the daemon died in" in daemon.stderr()
        daemon.call("run", spec={"name": cid, "command": ["sleep", "1000"]})
        assert daemon.ps()[cid]["state"] == "running"
        return
    raise AssertionError("the window between the shim's ready and the append was never hit")


def test_a_recorded_runs_task_whose_shim_and_record_are_lost_is_left_alone(
        daemon: Daemon) -> None:
    """The other side of the rule: a run that was recorded (its ``recorded`` names the
    instance: the user was told) whose record the log then lost, and whose shim is gone, is
    not ended: its task runs on and its directory stays (start-up says so), as before."""
    cid = daemon.run("sh", "-c", "sleep 1000; true", name="told")
    state = shim_state(daemon, cid)
    assert state is not None and state["recorded"] is True
    task_pid = state["pid"]
    daemon.stop()
    shim_pid = state["shim_pid"]
    os.kill(shim_pid, signal.SIGKILL)
    daemon.wait_for(lambda: not is_running(shim_pid), timeout=10)
    shutil.rmtree(daemon.root / "events")  # the log lost everything (a fresh one)
    for name in (LOG_ID_FILE, "snapshot"):
        (daemon.root / name).unlink(missing_ok=True)
    try:
        daemon.start().reconciled()
        assert "a shim directory the log does not know" in daemon.stderr()
        assert (daemon.root / "shims" / cid).is_dir()
        assert len(group_members(task_pid)) == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(task_pid, signal.SIGKILL)


def test_a_recorded_run_says_so_before_the_reply(daemon: Daemon) -> None:
    """The fact start-up relies on: by the time ``run`` replied, its directory's ``recorded``
    names the shim's instance (its record is durable) and the shim's ``state`` says so, so a
    log that later loses the record adopts it rather than ending it (below, and
    tests/test_adopt.py)."""
    cid = daemon.run("sleep", "1000", name="marked")
    state = shim_state(daemon, cid)
    assert state is not None and state["started_by_run"] is True and state["recorded"] is True
    recorded = (daemon.root / "shims" / cid / shim_api.RECORDED_FILE).read_text()
    assert recorded == state["instance"]
    created = daemon.call("create", spec={"name": "made", "command": ["sleep", "1000"]})
    state = shim_state(daemon, created["id"])
    assert state is not None and state["started_by_run"] is False and state["recorded"] is False
    assert not (daemon.root / "shims" / created["id"] / shim_api.RECORDED_FILE).exists()


def start_run_by_hand(d: Daemon, cid: str) -> dict[str, Any]:
    """A shim started with ``--run`` as the daemon starts one, whose record the log does not
    hold (the log lost it, or the daemon died before its append) and whose events nobody
    acknowledged: its ``state``."""
    instance = new_instance()
    spec = {"name": cid, "command": ["sh", "-c", "sleep 1000; true", f"mark-{RUN}-{cid}"]}
    directory = d.root / "shims" / cid
    directory.mkdir(parents=True)
    shim_api.write_spec(directory, dict(shim_spec(cid, instance, validate_spec(spec))))
    done = subprocess.run(start_command(d.root, cid, run=True), capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    state = shim_state(d, cid)
    assert state is not None and state["started_by_run"] is True and state["acked"] == 0
    assert state["instance"] == instance
    return state


def test_start_up_adopts_a_run_marked_recorded_and_ends_one_that_is_not(
        daemon: Daemon) -> None:
    """The on-disk promise of ``recorded``: a live shim the log does not know whose run was
    marked recorded for its own instance is adopted (someone was told of it); one without the
    mark, or with the mark of an earlier shim of that directory, is ended. No event of any of
    them was ever acknowledged."""
    daemon.stop()
    states = {cid: start_run_by_hand(daemon, cid) for cid in ("told", "untold", "stale")}
    shim_api.write_recorded(daemon.root / "shims" / "told", states["told"]["instance"])
    shim_api.write_recorded(daemon.root / "shims" / "stale", new_instance())
    assert shim_state(daemon, "told")["recorded"] is True
    assert shim_state(daemon, "stale")["recorded"] is False
    daemon.start().reconciled()
    rows = daemon.ps()
    assert rows["told"]["state"] == "running" and rows["told"]["pid"] == states["told"]["pid"]
    assert [e["type"] for e in daemon.stream("events") if e["id"] == "told"] == [
        "container.adopt"]
    for cid in ("untold", "stale"):
        assert cid not in rows, rows[cid]
        daemon.wait_for(lambda cid=cid: not is_running(states[cid]["shim_pid"])
                        and not is_running(states[cid]["pid"]), timeout=10)
        assert marked(cid) == [], f"{cid}: a task no one was told of still runs"
    assert marked("told")


def test_a_run_that_cannot_exec_records_its_127_once(daemon: Daemon) -> None:
    for policy in ("no", "always"):
        cid = f"typo-{policy}"
        try:
            daemon.call("run", spec={"name": cid, "command": ["/nonexistent/binary"],
                                     "restart": {"policy": policy}})
        except wire.RemoteError as exc:
            assert exc.code == "exec_failed" and cid in exc.message, exc
        else:
            raise AssertionError("run of a command that cannot be executed succeeded")
        row = daemon.ps()[cid]
        assert row["state"] == "stopped" and row["exit_status"] == 127, row
        types = [e["type"] for e in daemon.stream("events") if e["id"] == cid]
        expected = ["container.create", "task.create", "task.exit"]
        if policy == "always":
            expected.append("container.giveup")  # a typo is not a crash loop
        assert types == expected, types
        # the shim delivered its outbox and left; a restart of the daemon adds nothing
    daemon.restart(kill=True).reconciled()
    for cid in ("typo-no", "typo-always"):
        exits = [e for e in daemon.stream("events", types=["task.exit"]) if e["id"] == cid]
        assert len(exits) == 1 and exits[0]["data"]["exit_status"] == 127, exits
