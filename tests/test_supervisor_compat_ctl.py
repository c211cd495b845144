"""Tether's own ``supervisorctl status`` reads the way Supervisor's does: the text that tools
parse (ansible's ``community.general.supervisorctl`` splits each line on spaces, takes the
name and the state, and picks a name, ``GROUP:`` members or ``all``) gives the same answers
from ours as from Debian's ``supervisorctl`` on the same daemon."""


from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from daemon_helpers import CTL, Daemon, ctl, ok

DEBIAN_CTL = "/usr/bin/supervisorctl"

CONF = """\
    [program:lonely]
    command=sleep 1000
    startsecs=0
    [program:echo_date]
    command=sleep 1001
    process_name=%(program_name)s_%(process_num)02d
    numprocs=2
    startsecs=0
    [program:idle]
    command=sleep 1002
    autostart=false
    """


def matched(status_text: str, name: str) -> list[tuple[str, str]]:
    """How ansible's module reads ``supervisorctl status``: fields split on spaces, a trailing
    ':' in the asked name means a group, ``all`` means everything."""
    is_group = name.endswith(":")
    name = name.rstrip(":")
    out = []
    for line in status_text.splitlines():
        fields = [f for f in line.split(" ") if f]
        process, state = fields[0], fields[1]
        if is_group:
            if ":" not in process or process.split(":")[0] != name:
                continue
        elif process != name and name != "all":
            continue
        out.append((process, state))
    return out


@pytest.fixture
def d(daemon_factory, tmp_path: Path) -> Daemon:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent(CONF))
    daemon = daemon_factory("--config", str(conf))
    daemon.wait_for(lambda: len(daemon.ps()) == 4 and "STARTING" not in ctl(daemon,
                                                                           "status").stdout)
    return daemon


def test_status_parses_like_supervisors(d: Daemon, tmp_path: Path) -> None:
    ours = ctl(d, "status")
    assert ours.returncode == 3  # idle is not running
    assert matched(ours.stdout, "lonely") == [("lonely", "RUNNING")]
    assert matched(ours.stdout, "echo_date:") == [("echo_date:echo_date_00", "RUNNING"),
                                                  ("echo_date:echo_date_01", "RUNNING")]
    assert matched(ours.stdout, "idle") == [("idle", "STOPPED")]
    assert len(matched(ours.stdout, "all")) == 4
    # ansible's state changes: `stop NAME` / `start GROUP:` and no "NAME: ERROR" in the output
    out = ok(d, "stop", "echo_date:*")
    assert "ERROR" not in out and matched(ctl(d, "status").stdout, "echo_date:") == [
        ("echo_date:echo_date_00", "STOPPED"), ("echo_date:echo_date_01", "STOPPED")]
    assert "ERROR" not in ok(d, "start", "echo_date:*")
    if os.path.exists(DEBIAN_CTL):
        url = f"unix://{d.root}/supervisor.sock"
        conf = tmp_path / "ctl.conf"
        conf.write_text(f"[supervisorctl]\nserverurl={url}\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        theirs = subprocess.run([DEBIAN_CTL, "-c", str(conf), "-s", url, "status"],
                                capture_output=True, text=True, timeout=30, env=env, cwd="/")
        ours = ctl(d, "status")
        for name in ("lonely", "echo_date:", "idle", "all"):
            assert matched(ours.stdout, name) == matched(theirs.stdout, name)
        # the very same text, apart from the uptimes that moved on between the two calls
        assert [line[:43] for line in ours.stdout.splitlines()] == [
            line[:43] for line in theirs.stdout.splitlines()]
        assert ours.returncode == theirs.returncode == 3


def _theirs(d: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([DEBIAN_CTL, "-s", f"unix://{d.root}/supervisor.sock", *argv],
                          capture_output=True, text=True, timeout=30, env=env, cwd="/")


def test_add_and_remove_say_what_supervisors_say(d: Daemon) -> None:
    """``remove`` a running group refuses, a stopped one goes (the file keeps it), ``add``
    brings it back, started; unknown names and a second ``add`` as Supervisor words them,
    with its exit statuses, beside Debian's supervisorctl on the same daemon."""
    steps = [
        (("remove", "lonely"), "ERROR: process/group still running: lonely\n", 1),
        (("stop", "lonely"), "lonely: stopped\n", 0),
        (("remove", "lonely"), "lonely: removed process group\n", 0),
        (("remove", "lonely"), "ERROR: no such process/group: lonely\n", 1),
        (("add", "lonely"), "lonely: added process group\n", 0),
        (("add", "lonely"), "ERROR: process group already active\n", 0),
        (("add", "nosuch"), "ERROR: no such process/group: nosuch\n", 1),
    ]
    for argv, text, code in steps:
        proc = ctl(d, *argv)
        assert (proc.stdout, proc.returncode) == (text, code), argv
    assert "lonely" in d.ps() and d.ps()["lonely"]["state"] == "running"
    if os.path.exists(DEBIAN_CTL):
        for argv, text, code in [steps[0], steps[5], steps[6]]:
            theirs = _theirs(d, *argv)
            assert (theirs.stdout, theirs.returncode) == (text, code), argv


def test_supervisors_way_of_naming_the_daemon(d: Daemon, tmp_path: Path) -> None:
    """``-c FILE`` (its [supervisorctl] serverurl or [unix_http_server] file) and ``-s URL``
    name the root; Supervisor's joined words (``'signal HUP' NAME``, as ansible calls it) are
    one command; what cannot name a Tether root is a usage error that says why."""
    url = f"unix://{d.root}/supervisor.sock"
    by_url = tmp_path / "by-url.conf"
    by_url.write_text(f"[supervisorctl]\nserverurl = {url}  ; the daemon's\n")
    by_file = tmp_path / "by-file.conf"
    by_file.write_text(f"[unix_http_server]\nfile = {d.root}/supervisor.sock\n")
    pid = d.ps()["lonely"]["pid"]
    for argv in (["-c", str(by_url)], [f"--configuration={by_file}"], ["-s", url],
                 [f"-s{url}", "-u", "user", "-p", "secret"]):
        proc = subprocess.run([*CTL, *argv, "pid", "lonely"], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (0, f"{pid}\n"), (argv, proc.stderr)
    joined = subprocess.run([*CTL, "-s", url, "signal TERM", "lonely"], capture_output=True,
                            text=True, timeout=30)
    assert (joined.returncode, joined.stdout) == (0, "lonely: signalled\n"), joined.stderr
    bad = tmp_path / "none.conf"
    bad.write_text("[supervisord]\nlogfile = x\n")
    for argv, words in ((["-s", "http://127.0.0.1:9001", "status"],
                         "unix://ROOT/supervisor.sock"),
                        (["-c", str(bad), "status"], "names no socket"),
                        (["-c", str(tmp_path / "missing.conf"), "status"], "No such file"),
                        (["-s"], "expected one argument")):
        proc = subprocess.run([*CTL, *argv], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and words in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
