"""The shim launcher (fork server) with real processes: a launched shim behaves like one from
``shim start``; the launcher's death never touches running shims; supervisord uses it, falls
back to ``shim start`` without it, restarts it, and takes it down when it dies itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import _proc_table, is_zombie_or_gone
from daemon_helpers import Daemon
from shim_helpers import Shims, children_of, poll, proc_stat, start_command

from events import wire
from shim.launcher import TITLE_SPACE


class Launcher:
    """``python -I -m shim launcher`` on a socketpair, as supervisord runs it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "shim", "launcher", "--root", str(root),
             "--fd", str(theirs.fileno()), "--title-space", TITLE_SPACE],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self.sock.settimeout(30)
        self.decoder = wire.FrameDecoder()
        self.pending: list[dict[str, Any]] = []
        self.hello = self.recv()
        self.rid = 0

    def recv(self) -> dict[str, Any]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("launcher closed its channel")
            self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def send_start(self, cid: str, **params: Any) -> int:
        self.rid += 1
        self.sock.sendall(wire.encode(wire.request(self.rid, "start", {"id": cid, **params})))
        return self.rid

    def start(self, cid: str, **params: Any) -> dict[str, Any]:
        rid = self.send_start(cid, **params)
        reply = self.recv()
        assert reply["id"] == rid
        return reply

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def launcher(root: Path, shims: Shims):
    la = Launcher(root)
    try:
        yield la
    finally:
        la.close()


def launched(launcher: Launcher, shims: Shims, command: list[str], **spec: Any):
    cid = shims.write_spec(command=command, **spec)
    reply = launcher.start(cid)
    assert "result" in reply, reply
    return shims.adopt(reply["result"], cid)



def cmdline(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [arg.decode() for arg in f.read().split(b"\0") if arg]


# -- the launcher alone -----------------------------------------------------------------------


def test_a_launched_shim_is_detached_a_subreaper_and_named_like_shim_start(
        root: Path, shims: Shims, launcher: Launcher) -> None:
    assert launcher.hello["hello"]["role"] == "launcher"
    fresh = shims.start(["sleep", "30"])
    shim = launched(launcher, shims, ["sh", "-c", "(sleep 30 &); exec sleep 30"])
    assert fresh.call("state")["status"] == "created"
    state, ppid, _, session = proc_stat(shim.pid)[:4]
    assert state != "Z" and int(ppid) not in (launcher.proc.pid, 0)
    assert int(session) not in (os.getsid(0), os.getsid(launcher.proc.pid), launcher.proc.pid)
    assert cmdline(shim.pid) == start_command(root, shim.id)
    with open(f"/proc/{shim.pid}/comm") as f:
        assert f.read().strip() == f"shim {shim.id}"[:15]
    assert int(proc_stat(shim.task_pid)[1]) == shim.pid
    shim.call("start")
    # a subreaper: the orphaned ``sleep`` of the subshell is reparented to the shim
    poll(lambda: [p for p in children_of(shim.pid) if p != shim.task_pid], what="orphan")
    assert shim.call("state")["status"] == "running"
    assert (shim.dir / "shim.pid").read_text() == str(shim.pid)
    assert (shim.dir / "address").read_text() == shim.address


def test_the_ready_reply_has_the_fields_of_shim_start(root: Path, shims: Shims,
                                                      launcher: Launcher) -> None:
    cid = shims.write_spec(command=["sleep", "30"])
    fresh = shims.run_start(cid)
    assert fresh.returncode == 0
    shims.adopt(json.loads(fresh.stdout), cid)
    other = launcher.start(shims.write_spec(command=["true"]))["result"]
    shims.adopt(other, f"c{shims._n}")
    assert set(other) == set(json.loads(fresh.stdout))


def test_a_start_with_start_runs_the_task_as_shim_run_does(root: Path, shims: Shims,
                                                            launcher: Launcher) -> None:
    cid = shims.write_spec(command=["sleep", "30"])
    fresh = shims.run_start(cid, run=True)
    assert fresh.returncode == 0, fresh.stderr
    shims.adopt(json.loads(fresh.stdout), cid)
    cid = shims.write_spec(command=["sleep", "30"])
    shim = shims.adopt(launcher.start(cid, start=True)["result"], cid)
    assert set(shim.ready) == set(json.loads(fresh.stdout)) >= {"started_at", "task_pid"}
    assert shim.call("state")["status"] == "running"
    assert launcher.start(cid, start="yes")["error"]["code"] == "invalid"


@pytest.mark.parametrize(("script", "status", "sig"), [
    ("exit 0", 0, 0), ("exit 3", 3, 0), ("kill -KILL $$", 137, 9), ("kill -TERM $$", 143, 15)])
def test_exit_status(shims: Shims, launcher: Launcher, script: str, status: int,
                     sig: int) -> None:
    shim = launched(launcher, shims, ["sh", "-c", script])
    with shim.connect() as conn:
        conn.call("start")
        record = conn.call("wait")
    assert (record["exit_status"], record["signal"]) == (status, sig)
    assert shim.call("delete")["exit_status"] == status
    shim.wait_gone()


def test_a_failed_start_says_what_shim_start_says_and_leaves_nothing(
        root: Path, shims: Shims, launcher: Launcher) -> None:
    cid = shims.write_spec(command=["true"], cwd="/nonexistent/dir")
    fresh = shims.run_start(cid)
    reply = launcher.start(cid)
    if fresh.returncode == 0:  # the runtime reports a bad cwd at start, not at create
        shims.adopt(json.loads(fresh.stdout), cid)
        pytest.skip("a bad cwd is not a create error with this runtime")
    assert reply["error"]["code"] == "start_failed"
    assert reply["error"]["message"] == fresh.stderr.strip().splitlines()[-1]
    missing = launcher.start("nospec")  # no directory: the shim cannot even open its log
    assert missing["error"]["message"] == \
        shims.run_start("nospec").stderr.strip().splitlines()[-1]
    # nothing runs for the root but the launcher itself (and its spare, which serves no one)
    assert poll(lambda: all(p == launcher.proc.pid or is_zombie_or_gone(p)
                            or f" -m shim spare --root {root}" in cmd
                            for p, (_, cmd) in _proc_table().items() if str(root) in cmd
                            and p != os.getpid()), what="no shim left")


def test_many_concurrent_starts(shims: Shims, launcher: Launcher) -> None:
    cids = [shims.write_spec(command=["sleep", "30"]) for _ in range(40)]
    began = time.monotonic()
    rids = {launcher.send_start(cid): cid for cid in cids}
    replies = {}
    while len(replies) < len(rids):
        reply = launcher.recv()
        replies[reply["id"]] = reply
    elapsed = time.monotonic() - began
    handles = [shims.adopt(replies[rid]["result"], cid) for rid, cid in rids.items()]
    assert len({h.pid for h in handles}) == 40
    for h in handles:
        assert h.call("start")["pid"] == h.task_pid
    assert elapsed < 10, elapsed
    # the intermediates were reaped: the launcher has no children, not even zombies
    poll(lambda: children_of(launcher.proc.pid) == [], what="intermediates reaped")


def test_the_launcher_leaves_on_eof_or_sigkill_and_its_shims_stay(
        shims: Shims, launcher: Launcher) -> None:
    shim = launched(launcher, shims, ["sleep", "30"])
    shim.call("start")
    launcher.proc.kill()
    launcher.proc.wait()
    assert shim.call("state")["status"] == "running"
    second = Launcher(launcher.root)
    try:
        other = launched(second, shims, ["sleep", "30"])
    finally:
        second.sock.close()
        assert second.proc.wait(5) == 0  # EOF: it leaves by itself
    assert other.call("start")["pid"] == other.task_pid
    for h in (shim, other):
        assert h.call("state")["status"] == "running"
        assert h.call("delete", force=True)["exit_status"] == 137
        h.wait_gone()


def spares(root: Path) -> list[int]:
    needle = f" -m shim spare --root {root}"
    return [pid for pid, (_, cmd) in _proc_table().items()
            if cmd.rstrip().endswith(needle) and not is_zombie_or_gone(pid)]


def test_a_start_is_handed_to_the_spare_forked_while_idle(
        root: Path, shims: Shims, launcher: Launcher) -> None:
    """The launcher forks a spare shim once idle; the next start is that process, titled
    and detached as any launched shim; then another spare is forked."""
    [spare] = poll(lambda: spares(root), what="a spare")
    # a session of its own (its intermediate's), as a shim's
    assert int(proc_stat(spare)[3]) not in (os.getsid(0), os.getsid(launcher.proc.pid))
    shim = launched(launcher, shims, ["sleep", "30"])
    assert shim.pid == spare
    assert cmdline(shim.pid) == start_command(root, shim.id)
    assert shim.call("start")["pid"] == shim.task_pid
    assert int(proc_stat(shim.task_pid)[1]) == shim.pid  # a subreaper's child, as ever
    [again] = poll(lambda: spares(root), what="the next spare")
    assert again != spare


def test_a_dead_spare_costs_a_fork_not_a_start(root: Path, shims: Shims,
                                               launcher: Launcher) -> None:
    [spare] = poll(lambda: spares(root), what="a spare")
    os.kill(spare, signal.SIGKILL)
    poll(lambda: is_zombie_or_gone(spare), what="the spare's end")
    shim = launched(launcher, shims, ["sleep", "30"])
    assert shim.pid != spare and cmdline(shim.pid) == start_command(root, shim.id)
    assert shim.call("start")["pid"] == shim.task_pid


def test_the_spare_leaves_with_the_launcher(root: Path, shims: Shims) -> None:
    for how in ("eof", "sigkill"):
        la = Launcher(root)
        [spare] = poll(lambda: spares(root), what="a spare")
        if how == "eof":
            la.close()  # the launcher waits until its spare is gone
            assert is_zombie_or_gone(spare)
        else:
            la.proc.kill()
            la.proc.wait()
            la.sock.close()
            poll(lambda spare=spare: is_zombie_or_gone(spare), what="the spare to leave")


# -- supervisord and its launcher ------------------------------------------------------------


def launcher_pids(root: Path) -> list[int]:
    needle = f"-m shim launcher --root {root} "
    return [pid for pid, (_, cmd) in _proc_table().items()
            if needle in cmd and not is_zombie_or_gone(pid)]


def started_via(d: Daemon, cid: str) -> str | None:
    for line in d.stderr().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "shim started" and record.get("id") == cid:
                return record.get("via")
    return None


def launcher_ready(d: Daemon, count: int = 1) -> bool:
    return d.stderr().count('"shim launcher ready"') >= count


def test_supervisord_starts_shims_through_its_launcher(daemon: Daemon) -> None:
    poll(lambda: launcher_ready(daemon), what="launcher ready")
    [lpid] = launcher_pids(daemon.root)
    assert int(proc_stat(lpid)[1]) == daemon.pid
    cid = daemon.run("sleep", "30")
    assert started_via(daemon, cid) == "launcher"
    row = daemon.ps()[cid]
    assert row["state"] == "running"
    shim_pid = int((daemon.root / "shims" / cid / "shim.pid").read_text())
    assert int(proc_stat(shim_pid)[1]) not in (daemon.pid, lpid)
    assert cmdline(shim_pid)[-4:] == ["--root", str(daemon.root), "--id", cid]
    daemon.call("stop", id=cid, timeout=1)
    assert daemon.call("wait", id=cid)["exit_status"] == 143
    running = daemon.run("sleep", "30")
    assert daemon.stop() == 0  # SIGTERM: the launcher leaves with the daemon, shims stay
    assert is_zombie_or_gone(lpid)
    shim_pid = int((daemon.root / "shims" / running / "shim.pid").read_text())
    assert not is_zombie_or_gone(shim_pid)


def test_a_killed_launcher_leaves_shims_alone_and_comes_back(daemon: Daemon) -> None:
    poll(lambda: launcher_ready(daemon), what="launcher ready")
    [lpid] = launcher_pids(daemon.root)
    before = daemon.run("sleep", "30")
    pid = daemon.ps()[before]["pid"]
    os.kill(lpid, signal.SIGKILL)
    during = daemon.run("sleep", "30")  # at once: fresh interpreter, or the new launcher
    assert started_via(daemon, during) in ("fresh interpreter", "launcher")
    poll(lambda: launcher_ready(daemon, 2), what="a second launcher")
    [new] = launcher_pids(daemon.root)
    assert new != lpid
    after = daemon.run("sleep", "30")
    assert started_via(daemon, after) == "launcher"
    rows = daemon.ps()
    assert rows[before]["state"] == "running" and rows[before]["pid"] == pid
    assert all(rows[c]["state"] == "running" for c in (during, after))


def test_without_a_launcher_shims_start_fresh(daemon_factory: Any) -> None:
    d = daemon_factory("--no-shim-launcher")
    cid = d.run("sleep", "30")
    assert started_via(d, cid) == "fresh interpreter"
    assert d.ps()[cid]["state"] == "running"
    assert launcher_pids(d.root) == []
    d.call("stop", id=cid, timeout=1)


def test_kill9_of_the_daemon_ends_the_launcher_not_the_shims(daemon: Daemon) -> None:
    poll(lambda: launcher_ready(daemon), what="launcher ready")
    [lpid] = launcher_pids(daemon.root)
    cids = [daemon.run("sleep", "30") for _ in range(3)]
    pids = {cid: daemon.ps()[cid]["pid"] for cid in cids}
    shim_pids = [int((daemon.root / "shims" / c / "shim.pid").read_text()) for c in cids]
    daemon.kill9()
    poll(lambda: is_zombie_or_gone(lpid), what="the launcher to leave")
    with contextlib.suppress(ChildProcessError):
        os.waitpid(lpid, os.WNOHANG)
    assert all(not is_zombie_or_gone(p) for p in [*shim_pids, *pids.values()])
    daemon.start()
    poll(lambda: all(daemon.ps()[c]["state"] == "running" for c in cids), what="reconciled")
    assert {c: daemon.ps()[c]["pid"] for c in cids} == pids
    poll(lambda: launcher_ready(daemon, 2), what="the new daemon's launcher")
    assert launcher_pids(daemon.root) != [lpid]


def test_after_a_lost_launcher_a_running_shim_is_adopted_else_the_start_goes_fresh(
        root: Path, shims: Shims) -> None:
    """The launcher died with a start in flight: its shim either reported ready first (it
    runs, and the daemon adopts it instead of starting a second one) or aborts (lock free)."""
    import trio

    from events import shim_api
    from supervisor.shims import _adopt_after_lost_launcher

    shim = shims.start(["sleep", "30"])
    instance = shim.call("state")["instance"]
    ready = trio.run(_adopt_after_lost_launcher, root, shim.id, shim.dir, instance)
    assert ready == {"pid": shim.pid, "address": shim.address, "task_pid": shim.task_pid,
                     "created_at": shim.call("state")["created_at"]}
    cid = shims.write_spec(command=["sleep", "30"])
    assert trio.run(_adopt_after_lost_launcher, root, cid, shim_api.shim_dir(root, cid),
                    "other") is None


def test_a_shim_stopped_before_its_lock_is_waited_for_then_ended(
        root: Path, shims: Shims, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a lost launcher, a shim that has not yet taken its lock (stopped just after its
    fork) is found by its title: the start neither races it with a fresh shim (which would be
    refused by its lock later) nor leaves it behind; it is ended and the start is retryable."""
    import trio

    from events import shim_api
    from supervisor import shims as shims_mod

    cid = shims.write_spec(command=["sleep", "30"])
    # a process titled as that shim, holding no lock, stopped: what the soak found
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "shim",
                              "start", "--root", str(root), "--id", cid])
    try:
        poll(lambda: cmdline(stray.pid)[-1:] == [cid], what="the stand-in's title")
        os.kill(stray.pid, signal.SIGSTOP)
        assert shims_mod.starting_shims(root, cid) == [stray.pid]
        monkeypatch.setattr(shims_mod, "LOST_STARTER_GRACE", 0.5)
        with pytest.raises(shims_mod.ApiError) as err:
            trio.run(shims_mod._adopt_after_lost_launcher, root, cid,
                     shim_api.shim_dir(root, cid), "instance")
        assert err.value.code == "unavailable"
        assert stray.wait(timeout=5) == -signal.SIGKILL
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_a_killed_shim_start_is_unavailable_or_adopted_never_left_behind(
        daemon_factory: Any) -> None:
    """``shim start`` (no launcher) SIGKILLed at moments across its life: each create either
    succeeds with one live shim, or fails ``unavailable`` (retryable) with no shim left."""
    import random
    import threading

    d = daemon_factory("--no-shim-launcher")
    rng = random.Random(20261129)
    outcomes: dict[str, int] = {}
    for i in range(8):
        t = threading.Thread(target=_kill_shim_start_of, args=(d, rng.uniform(0.0, 0.08)))
        t.start()
        cid = f"killed-start-{i}"
        try:
            d.call("create", spec={"name": cid, "command": ["sleep", "30"]})
        except wire.RemoteError as exc:
            assert exc.code == "unavailable", exc
            outcome = "unavailable"
        else:
            outcome = "created"
        t.join()
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        title = f" -m shim start --root {d.root} --id {cid}"
        live = [p for p, (_, cmd) in _proc_table().items()
                if cmd.rstrip().endswith(title) and not is_zombie_or_gone(p)]
        if outcome == "created":
            assert d.ps()[cid]["state"] == "created"
            assert len(live) >= 1  # the shim (and its created init, same title until exec)
            d.call("rm", id=cid, force=True)
        else:
            for pid in live:
                poll(lambda pid=pid: is_zombie_or_gone(pid), what=f"no shim of {cid} left")
            assert cid not in d.ps()
    assert sum(outcomes.values()) == 8


def _kill_shim_start_of(d: Daemon, delay: float) -> None:
    """SIGKILL the daemon's next ``shim start`` child *delay* s after it appears."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for pid, (ppid, cmd) in _proc_table().items():
            if ppid == d.pid and "-m shim start" in cmd:
                time.sleep(delay)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
        time.sleep(0.001)



def test_the_preload_fills_the_allocators_holes() -> None:
    """A shim's first allocations of each size would land in the launcher's partly used
    pymalloc pools and glibc's free chunks, copying a page of its heap for each: the preload
    takes them first (bench/shim.py measures the PSS; this checks that the allocator statistics
    the fill parses are still understood, so that it still happens)."""
    code = ("import sys\nfrom shim import launcher\nlauncher.preload()\n"
            "print(sum(isinstance(b, bytes) for b in launcher._BALLAST),"
            " sum(isinstance(b, int) for b in launcher._BALLAST))\n")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    pymalloc_blocks, malloc_chunks = map(int, proc.stdout.split())
    assert pymalloc_blocks > 0, "no pymalloc pool was filled: sys._debugmallocstats changed?"
    assert malloc_chunks >= 7 * 63, "glibc's thread cache was not drained"
