"""``supervisorctl apply -f FILE [--prune] [--dry-run]`` and ``supervisord --config FILE``
against a real daemon: idempotence (a second apply appends no event), only a changed program
replaced, ``--prune`` never touching ``run`` containers, a bad file refused whole, and a real
supervisord.conf with numprocs, groups, includes and environment expansion."""


from __future__ import annotations

import os
import textwrap
from pathlib import Path

from daemon_helpers import Daemon, ctl, ok


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def last_seq(d: Daemon) -> int:
    return int(d.call("status")["last_seq"])


def pids(d: Daemon) -> dict[str, int | None]:
    return {cid: row["pid"] if row["state"] == "running" else None
            for cid, row in d.ps().items()}


PROGRAMS = """\
    [programs.web]
    command = ["sh", "-c", "sleep 1000; true", "web-{tag}"]
    restart = "always"
    numprocs = 2
    priority = 10

    [programs.job]
    command = "sh -c 'sleep 1000; true'"
    env = {{ MODE = "{mode}" }}

    [programs.later]
    command = ["sleep", "1000"]
    autostart = false
    """


def test_apply_is_idempotent_and_replaces_only_what_changed(daemon: Daemon,
                                                            tmp_path: Path) -> None:
    path = write(tmp_path / "programs.toml", PROGRAMS.format(tag="a", mode="prod"))
    out = ok(daemon, "apply", "-f", str(path))
    assert "web_00: create" in out and "later: create (autostart=false" in out
    rows = daemon.ps()
    assert {cid: r["state"] for cid, r in rows.items()} == {
        "web_00": "running", "web_01": "running", "job": "running", "later": "created"}
    seq = last_seq(daemon)

    again = ok(daemon, "apply", "-f", str(path))
    assert "nothing to do" in again
    assert last_seq(daemon) == seq, "a second apply of the same file appended events"

    before = pids(daemon)
    write(path, PROGRAMS.format(tag="a", mode="staging"))  # only job's env changes
    out = ok(daemon, "apply", "-f", str(path))
    assert out.splitlines()[0] == "job: replace (env changed)", out
    after = pids(daemon)
    assert after["job"] != before["job"] and after["job"] is not None
    assert {k: after[k] for k in ("web_00", "web_01")} == {
        k: before[k] for k in ("web_00", "web_01")}
    touched = {e["id"] for e in daemon.stream("events", since=seq)
               if e["type"].startswith(("container", "task"))}
    assert touched == {"job"}
    environ = Path(f"/proc/{after['job']}/environ").read_bytes().split(b"\0")
    assert b"MODE=staging" in environ


def test_prune_removes_only_programs_never_run_containers(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    path = write(tmp_path / "programs.toml", PROGRAMS.format(tag="b", mode="x"))
    ok(daemon, "apply", "-f", str(path))
    daemon.run("sleep", "1000", name="mine")
    write(path, """\
        [programs.job]
        command = "sh -c 'sleep 1000; true'"
        env = { MODE = "x" }
        """)
    out = ok(daemon, "apply", "-f", str(path))
    assert "web_00: not in the file (kept; --prune removes it)" in out
    assert set(daemon.ps()) == {"web_00", "web_01", "job", "later", "mine"}
    dry = ok(daemon, "apply", "-f", str(path), "--prune", "--dry-run")
    assert "web_00: remove" in dry and "dry run" in dry
    assert set(daemon.ps()) == {"web_00", "web_01", "job", "later", "mine"}
    ok(daemon, "apply", "-f", str(path), "--prune")
    assert set(daemon.ps()) == {"job", "mine"}
    assert daemon.ps()["mine"]["state"] == "running"


def test_a_bad_file_changes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    daemon.run("sleep", "1000", name="taken")
    seq = last_seq(daemon)
    bad = write(tmp_path / "bad.conf", """\
        [program:fine]
        command=sleep 1000

        [program:typo]
        command=sleep 1000
        autorestrat=true
        """)
    proc = ctl(daemon, "apply", "-f", str(bad))
    assert proc.returncode == 1
    assert f"{bad}:6: [program:typo]: unsupported key 'autorestrat'" in proc.stderr
    assert "nothing was changed" in proc.stderr
    # a file that parses but clashes with a `run` container is refused whole by the daemon
    clash = write(tmp_path / "clash.toml", """\
        [programs.fine]
        command = ["sleep", "1000"]
        [programs.taken]
        command = ["sleep", "1000"]
        """)
    proc = ctl(daemon, "apply", "-f", str(clash))
    assert proc.returncode == 1 and "taken: a container made by `run` has this id" in proc.stderr
    assert last_seq(daemon) == seq
    assert set(daemon.ps()) == {"taken"}


def test_a_real_supervisord_conf_and_config_at_start(daemon_factory, tmp_path: Path,
                                                     root: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    write(tmp_path / "conf.d" / "workers.conf", """\
        [program:worker]
        command=sh -c 'echo "worker %(process_num)d $GREETING"; exec sleep 1000'
        process_name=%(program_name)s_%(process_num)02d
        numprocs=2
        environment=GREETING="hi from %(ENV_TEST_ORIGIN)s"
        startsecs=0

        [group:batch]
        programs=cron,mailer

        [program:cron]
        command=sleep 1000
        autostart=false

        [program:mailer]
        command=sleep 1001
        """)
    conf = write(tmp_path / "supervisord.conf", """\
        [supervisord]
        logfile=/var/log/supervisor/supervisord.log

        [program:web]
        command=sleep 1002
        priority=1

        [include]
        files=conf.d/*.conf
        """)
    env = {**os.environ, "TEST_ORIGIN": "the daemon"}
    d = daemon_factory("--config", str(conf), env=env)
    d.wait_for(lambda: set(d.ps()) == {"web", "worker_00", "worker_01", "cron", "mailer"})
    # startsecs (1 s by default): STARTING, then RUNNING. The programs are created first,
    # then started by priority: "no STARTING" alone is also true before the first start
    expected = {"web": "RUNNING", "worker:worker_00": "RUNNING",
                "worker:worker_01": "RUNNING", "batch:cron": "STOPPED",
                "batch:mailer": "RUNNING"}

    def states() -> dict[str, str]:
        out = ctl(d, "status").stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines()}

    d.wait_for(lambda: states() == expected, timeout=15)
    status = ctl(d, "status")
    lines = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()}
    assert lines == expected, status.stdout
    assert status.returncode == 3  # cron is not running, as Supervisor 4 says
    d.wait_for(lambda: "hi from the daemon" in ok(d, "tail", "worker:worker_01"))
    assert "worker 1 hi from the daemon" in ok(d, "tail", "worker:worker_01")
    seq = last_seq(d)
    running = pids(d)
    d.stop()
    d.start().reconciled()
    # applied again at start: nothing changed, so nothing but the daemon's own events
    types = {e["type"] for e in d.stream("events", since=seq)}
    assert types <= {"supervisor.stop", "supervisor.start"}, types
    assert pids(d) == running
    # reread / update read the file again
    write(tmp_path / "supervisord.conf", """\
        [program:web]
        command=sleep 1003
        priority=1

        [include]
        files=conf.d/*.conf
        """)
    assert ok(d, "reread").splitlines() == ["web: changed"]
    out = ok(d, "update")
    assert "web: replace (command changed)" in out
    assert d.ps()["web"]["pid"] != running["web"]
    assert all(d.ps()[k]["pid"] == running[k] for k in ("worker_00", "worker_01", "mailer"))


def test_config_with_a_bad_file_refuses_to_start(daemon_factory, tmp_path: Path) -> None:
    conf = write(tmp_path / "bad.conf", "[program:x]\ncommand=true\nnumprocs=two\n")
    d = daemon_factory("--config", str(conf), start=False)
    d.start(expect_fail=True)
    assert d.wait_exit() != 0
    assert f"{conf}:3: [program:x] numprocs" in d.stderr()


def test_the_example_files_apply(daemon: Daemon) -> None:
    """examples/supervisord.conf and examples/programs.toml: what the README shows works."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    env = {**os.environ, "WEB_PORT": "8080"}
    for name, wanted in (("supervisord.conf", {"web", "worker_00", "worker_01", "report"}),
                         ("programs.toml", {"web", "worker_00", "worker_01", "report"})):
        import subprocess

        from daemon_helpers import CTL, REPO

        proc = subprocess.run([*CTL, "--root", str(daemon.root), "apply", "--dry-run", "-f",
                               str(examples / name)], capture_output=True, text=True,
                              timeout=30, cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr
        assert {line.split(":")[0] for line in proc.stdout.splitlines()
                if line.endswith(("create", "(autostart=false: not started)"))} == wanted
    assert daemon.ps() == {}
