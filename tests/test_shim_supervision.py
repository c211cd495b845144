"""The shim as the supervisor of its container: restart policies with back-off, health checks,
the final stop, and the shim's own end, with real processes and a test playing the daemon.

The daemon's side is a test client (:class:`shim_helpers.EventReader`): it may be absent while
things happen ("the daemon is down") and read the replayed outbox afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from shim_helpers import EventReader, ShimHandle, Shims, children_of, poll, proc_stat, tree

from events import shim_api, wire


def always(delay: float = 0.0, **extra: object) -> dict[str, object]:
    return {"policy": "always", "delay": delay, **extra}


def running_pid(shim: ShimHandle, other_than: int) -> int:
    """Poll ``state`` until a task other than *other_than* runs; its pid."""
    def new_pid() -> int:
        state = shim.call("state")
        ok = state["status"] == "running" and state["pid"] != other_than
        return int(state["pid"]) if ok else 0

    return int(poll(new_pid, what="a new task running"))


def alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reparented to pytest (a subreaper) once the shim left
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def assert_restart_order(types: list[str]) -> None:
    """Every restart's events come as section 8 says: exit, restart, create, start."""
    for i, t in enumerate(types):
        if t == "container.restart":
            assert types[i - 1] == "task.exit", types
            assert types[i + 1 : i + 3] in (["task.create", "task.start"], ["task.create"],
                                            []), types


def test_always_restarts_a_sigkilled_task_while_no_daemon_is_connected(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"], restart=always())
    shim.call("start")
    os.kill(shim.task_pid, signal.SIGKILL)
    new = running_pid(shim, shim.task_pid)
    shims._track(new)
    assert int(proc_stat(new)[1]) == shim.pid  # the shim's child, like the first
    state = shim.call("state")
    assert state["restart"] == {"policy": "always", "attempt": 1, "start_at": None,
                                "gave_up": False, "final": False}
    reader = EventReader(shim, ack=False)  # the daemon comes back: everything, once, in order
    items = reader.until(lambda items: len(items) >= 6)
    assert [(e["seq"], e["type"]) for e in items] == [
        (1, "task.create"), (2, "task.start"), (3, "task.exit"), (4, "container.restart"),
        (5, "task.create"), (6, "task.start")]
    restart = items[3]["data"]
    assert restart["attempt"] == 1 and restart["by"] == "shim" and restart["delay"] == 0
    assert "always" in restart["reason"] and restart["start_at"] >= items[2]["data"]["exited_at"]
    assert items[2]["data"]["exit_status"] == 137
    assert items[4]["data"]["pid"] == items[5]["data"]["pid"] == new
    record = shim.exit_record()
    assert record["shim_seq"] == 3 and record["exit_status"] == 137
    # the restarted task's trace, for a daemon that finds this shim lost before delivery
    task = shim_api.read_task_file(shim.dir)
    assert task == {"instance": state["instance"], "shim_seq": 5, "pid": new,
                    "starttime": int(proc_stat(new)[19]), "attempt": 1,
                    "started_by_run": False}
    reader.close()


def test_the_first_task_started_by_request_leaves_no_task_file(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"], restart=always())
    shim.call("start")  # the daemon asked and records it: no trace needed
    assert shim_api.read_task_file(shim.dir) is None


def test_on_failure_3_starts_four_times_then_gives_up_and_the_shim_ends(shims: Shims) -> None:
    shim = shims.start("exit 3", restart={"policy": "on-failure", "max_retries": 3,
                                          "delay": 0.05})
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: any(e["type"] == "container.giveup" for e in items))
    assert reader.count("task.start") == 4 and reader.count("task.exit") == 4
    restarts = reader.of("container.restart")
    assert [r["attempt"] for r in restarts] == [1, 2, 3]
    delays = [r["delay"] for r in restarts]
    assert delays == sorted(delays) and delays[0] < delays[1] < delays[2], delays
    # jitter 0.9-1.1, the delay recorded to the millisecond
    assert all(0.05 * 0.9 * 2**i - 0.0005 <= d <= 0.05 * 1.1 * 2**i + 0.0005
               for i, d in enumerate(delays))
    assert reader.of("container.giveup") == [{"attempts": 3, "exit_status": 3,
                                              "reason": reader.of("container.giveup")[0]["reason"]}]
    assert "gave up after 3 restarts" in reader.of("container.giveup")[0]["reason"]
    assert reader.types()[-2:] == ["task.exit", "container.giveup"]
    assert_restart_order(reader.types())
    # stopped for good, everything acknowledged: the shim ends by itself
    shim.wait_gone()
    assert reader.until(lambda items: reader.ended, what="the end of the stream")
    last_exit = [e for e in reader.items if e["type"] == "task.exit"][-1]
    record = shim_api.read_exit_file(shim.dir)
    assert record is not None and record["exit_status"] == 3
    assert record["shim_seq"] == last_exit["seq"]
    assert not (shim.dir / "shim.pid").exists() and not (shim.dir / "address").exists()
    assert not os.path.exists(shim.address)
    assert (shim.dir / "container.log").exists() and (shim.dir / "shim.log").exists()


def test_a_shim_carrying_on_a_lost_shims_crash_loop_counts_on(shims: Shims) -> None:
    """The daemon starts a new shim for a lost shim's container with the restarts in a row so
    far (spec restart_attempt): on-failure:3 after 2 restarts has one left, not three."""
    shim = shims.start("exit 3", restart={"policy": "on-failure", "max_retries": 3,
                                          "delay": 0.01}, restart_attempt=2)
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: any(e["type"] == "container.giveup" for e in items))
    assert [r["attempt"] for r in reader.of("container.restart")] == [3]
    assert reader.count("task.start") == 2


def test_always_restarts_a_success_with_growing_back_off_until_stopped(shims: Shims) -> None:
    shim = shims.start("exit 0", restart=always(0.02))
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: sum(e["type"] == "container.restart" for e in items) >= 4)
    delays = [r["delay"] for r in reader.of("container.restart")][:4]
    assert delays[0] < delays[1] < delays[2] < delays[3], delays
    record = shim.call("stop", timeout=5)
    assert record["exit_status"] == 0
    shim.wait_gone()  # stopped by hand: final, and the shim ends once everything is acked
    reader.until(lambda items: reader.ended, what="the end of the stream")
    later = [e["type"] for e in reader.items if e["seq"] > record["shim_seq"]]
    assert "task.create" not in later and "task.start" not in later, later
    assert_restart_order(reader.types())


def test_a_stop_during_the_back_off_cancels_it_and_answers_at_once(shims: Shims) -> None:
    shim = shims.start("exit 1", restart=always(30))
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: items and items[-1]["type"] == "container.restart")
    state = shim.call("state")
    assert state["status"] == "restarting" and state["restart"]["start_at"] > time.time_ns()
    began = time.monotonic()
    record = shim.call("stop", timeout=10)
    assert time.monotonic() - began < 2
    assert record == shim.exit_record() and record["exit_status"] == 1
    shim.wait_gone()
    assert reader.count("task.create") == 1


def test_a_shim_killed_during_its_back_off_leaves_the_last_exit_on_disk(shims: Shims) -> None:
    shim = shims.start("exit 4", restart=always(30))
    reader = EventReader(shim, ack=False)
    shim.call("start")
    reader.until(lambda items: items and items[-1]["type"] == "container.restart")
    os.kill(shim.pid, signal.SIGKILL)
    shim.wait_gone()
    exit_event = reader.items[-2]
    record = shim_api.read_exit_file(shim.dir)
    assert record is not None and record["exit_status"] == 4
    assert record["shim_seq"] == exit_event["seq"] and record["instance"] == shim.id + "-i1"


def test_a_task_killed_in_a_loop_while_the_daemon_comes_and_goes(shims: Shims) -> None:
    """Each SIGKILL is one exit, one restart, one start; the daemon's side reads part of the
    stream, leaves without acking, comes back: every event exactly once after the acks."""
    shim = shims.start(["sleep", "30"], restart=always())
    shim.call("start")
    pid, seen, acked = shim.task_pid, {}, 0
    for round_ in range(6):
        os.kill(pid, signal.SIGKILL)
        pid = running_pid(shim, pid)
        shims._track(pid)
        reader = EventReader(shim, ack=False)  # a daemon that reads, acks half, then dies
        items = reader.until(lambda items, pid=pid: items and items[-1]["type"] == "task.start"
                             and items[-1]["data"]["pid"] == pid)
        assert items[0]["seq"] == acked + 1  # a replay starts right after the last ack
        for e in items:
            assert seen.setdefault(e["seq"], e) == e  # the same event for the same seq
        if round_ % 2:
            acked = items[len(items) // 2]["seq"]
            reader.conn.call("ack", seq=acked)
        reader.close()
    types = [seen[s]["type"] for s in sorted(seen)]
    assert sorted(seen) == list(range(1, len(seen) + 1))
    assert types.count("task.exit") == 6 and types.count("container.restart") == 6
    assert types.count("task.start") == 7
    assert_restart_order(types)
    assert shim.call("state")["restart"]["attempt"] == 6


def test_kill_is_a_signal_and_the_policy_handles_the_exit(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"], restart=always())
    shim.call("start")
    shim.call("kill", signal=signal.SIGTERM)
    shims._track(running_pid(shim, shim.task_pid))  # restarted: kill is not stop


# -- health checks ----------------------------------------------------------------------------


def test_health_fail_pass_fail_gives_exactly_three_changes(shims: Shims, tmp_path: Path
                                                            ) -> None:
    flag = tmp_path / "healthy"
    shim = shims.start(["sleep", "30"], health={"cmd": f"echo checking; test -f {flag}",
                                                "interval": 0.05, "retries": 1})
    shim.call("start")

    def status() -> str:
        return str(shim.call("state")["health"]["status"])

    poll(lambda: status() == "unhealthy", what="unhealthy")  # no daemon connected meanwhile
    flag.touch()
    poll(lambda: status() == "healthy", what="healthy")
    flag.unlink()
    poll(lambda: status() == "unhealthy", what="unhealthy again")
    reader = EventReader(shim, ack=False)
    reader.until(lambda items: sum(e["type"] == "container.health" for e in items) >= 3)
    state = shim.call("state")  # (a request answered after the stream's replay)
    changes = reader.of("container.health")
    assert [c["status"] for c in changes] == ["unhealthy", "healthy", "unhealthy"]
    assert changes[0] == {"status": "unhealthy", "failing_streak": 1, "exit_code": 1,
                          "output": "checking\n"}
    assert changes[1]["exit_code"] == 0 and changes[1]["failing_streak"] == 0
    log = state["health"]["log"]
    assert 1 <= len(log) <= 5 and all(set(r) == {"start", "end", "exit_code", "output"}
                                      for r in log)
    reader.close()


def test_a_hanging_check_is_killed_at_its_timeout_and_leaves_nothing(shims: Shims) -> None:
    marker = f"{os.getpid() % 1000 + 60}.{time.monotonic_ns() % 10**6}"
    shim = shims.start(["sleep", "30"], health={
        "cmd": f"sleep {marker} & sleep {marker}", "interval": 0.05, "timeout": 0.2,
        "retries": 2})
    shim.call("start")
    poll(lambda: shim.call("state")["health"]["status"] == "unhealthy", what="unhealthy")
    log = shim.call("state")["health"]["log"]
    assert all(r["exit_code"] == -1 and "timed out after 0.2 s" in r["output"] for r in log)
    assert all(0.2e9 <= r["end"] - r["start"] < 5e9 for r in log)
    shim.call("stop", timeout=5)

    def leftovers() -> list[int]:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    with open(f"/proc/{name}/cmdline", "rb") as f:
                        cmd = f.read()
                except OSError:
                    continue
                if marker.encode() in cmd:
                    found.append(int(name))
        return found

    poll(lambda: not leftovers(), what="no check process left")
    poll(lambda: children_of(shim.pid) == [], what="no zombie left")  # a zombie is a child


def test_unhealthy_with_health_restart_stops_and_restarts_the_task(shims: Shims) -> None:
    shim = shims.start(["sleep", "30"], restart=always(0.01),
                       health={"cmd": "exit 1", "interval": 0.05, "retries": 1,
                               "restart": True})
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: sum(e["type"] == "task.start" for e in items) >= 2)
    types = reader.types()
    assert types[:7] == ["task.create", "task.start", "container.health", "task.exit",
                         "container.restart", "task.create", "task.start"]
    assert reader.of("task.exit")[0]["exit_status"] == 143  # its stop signal, SIGTERM
    assert "unhealthy" in reader.of("container.restart")[0]["reason"]
    shims._track(reader.of("task.start")[-1]["pid"])
    reader.close()


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [float("inf"), float("nan"), 1e308, -1, "10"])
def test_a_stop_timeout_must_be_finite_and_bounded(shims: Shims, timeout: object) -> None:
    shim = shims.start(["sleep", "30"])
    shim.call("start")
    with pytest.raises(wire.RemoteError) as info:
        shim.call("stop", timeout=timeout)
    assert info.value.code == "invalid" and "stop timeout" in info.value.message
    assert shim.call("state")["status"] == "running"  # nothing changed, the shim serves


@pytest.mark.parametrize(("spec", "reason"), [
    ({"stop_timeout": float("inf")}, "spec stop_timeout"),
    ({"restart": "sometimes"}, "unknown restart policy"),
    ({"restart": {"policy": "always", "delay": float("nan")}}, "spec restart.delay"),
    ({"health": {"cmd": "true", "timeout": 1e308}}, "spec health.timeout"),
])
def test_a_bad_spec_number_fails_the_start_clearly(shims: Shims, spec: dict, reason: str
                                                    ) -> None:
    cid = shims.write_spec(command=["true"], **spec)
    proc = shims.run_start(cid)
    assert proc.returncode == 1 and reason in proc.stderr, proc.stderr


def test_a_symlinked_shim_directory_is_refused(root: Path, shims: Shims, tmp_path: Path
                                               ) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shim_api.write_spec(elsewhere, {"id": "evil", "instance": "i1", "command": ["true"]})
    (root / "shims").mkdir(parents=True, exist_ok=True)
    (root / "shims" / "evil").symlink_to(elsewhere)
    proc = shims.run_start("evil")
    assert proc.returncode == 1 and "is a symlink" in proc.stderr, proc.stderr
    assert sorted(os.listdir(elsewhere)) == ["spec.json"]  # nothing written through it
    (root / "shims" / "evil").unlink()
    target = tmp_path / "target.log"
    cid = shims.write_spec(command=["true"])
    (shim_api.shim_dir(root, cid) / "shim.log").symlink_to(target)
    proc = shims.run_start(cid)
    assert proc.returncode == 1 and "is a symlink" in proc.stderr, proc.stderr
    assert not target.exists()


def test_without_a_policy_the_shim_ends_once_its_exit_is_acknowledged(shims: Shims) -> None:
    shim = shims.start("(sleep 30 &); exit 2")  # an orphan outlives the init
    reader = EventReader(shim, ack=False)
    shim.call("start")
    reader.until(lambda items: items and items[-1]["type"] == "task.exit")
    orphans = [p for p in tree(shim.pid) if p != shim.pid]
    assert orphans  # the orphan still runs: nothing acknowledged yet, the shim waits
    assert shim.call("state")["status"] == "stopped"
    reader.conn.call("ack", seq=reader.items[-1]["seq"])
    shim.wait_gone()
    for pid in orphans:  # killed by the shim before it left
        poll(lambda pid=pid: not alive(pid), what=f"orphan {pid} gone")
    assert shim_api.read_exit_file(shim.dir)["exit_status"] == 2


def test_a_start_that_cannot_exec_is_an_error_not_a_crash_loop(shims: Shims) -> None:
    shim = shims.start(["/nonexistent/program"], restart=always())
    reader = EventReader(shim)
    with pytest.raises(wire.RemoteError) as info:
        shim.call("start")
    assert info.value.code == "exec_failed"
    reader.until(lambda items: reader.ended, what="the shim's end")  # reading acks each event
    shim.wait_gone()  # settled, everything acknowledged: no restart, the shim ended
    assert reader.types() == ["task.create", "task.exit"]
    assert shim_api.read_exit_file(shim.dir)["exit_status"] == 127


def test_a_shim_killed_at_random_moments_of_a_crash_loop_leaves_the_latest_exit(
        shims: Shims) -> None:
    """Whatever the moment of the SIGKILL, the exit file is whole and no exit is lost: it holds
    the one the daemon saw last, or a later one it has not seen (its seq says which), or,
    killed between telling the latest exit and writing it, the one before (the daemon has
    the latest from the event)."""
    import random

    for _ in range(8):
        shim = shims.start("exit 1", restart=always(0.002))
        reader = EventReader(shim)
        shim.call("start")
        reader.until(lambda items: sum(e["type"] == "task.exit" for e in items) >= 2)
        time.sleep(random.uniform(0, 0.03))  # a random moment of the loop, on purpose
        os.kill(shim.pid, signal.SIGKILL)
        shim.wait_gone()
        reader.until(lambda items, r=reader: r.ended, what="the stream's end")
        exits = [e for e in reader.items if e["type"] == "task.exit"]
        record = shim_api.read_exit_file(shim.dir)
        assert record is not None and record["exit_status"] == 1
        assert record["shim_seq"] >= exits[-1]["seq"] or record["shim_seq"] == exits[-2]["seq"]
        if record["shim_seq"] == exits[-1]["seq"]:
            assert {k: record[k] for k in exits[-1]["data"]} == exits[-1]["data"]
        seqs = [e["seq"] for e in reader.items]
        assert seqs == list(range(1, len(seqs) + 1))


def test_shim_log_is_rotated_in_a_long_crash_loop(tmp_path: Path) -> None:
    from shim.osutil import Diag

    path = tmp_path / "shim.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        diag = Diag(fd, str(path), max_size=10_000)
        for n in range(1000):
            diag.log("info", "task_exit", n=n)
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == ["shim.log", "shim.log.1"]
    assert path.stat().st_size <= 10_200 and (tmp_path / "shim.log.1").stat().st_size <= 10_200
    assert '"n": 999' in path.read_text().splitlines()[-1]


def test_a_crash_loop_slows_down_while_the_daemon_does_not_take_its_events(
        shims: Shims) -> None:
    from shim.task import OUTBOX_BACKLOG

    shim = shims.start("exit 1", restart=always(0, max_delay=30))
    shim.call("start")
    def slowed() -> bool:
        start_at = shim.call("state")["restart"]["start_at"]
        return start_at is not None and start_at > time.time_ns() + 20e9

    poll(slowed, timeout=60, what="the back-off raised to max_delay")
    state = shim.call("state")
    assert state["seq"] > OUTBOX_BACKLOG  # every restart until then at once, all kept
    reader = EventReader(shim, ack=False)
    items = reader.until(lambda items: len(items) == state["seq"] - state["acked"])
    last = items[-1]["data"]
    assert items[-1]["type"] == "container.restart" and last["delay"] == 30
    assert "slowed to max_delay" in last["reason"]
    reader.close()
