"""The soak's record of what it did, and its checker (``bench/soak.py`` runs the soak).

What the clients and the chaos did to each container (:class:`Tracked`: the status its command
chose, every signal the soak may have sent it, whether its shim was killed or it was removed)
is what an exit in the log is checked against; the rules shared with the crash suite live in
``tests/history_checks.py``. Checked once a round, when everything has been let go.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import (  # noqa: E402
    _proc_table,
    is_zombie_or_gone,
    processes_naming,
)
from daemon_helpers import Daemon  # noqa: E402
from history_checks import (  # noqa: E402
    Follower,
    by_container,
    check_exits_once,
    check_seqs,
    check_tasks,
    quiet_view,
    restart_lost,
    wait_reconciled,
)

from events.procfs import is_running, read_stat  # noqa: E402

POLICIES = ("always", "on-failure", "on-failure:3")
KILL_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGUSR1)
#: Errors a fault explains: a wrong state raced by another client, a full disk, a shim that is
#: stopped, gone or starting again. Anything else (``internal``, ``invalid``...) is a finding.
EXPECTED_ERRORS = frozenset({"conflict", "not_found", "no_space", "unavailable"})
#: The chaos thread's choices (a name twice: twice as likely).
FAULTS = ("daemon", "daemon", "launcher", "shim", "shim", "stop", "stop", "disk")
TMPFS_SIZE = "16m"
#: Containers alive at once, at most (a client removes one rather than create one more).
MAX_LIVE = 12
ROUND_SECONDS = 15.0
FILL = "soak-fill"


class SoakFailure(AssertionError):
    pass


@dataclass
class Tracked:
    """What the soak did to one container (the checker's expectations)."""

    cid: str
    kind: str                 # "short", "long" or "loop" (a restart policy)
    code: int
    policy: str = "no"
    acked: bool = False       # create (or run) acknowledged
    rm: str = ""              # "" | "acked" | "uncertain"
    signals: set[int] = field(default_factory=set)  # every signal the soak may have sent it
    shim_killed: bool = False
    started: bool = True

    @property
    def mark(self) -> str:
        return f"mark-{self.cid}"

    def statuses(self) -> set[int]:
        return {self.code} | {128 + s for s in self.signals}


@dataclass
class Soak:
    d: Daemon
    seed: int
    run: str  # unique per run: in every marker and in every container's environment
    items: dict[str, Tracked] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: Counter[str] = field(default_factory=Counter)
    history: list[dict[str, Any]] = field(default_factory=list)  # the log, as of the last check
    replies: dict[str, list[str]] = field(default_factory=dict)  # the errors each id got
    faults: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    execs: int = 0
    disk: bool = False
    kinds: frozenset[str] = frozenset(FAULTS)
    n: int = 0
    log_offset: int = 0  # how far the daemon's log was read for findings (:func:`check_log`)

    def new(self, rng: random.Random, kind: str) -> Tracked:
        with self.lock:
            self.n += 1
            t = Tracked(f"s{self.run}-{self.n}", kind, code=rng.randint(0, 60),
                        policy=rng.choice(POLICIES) if kind == "loop" else "no",
                        started=kind != "created")
            if kind == "created":
                t.kind = "long"
            self.items[t.cid] = t
            return t

    def spec(self, t: Tracked, rng: random.Random) -> dict[str, Any]:
        sleep = {"long": "1000", "short": f"0.{rng.randint(0, 4)}"}.get(
            t.kind, f"0.{rng.randint(3, 9)}")
        spec: dict[str, Any] = {
            "command": ["sh", "-c", f"sleep {sleep}; exit {t.code}", f"mark-{t.cid}"],
            "name": t.cid, "stop_timeout": 0.5,
            "env": {"TETHER_SOAK": self.run, "TETHER_SOAK_ID": t.cid}}
        if t.policy != "no":
            policy, _, retries = t.policy.partition(":")
            spec["restart"] = {"policy": policy, "delay": 0.1, "max_delay": 1.0,
                               "max_retries": int(retries) if retries else None}
        return spec

    def fail(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


# -- the checker --------------------------------------------------------------------------------

def marker_pids(s: Soak, cid: str) -> list[int]:
    """The live processes of container *cid*: its init and every descendant (each inherits
    the environment marker the soak gave the container)."""
    return [p for p, owner in container_processes(s).items() if owner == cid and is_running(p)]


def is_init(s: Soak, cid: str, pid: int) -> bool:
    """*pid* is container *cid*'s command (its ``$0`` is the container's mark)."""
    return (pid in marker_pids(s, cid)
            and f"mark-{cid} " in _proc_table().get(pid, (0, ""))[1] + " ")


def container_processes(s: Soak) -> dict[int, str]:
    """pid -> container id, for every process carrying this run's environment marker."""
    needle = f"TETHER_SOAK={s.run}".encode()
    found: dict[int, str] = {}
    for pid in _proc_table():
        with contextlib.suppress(OSError):
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if needle in env:
                found[pid] = next(v[15:].decode() for v in env
                                  if v.startswith(b"TETHER_SOAK_ID="))
    return found


#: What the daemon logs when it finds that its log lost events: in the soak nothing cuts the
#: log (no ``--repair``, no older copy put back), so an adoption is an acknowledged event lost.
LOST_HISTORY = "adopted a shim the log did not account for"


def check_log(s: Soak) -> None:
    """The daemon's log (every start appends to it) since the last check: an adoption means the
    log lost events it had acknowledged (exactly-once broken, even if ``container.adopt``
    repaired the state)."""
    try:
        with open(s.d.stderr_path, "rb") as f:
            f.seek(s.log_offset)
            text = f.read()
    except FileNotFoundError:
        return
    text = text[:text.rfind(b"\n") + 1]  # whole lines only: the rest is read next time
    s.log_offset += len(text)
    lines = [line for line in text.decode(errors="replace").splitlines() if LOST_HISTORY in line]
    assert not lines, "the daemon adopted a shim: its log lost acknowledged events: " + \
        "\n    ".join(lines[:3])


def check(s: Soak) -> None:
    """The history and ``/proc`` once the daemon is quiet (see the module's docstring)."""
    d = s.d
    rows = wait_reconciled(d)
    check_log(s)
    for cid, t in s.items.items():
        if t.acked and not t.rm:
            assert cid in rows, f"container {cid} was lost"
        if t.rm == "acked":
            assert cid not in rows, f"removed container {cid} came back"
    for cid in rows:
        assert cid in s.items, f"container {cid} appeared from nowhere"
    for cid, row in rows.items():  # a restart in flight, a stop being recorded: let them land
        if s.items[cid].policy != "no" and row["state"] == "stopped":
            try:
                d.wait_for(lambda cid=cid: not restart_lost(d, cid), timeout=10)
            except TimeoutError:
                raise AssertionError(f"{cid}: a restart was lost (stopped, its policy "
                                     f"{s.items[cid].policy}, no shim, nothing decided for "
                                     f"10 s): {lived(s, cid)}") from None
    now, history = quiet_view(d, s.history)
    adopted = [(e["seq"], e["id"], e["data"].get("reason")) for e in history
               if e["type"] == "container.adopt"]
    assert not adopted, f"containers adopted (the log lost acknowledged events): {adopted}"
    check_seqs(history)
    check_exits_once(history)
    for e in history:
        if e["type"] == "task.exit":
            check_status(s.items[e["id"]], e)
    execs = Counter((e["id"], e["data"].get("exec_id")) for e in history
                    if e["type"] == "task.exec.exit")
    assert all(n == 1 for n in execs.values()), f"exec exits recorded twice: {execs}"
    by_id = by_container(history)
    for cid, row in now.items():
        events = by_id.get(cid, [])
        check_tasks(cid, events, row)
        check_proc(s, cid, row, events)


def lived(s: Soak, cid: str) -> list[tuple[int, str, Any]]:
    """What the log holds of *cid*, as of now: (seq, type, pid or status) per event."""
    events = s.d.stream("events", since=0)
    return [(e["seq"], e["type"], e["data"].get("pid", e["data"].get("status")))
            for e in events if e["id"] == cid]


def check_status(t: Tracked, e: dict[str, Any]) -> None:
    status, data = e["data"].get("exit_status"), e["data"]
    if status is None:
        assert data.get("reason") and (t.shim_killed or t.rm), \
            f"{t.cid}: an unknown exit, and no shim of it was killed: {e} {t}"
    else:
        assert status in t.statuses(), \
            f"{t.cid}: exit {status}, its command chose {t.code}, signals {t.signals}: {e}"


def check_proc(s: Soak, cid: str, row: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """``ps`` agrees with ``/proc``: the running task is alive, is this container's command and
    started when the log says; a stopped container has no process left."""
    if row["state"] == "running":
        pid = row["pid"]
        if not is_running(pid):  # it may be ending right now: its exit must land
            try:
                s.d.wait_for(lambda: (r := s.d.ps().get(cid)) is None or r["pid"] != pid
                             or r["state"] != "running", timeout=10)
            except TimeoutError:
                raise AssertionError(f"{cid}: ps says running, pid {pid}, which ended over "
                                     f"10 s ago with no exit recorded: {lived(s, cid)}"
                                     ) from None
            return
        try:  # it may have ended since, or be between its fork and its exec
            s.d.wait_for(lambda: is_init(s, cid, pid) or not is_running(pid), timeout=3)
        except TimeoutError:
            raise AssertionError(f"{cid}: ps says pid {pid}, which runs "
                                 f"{_proc_table().get(pid)}, not its command") from None
        if not is_running(pid):
            return
        created = [e["data"] for e in events if e["type"] == "task.create"][-1]
        assert created["pid"] == pid, (cid, row, created)
        stat = read_stat(pid)
        assert stat is not None
        started = boot_time() + stat.starttime / os.sysconf("SC_CLK_TCK")
        assert abs(started - created["created_at"] / 1e9) < 3, \
            f"{cid}: pid {pid} started at {started}, its task.create says {created}"
    elif row["state"] == "stopped":
        try:
            s.d.wait_for(lambda: not marker_pids(s, cid), timeout=10)
        except TimeoutError:
            raise AssertionError(f"{cid} is stopped but has processes {marker_pids(s, cid)}: "
                                 f"{[(e['seq'], e['type'], e['data']) for e in events]}") from None


def boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime")))


def soak_processes(s: Soak) -> dict[int, str]:
    """Every live process of this soak: naming the root, or carrying its environment marker
    (pid -> its container's id, or its command line)."""
    table = _proc_table()
    found = {p: table.get(p, (0, "?"))[1].strip() for p in processes_naming(str(s.d.root))}
    for pid, cid in container_processes(s).items():
        if not is_zombie_or_gone(pid):
            found[pid] = f"{table.get(pid, (0, '?'))[1].strip()} (of {cid})"
    return found


def zombies_under(parents: set[int]) -> list[int]:
    return [p for p, (ppid, _) in _proc_table().items()
            if ppid in parents and is_zombie_or_gone(p)]


def finish(s: Soak, follower: Follower) -> None:
    """``rm -f`` of everything, no zombie under a soak process, shut down, nothing left."""
    d = s.d
    for cid in d.ps():
        t = s.items.get(cid)
        if t is not None:
            t.signals.add(signal.SIGKILL)
        d.call("rm", id=cid, force=True)
        if t is not None:
            t.rm = "acked"
    check(s)
    assert not d.ps(), f"containers left after rm -f of all: {d.ps()}"
    try:
        d.wait_for(lambda: not zombies_under(set(soak_processes(s))), timeout=5)
    except TimeoutError:
        raise AssertionError(f"zombies under the daemon or a shim: "
                             f"{zombies_under(set(soak_processes(s)))}") from None
    last = d.call("status")["last_seq"]
    try:
        d.wait_for(lambda: follower.seqs and follower.seqs[-1] >= last, timeout=10)
    except TimeoutError:
        raise AssertionError(f"the live subscriber did not reach seq {last} in 10 s (it is "
                             f"at {follower.seqs[-1:]})") from None
    assert d.stop() == 0, "the daemon's orderly stop failed"
    follower.join()
    assert follower.seqs == list(range(1, follower.seqs[-1] + 1)), \
        "a resuming subscriber must see every event exactly once"
    try:
        d.wait_for(lambda: not soak_processes(s), timeout=10)
    except TimeoutError:
        left = soak_processes(s)
        named = {w.strip("()") for c in left.values() for w in c.split()} & set(s.items)
        told = {c: s.replies.get(c) for c in named}
        lives = {c: [(e["seq"], e["type"], e["data"].get("exit_status")) for e in s.history
                     if e["id"] == c] for c in named}
        raise AssertionError(f"processes left after rm -f and shutdown: {left}; what their "
                             f"clients were told: {told}; their history: {lives}") from None
