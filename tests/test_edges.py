"""Bad input at every edge (issue 10, items 5 and 9): a clear error naming what is wrong, and
nothing changed (no event appended, no shim, no traceback).

The edges: the socket API (a whole spec at ``create``/``run``; the timeouts and counts of
``stop``/``restart``/``exec``/``events``/``logs``), the CLI's value parsers (a usage error, exit
2), and the configuration readers (TOML and supervisord.conf: the file and the line). Every
duration goes through one validator, :func:`events.policy.seconds`.
"""

from __future__ import annotations

import pytest
from daemon_helpers import ctl

from events import wire
from supervisor import program_files
from supervisor.programs import ConfigError

GOOD = {"command": ["true"], "name": "bad"}

# (the spec's fields over GOOD, what the message must name)
BAD_SPECS = [
    ({"command": []}, "spec.command"),
    ({"command": "true"}, "spec.command"),
    ({"command": ["sh", "-c", "echo a\0b"]}, "spec.command[2]"),
    ({"command": ["true", 3]}, "spec.command[1]"),
    ({"env": {"A": "x\0y"}}, "spec.env['A']"),
    ({"env": {"A=B": "x"}}, "spec.env: keys"),
    ({"env": {"A\0": "x"}}, "spec.env: keys"),
    ({"env": {"": "x"}}, "spec.env: keys"),
    ({"env": {"A": 1}}, "spec.env['A']"),
    ({"env": ["A=1"]}, "spec.env"),
    ({"labels": {"k": "v\0"}}, "spec.labels['k']"),
    ({"labels": {"k": None}}, "spec.labels['k']"),
    ({"cwd": "/tmp\0x"}, "spec.cwd"),
    ({"cwd": 7}, "spec.cwd"),
    ({"user": "root"}, "spec.user"),
    ({"user": 0}, "spec.user"),
    ({"user": {"uid": "0"}}, "spec.user.uid"),
    ({"user": {"uid": 0, "gid": 2**40}}, "spec.user.gid"),
    ({"user": {"name": "root"}}, "spec.user"),
    ({"name": "../etc"}, "spec.name"),
    ({"name": 5}, "spec.name"),
    ({"runtime": 5}, "spec.runtime"),
    ({"init": "yes"}, "spec.init"),
    ({"auto_remove": 1}, "spec.auto_remove"),
    ({"stop_timeout": float("inf")}, "spec.stop_timeout"),
    ({"stop_timeout": float("nan")}, "spec.stop_timeout"),
    ({"stop_timeout": 1e308}, "spec.stop_timeout"),
    ({"stop_timeout": 2**64 - 1}, "spec.stop_timeout"),
    ({"stop_timeout": "10"}, "spec.stop_timeout"),
    ({"stop_signal": "SIGBOGUS"}, "SIGBOGUS"),
    ({"memory": 0}, "spec.memory"),
    ({"memory": 1.5}, "spec.memory"),
    ({"cpus": float("inf")}, "spec.cpus"),
    ({"cpus": 0}, "spec.cpus"),
    ({"pids_limit": True}, "spec.pids_limit"),
    ({"log_max_size": -1}, "spec.log_max_size"),
    ({"restart": {"policy": "always", "delay": 1e308}}, "spec.restart.delay"),
    ({"health": {"cmd": "true", "interval": float("inf")}}, "spec.health.interval"),
    ({"namespaces": ["time"]}, "spec.namespaces"),
    ({"bogus": 1}, "unknown spec fields"),
]


def test_bad_specs_are_invalid_naming_the_field_and_append_nothing(daemon):
    """One daemon for the whole table: each bad spec is refused before anything happens, and the
    daemon keeps serving (a good spec afterwards runs)."""
    before = daemon.call("status")["last_seq"]
    for fields, named in BAD_SPECS:
        for method in ("create", "run"):
            with pytest.raises(wire.RemoteError) as err:
                daemon.call(method, spec={**GOOD, **fields})
            assert err.value.code == "invalid", (fields, err.value)
            assert named in err.value.message, (fields, err.value.message)
    assert daemon.call("status")["last_seq"] == before
    assert daemon.ps() == {}
    assert not (daemon.root / "shims" / "bad").exists()
    daemon.run("true", name="good")
    assert "good" in daemon.ps()


def test_bad_numbers_of_the_other_methods_are_invalid_and_change_nothing(daemon):
    daemon.run("sleep", "1000", name="s")
    before = daemon.call("status")["last_seq"]
    bad_calls = [
        ("stop", {"id": "s", "timeout": float("inf")}, "timeout"),
        ("stop", {"id": "s", "timeout": 2**64 - 1}, "timeout"),
        ("restart", {"id": "s", "timeout": float("nan")}, "timeout"),
        ("kill", {"id": "s", "signal": 2**40}, "signal"),
        ("exec", {"id": "s", "command": ["true"], "env": {"A": "x\0"}}, "exec env"),
        ("exec", {"id": "s", "command": ["true"], "cwd": "/\0"}, "exec cwd"),
        ("exec", {"id": "s", "command": ["a\0"]}, "exec command"),
        ("events", {"buffer": 0}, "buffer"),
        ("events", {"buffer": "10"}, "buffer"),
        ("events", {"since": -1}, "since"),
        ("logs", {"id": "s", "tail": -1}, "tail"),
        ("logs", {"id": "s", "since": 1.5}, "since"),
        ("logs", {"id": "s", "after": [1, -1]}, "after"),
    ]
    for method, params, named in bad_calls:
        with pytest.raises(wire.RemoteError) as err:
            if method in ("exec", "events", "logs"):
                list(daemon.stream(method, **params))
            else:
                daemon.call(method, **params)
        assert err.value.code == "invalid", (method, params, err.value)
        assert named in err.value.message, (method, params, err.value.message)
    assert daemon.call("status")["last_seq"] == before
    assert daemon.ps()["s"]["state"] == "running"


@pytest.mark.parametrize("argv,flag", [
    (["stop", "-t", "inf", "s"], "-t/--time"),
    (["stop", "-t", "nan", "s"], "-t/--time"),
    (["stop", "-t", "1e308", "s"], "-t/--time"),
    (["stop", "-t", "-1", "s"], "-t/--time"),
    (["restart", "-t", "1e308", "s"], "-t/--time"),
    (["run", "--stop-timeout", "1e308", "--", "true"], "--stop-timeout"),
    (["run", "--stop-timeout", "inf", "--", "true"], "--stop-timeout"),
    (["run", "--cpus", "nan", "--", "true"], "--cpus"),
    (["logs", "--since", "inf", "s"], "--since"),
    (["logs", "--since", "1e400", "s"], "--since"),
    (["logs", "--since", "99999999999h", "s"], "--since"),
    (["logs", "--tail", "-1", "s"], "--tail"),
    (["events", "--reconnect", "1e308"], "--reconnect"),
    (["events", "--since", "9" * 30], "--since"),
    (["run", "-m", "1e400m", "--", "true"], "--memory"),
    (["run", "--pids-limit", "9" * 30, "--", "true"], "--pids-limit"),
    (["logs", "--tail", "9" * 30, "s"], "--tail"),
])
def test_bad_numbers_on_the_command_line_are_usage_errors(daemon, argv, flag):
    daemon.run("sleep", "1000", name="s")
    before = daemon.call("status")["last_seq"]
    proc = ctl(daemon, *argv)
    assert proc.returncode == 2, proc
    assert flag in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert daemon.call("status")["last_seq"] == before


def test_supervisor_tail_with_a_huge_count_is_a_usage_error(daemon):
    proc = ctl(daemon, "tail", "-99999999999999999999999", "s")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc
    assert "bad argument" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name,text,where", [
    ("a.toml", '[programs.a]\ncommand = "sleep 1"\nstop_timeout = inf\n',
     ":3: programs.a.stop_timeout"),
    ("a.toml", '[programs.a]\ncommand = "sleep 1"\nstartsecs = nan\n', ":3: programs.a.startsecs"),
    ("a.toml", '[programs.a]\ncommand = "sleep 1"\nnumprocs = 1000000000\n', "programs.a.numprocs"),
    ("a.conf", "[program:a]\ncommand = sleep 1\nstopwaitsecs = 1" + "0" * 400 + "\n",
     ":3: [program:a] stopwaitsecs"),
    ("a.conf", "[program:a]\ncommand = sleep 1\nstartsecs = 604801\n", ":3: [program:a] startsecs"),
    ("a.conf", "[program:a]\ncommand = sleep 1\nstartretries = 1" + "0" * 30 + "\n",
     ":3: [program:a] startretries"),
    ("a.conf", "[program:a]\ncommand = sleep 1\nnumprocs = 1000000000\n"
     "process_name = %(program_name)s_%(process_num)d\n", ":3: [program:a] numprocs"),
])
def test_config_files_bound_every_number_naming_the_line(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        program_files.load(str(path))
    assert where in str(err.value), err.value
