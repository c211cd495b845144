"""The crash suite: SIGKILL the daemon at random moments of a seeded workload, many times.

The workload runs, stops, kills, restarts and removes containers, some of them crash-looping
under a restart policy (``always``, ``on-failure``, ``on-failure:3``, with short back-offs),
and SIGKILLs the shims of some of those (then the daemon decides their restart). About a third
of the containers are members of a shared shim (``shim_group``, two groups): killing a member's
shim kills its group's process, and every member of it loses its shim (the stated cost).

After every restart (once reconciliation is done):
* no container whose create was acknowledged is lost, and none appears from nowhere;
* no duplicate processes: each container's init (marked by its ``$0``) runs at most once,
  and not at all once the container is stopped or removed;
* every exit is in the log exactly once per task, with the right status;
* per container, tasks alternate: each created once, started at most once, ended once, the
  next one created only after the previous ended and a restart was recorded; no restart is
  recorded twice for one end (each ``container.restart`` is followed by its task, unless a
  stop cancelled it); ``restarts`` in ps is the number of ``container.restart`` events;
* no restart is lost: a policy container whose shim is gone is not left stopped when its
  policy says it must run again;
* seqs are gap-free, and a subscriber that follows live and resumes with ``since`` after
  each crash has received every event exactly once.

``TETHER_CRASH_ROUNDS`` (default 50) and ``TETHER_CRASH_SEED`` tune it.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import _proc_table
from daemon_helpers import Daemon
from history_checks import (
    DaemonGone,
    Follower,
    by_container,
    check_exits_once,
    check_seqs,
    check_tasks,
    quiet_view,
    restart_lost,
    wait_reconciled,
)
from oci_helpers import runtime_list, runtime_missing
from window_helpers import DELAYS, kill_the_shim_while_its_runtime_runs

from events import wire
from events.procfs import is_running
from events.rpc import BlockingConnection

ROUNDS = int(os.environ.get("TETHER_CRASH_ROUNDS", "50"))
#: Unique per run: another crash suite running on the machine (a colleague's full test run)
#: has its own containers with their own markers, which must not be counted as ours.
RUN = f"{os.getpid():x}{random.getrandbits(24):06x}"
SEED = int(os.environ.get("TETHER_CRASH_SEED", "20261128"))

#: The restart policies of the crash-looping containers: short back-offs, so that they loop.
POLICIES = ("always", "on-failure", "on-failure:3")
#: The shared shims some containers are members of (a generator of its own, so the seed's
#: workload is the one it was before groups were added).
GROUPS = ("cg1", "cg2")


@dataclass
class Tracked:
    cid: str
    kind: str                 # "short" (exits by itself with ``code``), "long", or "loop"
    code: int = 0
    policy: str = "no"
    acked: bool = False       # create (or run) acknowledged
    rm: str = ""              # "" | "acked" | "uncertain"
    interfered: bool = False  # stop/kill/restart attempted: the status may be a signal's
    started: bool = True
    group: str | None = None  # its shared shim's group
    lost: bool = False        # its shim was killed: an exit may be unknown (status None)


@dataclass
class Model:
    rng: random.Random
    items: dict[str, Tracked] = field(default_factory=dict)
    groups: random.Random = field(default_factory=lambda: random.Random(SEED + 1))
    group_kills: int = 0
    n: int = 0

    def new_id(self) -> str:
        self.n += 1
        return f"w{self.n}"


def command(t: Tracked) -> list[str]:
    mark = f"mark-{RUN}-{t.cid}"
    if t.kind == "short":
        return ["sh", "-c", f"sleep 0.{random.randint(0, 3)}; exit {t.code}", mark]
    if t.kind == "loop":
        return ["sh", "-c", f"sleep 0.{random.randint(1, 4)}; exit {t.code}", mark]
    return ["sh", "-c", "sleep 1000; true", mark]


def spec_of(t: Tracked) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": command(t), "name": t.cid, "stop_timeout": 0.5}
    if t.group is not None:
        spec["shim_group"] = t.group
    if t.policy != "no":
        policy, _, retries = t.policy.partition(":")
        spec["restart"] = {"policy": policy, "delay": 0.05, "max_delay": 0.2,
                           "max_retries": int(retries) if retries else None}
    return spec


def kill_shim(d: Daemon, model: Model, t: Tracked) -> None:
    """SIGKILL the container's shim (by its pid file): a lost shim, whose task's end the
    daemon then records and decides on. A member's shim is its group's process: every member
    of the group loses it."""
    try:
        pid = int((d.root / "shims" / t.cid / "shim.pid").read_text())
    except (OSError, ValueError):
        return
    mark = f"--id {t.cid} " if t.group is None else f"--group {t.group} "
    if any(p == pid and mark in cmd + " " for p, (_, cmd) in _proc_table().items()):
        for member in model.items.values():
            if member is t or (t.group is not None and member.group == t.group):
                member.interfered = member.lost = True
        model.group_kills += t.group is not None
        os.kill(pid, 9)


def workload(d: Daemon, model: Model, ops: int) -> None:
    """Random operations until done or the daemon dies under us."""
    rng = model.rng
    try:
        conn = BlockingConnection(d.socket, timeout=20)
    except DaemonGone:
        return
    with conn:
        for _ in range(ops):
            live = [t for t in model.items.values() if t.acked and not t.rm]
            op = rng.choice(["short", "short", "long", "loop", "create", "start", "stop", "rm",
                             "kill", "restart", "shimkill", "shimkill"])
            try:
                if op in ("short", "long", "create", "loop"):
                    kind = {"short": "short", "loop": "loop"}.get(op, "long")
                    t = Tracked(model.new_id(), kind, code=rng.randint(1, 60),
                                started=op != "create",
                                policy=rng.choice(POLICIES) if op == "loop" else "no")
                    if model.groups.random() < 1 / 3:
                        t.group = model.groups.choice(GROUPS)
                    model.items[t.cid] = t
                    conn.call("create" if op == "create" else "run", spec=spec_of(t))
                    t.acked = True
                    continue
                if not live:
                    continue
                loops = [t for t in live if t.kind == "loop"]
                t = rng.choice(loops if op == "shimkill" and loops else live)
                if op == "start" and not t.started:
                    t.started = True
                    conn.call("start", id=t.cid)
                elif op == "stop":
                    t.interfered = True
                    conn.call("stop", id=t.cid, timeout=0.5)
                elif op == "kill" and t.kind == "long":
                    t.interfered = True
                    conn.call("kill", id=t.cid, signal="KILL")
                elif op == "restart" and t.kind in ("long", "loop") and t.started:
                    t.interfered = True
                    conn.call("restart", id=t.cid, timeout=0.5)
                elif op == "rm":
                    t.rm = "uncertain"
                    conn.call("rm", id=t.cid, force=True)
                    t.rm = "acked"
                # only a linked shim: one that dies before the daemon ever linked it can take
                # undelivered events with it (test_supervision_e2e's unseen restart)
                elif (op == "shimkill" and t.kind == "loop"
                      and not conn.call("status")["reconciling"]):
                    kill_shim(d, model, t)
            except wire.RemoteError as exc:
                if exc.code in ("conflict", "not_found", "exec_failed"):
                    if op == "rm":
                        t.rm = ""
                    continue
                raise
            except DaemonGone:
                return


def marker_counts() -> Counter[str]:
    """Processes per container marker. A child whose parent has the same marker is ``sh``
    between its fork and the exec of ``sleep`` (it still shows the parent's command line):
    the same init, not a second one."""
    table = _proc_table()

    def marks(cmd: str) -> set[str]:
        return {w.rsplit("-", 1)[1] for w in cmd.split() if w.startswith(f"mark-{RUN}-")}

    counts: Counter[str] = Counter()
    for ppid, cmd in table.values():
        counts.update(marks(cmd) - marks(table.get(ppid, (0, ""))[1]))
    return counts


def check(d: Daemon, model: Model) -> None:
    rows = wait_reconciled(d)
    events = d.stream("events")
    check_seqs(events)
    for cid, t in model.items.items():
        if t.acked and not t.rm:
            assert cid in rows, f"container {cid} was lost"
        if t.rm == "acked":
            assert cid not in rows, f"removed container {cid} came back"
    for cid in rows:
        assert cid in model.items, f"container {cid} appeared from nowhere"
    # exits exactly once per task, with the right status
    for e in events:
        if e["type"] == "task.exit":
            t = model.items[e["id"]]
            status = e["data"]["exit_status"]
            if t.kind in ("short", "loop") and not t.interfered:
                assert status in (t.code, 137), (e, t)  # 137: rm -f before it ended
            elif not ((t.kind == "loop" or t.lost) and status is None):  # its shim was killed
                assert status is not None, e
    check_exits_once(events)
    # tasks alternate, restarts are recorded once each and counted in ps
    now, history = quiet_view(d)
    by_id = by_container(history)
    for cid, row in now.items():
        check_tasks(cid, by_id.get(cid, []), row)
    for cid, row in rows.items():
        if model.items[cid].policy != "no" and row["state"] == "stopped":
            d.wait_for(lambda cid=cid: not restart_lost(d, cid), timeout=5)
        if row["state"] == "running":  # an end no one recorded would leave it running forever
            d.wait_for(lambda cid=cid: (r := d.ps().get(cid)) is None
                       or r["state"] != "running" or is_running(r["pid"]), timeout=5)
    # no exit is lost: every short container that is running now ends, recorded as it ended
    for cid, row in rows.items():
        t = model.items[cid]
        if t.kind == "short" and row["state"] == "running":
            ended = d.call("wait", id=cid, io_timeout=10)
            if not t.interfered:
                assert ended["exit_status"] in (t.code, 137), (cid, ended, t)
    # no duplicate processes, none left for stopped or removed containers
    counts = marker_counts()
    rows = d.ps()
    for cid, n in counts.items():
        row = rows.get(cid)
        if n > 1:  # name them: a fork of sh not yet exec'd also carries the marker
            procs = {pid: (ppid, c) for pid, (ppid, c) in _proc_table().items()
                     if f"mark-{RUN}-{cid} " in c + " "}
            history = [(e["seq"], e["type"], e["data"]) for e in d.stream("events")
                       if e["id"] == cid]
            raise AssertionError(f"{cid}: {n} processes {procs}; row {row}; model "
                                 f"{model.items[cid]}; history {history}")
        if row is None or row["state"] == "stopped":
            # it may be exiting right now: give the shim a moment to reap and record it
            try:
                d.wait_for(lambda cid=cid: marker_counts()[cid] == 0
                           or d.ps().get(cid, {}).get("state") == "running", timeout=5)
            except TimeoutError:
                procs = {pid: c for pid, (_, c) in _proc_table().items()
                         if f"mark-{RUN}-{cid} " in c + " "}
                history = [(e["seq"], e["type"], e["data"]) for e in d.stream("events")
                           if e["id"] == cid]
                raise AssertionError(f"{cid} is {row} but still has processes {procs}; "
                                     f"model {model.items[cid]}; history {history}") from None


def _remove_all_and_check(d: Daemon, made: list[str]) -> None:
    """``rm -f`` of every container the suite made (the log's, and any it may have lost), then
    nothing carrying this run's marker may run: what a user relies on. (Tasks whose shim was
    killed are reparented to pytest and name no root: if one outlived its removal, only this
    finds it; the harness's clean-up would end it without a word.)"""
    for cid in sorted(set(made) | set(d.ps())):
        try:
            d.call("rm", id=cid, force=True)
        except wire.RemoteError as exc:
            assert exc.code == "not_found", (cid, exc)
    assert d.ps() == {}

    def ours() -> dict[int, str]:
        return {pid: cmd for pid, (_, cmd) in _proc_table().items()
                if f"mark-{RUN}-" in cmd and not cmd.startswith(("ps ", "/bin/ps "))}

    try:
        d.wait_for(lambda: not ours(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"still running after rm -f of everything: {ours()}") from None


def test_crash_suite(daemon_factory):
    rng = random.Random(SEED)
    random.seed(SEED)
    d = daemon_factory()
    model = Model(rng)
    follower = Follower(d)
    follower.start()
    for _round in range(ROUNDS):
        worker = threading.Thread(target=workload, args=(d, model, rng.randint(2, 6)))
        worker.start()
        time.sleep(rng.uniform(0, 0.25))
        d.kill9()
        worker.join(30)
        assert not worker.is_alive()
        follower.join()
        d.start()
        follower.start()
        check(d, model)
        # tidy up a little so the number of live containers stays small
        live = [t for t in model.items.values() if t.acked and not t.rm]
        if len(live) > 12:
            for t in rng.sample(live, len(live) - 8):
                t.rm = "uncertain"
                d.call("rm", id=t.cid, force=True)
                t.rm = "acked"
    d.stop()
    follower.join()
    last = d.start().call("status")["last_seq"]
    follower.start()
    d.wait_for(lambda: follower.seqs and follower.seqs[-1] >= last, timeout=10)
    history = d.stream("events")
    types = Counter(e["type"] for e in history)
    by = Counter(e["data"].get("by") for e in history if e["type"] == "container.restart")
    members = sum(t.group is not None for t in model.items.values())
    print(f"crash suite: {ROUNDS} rounds, {len(model.items)} containers ({members} in shared "
          f"shims, {model.group_kills} of those killed), {dict(types)}, restarts by {dict(by)}")
    needed_types = ["task.start", "task.exit", "container.delete"]
    if ROUNDS >= 50:
        needed_types += ["container.restart", "container.stop"]
        carried = sum(1 for e in history if e["type"] == "task.create" and e["data"].get("start"))
        assert by["daemon"] + carried > 0, \
            f"the daemon never decided or carried out a restart: {dict(by)}"
        assert members > 0, "no container was a member of a shared shim"
    for needed in needed_types:
        assert types[needed] > 0, f"the workload never produced {needed}: {dict(types)}"
    # whatever the kills left of a group's directory (a group killed while it removed it,
    # docs/design.md section 7, "Ending"), a new member joins its group or starts it
    for name in GROUPS:
        cid = d.run("sleep", "1000", name=f"after-{name}", shim_group=name)
        assert d.ps()[cid]["state"] == "running"
        d.call("rm", id=cid, force=True)
    _remove_all_and_check(d, list(model.items))
    d.stop()
    follower.join()
    assert follower.seqs == list(range(1, follower.seqs[-1] + 1)), \
        "a resuming subscriber must see every event exactly once"


# -- the OCI start window ---------------------------------------------------------------------

OCI_ROUNDS = int(os.environ.get("TETHER_CRASH_OCI_ROUNDS", "16"))
#: What dies while runc makes a container: its shim, the daemon (its launcher with it), or the
#: launcher alone.
OCI_FAULTS = ("shim", "shim", "daemon", "launcher")


def _launcher_of(d: Daemon) -> int | None:
    title = f"-m shim launcher --root {d.root} "
    return next((pid for pid, (_, cmd) in _proc_table().items() if title in cmd + " "), None)


def _kill_in_the_window(d: Daemon, cid: str, fault: str, delay: float) -> str | None:
    """*fault* dies *delay* s after *cid*'s runtime command was seen (its shim: SIGKILLed at
    that moment; the daemon or its launcher: SIGKILLed then): what was killed, or None if the
    start ended first."""
    if fault == "shim":
        killed = kill_the_shim_while_its_runtime_runs(d.root, cid, delay, time.monotonic() + 20)
        return None if killed is None else "shim"
    seen = kill_the_shim_while_its_runtime_runs(d.root, cid, delay, time.monotonic() + 20,
                                                kill=False)
    if seen is None:
        return None
    if fault == "daemon":
        d.kill9()
        return "daemon"
    pid = _launcher_of(d)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return "launcher"


def _no_unknown_container(d: Daemon, rows: dict[str, dict[str, Any]]) -> None:
    """Every runc container under the root, and every process of this run's OCI containers,
    belongs to a container ``ps`` shows running (what it left of a start that failed is
    gone: a shim that aborted may still be deleting it for a moment)."""
    def unknown() -> list[str]:
        running = {cid for cid, r in d.ps().items() if r["state"] == "running"}
        listed = set(runtime_list("runc", str(d.root / "runc")))
        found = [f"runc container {c}" for c in sorted(listed - running)]
        found += [f"process of {c}" for c, n in marker_counts().items()
                  if n and c.startswith("o") and c not in running]
        return found

    try:
        d.wait_for(lambda: not unknown(), timeout=10)
    except TimeoutError:
        raise AssertionError(f"not known to the log: {unknown()}; rows {rows}") from None


def test_crash_suite_oci_start_window(daemon_factory, busybox_rootfs):
    """runc containers started while their shim, the daemon or the launcher is SIGKILLed as
    runc makes the container (0-40 ms after runc appears): a run is acknowledged with its
    container running, or fails (``unavailable``) or dies with the daemon leaving nothing;
    no runc container or process runs that the log does not show running; every exit is
    recorded once; the daemon serves on; ``rm -f`` of everything leaves nothing."""
    if runtime_missing("runc") is not None:
        pytest.skip(runtime_missing("runc") or "")
    rng = random.Random(SEED + 2)
    d = daemon_factory()
    made: list[str] = []
    outcomes: Counter[str] = Counter()
    for n in range(1, OCI_ROUNDS + 1):
        cid = f"o{n}"
        made.append(cid)
        fault = rng.choice(OCI_FAULTS)
        killed: list[str | None] = []
        killer = threading.Thread(target=lambda out, *args: out.append(_kill_in_the_window(*args)),
                                  args=(killed, d, cid, fault, rng.choice(DELAYS)))
        killer.start()
        spec = {"command": ["sh", "-c", "sleep 1000; true", f"mark-{RUN}-{cid}"], "name": cid,
                "runtime": "runc", "rootfs": str(busybox_rootfs), "stop_timeout": 0.5}
        try:
            d.call("run", spec=spec)
            outcome = "acked"
        except wire.RemoteError as exc:
            assert exc.code == "unavailable", exc
            outcome = "failed"
        except DaemonGone:
            outcome = "daemon gone"
        killer.join(30)
        assert not killer.is_alive()
        outcomes[f"{outcome}, {killed[0] if killed else None} killed"] += 1
        if not d.running():
            d.start()
        rows = wait_reconciled(d)
        if outcome == "acked":
            assert cid in rows, f"{cid}: its run was acknowledged, the log lost it"
        if outcome == "acked" and killed == ["shim"]:  # killed just after ready: a lost shim
            # its task ends (killed by hand) and is recorded; its next task runs in a new shim
            # of the same id: the runtime's state of the old one must not refuse it
            with contextlib.suppress(ProcessLookupError):
                os.kill(rows[cid]["pid"], signal.SIGKILL)
            d.wait_for(lambda cid=cid: d.ps()[cid]["state"] == "stopped", timeout=10)
            d.call("restart", id=cid, timeout=0.5)
            assert d.ps()[cid]["state"] == "running"
            outcomes["restarted after its shim was lost"] += 1
        _no_unknown_container(d, rows)
        check_exits_once(d.stream("events"))
        if rng.random() < 0.3 and cid in rows:
            d.call("rm", id=cid, force=True)
    print(f"crash suite, OCI start window: {OCI_ROUNDS} rounds, {dict(outcomes)}")
    assert any(k.startswith("failed, shim") for k in outcomes), \
        f"no shim was killed in the window: {dict(outcomes)}"
    _remove_all_and_check(d, made)
    assert runtime_list("runc", str(d.root / "runc")) == []
    state = d.root / "runc"
    assert not state.exists() or not list(state.iterdir()), list(state.iterdir())
