"""A new user's first hour, against a real supervisord: which supervisorctl this is, the
grammar people type (docker's), the flags they bring from docker, shell completion, and a
daemon that stops cleanly. Every check runs the real commands in subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import _proc_table, kill_and_wait, processes_naming
from daemon_helpers import CTL, Daemon, ctl, ok

from supervisor import autoremove, ctl_values, neighbours

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid, cgroups)")


def ps_rows(d: Daemon, *flags: str) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in map(json.loads, ok(d, "ps", "--json", *flags).splitlines())}


def logs_of(d: Daemon, cid: str) -> str:
    assert ok(d, "wait", cid) == "0\n"
    return ok(d, "logs", cid)


# -- which supervisorctl is this -----------------------------------------------------------------


def test_both_commands_say_they_are_tethers() -> None:
    from supervisor.version import VERSION

    for name in ("supervisorctl", "supervisord"):
        proc = subprocess.run([str(BIN / name), "--version"], capture_output=True, text=True,
                              timeout=30)
        assert (proc.returncode, proc.stdout) == (0, f"{name} (Tether) {VERSION}\n")
    project = (REPO / "pyproject.toml").read_text()
    assert 'version = {attr = "supervisor.version.VERSION"}' in project  # one home


def test_supervisord_warns_when_path_finds_supervisors_commands(tmp_path: Path) -> None:
    """Tether's supervisord, run by path, with a PATH whose first supervisorctl is another
    program's (Debian's Supervisor installs /usr/bin/supervisorctl): it says so, and how to
    run Tether's."""
    fake = tmp_path / "otherbin"
    fake.mkdir()
    other = fake / "supervisorctl"
    other.write_text("#!/bin/sh\necho 'Supervisor 4.2.5'\n")
    other.chmod(0o755)
    root = tmp_path / "root"
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}
    proc = subprocess.Popen([str(BIN / "supervisord"), "--root", str(root), "--log-format",
                             "json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not (root / "supervisord.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    text = err.decode()
    assert f"supervisorctl on PATH is {other}, not {BIN / 'supervisorctl'}" in text
    assert f"{BIN}/supervisorctl" in text and "activate" in text


@pytest.mark.skipif(not Path("/usr/bin/supervisord").exists(),
                    reason="Supervisor is not installed (apt-get install supervisor)")
def test_a_running_supervisor_is_named(tmp_path: Path) -> None:
    """Supervisor itself (Debian's package), on its own socket: found, with its pid."""
    sock = tmp_path / "supervisor.sock"
    conf = tmp_path / "supervisord.conf"
    conf.write_text(f"[unix_http_server]\nfile={sock}\n[supervisord]\nnodaemon=true\n"
                    f"logfile={tmp_path}/s.log\npidfile={tmp_path}/s.pid\n"
                    "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
                    "supervisor.rpcinterface:make_main_rpcinterface\n")
    proc = subprocess.Popen(["/usr/bin/python3", "/usr/bin/supervisord", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 20
        while not neighbours.other_supervisors([str(sock)], []) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = neighbours.other_supervisors([str(sock)], [str(tmp_path / "s.pid")])
    finally:
        proc.terminate()
        proc.wait(20)
    assert len(found) == 1, found
    assert str(sock) in found[0] and f"pid {proc.pid}" in found[0]
    assert neighbours.other_supervisors([str(sock)], []) == []  # gone: nothing to say


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no system python3")
def test_the_subscriber_example_runs_with_any_python3(daemon: Daemon, tmp_path: Path) -> None:
    """The README's `examples/subscriber.py`, run by a python3 without Tether's dependencies
    (the system's): it re-executes itself with the checkout's venv and does its job."""
    ok(daemon, "run", "--name", "j", "sh", "-c", "exit 4")
    assert ctl(daemon, "wait", "j").returncode == 4
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.Popen(["/usr/bin/python3", str(REPO / "examples/subscriber.py"), "--root",
                             str(daemon.root), "--state", str(tmp_path / "seq")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert line.startswith("exit seq=") and " id=j exit_status=4 " in line, err


def test_the_setup_installs_without_a_setuptools_warning(tmp_path: Path) -> None:
    """`.ci/setup` itself, in a copy of the checkout (its own .venv; never this one): no
    setuptools warning, and the editable install is a plain path in a .pth (the fast mode:
    no import hook in every CLI and shim start-up). The ansible venv (~550 MB, no code of
    ours) is linked, not copied: setup then finds it made, as it does on a second run."""
    copy = tmp_path / "src"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".venv", ".venv-ansible", ".git", "__pycache__", "*.egg-info", "build",
        ".pytest_cache"))
    if (REPO / ".venv-ansible").is_dir():
        (copy / ".venv-ansible").symlink_to(REPO / ".venv-ansible")
    proc = subprocess.run(["bash", ".ci/setup"], capture_output=True, text=True, timeout=600,
                          cwd=copy)
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    for word in ("setuptools", "editable", "!!", "Deprecat"):
        assert word not in said, said
    pth = list((copy / ".venv").rglob("__editable__*.pth"))
    assert [p.read_text().strip() for p in pth] == [str(copy)]
    assert not list((copy / ".venv").rglob("__editable__*finder*.py"))
    version = subprocess.run([str(copy / ".venv/bin/supervisorctl"), "--version"],
                             capture_output=True, text=True, timeout=30)
    assert version.stdout.startswith("supervisorctl (Tether) ")


# -- the grammar people type ---------------------------------------------------------------------


def test_the_first_word_that_is_not_an_option_starts_the_command(daemon: Daemon) -> None:
    assert ok(daemon, "run", "--name", "py", sys.executable, "--help") == "py\n"
    assert "usage:" in logs_of(daemon, "py")  # python3's help, not run's
    assert ok(daemon, "run", "--name", "ls", "-e", "A=1", "ls", "-la", "/") == "ls\n"
    assert " .." in logs_of(daemon, "ls")
    assert ok(daemon, "run", "--name", "dd", "--", "sh", "-c", "echo $0", "x") == "dd\n"
    assert logs_of(daemon, "dd") == "x\n"
    assert ok(daemon, "run", "--name", "cl", "-dm", "64m", "true") == "cl\n"  # a short cluster
    assert json.loads(ok(daemon, "inspect", "cl"))["spec"]["memory"] == 64 << 20
    ok(daemon, "run", "--name", "box", "sleep", "60")
    assert ok(daemon, "exec", "box", "sh", "-c", "echo $0 $1", "a", "b") == "a b\n"
    bad = ctl(daemon, "run", "--bogus", "true")
    assert bad.returncode == 2
    assert bad.stderr.startswith("supervisorctl run: unrecognized arguments: --bogus")
    assert "Try 'supervisorctl run --help'." in bad.stderr
    missing = ctl(daemon, "run", "--name", "x")
    assert missing.returncode == 2 and "supervisorctl run: the command to run is missing" \
        in missing.stderr
    it = ctl(daemon, "run", "-it", "sh")
    assert it.returncode == 2 and "logs -f" in it.stderr
    assert "x" not in ps_rows(daemon, "-a")


def test_help_outside_the_shell() -> None:
    top = subprocess.run([*CTL, "help"], capture_output=True, text=True, timeout=30, cwd=REPO)
    assert top.returncode == 0 and "completion" in top.stdout and "Exit codes" in top.stdout
    run = subprocess.run([*CTL, "help", "run"], capture_output=True, text=True, timeout=30,
                         cwd=REPO)
    assert run.returncode == 0 and run.stdout.startswith("usage: supervisorctl run")
    bad = subprocess.run([*CTL, "help", "nope"], capture_output=True, text=True, timeout=30,
                         cwd=REPO)
    assert bad.returncode == 2 and "no command 'nope'" in bad.stderr


# -- docker's habits -----------------------------------------------------------------------------


def test_run_flags_from_docker(daemon: Daemon, tmp_path: Path) -> None:
    env_file = tmp_path / "app.env"
    env_file.write_text("# settings\nA=from-file\nB=\"kept as is\"\n\nHOME_DIR\n")
    os.environ["HOME_DIR"] = "/home/x"
    try:
        ok(daemon, "run", "-d", "--name", "envy", "--env-file", str(env_file), "-e", "A=wins",
           "-l", "tier=web", "-l", "blue", "sh", "-c", 'echo "$A|$B|$HOME_DIR"')
    finally:
        del os.environ["HOME_DIR"]
    assert logs_of(daemon, "envy") == 'wins|"kept as is"|/home/x\n'
    assert json.loads(ok(daemon, "inspect", "envy"))["spec"]["labels"] == {"tier": "web",
                                                                            "blue": ""}
    bad = ctl(daemon, "run", "--env-file", str(tmp_path / "none"), "true")
    assert bad.returncode == 2 and "--env-file" in bad.stderr and "No such file" in bad.stderr


@needs_root
def test_run_user(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "nob", "--user", "nobody", "sh", "-c", "id -u; id -g")
    assert logs_of(daemon, "nob") == "65534\n65534\n"
    ok(daemon, "run", "--name", "num", "-u", "1234:5678", "sh", "-c", "id -u; id -g")
    assert logs_of(daemon, "num") == "1234\n5678\n"
    bad = ctl(daemon, "run", "--user", "no-such-user", "true")
    assert bad.returncode == 2 and "no user 'no-such-user' in /etc/passwd" in bad.stderr


def test_ps_quiet_filters_and_the_command_column(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "web", "-l", "tier=web", "sleep", "60")
    ok(daemon, "run", "--name", "db", "-l", "tier=db", "sleep", "60")
    ok(daemon, "run", "--name", "job", "sh", "-c", "exit 3")
    assert ctl(daemon, "wait", "job").returncode == 3
    assert ok(daemon, "ps", "-q") == "web\ndb\n"
    assert ok(daemon, "ps", "-aq") == "web\ndb\njob\n"
    assert ok(daemon, "ps", "-q", "--filter", "state=stopped") == "job\n"  # no -a needed
    assert ok(daemon, "ps", "-q", "--filter", "status=exited") == "job\n"  # docker's words
    assert ok(daemon, "ps", "-q", "-f", "label=tier=db") == "db\n"
    assert ok(daemon, "ps", "-q", "-f", "label=tier") == "web\ndb\n"
    assert ok(daemon, "ps", "-q", "-f", "label=tier=db", "-f", "label=tier=web") == "web\ndb\n"
    assert ok(daemon, "ps", "-q", "-f", "exited=3") == "job\n"
    assert ok(daemon, "ps", "-aq", "-f", "name=e") == "web\n"
    bad = ctl(daemon, "ps", "--filter", "colour=red")
    assert bad.returncode == 2 and "supervisorctl ps: --filter 'colour=red'" in bad.stderr
    table = ok(daemon, "ps", "-a").splitlines()
    assert table[0].split()[-1] == "COMMAND"
    assert any(line.startswith("job ") and line.endswith("sh -c 'exit 3'") for line in table)


def test_rm_f_of_ps_aq_and_the_all_flags(daemon: Daemon) -> None:
    for name in ("a", "b", "c"):
        ok(daemon, "run", "--name", name, "sleep", "60")
    ok(daemon, "run", "--name", "done", "true")
    assert ok(daemon, "wait", "done") == "0\n"
    assert ok(daemon, "rm", "--all") == "done\n"  # stopped ones only, without -f
    assert ok(daemon, "stop", "-t", "0", "a") == "a: stopped\n"  # Supervisor's words
    assert ok(daemon, "stop", "--all", "-t", "0") == "b: stopped\nc: stopped\n"
    assert ps_rows(daemon) == {}
    for name in ("d", "e"):
        ok(daemon, "run", "--name", name, "sleep", "60")
    shell = subprocess.run(["bash", "-c", f"{' '.join(CTL)} --root {daemon.root} rm -f "
                            f"$({' '.join(CTL)} --root {daemon.root} ps -aq)"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert shell.returncode == 0, shell.stderr
    assert sorted(shell.stdout.split()) == ["a", "b", "c", "d", "e"]
    assert ps_rows(daemon, "-a") == {}
    assert ok(daemon, "rm", "--all") == ""  # nothing to do is no error
    both = ctl(daemon, "rm", "--all", "x")
    assert both.returncode == 2 and "not both" in both.stderr


def test_logs_since_and_timestamps(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "t", "sh", "-c", "echo old; sleep 1.2; echo new; sleep 60")
    daemon.wait_for(lambda: "new" in ctl(daemon, "logs", "t").stdout)
    assert ok(daemon, "logs", "--since", "1s", "t") == "new\n"
    assert ok(daemon, "logs", "--since", "1h", "t") == "old\nnew\n"
    stamped = ok(daemon, "logs", "-t", "t").splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["old", "new"]
    first = stamped[1].split(" ", 1)[0]  # the time of "new", RFC 3339: --since takes it back
    assert ok(daemon, "logs", "--since", first, "t") == "new\n"
    assert ok(daemon, "logs", "-n", "all", "t") == "old\nnew\n"
    bad = ctl(daemon, "logs", "--since", "yesterday", "t")
    assert bad.returncode == 2 and "--since" in bad.stderr


@needs_root
def test_an_oom_kill_shows_in_the_state(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "hog", "--memory", "32m", "dd", "if=/dev/zero", "of=/dev/null",
       "bs=64M", "count=1")
    assert ctl(daemon, "wait", "hog").returncode == 137
    row = next(line for line in ok(daemon, "ps", "-a").splitlines() if line.startswith("hog"))
    assert "stopped (oom)" in row
    assert ps_rows(daemon, "-a")["hog"]["oom"] is True
    ok(daemon, "run", "--name", "killed", "sleep", "60")
    ok(daemon, "kill", "killed")
    assert ctl(daemon, "wait", "killed").returncode == 137
    assert ps_rows(daemon, "-a")["killed"]["oom"] is False  # 137 alone is not an OOM


# -- completion ----------------------------------------------------------------------------------


def complete(line: str, root: Path | None = None) -> list[str]:
    """What bash completes for ``line`` (its last word), with the generated script sourced."""
    script = subprocess.run([*CTL, "completion", "bash"], capture_output=True, text=True,
                            timeout=30, check=True, cwd=REPO).stdout
    words = line.split(" ")
    program = f"""
source /dev/stdin <<'TETHER'
{script}
TETHER
COMP_WORDS=({' '.join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
_supervisorctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60,
                          env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completion_of_commands_flags_and_ids(daemon: Daemon) -> None:
    ok(daemon, "run", "--name", "web-1", "sleep", "60")
    ok(daemon, "run", "--name", "worker", "true")
    assert complete("supervisorctl lo") == ["logs"]
    assert set(complete("supervisorctl ")) >= {"run", "ps", "logs", "wait", "help"}
    assert "--follow" in complete("supervisorctl logs --fo")
    assert complete("supervisorctl run --runtime c") == ["crun"]
    assert complete("supervisorctl kill -s K") == ["KILL"]
    root = str(daemon.root)
    assert complete(f"supervisorctl --root {root} logs w") == ["web-1", "worker"]
    assert complete(f"supervisorctl --root {root} rm -f web") == ["web-1"]
    assert complete("supervisorctl --root /no/such/root logs w") == []  # quietly nothing


# -- stopping cleanly ----------------------------------------------------------------------------


def test_a_sigterm_to_the_daemons_process_group_stops_it_without_a_traceback(root: Path) -> None:
    """Ctrl-C in a terminal, or `kill -- -PGID`, signals the whole group: the shim launcher
    is in its own group, so the daemon ends it in order, and logs no error."""
    log = root.parent / "daemon.log"
    for _ in range(5):
        with open(log, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "supervisor.daemon", "--root",
                                     str(root)], stdout=f, stderr=f, start_new_session=True,
                                    cwd=REPO)
        try:
            deadline = time.monotonic() + 20
            while b"shim launcher ready" not in log.read_bytes():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            kill_and_wait(processes_naming(str(root)))
        text = log.read_text()
        assert "Traceback" not in text and "launcher failed" not in text, text
        assert "shim launcher exited" in text


def test_a_launcher_that_dies_is_a_warning_not_a_traceback(daemon: Daemon) -> None:
    daemon.wait_for(lambda: "shim launcher ready" in daemon.stderr())
    # the daemon's child: a spare or a shim the launcher just forked has its title until it
    # retitles itself (SIGTERMed, the launcher would live on and never start again)
    table = _proc_table()
    launcher = [pid for pid in processes_naming(str(daemon.root))
                if table.get(pid, (0, ""))[0] == daemon.pid
                and b"launcher" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(launcher) == 1, launcher
    os.kill(launcher[0], signal.SIGTERM)
    daemon.wait_for(lambda: daemon.stderr().count("shim launcher ready") >= 2)
    assert "Traceback" not in daemon.stderr() and "launcher failed" not in daemon.stderr()
    assert ok(daemon, "run", "--name", "after", "true") == "after\n"  # and it serves on


def test_auto_remove_refuses_restart_policies() -> None:
    """docker refuses --rm with --restart: a container that restarts never exits for good."""
    assert not autoremove.restarts_by_policy({"restart": "no"})
    assert not autoremove.restarts_by_policy({"restart": {"policy": "no"}})
    assert not autoremove.restarts_by_policy({})
    assert autoremove.restarts_by_policy({"restart": "on-failure:3"})
    assert autoremove.restarts_by_policy({"restart": {"policy": "always"}})
    assert not autoremove.due({"state": "stopped", "spec": {"auto_remove": True,
                                                             "restart": "always"}})
    assert autoremove.due({"state": "stopped", "spec": {"auto_remove": True}})
    assert not autoremove.due({"state": "running", "spec": {"auto_remove": True}})


def test_user_names_come_from_the_containers_files(tmp_path: Path) -> None:
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nstaff:x:50:\n")
    rootfs = str(tmp_path / "rootfs")
    assert ctl_values.resolve_user("app", "runc", rootfs, None) == {"uid": 1000, "gid": 1001}
    assert ctl_values.resolve_user("app:staff", "runc", rootfs, None) == {"uid": 1000,
                                                                          "gid": 50}
    assert ctl_values.resolve_user("4242", "runc", rootfs, None) == {"uid": 4242, "gid": 0}
    assert ctl_values.resolve_user("5:6", "runc", None, str(tmp_path)) == {"uid": 5, "gid": 6}
    for bad, rootfs_, bundle in [("nobody", rootfs, None), ("app:wheel", rootfs, None),
                                 ("app", None, str(tmp_path)), (":5", rootfs, None)]:
        with pytest.raises(ValueError, match="--user"):
            ctl_values.resolve_user(bad, "runc", rootfs_, bundle)
