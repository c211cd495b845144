"""supervisorctl without a daemon: parsing, rendering, exit codes, error messages.

What the CLI sends and how it shows what it receives is checked against a scripted socket
(test_client_fake.py); what containers do is checked against the real daemon in test_ctl_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_client_fake import error, fake_daemon, result, stream

from supervisor import ctl, ctl_commands, ctl_grammar, ctl_render, defaults
from supervisor.ctl_render import PS_JSON_FIELDS
from supervisor.protocol import PS_FIELDS

REPO = Path(__file__).resolve().parent.parent
NS = 1_000_000_000


def run_ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ctl.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1048576", 1 << 20), ("64m", 64 << 20), ("64M", 64 << 20), ("1g", 1 << 30),
    ("512k", 512 << 10), ("1.5g", int(1.5 * (1 << 30))), ("64MiB", 64 << 20), ("64mb", 64 << 20),
    ("100b", 100),
])
def test_memory_sizes(text: str, expected: int) -> None:
    assert ctl_grammar.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "m", "5q", "-1m", "0", "1.2.3g", "g1"])
def test_bad_memory_sizes_are_usage_errors(text: str, capsys, tmp_path) -> None:
    code, _, err = run_ctl(capsys, "--root", str(tmp_path), "run", "--memory", text, "--", "true")
    assert code == 2
    assert "--memory" in err


@pytest.mark.parametrize(("text", "expected"), [
    ("TERM", 15), ("SIGTERM", 15), ("term", 15), ("sigkill", 9), ("9", 9), ("USR1", 10),
    ("HUP", 1),
])
def test_signal_names_and_numbers(text: str, expected: int) -> None:
    assert ctl_grammar.parse_signal(text) == expected


@pytest.mark.parametrize("text", ["FOO", "SIGFOO", "0", "999", "-9", "SIG_DFL"])
def test_bad_signals_are_usage_errors(text: str, capsys, tmp_path) -> None:
    code, _, err = run_ctl(capsys, "--root", str(tmp_path), "kill", "-s", text, "x")
    assert code == 2
    assert "signal" in err


def test_run_after_double_dash_keeps_the_commands_own_flags() -> None:
    args = ctl_grammar.parse(
        ["run", "--name", "a", "-e", "K=V", "--memory", "64m", "--", "sh", "-c", "x", "--", "-e"])
    assert args.command == ["sh", "-c", "x", "--", "-e"]
    assert ctl_commands._spec(args) == {
        "command": ["sh", "-c", "x", "--", "-e"], "runtime": "process", "env": {"K": "V"},
        "name": "a", "memory": 64 << 20}


@pytest.mark.parametrize("argv", [
    ["bogus"], ["stop"], ["run"], ["run", "--"], ["kill"], ["wait"], ["logs", "--tail", "-3", "x"],
    ["events", "--since", "abc"], ["--root", "/a", "--socket", "/b", "ps"], ["ps", "--nope"],
    ["run", "--runtime", "docker", "--", "true"], ["run", "--rootfs", "/a", "--bundle", "/b", "x"],
    ["stop", "-t", "-1", "x"], ["run", "-e", "=v", "--", "true"],
])
def test_usage_errors_exit_2_and_say_how_to_get_help(argv, capsys, tmp_path) -> None:
    code, out, err = run_ctl(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "--help" in err
    assert "Traceback" not in err


def test_help_exits_0(capsys) -> None:
    code, out, _ = run_ctl(capsys, "--help")
    assert code == 0
    for command in ("run", "ps", "inspect", "stop", "kill", "restart", "rm", "wait", "logs",
                    "exec", "events", "status", "info", "shutdown", "create", "start"):
        assert command in out


def test_default_root_follows_design(monkeypatch) -> None:
    if os.geteuid() == 0:
        assert defaults.default_root() == "/var/lib/tether"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    assert defaults.default_root() == "/x/state/tether"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert defaults.default_root() == "/home/u/.local/state/tether"
    assert ctl.socket_path(None, None) == "/home/u/.local/state/tether/supervisord.sock"
    assert ctl.socket_path("/r", None) == "/r/supervisord.sock"
    assert ctl.socket_path(None, "/s.sock") == "/s.sock"


# -- rendering --------------------------------------------------------------------------------


def test_rfc3339_is_utc_with_nanoseconds() -> None:
    assert ctl_render.rfc3339(0) == "1970-01-01T00:00:00.000000000Z"
    assert ctl_render.rfc3339(1_795_000_000_123_456_789) == "2026-11-18T11:06:40.123456789Z"
    assert ctl_render.rfc3339(None) is None


@pytest.mark.parametrize(("seconds", "text"), [
    (0.2, "Less than a second ago"), (1, "1 second ago"), (3, "3 seconds ago"),
    (59, "59 seconds ago"), (60, "About a minute ago"), (150, "2 minutes ago"),
    (3600, "About an hour ago"), (5 * 3600, "5 hours ago"), (3 * 86400, "3 days ago"),
    (-5, "Less than a second ago"),
])
def test_human_times_read_like_docker(seconds: float, text: str) -> None:
    now = 2_000_000_000 * NS
    assert ctl_render.human_ago(now - int(seconds * NS), now) == text
    assert ctl_render.human_ago(None, now) == "-"


ROW = {"id": "web", "state": "running", "pid": 123, "exit_status": None, "restarts": 0,
       "runtime": "process", "created": 1_795_000_000 * NS, "started": 1_795_000_001 * NS,
       "finished": None, "command": ["sleep", "60"], "labels": {"tier": "web"}, "oom": False,
       "exit_reason": None, "extra": "not promised"}


def test_ps_json_has_exactly_the_promised_fields_in_order() -> None:
    lines = ctl_render.ps_json_lines([ROW, {**ROW, "id": "db", "state": "stopped",
                                            "exit_status": 7, "finished": 1_795_000_009 * NS}])
    objs = [json.loads(line) for line in lines.splitlines()]
    assert [list(o) for o in objs] == [list(PS_JSON_FIELDS)] * 2
    assert list(PS_JSON_FIELDS[:9]) == list(PS_FIELDS)  # the original promise, then additions
    assert objs[0] == {"id": "web", "state": "running", "pid": 123, "exit_status": None,
                       "restarts": 0, "runtime": "process",
                       "created": "2026-11-18T11:06:40.000000000Z",
                       "started": "2026-11-18T11:06:41.000000000Z", "finished": None,
                       "command": ["sleep", "60"], "labels": {"tier": "web"}, "oom": False,
                       "exit_reason": None}
    assert objs[1]["exit_status"] == 7
    assert objs[1]["finished"] == "2026-11-18T11:06:49.000000000Z"


def test_ps_table_aligns_columns_and_humanizes_times() -> None:
    table = ctl_render.ps_table([ROW, {**ROW, "id": "a-much-longer-id", "pid": None}],
                                now_ns=1_795_000_004 * NS)
    header, first, second = table.splitlines()
    assert header.split() == ["ID", "STATE", "PID", "EXIT", "RESTARTS", "RUNTIME", "CREATED",
                              "STARTED", "FINISHED", "COMMAND"]
    assert first.endswith("   sleep 60")
    assert first.split()[:6] == ["web", "running", "123", "-", "0", "process"]
    assert "4 seconds ago" in first and "3 seconds ago" in first
    assert header.index("STATE") == first.index("running") == second.index("running")


def test_event_json_has_exactly_the_promised_fields() -> None:
    record = {"seq": 5, "time": 1_795_000_000 * NS, "type": "task.exit", "id": "job",
              "data": {"exit_status": 7, "raw": b"\xff"}, "junk": 1}
    obj = json.loads(ctl_render.event_json(record))
    assert list(obj) == ["seq", "time", "type", "id", "data"]
    assert obj["time"] == "2026-11-18T11:06:40.000000000Z"
    assert obj["data"]["exit_status"] == 7
    line = ctl_render.event_line(record)
    assert line.startswith("5 2026-11-18T11:06:40.000000000Z task.exit job ")
    assert "exit_status=7" in line


# -- talking to a daemon: errors ---------------------------------------------------------------


def test_no_daemon_is_exit_1_with_a_helpful_message(capsys, tmp_path) -> None:
    code, out, err = run_ctl(capsys, "--root", str(tmp_path), "ps")
    assert code == 1
    assert out == ""
    sock = tmp_path / "supervisord.sock"
    assert f"cannot connect to {sock}: No such file or directory" in err
    assert f"is supervisord running? (supervisord --root {tmp_path})" in err


def test_stale_socket_is_connection_refused(capsys, tmp_path) -> None:
    import socket

    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp_path / "supervisord.sock"))
    s.close()  # bound, never listening: what a SIGKILLed daemon leaves
    code, _, err = run_ctl(capsys, "--root", str(tmp_path), "status")
    assert code == 1
    assert "Connection refused" in err and "is supervisord running?" in err


def test_too_long_socket_path_is_explained(capsys, tmp_path) -> None:
    code, _, err = run_ctl(capsys, "--root", str(tmp_path / ("x" * 120)), "ps")
    assert code == 1
    assert "107-byte limit" in err


def test_error_reply_is_exit_1_with_code_and_hint(capsys, root) -> None:
    with fake_daemon(root, {"inspect": error("not_found", "no container 'nope'")}):
        code, out, err = run_ctl(capsys, "--root", str(root), "inspect", "nope")
    assert code == 1
    assert out == ""
    assert "supervisorctl inspect: no container 'nope' (not_found)" in err
    assert "ps -a" in err


def test_many_ids_go_on_after_a_failure_and_exit_1(capsys, root) -> None:
    def stop(params):
        if params["id"] == "bad":
            return [{"error": {"code": "not_found", "message": "no container 'bad'"}}]
        return [{"result": {"id": params["id"], "exit_status": 143}}]

    with fake_daemon(root, {"stop": stop}) as fake:
        code, out, _ = run_ctl(capsys, "--root", str(root), "stop", "-t", "3", "a", "bad", "b")
    assert code == 1
    assert out.splitlines() == ["a: stopped", "bad: ERROR (no container 'bad')", "b: stopped"]
    assert fake.requests == [("stop", {"id": "a", "timeout": 3.0}),
                             ("stop", {"id": "bad", "timeout": 3.0}),
                             ("stop", {"id": "b", "timeout": 3.0})]


def test_daemon_hanging_up_mid_request_is_explained(capsys, root) -> None:
    with fake_daemon(root, {"ps": lambda p: [{"close": True}]}):
        code, _, err = run_ctl(capsys, "--root", str(root), "ps")
    assert code == 1
    assert "closed the connection" in err and "Traceback" not in err


# -- talking to a daemon: what is sent, what is shown -------------------------------------------


def test_run_sends_the_spec_and_prints_the_id(capsys, root) -> None:
    with fake_daemon(root, {"run": result({"id": "brave-otter", "pid": 99})}) as fake:
        code, out, _ = run_ctl(capsys, "--root", str(root), "run", "--init", "--cwd", "/tmp",
                               "--memory", "1g", "-e", "A=1", "-e", "B=x=y", "--", "sleep", "5")
    assert (code, out) == (0, "brave-otter\n")
    assert fake.requests == [("run", {"spec": {
        "command": ["sleep", "5"], "runtime": "process", "env": {"A": "1", "B": "x=y"},
        "cwd": "/tmp", "memory": 1 << 30, "init": True}})]


def test_kill_sends_the_signal_number(capsys, root) -> None:
    with fake_daemon(root, {"kill": result(None)}) as fake:
        assert run_ctl(capsys, "--root", str(root), "kill", "-s", "SIGUSR1", "c")[:2] == (0, "c\n")
        assert run_ctl(capsys, "--root", str(root), "kill", "c")[0] == 0
    assert fake.requests == [("kill", {"id": "c", "signal": 10}),
                             ("kill", {"id": "c", "signal": 9})]


def test_ps_json_through_the_socket(capsys, root) -> None:
    with fake_daemon(root, {"ps": result([ROW])}) as fake:
        code, out, _ = run_ctl(capsys, "--root", str(root), "ps", "-a", "--json")
    assert code == 0
    assert fake.requests == [("ps", {"all": True})]
    assert [list(json.loads(line)) for line in out.splitlines()] == [list(PS_JSON_FIELDS)]


def test_wait_prints_and_exits_with_the_status(capsys, root) -> None:
    with fake_daemon(root, {"wait": result({"id": "j", "exit_status": 7, "pid": 5})}):
        assert run_ctl(capsys, "--root", str(root), "wait", "j")[:2] == (7, "7\n")
    with fake_daemon(root, {"wait": result({"id": "j", "exit_status": 137})}):
        assert run_ctl(capsys, "--root", str(root), "wait", "j")[:2] == (137, "137\n")


def test_logs_join_partial_lines_per_stream(capsys, root) -> None:
    items = [{"stream": "stdout", "partial": True, "line": "hel"},
             {"stream": "stderr", "partial": False, "line": "oops"},
             {"stream": "stdout", "partial": False, "line": "lo"},
             {"stream": "stdout", "partial": False, "line": b"bytes \xc3\xa9"}]
    with fake_daemon(root, {"logs": stream(items)}) as fake:
        code, out, err = run_ctl(capsys, "--root", str(root), "logs", "--tail", "4", "c")
    assert code == 0
    assert out == "hello\nbytes \u00e9\n"
    assert err == "oops\n"
    assert fake.requests == [("logs", {"id": "c", "tail": 4, "follow": False})]


def test_events_filters_are_sent_and_lines_printed(capsys, root) -> None:
    records = [{"seq": s, "time": s * NS, "type": "task.exit", "id": "j",
                "data": {"exit_status": s}} for s in (4, 9)]
    with fake_daemon(root, {"events": stream(records)}) as fake:
        code, out, _ = run_ctl(capsys, "--root", str(root), "events", "--since", "3", "--type",
                               "task.exit", "--id", "j", "--json")
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [4, 9]
    assert fake.requests == [("events", {"since": 3, "follow": False, "types": ["task.exit"],
                                         "ids": ["j"]})]


def test_events_too_slow_says_where_to_resume(capsys, root) -> None:
    records = [{"seq": 1, "time": 0, "type": "container.create", "id": "a", "data": {}}]
    handler = stream(records, end={"error": {"code": "too_slow", "message": "buffer full"}})
    with fake_daemon(root, {"events": handler}):
        code, out, err = run_ctl(capsys, "--root", str(root), "events", "--follow")
    assert code == 1
    assert out.startswith("1 ")
    assert "events --since 1 --follow" in err


def test_exec_error_prints_it_and_exits_125_not_a_status(capsys, root) -> None:
    with fake_daemon(root, {"exec": error("invalid", "exec is not supported yet")}):
        code, _, err = run_ctl(capsys, "--root", str(root), "exec", "c", "--", "ls", "-l")
    assert code == 125
    assert "exec: exec is not supported yet (invalid)" in err


def test_info_shows_the_daemons_health(capsys, root) -> None:
    """Daemon health moved from ``status`` (Supervisor's process table now) to ``info``."""
    status = {"ok": True, "pid": 1, "uptime": 2.5, "last_seq": 10, "reconciling": False}
    with fake_daemon(root, {"status": result(status), "info": result({"version": "0.1.0"})}):
        code, out, _ = run_ctl(capsys, "--root", str(root), "info")
        assert code == 0 and "last_seq:    10" in out and "version:     0.1.0" in out
        code, out, _ = run_ctl(capsys, "--root", str(root), "info", "--json")
        assert json.loads(out) == {"version": "0.1.0", **status}


def test_shell_runs_the_same_commands(root) -> None:
    with fake_daemon(root, {"ps": result([ROW])}):
        proc = subprocess.run(
            [sys.executable, "-m", "supervisor.ctl", "--root", str(root)],
            input="help\nps --json\nstop\nquit\n", capture_output=True, text=True, timeout=20,
            cwd=REPO)
    assert json.loads(proc.stdout.splitlines()[-1])["id"] == "web" or '"web"' in proc.stdout
    assert "stop: the following arguments are required" in proc.stderr
    assert "Try 'help stop'." in proc.stderr
    assert "Traceback" not in proc.stderr


# -- the process as a whole ---------------------------------------------------------------------


def test_one_shot_commands_do_not_import_trio(root) -> None:
    code = ("import sys\nfrom supervisor import ctl\nctl.main(['--root', sys.argv[1], 'ps'])\n"
            "bad = [m for m in ('trio', 'structlog') if m in sys.modules]\n"
            "assert not bad, bad\n")
    with fake_daemon(root, {"ps": result([ROW])}):
        proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                              text=True, timeout=20, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "web" in proc.stdout


@pytest.mark.parametrize("argv", [["wait", "j"], ["logs", "-f", "j"], ["events", "--follow"]])
def test_ctrl_c_while_blocked_exits_130_without_traceback(argv, root) -> None:
    hang = {"wait": lambda p: None, "logs": lambda p: None, "events": lambda p: None}
    with fake_daemon(root, hang) as fake:
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.ctl", "--root", str(root),
                                 *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=REPO)
        deadline = time.monotonic() + 10
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake.requests, "the command never reached the socket"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert b"Traceback" not in err


def test_broken_pipe_is_quiet(root) -> None:
    rows = [{**ROW, "id": f"c{i}"} for i in range(5000)]
    with fake_daemon(root, {"ps": result(rows)}):
        proc = subprocess.run(
            f"{sys.executable} -m supervisor.ctl --root {root} ps --json | head -1",
            shell=True, capture_output=True, text=True, timeout=20, cwd=REPO)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr


@pytest.mark.parametrize(("argv", "cmd", "root", "sock"), [
    (["ps"], "ps", None, None), (["--root", "/x", "ps", "-a"], "ps", "/x", None),
    (["--root=/x", "logs", "a"], "logs", "/x", None), (["--socket", "/s", "events"], "events",
                                                       None, "/s"),
    (["--root", "/x"], None, "/x", None), ([], None, None, None), (["--root", "ps", "ps"], "ps",
                                                                   "ps", None),
])
def test_global_options_then_the_command(argv, cmd, root, sock) -> None:
    args = ctl_grammar.parse(argv)
    assert (args.cmd, args.root, args.socket) == (cmd, root, sock)


def test_socket_option_and_command_help(capsys, root) -> None:
    with fake_daemon(root, {"status": result({"ok": True}), "info": result({})}):
        code, out, _ = run_ctl(capsys, "--socket", str(root / "supervisord.sock"), "info")
    assert (code, out) == (0, "ok: True\n")
    code, out, _ = run_ctl(capsys, "logs", "--help")
    assert code == 0 and "--tail N" in out and "--follow" in out


def test_event_line_shows_only_what_the_spec_asked() -> None:
    from supervisor.protocol import SPEC_PARAMS

    spec = {**SPEC_PARAMS, "name": "a", "command": ["sleep", "1"], "memory": 1024}
    line = ctl_render.event_line({"seq": 2, "time": 0, "type": "container.create", "id": "a",
                                  "data": {"spec": spec}})
    assert line.endswith('spec={"name": "a", "command": ["sleep", "1"], "memory": 1024}')


# -- the grammar and the values (docker's) ------------------------------------------------------


@pytest.mark.parametrize(("argv", "options", "command"), [
    (["run", "python3", "--help"], [], ["python3", "--help"]),
    (["run", "--name", "a", "ls", "-la"], ["--name", "a"], ["ls", "-la"]),
    (["run", "-e", "K=V", "--", "-x"], ["-e", "K=V"], ["-x"]),
    (["run", "-eK=V", "-d", "true"], ["-eK=V", "-d"], ["true"]),
    (["run", "-dm", "64m", "sleep", "1"], ["-dm", "64m"], ["sleep", "1"]),
    (["run", "--memory=1g", "--rm", "x", "--rm"], ["--memory=1g", "--rm"], ["x", "--rm"]),
    (["exec", "-e", "A=1", "web", "ls", "-l"], ["-e", "A=1", "web"], ["ls", "-l"]),
    (["exec", "web", "--", "ls"], ["web"], ["ls"]),
])
def test_the_command_starts_at_the_first_word_that_is_not_an_option(argv, options,
                                                                     command) -> None:
    takes = ctl_grammar.takes_value(argv[0])
    assert ctl_grammar.split_command(takes, argv[1:], ctl_grammar.TAKES_COMMAND[argv[0]]) == (
        options, command)
    assert ctl_grammar.parse(argv).command == command


def test_logs_since_takes_rfc3339_unix_seconds_and_durations() -> None:
    from supervisor.ctl_values import parse_since

    now = 1_795_000_000 * NS
    assert parse_since("10m", now) == now - 600 * NS
    assert parse_since("1h30m", now) == now - 5400 * NS
    assert parse_since("1.5s", now) == now - 1_500_000_000
    assert parse_since("1795000000", now) == 1_795_000_000 * NS
    assert parse_since("2026-11-18T11:06:40.5Z", now) == 1_795_000_000 * NS + NS // 2
    assert parse_since("2026-11-18", now) == parse_since("2026-11-18T00:00:00Z", now)
    for bad in ("yesterday", "10x", "", "m"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, now)


def test_env_files_read_like_dockers(tmp_path) -> None:
    from supervisor.ctl_values import read_env_file

    path = tmp_path / "env"
    path.write_text("# c\n\nA=1\nB=\"q\"\n  C=x=y\nD\nE\n")
    assert read_env_file(str(path), {"D": "from-env"}) == {"A": "1", "B": '"q"', "C": "x=y",
                                                           "D": "from-env"}
    path.write_text("=nokey\n")
    with pytest.raises(ValueError, match="line 1"):
        read_env_file(str(path), {})


def test_ps_filters_and_states_shown() -> None:
    from supervisor.ctl_values import ps_filter

    rows = [{**ROW, "id": "web"}, {**ROW, "id": "db", "labels": {"tier": "db"}},
            {**ROW, "id": "job", "state": "stopped", "exit_status": 3, "labels": {}}]
    keep, states = ps_filter(["label=tier"])
    assert [r["id"] for r in rows if keep(r)] == ["web", "db"] and not states
    keep, states = ps_filter(["status=exited", "exited=3"])
    assert [r["id"] for r in rows if keep(r)] == ["job"] and states
    keep, _ = ps_filter(["id=d", "id=j"])
    assert [r["id"] for r in rows if keep(r)] == ["db", "job"]
    for bad in (["colour=red"], ["state"], ["exited=x"]):
        with pytest.raises(ValueError, match="--filter"):
            ps_filter(bad)
    stopped = {**ROW, "state": "stopped"}
    assert ctl_render.state_cell({**stopped, "oom": True}) == "stopped (oom)"
    assert ctl_render.state_cell({**stopped, "exit_reason": "exec_failed: x"}) == \
        "stopped (exec failed)"
    assert ctl_render.state_cell({**stopped, "exit_reason": "shim lost"}) == "stopped (lost)"
    assert ctl_render.state_cell(stopped) == "stopped"


def test_json_keeps_every_byte() -> None:
    line = json.loads(ctl_render.log_json({"time": 0, "stream": "stdout", "partial": True,
                                           "line": b"\xff\r\x00ok"}))
    assert line == {"time": "1970-01-01T00:00:00.000000000Z", "stream": "stdout",
                    "partial": True, "line": {"base64": "/w0Ab2s="}}
    assert json.loads(ctl_render.log_json({"line": b"caf\xc3\xa9\r"}))["line"] == "caf\u00e9\r"


def test_following_commands_stop_when_their_reader_leaves(root) -> None:
    """`events -f | head -1` with nothing more to come: it notices, exits 141, says nothing."""
    record = {"seq": 1, "time": 0, "type": "supervisor.start", "id": "", "data": {}}
    with fake_daemon(root, {"events": lambda p: [{"item": record}]}):
        proc = subprocess.run(
            ["bash", "-c", f"{sys.executable} -m supervisor.ctl --root {root} events -f "
             "2>err | head -1; echo ${PIPESTATUS[0]}"],
            capture_output=True, text=True, timeout=30, cwd=root)
    assert (proc.stdout.splitlines()[-1], (root / "err").read_text()) == ("141", "")


def test_completion_script_is_valid_bash_naming_every_command() -> None:
    from supervisor.ctl_completion import bash_script

    script = bash_script()
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0
    for name in ctl_grammar.GRAMMAR:
        assert f"        {name})" in script
    assert "--env-file" in script and "ps -aq" in script
