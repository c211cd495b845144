"""supervisorctl, the real command, against a real supervisord with real containers.

Every check runs the installed console script in a subprocess, as a user would: exit codes,
stdout/stderr and the ``--json`` promise of DESIGN.md.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CTL, Daemon, ctl, ok

from supervisor.ctl_render import PS_JSON_FIELDS

REPO = Path(__file__).resolve().parent.parent
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z")


def ps_json(d: Daemon, *flags: str) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in map(json.loads, ok(d, "ps", "--json", *flags).splitlines())}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def test_run_ps_json_wait_inspect(daemon: Daemon) -> None:
    assert ok(daemon, "run", "--name", "sleeper", "--", "sleep", "60") == "sleeper\n"
    assert ok(daemon, "run", "--name", "job", "-e", "CODE=3", "--", "sh", "-c",
              'exit "$CODE"') == "job\n"
    waited = ctl(daemon, "wait", "job")
    assert (waited.returncode, waited.stdout) == (3, "3\n")

    running = ps_json(daemon)
    assert list(running) == ["sleeper"]  # without -a: no stopped containers
    everything = ps_json(daemon, "-a")
    assert set(everything) == {"sleeper", "job"}
    for obj in everything.values():
        assert list(obj) == list(PS_JSON_FIELDS)
        assert RFC3339.fullmatch(obj["created"]) and RFC3339.fullmatch(obj["started"])
        assert obj["runtime"] == "process" and obj["restarts"] == 0
    sleeper, job = everything["sleeper"], everything["job"]
    assert sleeper["state"] == "running" and sleeper["exit_status"] is None
    assert sleeper["finished"] is None and alive(sleeper["pid"])
    assert job["state"] == "stopped" and job["exit_status"] == 3
    assert job["command"] == ["sh", "-c", 'exit "$CODE"'] and job["exit_reason"] is None
    assert RFC3339.fullmatch(job["finished"])

    table = ok(daemon, "ps", "-a").splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "PID"]
    assert any(line.split()[:4] == ["job", "stopped", str(job["pid"]), "3"] for line in table)
    assert "ago" in table[1]

    inspected = json.loads(ok(daemon, "inspect", "job"))
    assert inspected["spec"]["command"] == ["sh", "-c", 'exit "$CODE"']
    assert inspected["spec"]["env"] == {"CODE": "3"}
    assert [e["type"] for e in inspected["history"]][-1] == "task.exit"
    assert RFC3339.fullmatch(inspected["history"][0]["time"])


def test_kill_signal_names_and_numbers(daemon: Daemon) -> None:
    for name, spelled, status in [("a", "TERM", 143), ("b", "SIGUSR1", 138), ("c", "9", 137),
                                  ("d", "int", 130)]:
        ok(daemon, "run", "--name", name, "--", "sleep", "60")
        assert ok(daemon, "kill", "-s", spelled, name) == f"{name}\n"
        waited = ctl(daemon, "wait", name)
        assert (waited.returncode, waited.stdout) == (status, f"{status}\n"), spelled


def test_stop_restart_rm(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "stubborn", "--", "sh", "-c",
       "trap '' TERM; while :; do sleep 0.1; done")
    first_pid = ps_json(daemon)["stubborn"]["pid"]
    ok(daemon, "restart", "-t", "0.5", "stubborn")
    row = ps_json(daemon)["stubborn"]
    assert row["restarts"] == 1 and row["pid"] != first_pid and not alive(first_pid)

    started = time.monotonic()
    assert ok(daemon, "stop", "-t", "0.5", "stubborn") == "stubborn: stopped\n"
    assert time.monotonic() - started >= 0.4  # it ignored SIGTERM: SIGKILL after the grace
    assert ps_json(daemon, "-a")["stubborn"]["exit_status"] == 137

    ok(daemon, "run", "--name", "busy", "--", "sleep", "60")
    busy_pid = ps_json(daemon)["busy"]["pid"]
    refused = ctl(daemon, "rm", "busy")
    assert refused.returncode == 1
    assert "busy" in refused.stderr and "conflict" in refused.stderr
    assert alive(busy_pid)
    assert ok(daemon, "rm", "-f", "busy") == "busy\n"
    assert ok(daemon, "rm", "stubborn") == "stubborn\n"
    assert ps_json(daemon, "-a") == {}
    assert not alive(busy_pid)
    missing = ctl(daemon, "rm", "busy")
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_logs_tail_and_follow(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "talker", "--", "sh", "-c",
       "for i in 1 2 3 4 5; do echo out$i; done; echo oops >&2; printf 'no-newline';"
       " sleep 0.5; echo ' joined'; echo late; sleep 60")
    daemon.wait_for(lambda: "late" in ctl(daemon, "logs", "talker").stdout)
    logs = ctl(daemon, "logs", "talker")
    assert logs.stdout == "out1\nout2\nout3\nout4\nout5\nno-newline joined\nlate\n"
    assert logs.stderr == "oops\n"
    assert ctl(daemon, "logs", "--tail", "2", "talker").stdout == "no-newline joined\nlate\n"

    follower = subprocess.Popen([*CTL, "--root", str(daemon.root), "logs", "-f", "--tail", "1",
                                 "talker"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "late\n"
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert follower.returncode == 130


def test_logs_follow_sees_new_lines(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "ticker", "--", "sh", "-c",
       "i=0; while :; do i=$((i+1)); echo tick$i; sleep 0.2; done")
    follower = subprocess.Popen([*CTL, "--root", str(daemon.root), "logs", "-f", "ticker"],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert follower.stdout is not None
        lines = [follower.stdout.readline() for _ in range(4)]
    finally:
        follower.kill()
        follower.wait(10)
    assert lines == ["tick1\n", "tick2\n", "tick3\n", "tick4\n"]


def test_events_since_type_id_and_follow(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "e1", "--", "sh", "-c", "exit 1")
    assert ctl(daemon, "wait", "e1").returncode == 1
    every = [json.loads(line) for line in ok(daemon, "events", "--json").splitlines()]
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    for e in every:
        assert list(e) == ["seq", "time", "type", "id", "data"]
        assert RFC3339.fullmatch(e["time"])
    assert every[0]["type"] == "supervisor.start"

    since = every[2]["seq"]
    later = [json.loads(line) for line in ok(daemon, "events", "--json", "--since",
                                             str(since)).splitlines()]
    assert [e["seq"] for e in later] == [e["seq"] for e in every if e["seq"] > since]

    exits = [json.loads(line) for line in ok(daemon, "events", "--json", "--type",
                                             "task.exit").splitlines()]
    assert [(e["id"], e["data"]["exit_status"]) for e in exits] == [("e1", 1)]
    assert {e["id"] for e in map(json.loads, ok(daemon, "events", "--json", "--id",
                                                "e1").splitlines())} == {"e1"}
    human = ok(daemon, "events", "--type", "task.exit").splitlines()
    assert len(human) == 1 and " task.exit e1 " in human[0] and "exit_status=1" in human[0]

    follower = subprocess.Popen(
        [*CTL, "--root", str(daemon.root), "events", "--follow", "--json", "--type",
         "task.exit", "--since", str(every[-1]["seq"])],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        ok(daemon, "run", "--name", "e2", "--", "sh", "-c", "exit 2")
        assert follower.stdout is not None
        live = json.loads(follower.stdout.readline())
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    assert (live["type"], live["id"], live["data"]["exit_status"]) == ("task.exit", "e2", 2)
    assert live["seq"] > every[-1]["seq"]
    assert follower.returncode == 130


def test_status_info_shutdown_and_no_daemon(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "survivor", "--", "sleep", "60")
    pid = ps_json(daemon)["survivor"]["pid"]
    info = json.loads(ok(daemon, "info", "--json"))  # daemon health: `status` is Supervisor's
    assert info["ok"] is True and info["pid"] == daemon.pid
    assert info["root"] == str(daemon.root) and info["containers"]["running"] == 1

    out = ok(daemon, "shutdown")
    assert f"pid {daemon.pid}" in out and "containers keep running" in out
    assert daemon.wait_exit(5) == 0  # `shutdown` returned once the daemon was gone
    assert alive(pid)

    down = ctl(daemon, "ps")
    assert down.returncode == 1 and down.stdout == ""
    assert f"cannot connect to {daemon.socket}" in down.stderr
    assert f"is supervisord running? (supervisord --root {daemon.root})" in down.stderr

    daemon.start()
    assert ps_json(daemon)["survivor"]["pid"] == pid


def test_kill9_daemon_then_ctl_explains(daemon: Daemon) -> None:
    daemon.kill9()
    proc = ctl(daemon, "status")
    assert proc.returncode == 1
    assert "is supervisord running?" in proc.stderr and "Traceback" not in proc.stderr


def test_usage_errors_never_touch_the_daemon(daemon: Daemon) -> None:
    for argv in (["run"], ["kill", "-s", "NOPE", "x"], ["logs", "--tail", "x", "y"], ["nope"]):
        proc = ctl(daemon, *argv)
        assert proc.returncode == 2, argv
        assert "--help" in proc.stderr
    assert ps_json(daemon, "-a") == {}


@pytest.mark.parametrize("argv", [["wait", "sleeper"], ["events", "--follow"]])
def test_ctrl_c_exits_130(daemon: Daemon, argv: list[str]) -> None:
    ok(daemon, "run", "--name", "sleeper", "--", "sleep", "60")
    proc = subprocess.Popen([*CTL, "--root", str(daemon.root), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert b"Traceback" not in err


def test_ps_is_fast(daemon: Daemon) -> None:
    """Not a benchmark (the machine is shared): a guard against a heavy import sneaking in."""
    for i in range(5):
        ok(daemon, "run", "--name", f"c{i}", "--", "sleep", "60")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    ok(daemon, "ps")  # warm the page cache (and the .pyc files)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([*CTL, "--root", str(daemon.root), "ps"], check=True, env=env,
                       stdout=subprocess.DEVNULL, cwd=REPO)
        times.append(time.perf_counter() - started)
    assert min(times) < 0.5, times


def test_create_start_and_logs_follow_across_rotation(daemon: Daemon) -> None:
    """`logs -f` from the start of a container whose log rotates every few lines: every line
    once, in order. (Rotation is set through the API: the CLI has no flag for it yet.)"""
    cid = daemon.call("create", spec={
        "name": "chatty", "log_max_size": 4096, "log_keep": 50, "command": [
            "sh", "-c", "pad=$(printf '%0480d' 0); i=0; while [ $i -lt 40 ]; do i=$((i+1));"
            " echo line$i $pad; sleep 0.01; done; sleep 60"]})["id"]
    assert ps_json(daemon, "-a")[cid]["state"] == "created"
    follower = subprocess.Popen([*CTL, "--root", str(daemon.root), "logs", "-f", cid],
                                stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert ok(daemon, "start", cid) == f"{cid}: started\n"
        assert follower.stdout is not None
        lines = []
        while len(lines) < 40:
            lines.append(follower.stdout.readline())
    finally:
        follower.kill()
        follower.wait(10)
    pad = "0" * 480
    assert lines == [f"line{i} {pad}\n" for i in range(1, 41)]
    rotated = list((daemon.root / "shims" / cid).glob("container.log.*"))
    assert len(rotated) >= 3, rotated  # (~21 kB of output, rotated every 4 kB)
    tail = ctl(daemon, "logs", "--tail", "3", cid).stdout
    assert tail == "".join(f"line{i} {pad}\n" for i in (38, 39, 40))


def test_interactive_shell(daemon: Daemon) -> None:
    proc = subprocess.run([*CTL, "--root", str(daemon.root)], capture_output=True, text=True,
                          timeout=30, cwd=REPO,
                          input="run --name s -- sleep 60\nps --json\nkill -s nope s\n"
                                "stop -t 0 s\nwait s\nhelp wait\nquit\n")
    out = proc.stdout.splitlines()
    assert out[0] == "s"
    assert json.loads(out[1])["state"] == "running"
    assert out[2:4] == ["s: stopped", "137"]
    assert "unknown signal 'nope'" in proc.stderr and "Traceback" not in proc.stderr
    assert any("block until a container exits" in line or "usage:" in line for line in out[4:])
