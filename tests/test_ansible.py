"""Ansible's own ``community.general.supervisorctl`` module manages Tether's programs.

Playbooks that manage Supervisor's programs are a habit worth keeping: the module runs a
``supervisorctl`` (its ``supervisorctl_path``), parses ``status`` line by line, and judges each
action by the text it prints (``NAME: started``, ``NAME: removed process group``...). Here the
real module (the PyPI ``ansible`` package, in its own venv made by ``.ci/setup``) runs one
playbook against a real daemon twice: through Debian's ``supervisorctl`` on
``ROOT/supervisor.sock`` (Supervisor's XML-RPC), and through Tether's own ``supervisorctl``
(which reads ``-c FILE`` and the joined words of ``'signal HUP' NAME`` as Supervisor's does).
Each task's ``changed`` is what the module saw: a second ``stopped`` that changes nothing proves
the first one stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CTL, REPO, Daemon, ctl

ANSIBLE = REPO / ".venv-ansible" / "bin" / "ansible-playbook"
DEBIAN_CTL = "/usr/bin/supervisorctl"

CONF = """\
    [unix_http_server]
    file={root}/supervisor.sock
    [supervisorctl]
    serverurl=unix://{root}/supervisor.sock
    [program:lonely]
    command=sh -c 'trap "echo hup >> {hup}" HUP; echo ready; while :; do sleep 0.1; done'
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

#: (module arguments, what the task must report): run in this order, one playbook.
TASKS: list[tuple[dict[str, str], str]] = [
    ({"name": "idle", "state": "started"}, "changed"),
    ({"name": "idle", "state": "started"}, "ok"),
    ({"name": "echo_date:", "state": "stopped"}, "changed"),
    ({"name": "echo_date:", "state": "stopped"}, "ok"),
    ({"name": "echo_date:", "state": "restarted"}, "changed"),
    ({"name": "lonely", "state": "signalled", "signal": "HUP"}, "changed"),
    ({"name": "lonely", "state": "absent", "stop_before_removing": "true"}, "changed"),
    ({"name": "lonely", "state": "absent"}, "ok"),
    ({"name": "lonely", "state": "present"}, "changed"),
    ({"name": "lonely", "state": "present"}, "ok"),
    ({"name": "nosuch", "state": "started"}, "failed"),
]


def _need(path: Path | str, why: str) -> None:
    if os.path.exists(path):
        return
    if os.environ.get("CI"):
        pytest.fail(why)  # CI must run this, never skip it
    pytest.skip(why)


def _playbook(path: Path, ctl_args: dict[str, str]) -> None:
    tasks = []
    for i, (args, _) in enumerate(TASKS):
        tasks.append({"name": f"task {i}", "community.general.supervisorctl": {**args, **ctl_args},
                      "ignore_errors": True})
    path.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                 "tasks": tasks}]))


def _run(tmp_path: Path, ctl_args: dict[str, str]) -> list[tuple[str, str]]:
    """Run the playbook; each task's outcome (changed, ok or failed) in order, with the
    module's message."""
    book = tmp_path / "book.json"
    _playbook(book, ctl_args)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(ANSIBLE_HOME=str(tmp_path / "ansible"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1",
               ANSIBLE_PYTHON_INTERPRETER=str(ANSIBLE.parent / "python"),
               ANSIBLE_DEPRECATION_WARNINGS="0", LANG="C.UTF-8")
    proc = subprocess.run([str(ANSIBLE), "-i", "localhost,", "-c", "local", str(book)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    outcomes = []
    for task in report["plays"][0]["tasks"]:
        result = task["hosts"]["localhost"]
        outcomes.append(("failed" if result.get("failed") else
                         "changed" if result.get("changed") else "ok", str(result.get("msg"))))
    assert len(outcomes) == len(TASKS), proc.stdout + proc.stderr
    return outcomes


@pytest.fixture
def programs(daemon_factory: Any, root: Path, tmp_path: Path) -> Daemon:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent(CONF).format(hup=tmp_path / "hup", root=root))
    daemon = daemon_factory("--config", str(conf))
    daemon.wait_for(lambda: len(daemon.ps()) == 4 and "STARTING" not in ctl(daemon,
                                                                           "status").stdout)
    return daemon


@pytest.mark.parametrize("which", ["debian", "tether"])
def test_ansible_manages_programs(programs: Daemon, tmp_path: Path, which: str) -> None:
    _need(ANSIBLE, f"{ANSIBLE} is missing: bash .ci/setup installs ansible there")
    d = programs
    # the user's one file: programs for supervisord, the socket for either supervisorctl
    ctl_args = {"config": str(tmp_path / "supervisord.conf")}
    if which == "debian":
        _need(DEBIAN_CTL, f"{DEBIAN_CTL} is missing: bash .ci/setup installs Debian's "
              "supervisor package as root")
        ctl_args["supervisorctl_path"] = DEBIAN_CTL
    else:
        assert len(CTL) == 1, "the venv's supervisorctl script, as a user runs it"
        ctl_args["supervisorctl_path"] = CTL[0]
    d.wait_for_line("lonely", "ready")
    before = {cid: row["pid"] for cid, row in d.ps().items()}
    lonely = d.call("inspect", id="lonely")["created"]

    outcomes = _run(tmp_path, ctl_args)

    assert [outcome for outcome, _ in outcomes] == [want for _, want in TASKS], outcomes
    after = d.ps()
    assert sorted(after) == ["echo_date_00", "echo_date_01", "idle", "lonely"]
    assert all(row["state"] == "running" for row in after.values()), after
    # restarted: new tasks; present after absent: a new container, started (autostart)
    assert after["echo_date_00"]["pid"] != before["echo_date_00"]
    assert d.call("inspect", id="lonely")["created"] > lonely
    assert (tmp_path / "hup").read_text() == "hup\n"  # the signal reached the program's trap
