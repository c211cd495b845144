"""supervisorctl when things go wrong, against a real supervisord: bytes that are not text,
readers that leave, a second daemon on a live socket, commands that cannot run, a daemon that
dies under a waiting script. Every check runs the real command in a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CTL, Daemon, ctl, ok

from events.procfs import is_running
from events.rpc import BlockingConnection

REPO = Path(__file__).resolve().parent.parent


def ps_rows(d: Daemon) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in map(json.loads, ok(d, "ps", "-a", "--json").splitlines())}


def events_of(d: Daemon, *flags: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(d, "events", "--json", *flags).splitlines()]


def follower(d: Daemon, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*CTL, "--root", str(d.root), *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, **kwargs)


def connected(d: Daemon, proc: subprocess.Popen[bytes]) -> None:
    """Until *proc* (a supervisorctl) holds a socket and waits in it: its request is sent (the
    hello and the request go in one write). A fixed sleep stood here and lost under load."""

    def waiting() -> bool:
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            links = [os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in fds]
            with open(f"/proc/{proc.pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            return False
        return state == b"S" and any(link.startswith("socket:") for link in links)

    d.wait_for(waiting)
    time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


# -- logs: every byte ---------------------------------------------------------------------------


def test_logs_round_trip_random_binary_and_progress_bars(daemon: Daemon) -> None:
    """Split on \\n only (the CRI rule): a bare \\r (every progress bar) is not a line end, and
    binary output comes back byte for byte, raw on the pipe and as base64 in --json."""
    rng = random.Random(13)
    binary = bytes(rng.randrange(256) for _ in range(4096))
    progress = b"fetch  10%\rfetch  55%\rfetch 100%\r\n" + b"\r".join(b"%d" % i for i in range(50))
    payload = progress + b"\n" + binary + b"\nend\r"  # ends mid-line: a partial record
    script = "import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))"
    ok(daemon, "run", "--name", "bin", sys.executable, "-c", script, payload.hex())
    assert ok(daemon, "wait", "bin") == "0\n"

    raw = subprocess.run([*CTL, "--root", str(daemon.root), "logs", "bin"], capture_output=True,
                         timeout=30, cwd=REPO)
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == payload  # every byte, nothing replaced, nothing dropped

    items = [json.loads(line) for line in ok(daemon, "logs", "--json", "bin").splitlines()]
    rebuilt = b""
    for item in items:
        line = item["line"]
        data = base64.b64decode(line["base64"]) if isinstance(line, dict) else line.encode()
        rebuilt += data + (b"" if item["partial"] else b"\n")
    assert rebuilt == payload
    assert any(isinstance(item["line"], dict) for item in items)  # the binary part
    assert items[0]["line"] == "fetch  10%\rfetch  55%\rfetch 100%\r"  # one line, \r kept

    last = subprocess.run([*CTL, "--root", str(daemon.root), "logs", "--tail", "2", "bin"],
                          capture_output=True, timeout=30, cwd=REPO).stdout
    assert last == payload[payload.rindex(b"\n", 0, len(payload) - 6) + 1:]


# -- a reader that leaves -----------------------------------------------------------------------


def piped(d: Daemon, argv: str, timeout: float = 30) -> tuple[int, str, float]:
    """``supervisorctl ARGV | head -1`` in bash: supervisorctl's own status, its stderr, and
    how long the pipeline took."""
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", f"{' '.join(CTL)} --root {d.root} {argv} 2>{d.root}/err | head -1 "
         ">/dev/null; echo ${PIPESTATUS[0]}"],
        capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.stdout.strip().isdigit(), (proc.stdout, proc.stderr)
    return int(proc.stdout.strip()), (d.root / "err").read_text(), time.monotonic() - started


def test_a_reader_that_leaves_is_no_crash(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "chatty", "sh", "-c", "seq 1 20000; sleep 60")
    daemon.wait_for(lambda: ctl(daemon, "logs", "--tail", "1", "chatty").stdout == "20000\n")
    for argv in ("logs chatty", "events", "ps -a --no-trunc", "events --json"):
        status, err, _ = piped(daemon, argv)
        assert (status, err) in ((141, ""), (0, "")), (argv, status, err)
    # following, with nothing more to print: it notices its reader left and stops by itself
    ok(daemon, "run", "--name", "quiet", "sh", "-c", "echo one; sleep 60")
    daemon.wait_for(lambda: ctl(daemon, "logs", "quiet").stdout == "one\n")
    for argv in ("logs -f quiet", "events -f", "logs -f --json quiet"):
        status, err, took = piped(daemon, argv, timeout=20)
        assert (status, err) == (141, ""), (argv, status, err)
        assert took < 10, (argv, took)


# -- one socket, one daemon ---------------------------------------------------------------------


def test_a_second_daemon_never_takes_a_live_socket(daemon_factory: Any, tmp_path: Path) -> None:
    a = daemon_factory(root_dir=tmp_path / "a")
    ok(a, "run", "--name", "keep", "sleep", "60")
    b = daemon_factory("--socket", a.socket, root_dir=tmp_path / "b", start=False)
    b.start(expect_fail=True)
    assert b.wait_exit(10) != 0
    assert f"{a.socket} is in use" in b.stderr() and f"pid {a.pid}" in b.stderr()
    assert "keep" in ok(a, "ps")  # A still answers on its socket, with its containers
    assert Path(a.socket).is_socket()

    # a socket nobody listens on (a kill -9's leftover) is taken over
    a.kill9()
    assert Path(a.socket).is_socket()
    b.start()
    listed = subprocess.run([*CTL, "--socket", a.socket, "ps", "-aq"], capture_output=True,
                            text=True, timeout=30, cwd=REPO)
    assert (listed.returncode, listed.stdout) == (0, "")  # B's root (empty), on A's old path
    b.stop()
    assert not Path(a.socket).exists()  # B removed the socket it made


def test_a_daemon_never_unlinks_a_socket_it_did_not_make(daemon: Daemon) -> None:
    path = daemon.socket
    os.unlink(path)  # someone else's socket now sits at the daemon's path
    other = socket.socket(socket.AF_UNIX)
    try:
        other.bind(path)
        daemon.stop()
        assert Path(path).is_socket()
    finally:
        other.close()


# -- failures explain themselves and free the name ------------------------------------------------


def test_a_command_that_cannot_run_says_why_everywhere(daemon: Daemon) -> None:
    proc = ctl(daemon, "run", "--name", "n", "--", "nosuchcmd", "x")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "No such file or directory: nosuchcmd" in proc.stderr
    assert "supervisorctl rm n" in proc.stderr and "--rm" in proc.stderr
    reason = "exec_failed: No such file or directory: nosuchcmd"
    assert json.loads(ok(daemon, "inspect", "n"))["exit_reason"] == reason
    assert ps_rows(daemon)["n"]["exit_reason"] == reason
    row = next(line for line in ok(daemon, "ps", "-a").splitlines() if line.startswith("n "))
    assert "stopped (exec failed)" in row and "nosuchcmd x" in row
    assert "in use" in ctl(daemon, "run", "--name", "n", "true").stderr
    ok(daemon, "rm", "n")

    proc = ctl(daemon, "run", "--rm", "--name", "n", "nosuchcmd")
    assert proc.returncode == 1 and "was removed" in proc.stderr
    assert "n" not in ps_rows(daemon)  # the name is free at once
    assert ok(daemon, "run", "--name", "n", "true") == "n\n"

    proc = ctl(daemon, "run", "--name", "cwd", "--cwd", "/no/such/dir", "true")
    assert proc.returncode == 1 and "chdir(/no/such/dir)" in proc.stderr


def test_a_rootfs_without_an_oci_runtime_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    for flag in ("--rootfs", "--bundle"):
        proc = ctl(daemon, "run", "--name", "host", flag, str(tmp_path), "touch", "/tmp/x")
        assert proc.returncode == 2 and "needs an OCI runtime" in proc.stderr
    with pytest.raises(Exception, match="need an OCI runtime"):  # the API refuses it too
        daemon.call("run", spec={"command": ["true"], "rootfs": str(tmp_path)})
    assert ps_rows(daemon) == {}


def test_an_unknown_event_type_is_an_error_not_an_empty_stream(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "e", "true")
    assert ok(daemon, "wait", "e") == "0\n"
    proc = ctl(daemon, "events", "--type", "task.exitt")
    assert proc.returncode == 1 and "unknown event type 'task.exitt'" in proc.stderr
    assert "task.exit" in proc.stderr  # it lists the known ones
    assert [e["type"] for e in events_of(daemon, "--type", "task.exit")] == ["task.exit"]
    assert events_of(daemon, "--type", "task")  # a prefix is still a filter


def test_run_rm_removes_once_exited_even_across_a_daemon_kill(daemon: Daemon) -> None:
    ok(daemon, "run", "--rm", "--name", "r", "sh", "-c", "exit 3")
    daemon.wait_for(lambda: "r" not in ps_rows(daemon))
    ids = [(e["type"], e["data"].get("exit_status")) for e in events_of(daemon, "--id", "r")
           if e["type"] in ("task.exit", "container.delete")]
    assert ids == [("task.exit", 3), ("container.delete", None)]

    # the exit happens while no daemon is up: the next daemon removes it, exactly once
    ok(daemon, "run", "--rm", "--name", "late", "sh", "-c", "sleep 1; exit 4")
    daemon.kill9()
    time.sleep(1.5)
    daemon.start()
    daemon.wait_for(lambda: "late" not in ps_rows(daemon))
    types = [(e["type"], e["data"].get("exit_status")) for e in events_of(daemon, "--id", "late")
             if e["type"] in ("task.exit", "container.delete")]
    assert types == [("task.exit", 4), ("container.delete", None)]
    assert not (daemon.root / "shims" / "late").exists()



@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
def test_run_rm_with_a_kill9_at_any_moment_removes_exactly_once(daemon: Daemon,
                                                               delay: float) -> None:
    """The daemon killed around the exit (before it is recorded, between the record and the
    removal, during the removal): the next daemon removes the container, and the log holds
    its exit and its deletion exactly once each."""
    ok(daemon, "run", "--rm", "--name", "r", "sh", "-c", "sleep 0.2; exit 5")
    time.sleep(0.15 + delay)
    daemon.kill9()
    daemon.start()
    daemon.wait_for(lambda: "r" not in ps_rows(daemon))
    seen = [(e["type"], e["data"].get("exit_status")) for e in events_of(daemon, "--id", "r")
            if e["type"] in ("task.exit", "container.delete")]
    assert seen == [("task.exit", 5), ("container.delete", None)]
    assert not (daemon.root / "shims" / "r").exists()


# -- exit codes a script can trust across a daemon restart ---------------------------------------


def test_wait_survives_a_daemon_restart(daemon: Daemon, tmp_path: Path) -> None:
    trigger = tmp_path / "exit-now"
    ok(daemon, "run", "--name", "w", "sh", "-c",
       f"while [ ! -e {trigger} ]; do sleep 0.02; done; exit 7")
    pid = daemon.ps()["w"]["pid"]
    waiter = follower(daemon, "wait", "w")
    try:
        connected(daemon, waiter)
        daemon.kill9()
        trigger.touch()  # the container exits while no daemon is up
        daemon.wait_for(lambda: not is_running(pid))
        daemon.start()
        out, err = waiter.communicate(timeout=30)
    finally:
        stop(waiter)
    assert (waiter.returncode, out) == (7, b"7\n"), err
    assert b"reconnecting" in err and b"reconnected" in err


def test_wait_exits_125_when_the_daemon_does_not_come_back(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "w", "sleep", "60")
    waiter = follower(daemon, "wait", "--reconnect", "1", "w")
    try:
        connected(daemon, waiter)
        daemon.kill9()
        out, err = waiter.communicate(timeout=30)
    finally:
        stop(waiter)
    assert waiter.returncode == 125 and out == b""
    assert b"did not come back within 1 s" in err
    assert ctl(daemon, "wait", "w").returncode == 125  # no daemon: no status, never a 1
    daemon.start()
    assert ctl(daemon, "wait", "nosuch").returncode == 125


def test_events_follow_resumes_after_the_last_seq_across_a_restart(daemon: Daemon) -> None:
    watcher = follower(daemon, "events", "-f", "--json", "--type", "task.exit")
    try:
        ok(daemon, "run", "--name", "one", "sh", "-c", "exit 1")
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        ok(daemon, "run", "--name", "two", "sh", "-c", "sleep 1; exit 2")
        daemon.kill9()
        time.sleep(1.5)  # `two` exits while no daemon is up
        daemon.start()
        ok(daemon, "run", "--name", "three", "sh", "-c", "exit 3")
        rest = [json.loads(watcher.stdout.readline()) for _ in range(2)]
    finally:
        stop(watcher)
    printed = [first, *rest]
    assert [(e["id"], e["data"]["exit_status"]) for e in printed] == [("one", 1), ("two", 2),
                                                                       ("three", 3)]
    assert [e["seq"] for e in printed] == [e["seq"] for e in events_of(daemon, "--type",
                                                                       "task.exit")]


def test_logs_follow_resumes_after_the_last_line_across_a_restart(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "count", "sh", "-c",
       "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo line$i; sleep 0.05; done; sleep 60")
    reader = follower(daemon, "logs", "-f", "count")
    try:
        assert reader.stdout is not None
        lines = [reader.stdout.readline() for _ in range(5)]
        daemon.kill9()
        time.sleep(1)  # it keeps writing while no daemon is up
        daemon.start()
        while len(lines) < 60:
            lines.append(reader.stdout.readline())
    finally:
        stop(reader)
    assert lines == [f"line{i}\n".encode() for i in range(1, 61)]  # no gap, no duplicate


def test_logs_follow_with_nothing_shown_yet_misses_nothing_across_a_restart(
        daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "late", "sh", "-c", "echo early; sleep 1.5; echo late; sleep 60")
    daemon.wait_for(lambda: ctl(daemon, "logs", "late").stdout == "early\n")
    reader = follower(daemon, "logs", "-f", "--tail", "0", "late")
    try:
        time.sleep(0.3)
        daemon.kill9()
        time.sleep(1.5)  # `late` is written while no daemon is up
        daemon.start()
        assert reader.stdout is not None
        assert reader.stdout.readline() == b"late\n"
    finally:
        stop(reader)


def test_the_help_says_which_exit_code_means_what() -> None:
    for argv in (["wait", "--help"], ["--help"]):
        proc = subprocess.run([*CTL, *argv], capture_output=True, text=True, timeout=30,
                              cwd=REPO)
        text = " ".join(proc.stdout.split())
        assert "125 when supervisorctl has no status to give" in text
        assert "141 the reader of our output left" in text


def test_exec_passes_statuses_and_says_when_it_cannot_run(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "box", "sleep", "60")
    assert ctl(daemon, "exec", "box", "sh", "-c", "exit 5").returncode == 5
    assert ctl(daemon, "exec", "box", "nosuchcmd").returncode == 127
    assert ctl(daemon, "exec", "nosuch", "true").returncode == 125


def test_socket_probe_is_not_a_client_the_daemon_complains_about(daemon: Daemon) -> None:
    """The probe of a second daemon connects and leaves: the first one logs no error."""
    b = Daemon(daemon.root.parent / "other", "--socket", daemon.socket)
    try:
        b.start(expect_fail=True)
        b.wait_exit(10)
    finally:
        b.cleanup()
    with BlockingConnection(daemon.socket) as conn:
        assert conn.call("status")["ok"] is True
    assert "Traceback" not in daemon.stderr()


def test_a_daemon_killed_mid_logs_without_follow_is_an_error_not_a_hang(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "x", "sh", "-c", "echo hi")
    assert ok(daemon, "wait", "x") == "0\n"
    daemon.kill9()
    proc = ctl(daemon, "logs", "x")
    assert proc.returncode == 1 and "is supervisord running?" in proc.stderr
