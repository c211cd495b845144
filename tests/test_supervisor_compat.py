"""Debian's own, unmodified ``supervisorctl`` (``/usr/bin/supervisorctl`` of the ``supervisor``
package) driving Tether through ``ROOT/supervisor.sock``: status, start/stop/restart of a name,
a group and all, signal, pid, tail, tail -f, avail, reread, update, an unknown name, and
``reload`` (``supervisor.restart``), after which every program runs with the same pid."""


from __future__ import annotations

import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from daemon_helpers import Daemon

DEBIAN_CTL = "/usr/bin/supervisorctl"

pytestmark = pytest.mark.skipif(not os.path.exists(DEBIAN_CTL),
                                reason="needs Debian's supervisor package (.ci/setup installs it)")

CONF = """\
    [program:web]
    command=sh -c 'echo web-started; echo web-err >&2; i=0;
      while :; do echo tick $i; i=$((i+1)); sleep 0.2; done'
    startsecs=0
    priority=1

    [program:worker]
    command=sh -c 'trap "echo got-usr1" USR1; while :; do sleep 0.1; done'
    process_name=%(program_name)s_%(process_num)02d
    numprocs=2
    startsecs=0

    [program:manual]
    command=sleep 1000
    autostart=false
    startsecs=0
    """


def _env() -> dict[str, str]:
    """Debian's supervisorctl must import Debian's ``supervisor``, never ours."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


class Debian:
    def __init__(self, d: Daemon, tmp: Path) -> None:
        self.d = d
        self.url = f"unix://{d.root}/supervisor.sock"
        self.conf = tmp / "ctl.conf"
        self.conf.write_text(f"[supervisorctl]\nserverurl={self.url}\n")
        self.cwd = tmp

    def argv(self, *args: str) -> list[str]:
        return [DEBIAN_CTL, "-c", str(self.conf), "-s", self.url, *args]

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                              cwd=self.cwd, env=_env())

    def status(self) -> dict[str, tuple[str, str]]:
        out = self.run("status").stdout
        table = {}
        for line in out.splitlines():
            name, state, *rest = line.split(None, 2)
            table[name] = (state, rest[0] if rest else "")
        return table


@pytest.fixture
def sv(daemon_factory, tmp_path: Path) -> Debian:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent(CONF))
    d = daemon_factory("--config", str(conf))
    deb = Debian(d, tmp_path)
    d.wait_for(lambda: len(deb.status()) == 4 and deb.status()["web"][0] == "RUNNING",
               timeout=15)
    return deb


def test_status_start_stop_restart(sv: Debian) -> None:
    table = sv.status()
    assert {k: v[0] for k, v in table.items()} == {
        "web": "RUNNING", "worker:worker_00": "RUNNING", "worker:worker_01": "RUNNING",
        "manual": "STOPPED"}
    assert table["manual"][1] == "Not started"
    assert table["web"][1].startswith("pid ")
    assert sv.run("status").returncode == 3  # manual is not running (Supervisor 4's rule)
    assert sv.run("status", "web").returncode == 0

    proc = sv.run("start", "manual")
    assert (proc.returncode, proc.stdout) == (0, "manual: started\n")
    proc = sv.run("start", "manual")
    assert proc.stdout == "manual: ERROR (already started)\n"
    proc = sv.run("stop", "worker:*")
    assert proc.stdout.splitlines() == ["worker:worker_00: stopped", "worker:worker_01: stopped"]
    assert sv.status()["worker:worker_00"][0] == "STOPPED"
    proc = sv.run("restart", "worker:*")
    assert proc.stdout.splitlines()[-2:] == ["worker:worker_00: started",
                                             "worker:worker_01: started"]
    old = sv.d.ps()["web"]["pid"]
    proc = sv.run("restart", "web")
    assert proc.stdout == "web: stopped\nweb: started\n"
    assert sv.d.ps()["web"]["pid"] != old
    proc = sv.run("stop", "all")
    assert sorted(proc.stdout.splitlines()) == sorted([
        "web: stopped", "worker:worker_00: stopped", "worker:worker_01: stopped",
        "manual: stopped"])
    assert {v[0] for v in sv.status().values()} == {"STOPPED"}
    proc = sv.run("start", "all")
    assert len(proc.stdout.splitlines()) == 4 and proc.returncode == 0
    assert {v[0] for v in sv.status().values()} == {"RUNNING"}


def test_unknown_names(sv: Debian) -> None:
    assert sv.run("start", "nosuch").stdout == "nosuch: ERROR (no such process)\n"
    assert sv.run("stop", "nosuch:*").stdout == "nosuch: ERROR (no such group)\n"
    proc = sv.run("status", "nosuch")
    assert (proc.returncode, proc.stdout) == (4, "nosuch: ERROR (no such process)\n")
    assert sv.run("pid", "nosuch").stdout == "No such process nosuch\n"
    assert "no such process name" in sv.run("tail", "nosuch").stdout


def test_signal_pid_avail(sv: Debian) -> None:
    proc = sv.run("signal", "USR1", "worker:worker_01")
    assert proc.stdout == "worker:worker_01: signalled\n"
    sv.d.wait_for(lambda: "got-usr1" in sv.run("tail", "worker:worker_01").stdout)
    assert sv.run("signal", "NOPE", "web").stdout == "web: ERROR (bad signal name)\n"
    assert sv.run("signal", "HUP", "manual").stdout == "manual: ERROR (not running)\n"

    rows = sv.d.ps()
    assert sv.run("pid", "web").stdout == f"{rows['web']['pid']}\n"
    assert sv.run("pid").stdout == f"{sv.d.pid}\n"
    assert sorted(sv.run("pid", "all").stdout.split()) == sorted(
        str(r["pid"] if r["state"] == "running" else 0) for r in rows.values())
    proc = sv.run("pid", "manual")
    assert (proc.returncode, proc.stdout) == (7, "0\n")

    avail = {line.split()[0]: line.split()[1:] for line in sv.run("avail").stdout.splitlines()}
    assert avail["manual"] == ["in", "use", "manual", "999:999"]
    assert avail["web"] == ["in", "use", "auto", "1:1"]
    assert set(avail) == {"web", "worker:worker_00", "worker:worker_01", "manual"}


def test_tail_and_tail_f(sv: Debian) -> None:
    out = sv.run("tail", "web").stdout
    assert out.startswith(("web-started", "tick")) or "tick" in out
    assert "web-err" not in out
    assert "web-err" in sv.run("tail", "web", "stderr").stdout
    assert len(sv.run("tail", "-20", "web").stdout) <= 21 + 1

    proc = subprocess.Popen(sv.argv("tail", "-f", "web"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=sv.cwd, env=_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "==> Press Ctrl-C to exit <==\n"
        seen: list[str] = []
        deadline = time.monotonic() + 15
        while len([s for s in seen if s.startswith("tick")]) < 8 and time.monotonic() < deadline:
            seen.append(proc.stdout.readline())
        ticks = [int(s.split()[1]) for s in seen[1:] if s.startswith("tick ")]
        # live: consecutive ticks as the program prints them, none lost or doubled
        assert len(ticks) >= 6 and ticks == list(range(ticks[0], ticks[0] + len(ticks)))
    finally:
        proc.terminate()
        proc.wait(10)


def test_reread_update_and_reload_keeps_programs(sv: Debian, tmp_path: Path) -> None:
    assert sv.run("reread").stdout == "No config updates to processes\n"
    conf = tmp_path / "supervisord.conf"
    text = conf.read_text().replace("numprocs=2", "numprocs=3").replace(
        "[program:manual]", "[program:added]\ncommand=sleep 999\nstartsecs=0\n\n"
        "[program:manual]")
    conf.write_text(text.replace("sleep 1000\nautostart=false", "sleep 1001\nautostart=false"))
    assert sorted(sv.run("reread").stdout.splitlines()) == [
        "added: available", "manual: changed", "worker: changed"]
    web_pid = sv.d.ps()["web"]["pid"]
    proc = sv.run("update")
    assert proc.returncode == 0, proc.stdout
    assert "added: added process group" in proc.stdout
    assert "worker: updated process group" in proc.stdout
    table = sv.status()
    assert "worker:worker_02" in table and table["added"][0] == "RUNNING"
    assert sv.d.ps()["web"]["pid"] == web_pid  # web did not change: untouched
    assert sv.run("reread").stdout == "No config updates to processes\n"

    before = {k: v for k, v in sv.d.ps().items()}
    daemon_pid = sv.d.pid
    proc = sv.run("reload")
    assert proc.stdout == "Restarted supervisord\n"
    # the same process, re-executed: our Popen's pid answers again
    sv.d.wait_for(lambda: sv.run("status").returncode in (0, 3) and
                  sv.d.call("status")["reconciling"] is False, timeout=20)
    assert sv.d.call("status")["pid"] == daemon_pid
    after = sv.d.ps()
    assert {k: (v["state"], v["pid"]) for k, v in after.items()} == {
        k: (v["state"], v["pid"]) for k, v in before.items()}
    for row in after.values():
        if row["state"] == "running":
            os.kill(row["pid"], 0)  # alive, never restarted
