
"""The shim with real processes: detachment, reaping, exit statuses, events, stop, logs, abuse.

Every test gets its shims from the ``shims`` fixture, whose teardown kills each shim, container
and descendant by pid and waits for them, so a failing test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import pytest
from shim_helpers import (
    ENV,
    Shims,
    children_of,
    cmdline,
    poll,
    proc_stat,
    sig_ignored,
    start_command,
    tree,
)

from events import shim_api, wire
from events.procfs import process_table
from events.rpc import BlockingConnection

# -- start and detachment ---------------------------------------------------------------------


def test_shim_outlives_its_starter_and_parents_the_container(root: Path, shims: Shims) -> None:
    cid = shims.write_spec(command=["sleep", "30"])
    # The starter runs inside a shell, in its own process group, that we SIGKILL as a whole.
    starter = subprocess.Popen(
        ["sh", "-c", 'exec 3>&1; "$@" && exec sleep 30', "sh", *start_command(root, cid)],
        stdout=subprocess.PIPE, start_new_session=True, text=True)
    try:
        ready = json.loads(starter.stdout.readline())
        os.killpg(starter.pid, signal.SIGKILL)
        starter.wait()
    finally:
        starter.stdout.close()
    shim = shims.adopt(ready, cid)
    assert shim.call("start")["pid"] == shim.task_pid
    state, ppid, _, session = proc_stat(shim.pid)[:4]
    assert state != "Z" and int(ppid) != starter.pid and int(session) != starter.pid
    assert int(session) != os.getsid(0)
    assert int(proc_stat(shim.task_pid)[1]) == shim.pid  # the container's parent is the shim
    assert shim.call("state")["status"] == "running"
    assert (shim.dir / "shim.pid").read_text() == str(shim.pid)
    assert (shim.dir / "address").read_text() == shim.address
    assert os.stat(shim.address).st_mode & 0o777 == 0o600


def test_start_with_pipes_returns_once_ready(root: Path, shims: Shims) -> None:
    """No inherited fd keeps the caller of ``start`` waiting (communicate() returns)."""
    cid = shims.write_spec(command=["sleep", "30"])
    proc = subprocess.Popen(start_command(root, cid), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    shim = shims.adopt(json.loads(out), cid)
    targets = {os.readlink(f"/proc/{shim.pid}/fd/{fd}") for fd in ("0", "1", "2")}
    assert targets == {"/dev/null", str(shim.dir / "shim.log")}
    shim.call("start")
    # right after the exec the dynamic loader may hold a library open on fd 3 for a moment;
    # an fd the task inherited stays open for good
    poll(lambda: not [fd for fd in os.listdir(f"/proc/{shim.task_pid}/fd") if int(fd) > 2],
         timeout=5, what="the task holding no fd but 0, 1 and 2")


def test_second_shim_for_same_id_refuses(shims: Shims) -> None:
    shim = shims.start("sleep 30")
    proc = shims.run_start(shim.id)
    assert proc.returncode == 1
    assert "another shim" in proc.stderr
    assert shim.call("state")["pid"] == shim.task_pid  # the first is untouched


@pytest.mark.parametrize(("spec", "reason"), [
    ({"command": ["true"], "cwd": "/nonexistent/dir"}, "chdir(/nonexistent/dir)"),
    ({"command": []}, "non-empty list"),
    ({"command": ["true"], "runtime": "nosuch"}, "unknown runtime 'nosuch'"),
    ({"command": ["true"], "user": {"uid": "root"}}, "setgroups/setgid/setuid"),
])
def test_failed_start_exits_1_and_leaves_nothing(root: Path, shims: Shims, spec: dict,
                                                 reason: str) -> None:
    cid = shims.write_spec(**spec)
    proc = shims.run_start(cid)
    assert proc.returncode == 1
    assert reason in proc.stderr
    assert not (shim_api.shim_dir(root, cid) / "shim.pid").exists()
    assert not (shim_api.shim_dir(root, cid) / "shim.sock").exists()
    # the leak guard (conftest) fails the test if the shim or its child is still alive


def test_start_without_a_spec_fails(root: Path, shims: Shims) -> None:
    (root / "shims" / "nospec").mkdir(parents=True)
    proc = shims.run_start("nospec")
    assert proc.returncode == 1 and "spec.json" in proc.stderr


def test_long_root_falls_back_to_a_short_socket(tmp_path: Path) -> None:
    root = tmp_path / ("r" * 60) / ("o" * 60)
    root.mkdir(parents=True)
    shims = Shims(root)
    try:
        shim = shims.start("sleep 30")
        assert len(str(shim.dir / "shim.sock")) > 107
        assert len(shim.address) <= 107 and not shim.address.startswith(str(root))
        assert (shim.dir / "address").read_text() == shim.address
        assert os.stat(shim.address).st_mode & 0o777 == 0o600
        assert shim.call("delete", force=True)["signal"] == signal.SIGKILL
        shim.wait_gone()
        assert not os.path.exists(shim.address)
    finally:
        shims.cleanup()


# -- reaping and exit statuses ----------------------------------------------------------------


def test_orphaned_grandchildren_are_reaped_and_the_exit_does_not_wait_for_them(
        shims: Shims) -> None:
    # Ten grandchildren outlive the init, holding its stdout open for a second.
    shim = shims.start("for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 1 &); done; echo bye")
    with shim.connect() as conn:
        conn.call("start")
        began = time.monotonic()
        record = conn.call("wait")
        assert time.monotonic() - began < 0.9, "the exit waited for the orphans' pipes"
        assert record["exit_status"] == 0
        kids = [p for p in children_of(shim.pid)]
        assert len(kids) == 10 and all(int(proc_stat(k)[1]) == shim.pid for k in kids)
        poll(lambda: conn.call("state")["orphans_reaped"] == 10, what="10 orphans reaped")
        assert children_of(shim.pid) == []  # no zombies: everything was reaped
    assert any(line.endswith("stdout F bye") for line in shim.log_lines())


@pytest.mark.parametrize(("script", "status", "sig"), [
    ("exit 0", 0, 0), ("exit 3", 3, 0), ("kill -KILL $$", 137, 9), ("kill -TERM $$", 143, 15)])
def test_exit_status(shims: Shims, script: str, status: int, sig: int) -> None:
    shim = shims.start(script)
    with shim.connect() as conn:
        conn.call("start")
        record = conn.call("wait")
    assert (record["exit_status"], record["signal"]) == (status, sig)
    assert record["pid"] == shim.task_pid and record["instance"] == shim.id + "-i1"
    assert shim_api.read_exit_file(shim.dir) == record
    assert record["exited_at"] <= time.time_ns()


@pytest.mark.parametrize("pause", [0.0, 0.0005, 0.001, 0.002, 0.005])
def test_a_created_task_killed_before_its_start_is_never_an_exec_failure(
        shims: Shims, pause: float) -> None:
    """``kill`` of a created task (allowed) raced by ``start``: the start either ran before
    the init died, or is a ``conflict`` (the task is gone); never an exec failure of the
    user's command. The exit is the kill's, once."""
    shim = shims.start(["sleep", "30"])
    with shim.connect() as conn:
        conn.send_request("kill", {"signal": 9})
        time.sleep(pause)
        conn.send_request("start", {})
        replies = [conn.recv(), conn.recv()]
        assert "error" not in replies[0], replies
        error = replies[1].get("error")
        assert error is None or error["code"] == "conflict", replies
        record = conn.call("wait")
        assert (record["exit_status"], record["signal"]) == (137, 9)
        assert conn.call("state")["status"] == "stopped"


def test_exec_failure_is_an_error_with_errno_and_command(shims: Shims) -> None:
    shim = shims.start(["/nonexistent/program", "arg"])
    with shim.connect() as conn:
        with pytest.raises(wire.RemoteError) as info:
            conn.call("start")
        assert info.value.code == "exec_failed"
        assert "/nonexistent/program" in info.value.message and "errno 2" in info.value.message
        state = conn.call("state")
        assert state["status"] == "stopped" and state["exec_error"]["errno"] == 2
        assert conn.call("wait")["exit_status"] == 127
        assert [e["type"] for e in _replayed(conn)] == ["task.create", "task.exit"]


def test_run_creates_and_starts_the_task_before_it_reports_ready(shims: Shims) -> None:
    """``shim start --run``: one request, and the task runs the user's program when the ready map
    comes back; its events are the ones a create then a start would have queued."""
    before = time.time_ns()
    shim = shims.start("echo hello; exec sleep 30", run=True)
    ready = shim.ready
    assert before <= ready["created_at"] <= ready["started_at"] <= time.time_ns()
    assert "exec_error" not in ready
    with shim.connect() as conn:
        state = conn.call("state")
        assert state["status"] == "running" and state["pid"] == shim.task_pid
        assert [e["type"] for e in _replayed(conn)] == ["task.create", "task.start"]
        with pytest.raises(wire.RemoteError) as info:
            conn.call("start")  # already started: the table's refusal
        assert info.value.code == "conflict"
    assert proc_stat(shim.task_pid)[0] != "Z"
    assert poll(lambda: any(line.endswith(" stdout F hello") for line in shim.log_lines()))


def test_a_run_whose_starter_went_away_before_ready_leaves_nothing(shims: Shims) -> None:
    """The ready pipe is closed (the launcher, or the daemon, died meanwhile): the shim
    aborts, and its task never runs the user's program, or goes with it if it ran (no one
    was told of it). Here the pipe is closed from the start: the shim finds out when it
    names the task to its starter, before it lets the task run."""
    marker = f"mark-{os.getpid()}-{time.monotonic_ns()}"
    cid = shims.write_spec(command=["sh", "-c", f"sleep 30; true {marker}"])
    script = ("import os, sys\nfrom shim import launch\nr, w = os.pipe()\nos.close(r)\n"
              "launch.serve(sys.argv[1], sys.argv[2], w, True)\n")
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(shims.root), cid],
                          capture_output=True, text=True, timeout=30, env=ENV)
    assert proc.returncode == 0, proc.stderr
    log = (shim_api.shim_dir(shims.root, cid) / shim_api.SHIM_LOG).read_text()
    assert "task_created" in log and "start_failed" in log, log
    assert "started_at" not in log, log  # aborted before the task was let run
    assert not [p for p, (_, cmd) in process_table().items() if marker in cmd]


def _kill_the_shim_once_its_task_runs(root: Path, cid: str, marker: str,
                                      deadline: float) -> tuple[int, int] | None:
    """SIGKILL *cid*'s shim the moment its task has exec'd the user's program (its command line
    shows *marker*): ``(shim pid, task pid)``, or None if the start ended first. The shim's pid
    comes from ``shim.pid`` (written before it creates the task), its task is its child."""
    pid_file = shim_api.shim_dir(root, cid) / shim_api.PID_FILE
    shim_pid = task_pid = 0
    while time.monotonic() < deadline:
        if not shim_pid:
            with contextlib.suppress(OSError, ValueError):
                shim_pid = int(pid_file.read_text())
            continue
        if not task_pid:
            kids = children_of(shim_pid)
            task_pid = kids[0] if kids else 0
            if not cmdline(shim_pid):
                return None
            continue
        if marker.encode() in cmdline(task_pid):
            os.kill(shim_pid, signal.SIGKILL)
            return shim_pid, task_pid
    return None


def test_a_run_whose_shim_is_killed_before_it_reports_ready_leaves_nothing(shims: Shims
                                                                           ) -> None:
    """The shim dies (SIGKILL) after its task runs the user's program but before ``ready``:
    ``shim start --run`` fails, and the task goes too (no one will be told of it, and no shim is
    left to end it: it used to run on, unrecorded, as in a soak with seed 103). The window is
    short, so the kill is tried in a loop until it lands in it at least a few times; every
    trial must leave either a ready shim or nothing."""
    hits = misses = 0
    while hits < 3:
        assert hits + misses < 200, f"the window was hit {hits} times in {misses + hits} trials"
        marker = f"mark-{os.getpid()}-{time.monotonic_ns()}"
        cid = shims.write_spec(command=["sh", "-c", f"sleep 30; true {marker}"])
        starter = subprocess.Popen(start_command(shims.root, cid, run=True),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = _kill_the_shim_once_its_task_runs(shims.root, cid, marker,
                                                   time.monotonic() + 10)
        out, err = starter.communicate(timeout=30)
        if killed is not None:
            shims._track(killed[1])
        if starter.returncode == 0:  # ready came first: a start like any other
            misses += 1
            shims._track(json.loads(out)["pid"])
            continue
        assert killed is not None, err
        assert "did not report ready" in err, err
        hits += 1
        # SIGKILLed before the starter exited; the kernel may list them a moment longer
        poll(lambda m=marker: not [p for p, (_, cmd) in process_table().items() if m in cmd],
             timeout=5, what=f"trial {hits + misses}: the unrecorded task to be gone")


def test_run_of_a_command_that_cannot_be_executed_reports_why_and_settles(shims: Shims
                                                                          ) -> None:
    """The ready map says ``exec_error`` (the shim runs on, as after a ``start`` that
    failed): its exit (127) is recorded, and published once the daemon asks."""
    shim = shims.start(["/nonexistent/program"], run=True, restart="always")
    assert "/nonexistent/program" in shim.ready["exec_error"]
    assert "errno 2" in shim.ready["exec_error"] and "started_at" not in shim.ready
    assert shim.exit_record()["exit_status"] == 127
    with shim.connect() as conn:
        state = conn.call("state")
        assert state["status"] == "stopped" and state["restart"]["attempt"] == 0
        assert [e["type"] for e in _replayed(conn)] == ["task.create", "task.exit"]


# -- events -----------------------------------------------------------------------------------


def _replayed(conn: BlockingConnection) -> list[dict]:
    """The items an ``events`` stream sends at once (a ``state`` call marks the end)."""
    events_id = conn.send_request("events")
    state_id = conn.send_request("state")
    items = []
    while True:
        message = conn.recv()
        if message.get("id") == state_id:
            return items
        assert message.get("id") == events_id and "item" in message, message
        items.append(message["item"])


def test_exit_while_disconnected_is_delivered_until_acked(shims: Shims) -> None:
    shim = shims.start("sleep 0.1; exit 5")
    shim.call("start")
    assert shim.exit_record()["exit_status"] == 5  # exited while nobody was connected
    for _ in range(2):  # delivered on a connection, and again after a reconnect without ack
        with shim.connect() as conn:
            events = _replayed(conn)
        assert [(e["seq"], e["type"]) for e in events] == [
            (1, "task.create"), (2, "task.start"), (3, "task.exit")]
    exit_event = events[2]
    assert exit_event["data"] == {k: shim.exit_record()[k]
                                  for k in ("pid", "exit_status", "signal", "exited_at")}
    assert shim.exit_record()["shim_seq"] == 3
    created_at = events[0]["data"].pop("created_at")
    assert events[0]["data"] == {"pid": shim.task_pid, "shim_pid": shim.pid,
                                 "address": shim.address, "instance": shim.id + "-i1"}
    assert created_at <= events[1]["data"]["started_at"] <= exit_event["data"]["exited_at"]
    with shim.connect() as conn:
        assert conn.call("ack", seq=2) is None
        assert [e["seq"] for e in _replayed(conn)] == [3]
        conn.call("ack", seq=3)
    # policy "no": stopped for good and everything acknowledged, the shim ends by itself
    shim.wait_gone()
    assert shim.exit_record()["exit_status"] == 5


def test_live_events_and_requests_in_flight_on_one_connection(shims: Shims) -> None:
    shim = shims.start("sleep 30; exit 7")
    with shim.connect() as conn:
        events_id = conn.send_request("events")
        wait_id = conn.send_request("wait")
        assert conn.call("start")["pid"] == shim.task_pid  # served while wait is parked
        with shim.connect() as other:  # and so is another connection
            assert other.call("state")["status"] == "running"
            other.call("kill", signal=signal.SIGKILL)
        seen: dict[str, object] = {}
        while "wait" not in seen or "task.exit" not in seen:
            message = conn.recv()
            if message["id"] == wait_id:
                seen["wait"] = message["result"]
            elif message["id"] == events_id:
                seen[message["item"]["type"]] = message["item"]
        assert seen["wait"]["exit_status"] == 137


# -- stop, delete, shutdown -------------------------------------------------------------------


def test_stop_escalates_to_sigkill_after_the_caller_left(shims: Shims) -> None:
    shim = shims.start("trap '' TERM; echo trapped; while :; do sleep 0.05; done")
    shim.call("start")
    poll(lambda: any("trapped" in line for line in shim.log_lines()), what="trap set")
    began = time.monotonic()
    with shim.connect() as conn:
        conn.send_request("stop", {"timeout": 0.3})
    record = shim.exit_record()
    assert time.monotonic() - began >= 0.3
    assert (record["exit_status"], record["signal"]) == (137, 9)
    with shim.connect() as conn:  # a later stop just reports the exit
        assert conn.call("stop", timeout=5) == record


def test_stop_of_a_cooperative_container_uses_the_signal(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"])
    shim.call("start")
    with shim.connect() as conn:
        assert conn.call("stop", timeout=10)["exit_status"] == 143


def test_delete_refuses_a_running_task_unless_forced_then_exits(shims: Shims) -> None:
    shim = shims.start("sleep 30 & sleep 30")
    with shim.connect() as conn:
        conn.call("start")
        with pytest.raises(wire.RemoteError) as info:
            conn.call("delete")
        assert info.value.code == "conflict"
        with pytest.raises(wire.RemoteError) as info:
            conn.call("shutdown")
        assert info.value.code == "conflict"
        assert conn.call("delete", force=True)["exit_status"] == 137
    shim.wait_gone()
    assert not os.path.exists(shim.address)
    assert shim_api.read_exit_file(shim.dir)["exit_status"] == 137


def test_kill_all_reaches_processes_that_left_the_group(shims: Shims) -> None:
    shim = shims.start("setsid sleep 30 & sleep 30")
    shim.call("start")
    # both sleeps exec'd (setsid may fork once more before its exec)
    poll(lambda: sum(cmdline(p).startswith(b"sleep") for p in tree(shim.pid)[1:]) >= 2,
         what="setsid sleep")
    shim.call("kill", signal=signal.SIGKILL, all=True)
    assert shim.exit_record()["exit_status"] == 137
    poll(lambda: tree(shim.pid)[1:] == [], what="every process gone")


def test_shutdown_after_exit_and_forced_shutdown_leaves_the_container(shims: Shims) -> None:
    done = shims.start("exit 0")
    with done.connect() as conn:
        conn.call("start")
        conn.call("wait")
        assert conn.call("shutdown") is None
    done.wait_gone()
    running = shims.start(["sleep", "30"])
    running.call("start")
    assert running.call("shutdown", force=True) is None
    running.wait_gone()
    assert os.path.exists(f"/proc/{running.task_pid}")  # left behind, on purpose


def test_bad_params_are_invalid(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"])
    with shim.connect() as conn:
        for method, params, code in [("exec", {}, "invalid"),
                                     ("kill", {"signal": "NOPE"}, "invalid"),
                                     ("stop", {"timeout": -1}, "invalid"),
                                     ("ack", {"seq": "x"}, "invalid"),
                                     ("nosuch", {}, "unknown_method")]:
            with pytest.raises(wire.RemoteError) as info:
                conn.call(method, **params)
            assert info.value.code == code, method
        assert conn.call("kill", signal="TERM") is None
        assert conn.call("wait")["exit_status"] == 143


# -- output -----------------------------------------------------------------------------------


def test_rotation_keeps_every_line_in_cri_format(shims: Shims) -> None:
    shim = shims.start("seq 1 20000; printf 'x%.0s' $(seq 1 20000); printf tail",
                       log={"max_size": 65536, "keep": 100})
    shim.call("start")
    shim.exit_record()
    shim.call("delete")
    shim.wait_gone()
    lines = shim.log_lines()
    assert len(list(shim.dir.glob("container.log.*"))) >= 3
    assert all(os.path.getsize(p) <= 65536 for p in shim.dir.glob("container.log*"))
    numbers = [line.split(" ", 3)[3] for line in lines[:20000]]
    assert numbers == [str(n) for n in range(1, 20001)]
    stamp, stream, tag, _ = lines[0].split(" ", 3)
    assert stream == "stdout" and tag == "F" and stamp.endswith("Z") and len(stamp) == 30
    long_line = lines[20000:]
    assert [line.split(" ")[2] for line in long_line] == ["P", "P"]  # 16 KiB piece, then EOF
    assert "".join(line.split(" ", 3)[3] for line in long_line) == "x" * 20000 + "tail"


def test_a_fast_writer_is_not_slowed_by_its_log(shims: Shims) -> None:
    lines = 300_000
    shim = shims.start(f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -n {lines}")
    with shim.connect() as conn:
        began = time.monotonic()
        conn.call("start")
        assert conn.call("wait")["exit_status"] == 0
        elapsed = time.monotonic() - began
        conn.call("delete")
    shim.wait_gone()
    assert elapsed < 5.0, f"{lines} lines took {elapsed:.2f} s"
    assert len(shim.log_lines()) == lines


# -- crash safety and abuse -------------------------------------------------------------------


def test_a_sigkilled_shim_leaves_a_whole_exit_file_or_none(shims: Shims) -> None:
    for attempt in range(13):
        shim = shims.start(["true"])
        conn = shim.connect()
        conn.send_request("start")
        if attempt == 12:  # at least one kill after the exit was recorded
            shim.exit_record()
        else:
            time.sleep(attempt * 0.0005)  # a kill at various moments of start -> exit
        os.kill(shim.pid, signal.SIGKILL)
        conn.close()
        shim.wait_gone()
        raw = (shim.dir / "exit").read_bytes() if (shim.dir / "exit").exists() else None
        if raw is not None or attempt == 12:
            record = json.loads(raw or b"")
            assert set(record) == {"pid", "exit_status", "signal", "exited_at", "shim_seq",
                                   "instance"}
            assert record["exit_status"] == 0 and record["instance"] == shim.id + f"-i{attempt + 1}"


def _raw(address: str, payload: bytes, hello: bool = True) -> list[dict]:
    """Send *payload* (after a hello) and return what the shim answers before it closes or
    goes quiet."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    sock.connect(address)
    decoder = wire.FrameDecoder()
    out: list[dict] = []
    try:
        if hello:
            sock.sendall(wire.encode(wire.hello("client")))
        sock.sendall(payload)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            out += decoder.feed(data)
            if any("error" in m for m in out):
                sock.settimeout(0.2)
    except TimeoutError:
        pass
    finally:
        sock.close()
    return out


def test_bad_input_gets_errors_and_the_shim_serves_others(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"])
    bystander = shim.connect()
    idle = socket.socket(socket.AF_UNIX)  # connects and says nothing, or half a frame
    idle.connect(shim.address)
    idle.sendall(b"\x00\x00")
    try:
        garbage = _raw(shim.address, struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")
        assert garbage[-1]["error"]["code"] == "protocol"
        huge = _raw(shim.address, b"\xff\xff\xff\xff")
        assert "limit" in huge[-1]["error"]["message"]
        not_a_map = _raw(shim.address, struct.pack(">I", 2) + msgpack.packb([1]))
        assert not_a_map[-1]["error"]["code"] in ("protocol", "invalid")
        no_hello = _raw(shim.address, wire.encode(wire.request(1, "state")), hello=False)
        assert no_hello[-1]["error"]["code"] == "protocol"
        # an unknown method is a request-level error: the connection stays usable
        replies = _raw(shim.address, wire.encode(wire.request(1, "frobnicate"))
                       + wire.encode(wire.request(2, "state")))
        assert replies[1]["error"]["code"] == "unknown_method"
        assert replies[2]["result"]["status"] == "created"
        assert bystander.call("state")["pid"] == shim.task_pid
        assert BlockingConnection(shim.address).call("start")["pid"] == shim.task_pid
    finally:
        idle.close()
        bystander.close()


def test_env_cwd_and_user_reach_the_container(shims: Shims, tmp_path: Path) -> None:
    shim = shims.start('echo "$FOO $(pwd) $(id -u):$(id -g)"', env={**ENV, "FOO": "bar"},
                       cwd=str(tmp_path), user={"uid": 65534, "gid": 65534},
                       rlimits={"nofile": [64, 64]})
    with shim.connect() as conn:
        conn.call("start")
        assert conn.call("wait")["exit_status"] == 0
    assert shim.log_lines()[-1].endswith(f"stdout F bar {tmp_path} 65534:65534")


@pytest.mark.skipif(os.geteuid() != 0, reason="new namespaces need root")
def test_new_namespaces_as_root(shims: Shims) -> None:
    shim = shims.start("hostname tether-inner && echo $(hostname) $$",
                       namespaces=["uts", "pid", "ipc"])
    with shim.connect() as conn:
        conn.call("start")
        assert conn.call("wait")["exit_status"] == 0
    assert shim.log_lines()[-1].endswith("stdout F tether-inner 1")  # pid 1 of its namespace
    assert socket.gethostname() != "tether-inner"


def test_a_client_that_never_reads_is_cut_off_not_waited_for(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"])
    greedy = socket.socket(socket.AF_UNIX)
    greedy.connect(shim.address)
    greedy.settimeout(10)
    request = wire.encode(wire.request(1, "state"))
    try:
        greedy.sendall(wire.encode(wire.hello("client")))
        with contextlib.suppress(OSError):  # the shim may cut us off while we still send
            for _ in range(100):
                greedy.sendall(request * 1000)  # 100,000 replies of 155 bytes, never read
        with shim.connect() as conn:
            assert conn.call("state")["status"] == "created"
        log = shim.dir / "shim.log"
        poll(lambda: "client_too_slow" in log.read_text(), what="the greedy client cut off")
    finally:
        greedy.close()


def test_delete_of_a_created_task_kills_it_before_it_runs(shims: Shims) -> None:
    shim = shims.start("echo ran")
    with shim.connect() as conn:
        assert conn.call("delete")["signal"] == signal.SIGKILL
    shim.wait_gone()
    assert shim.log_lines() == []  # the user's command never ran


def test_sigterm_sigint_sighup_do_not_end_a_shim(shims: Shims) -> None:
    """Only delete, shutdown or SIGKILL end a shim; the signals are logged, and the container
    does not inherit them ignored."""
    shim = shims.start(["sleep", "30"])
    shim.call("start")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(shim.pid, sig)
    poll(lambda: (shim.dir / "shim.log").read_text().count("signal_ignored") == 3,
         what="three signal_ignored records")
    assert shim.call("state")["status"] == "running"
    assert sig_ignored(shim.task_pid) & 0b110 == 0  # SIGHUP, SIGINT not ignored
    assert shim.call("delete", force=True)["exit_status"] == 137
    shim.wait_gone()


def test_exec_streams_large_output_whole_and_outlives_its_caller(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"])
    with shim.connect() as conn, shim.connect() as events:
        conn.call("start")
        items = list(conn.stream("exec", exec_id="big", command=["sh", "-c", "seq 1 200000"]))
        out = b"".join(i["data"] for i in items if i.get("stream") == "stdout")
        assert out == b"".join(b"%d\n" % i for i in range(1, 200001))
        assert items[-1] == {"exit_status": 0, "signal": 0}
        with shim.connect() as gone:  # the caller leaves: the process runs on, its exit is told
            gone.send_request("exec", {"exec_id": "orphan",
                                       "command": ["sh", "-c", "sleep 0.2; echo late; exit 3"]})
        seen = []
        for event in events.stream("events"):
            seen.append((event["type"], event["data"].get("exec_id"),
                         event["data"].get("exit_status")))
            if seen[-1] == ("task.exec.exit", "orphan", 3):
                break
        assert shim.call("state")["execs"] == []
        conn.call("kill", signal=9)
    shim.call("wait")


def _blocked_writing(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "pipe_write" in f.read()
    except OSError:
        return False


def test_a_slow_exec_caller_gets_backpressure_not_cut_off(shims: Shims) -> None:
    """24 MB through a caller that reads nothing for a while: the shim stops reading the
    process's pipes (it blocks on write) instead of buffering past MAX_OUTBUF and cutting the
    caller off; every byte arrives in order."""
    shim = shims.start(["sleep", "30"])
    shim.call("start")
    with shim.connect() as conn:
        rid = conn.send_request("exec", {"exec_id": "flood",
                                         "command": ["sh", "-c", "seq 1 3000000; exit 4"]})
        # the shim stops reading once the caller is behind: the writer then blocks on its pipe
        poll(lambda: any(_blocked_writing(p) for p in tree(shim.pid)[1:]),
             what="the exec'd process blocked on its full pipe")
        out, last = [], None
        while True:
            message = conn.recv()
            assert message.get("id") == rid and "error" not in message, message
            if message.get("end"):
                break
            item = message["item"]
            if "data" in item:
                out.append(item["data"])
            else:
                last = item
    data = b"".join(out)
    assert len(data) > 8 * 1024 * 1024
    assert data == b"".join(b"%d\n" % i for i in range(1, 3000001))
    assert last == {"exit_status": 4, "signal": 0}
    shim.call("delete", force=True)
