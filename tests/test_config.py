"""Program files: a real supervisord.conf (numprocs, groups, includes, environment expansion)
and Tether's TOML, read into processes; every refusal names the file, the line and the key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from supervisor import config_supervisor, config_toml, program_files
from supervisor import programs as P
from supervisor import sv_processes as S


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


REAL_CONF = """\
    ; a supervisord.conf as Debian ships it, plus programs
    [unix_http_server]
    file=/var/run/supervisor.sock   ; (the path to the socket file)
    chmod=0700

    [supervisord]
    logfile=/var/log/supervisor/supervisord.log
    pidfile=/var/run/supervisord.pid
    childlogdir=/var/log/supervisor

    [rpcinterface:supervisor]
    supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

    [supervisorctl]
    serverurl=unix:///var/run/supervisor.sock

    [program:web]
    command=python3 -m http.server %(ENV_PORT)s --directory "%(here)s"
    environment=MODE="prod",GREETING="hello, world",PORT="%(ENV_PORT)s"
    directory=%(here)s
    autorestart=true
    priority=10
    stopsignal=INT
    stopwaitsecs=5
    stdout_logfile=/var/log/web.log
    stdout_logfile_maxbytes=1MB
    stdout_logfile_backups=2

    [include]
    files = conf.d/*.conf
    """

WORKERS_CONF = """\
    [program:worker]
    command=sh -c 'echo worker %(process_num)d of %(numprocs)d in %(group_name)s'
    process_name=%(program_name)s_%(process_num)02d
    numprocs=2
    autorestart=unexpected
    exitcodes=0,2
    startsecs=3
    startretries=5
    stopasgroup=true

    [group:batch]
    programs=cron,mailer
    priority=5

    [program:cron]
    command=sleep 100
    autostart=false

    [program:mailer]
    command=/usr/bin/env sleep 200
      --continued
    redirect_stderr=true
    """


@pytest.fixture
def conf(tmp_path: Path) -> str:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "workers.conf", WORKERS_CONF)
    return write(tmp_path / "supervisord.conf", REAL_CONF)


def test_a_real_supervisord_conf(conf: str, tmp_path: Path) -> None:
    desired = program_files.load(conf, {"PORT": "8123"})
    by_name = {p.name: p for p in desired.processes}
    assert sorted(by_name) == ["cron", "mailer", "web", "worker_00", "worker_01"]

    web = by_name["web"]
    assert web.group == "web" and web.priority == 10 and web.group_priority == 10
    assert web.spec["command"] == ["python3", "-m", "http.server", "8123", "--directory",
                                   str(tmp_path)]
    assert web.spec["cwd"] == str(tmp_path)
    assert web.spec["env"]["GREETING"] == "hello, world"
    assert web.spec["env"]["PORT"] == "8123"
    assert web.spec["env"]["SUPERVISOR_PROCESS_NAME"] == "web"
    assert web.spec["stop_signal"] == 2 and web.spec["stop_timeout"] == 5.0
    assert web.spec["log_max_size"] == 1024 * 1024 and web.spec["log_keep"] == 2
    assert web.spec["restart"]["policy"] == "always"

    w0, w1 = by_name["worker_00"], by_name["worker_01"]
    assert (w0.group, w1.group) == ("worker", "worker")
    assert w0.spec["command"] == ["sh", "-c", "echo worker 0 of 2 in worker"]
    assert w1.spec["command"][-1] == "echo worker 1 of 2 in worker"
    assert w0.stop_as_group and w0.kill_as_group and w0.startsecs == 3
    # autorestart=unexpected + exitcodes -> on-failure with the expected set; startretries
    # -> max_retries; startsecs resets the count; back-off 1, 2, ... capped at the retries
    assert w0.spec["restart"] == {"policy": "on-failure", "max_retries": 5, "delay": 1.0,
                                  "max_delay": 5.0, "reset": 3.0, "exit_codes": [0, 2]}

    cron, mailer = by_name["cron"], by_name["mailer"]
    assert (cron.group, mailer.group) == ("batch", "batch")
    assert cron.group_priority == 5 and not cron.autostart
    assert mailer.spec["command"] == ["/usr/bin/env", "sleep", "200", "--continued"]
    assert mailer.redirect_stderr
    assert [p.name for p in desired.start_order()][:2] == ["cron", "mailer"]

    # one note per section Tether has no use for, and per key accepted without effect
    notes = "\n".join(desired.notes)
    for section in ("[unix_http_server]", "[supervisord]", "[rpcinterface:supervisor]",
                    "[supervisorctl]"):
        assert notes.count(section) == 1, notes
    assert "supervisord.conf:25: [program:web] stdout_logfile" in notes, notes


def test_default_restart_matches_supervisors_backoff() -> None:
    """startretries=3 (Supervisor's default): Tether's capped exponential back-off waits
    1, 2, 3 s like Supervisor's linear one, then gives up."""
    from events.policy import backoff, decide, restart_spec

    spec = restart_spec(config_supervisor.restart_map("unexpected", [0], 3, 1))
    assert [backoff(spec, n) for n in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert decide(spec, exit_status=1, streak=3, ran_for=0.5).give_up
    # a process that ran startsecs counts as started: the count starts again
    assert decide(spec, exit_status=1, streak=3, ran_for=1.5).restart


@pytest.mark.parametrize(("text", "line", "words"), [
    ("[program:x]\ncommand=true\numask=022\n", 3, "unsupported key 'umask'"),
    ("[program:x]\ncommand=true\nautostart=maybe\n", 3, "autostart"),
    ("[program:x]\ncommand=true\nnumprocs=2\n", 1, "%(process_num)"),
    ("[program:x]\nautostart=true\n", 1, "has no command"),
    ("[program:x]\ncommand=run %(ENV_NOPE)s\n", 2, "NOPE"),
    ("[program:x]\ncommand=true\nstopsignal=NOSUCH\n", 3, "stopsignal"),
    ("[program:x]\ncommand=true\nuser=no-such-user-here\n", 3, "no such user"),
    ("[eventlistener:x]\ncommand=true\n", 1, "does not support eventlistener"),
    ("[whatever]\nkey=1\n", 1, "unknown section"),
    ("key=1\n", 1, "before any [section]"),
    ("[group:g]\nprograms=missing\n", 2, "unknown program 'missing'"),
    ("[program:x]\ncommand=true\nstopasgroup=true\nkillasgroup=false\n", 4, "killasgroup"),
    ("[program:a b]\ncommand=true\n", 1, "container id"),
])
def test_refusals_name_file_line_and_key(tmp_path: Path, text: str, line: int,
                                         words: str) -> None:
    path = write(tmp_path / "bad.conf", text)
    with pytest.raises(P.ConfigError) as info:
        program_files.load(path, {})
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert words in message


def test_toml_programs(tmp_path: Path) -> None:
    path = write(tmp_path / "programs.toml", """\
        [programs.web]
        command = ["python3", "-m", "http.server", "8000"]
        restart = "always"
        env = { MODE = "prod" }
        numprocs = 2
        priority = 10
        memory = "64m"

        [programs.job]
        command = "sh -c 'echo hi; sleep 5'"
        autostart = false
        restart = { policy = "on-failure", max_retries = 2 }
        """)
    desired = program_files.load(path)
    by_name = {p.name: p for p in desired.processes}
    assert sorted(by_name) == ["job", "web_00", "web_01"]
    assert by_name["web_00"].group == "web" and by_name["web_00"].priority == 10
    assert by_name["web_01"].spec["memory"] == 64 * 2**20
    assert by_name["web_00"].spec["restart"]["policy"] == "always"
    assert by_name["job"].spec["command"] == ["sh", "-c", "echo hi; sleep 5"]
    assert not by_name["job"].autostart
    assert by_name["job"].spec["restart"]["max_retries"] == 2


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[programs.web]\ncommand = ["x"]\nrestrat = "always"\n', 3, "restrat"),
    ('[programs.web]\nenv = { A = "1" }\n', 1, "has no command"),
    ('[programs.web]\ncommand = ["x"]\nrestart = "sometimes"\n', 3, "restart"),
    ('[programs.web]\ncommand = ["x"]\nnumprocs = 0\n', 3, "numprocs"),
    ('[programs.web]\ncommand = [\n', 2, "not valid TOML"),
    ('[programs.web]\ncommand = ["x"]\nbad = = 1\n', 3, "not valid TOML"),
    ('[services.web]\ncommand = ["x"]\n', 1, "unknown top-level key"),
])
def test_toml_refusals(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(P.ConfigError) as info:
        config_toml.load(path)
    assert str(info.value).startswith(f"{path}:{line}:"), str(info.value)
    assert words in str(info.value)


def _container(p: P.Process, state: str = "running", **extra: object) -> dict[str, object]:
    return {"id": p.name, "state": state, "spec": p.container_spec("/f"), "restarts": 0,
            "started": 1, **extra}


def test_plan_keeps_equal_digests_and_replaces_only_the_changed() -> None:
    a = P.Process(name="a", program="a", group="a", spec={"command": ["sleep", "1"]})
    b = P.Process(name="b", program="b", group="b", spec={"command": ["sleep", "2"]})
    containers = {"a": _container(a), "b": _container(b),
                  "ran": {"id": "ran", "state": "running", "spec": {"command": ["x"]}},
                  "old": _container(P.Process(name="old", program="old", group="old",
                                              spec={"command": ["x"]}))}
    b2 = P.Process(name="b", program="b", group="b", spec={"command": ["sleep", "3"]})
    c = P.Process(name="c", program="c", group="c", spec={"command": ["true"]})
    plan = P.plan([a, b2, c], containers, prune=False)
    assert plan.keep == ["a"]
    assert [(p.name, why) for p, why in plan.replace] == [("b", ["command"])]
    assert [p.name for p in plan.create] == ["c"]
    assert plan.remove == [] and plan.orphans == ["old"]  # never "ran": made by run
    pruned = P.plan([a, b2, c], containers, prune=True)
    assert pruned.remove == ["old"]
    assert P.plan([a, b], containers, prune=False).empty
    clash = P.Process(name="ran", program="ran", group="ran", spec={"command": ["x"]})
    assert P.plan([clash], containers, prune=True).conflicts == ["ran"]


@pytest.mark.parametrize(("record", "shown", "code"), [
    ({"state": "created", "restarts": 0}, "created", S.STOPPED),
    ({"state": "created", "restarts": 2}, "created", S.STARTING),
    ({"state": "running", "started": 10**9 * 99}, "running", S.STARTING),
    ({"state": "running", "started": 10**9 * 90}, "running", S.RUNNING),
    ({"state": "restarting"}, "restarting", S.BACKOFF),
    ({"state": "stopped", "gave_up": True, "started": 1}, "stopped", S.FATAL),
    ({"state": "stopped", "started": None, "exit_status": 127}, "stopped", S.FATAL),
    ({"state": "stopped", "stopped_by_user": True, "started": 1}, "stopped", S.STOPPED),
    ({"state": "stopped", "started": 1, "exit_status": 0}, "stopped", S.EXITED),
    ({"state": "running", "started": 1}, "unknown", S.UNKNOWN),
])
def test_supervisor_states_from_tethers(record: dict[str, object], shown: str,
                                        code: int) -> None:
    c = {"id": "x", "spec": {"labels": {P.PROGRAM: "x", P.STARTSECS: "5"}}, **record}
    assert S.state_code(c, shown, now_ns=10**9 * 100) == code


def test_process_info_reads_like_supervisors() -> None:
    p = P.Process(name="worker_01", program="worker", group="worker",
                  spec={"command": ["sleep", "9"]}, startsecs=0)
    c = _container(p, pid=4242, started=10**9 * 38, finished=None)
    info = S.process_info(c, "running", now_ns=10**9 * 100)
    assert info["statename"] == "RUNNING" and info["state"] == 20
    assert info["description"] == "pid 4242, uptime 0:01:02"
    assert (info["group"], info["name"], info["pid"]) == ("worker", "worker_01", 4242)
    assert S.namespec(info["group"], info["name"]) == "worker:worker_01"
    assert S.split_namespec("worker:*") == ("worker", None)
    assert S.split_namespec("web") == ("web", "web")
