"""Checks over a daemon's whole history, shared by the crash suite and the soak.

``tests/test_crash.py`` (SIGKILL of the daemon at random moments) and ``bench/soak.py`` (hours
of concurrent clients, kill -9 of every process, SIGSTOP, a full disk) ask the same questions
of the log once the daemon is quiet: are seqs gap-free, is every exit recorded once per task,
do a container's tasks alternate with a ``container.restart`` between them, does ``ps`` count
the restarts the log holds, was a restart lost. One definition, so a rule tightened for one
tightens it for both.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from daemon_helpers import Daemon

from events import wire
from events.rpc import BlockingConnection

#: What a client sees when the daemon dies under it (or is stopped, or its socket is gone).
DaemonGone = (OSError, ConnectionError, wire.ProtocolError, TimeoutError)


class Follower:
    """A live subscriber that resumes with ``since`` after every crash."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.seqs: list[int] = []
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        since = self.seqs[-1] if self.seqs else 0
        try:
            with BlockingConnection(self.d.socket, timeout=None) as conn:
                for item in conn.stream("events", since=since, follow=True):
                    self.seqs.append(item["seq"])
        except DaemonGone:
            return
        except wire.RemoteError:
            return

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(10)
        assert not self.thread.is_alive()


def wait_reconciled(d: Daemon) -> dict[str, dict[str, Any]]:
    """``ps`` once the daemon has reconciled every container after its start."""
    def done() -> dict[str, dict[str, Any]] | None:
        if d.call("status")["reconciling"]:
            return None
        rows = d.ps()
        if any(r["state"] == "unknown" for r in rows.values()):
            return None
        return rows or {"": {}}

    rows = d.wait_for(done, timeout=15)
    rows.pop("", None)
    return rows


def check_seqs(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs must be gap-free"


def exit_counts(events: list[dict[str, Any]]) -> Counter[tuple[str, Any, Any]]:
    """How often each task's exit is in the log; a task is ``(id, instance, pid)``."""
    exits: Counter[tuple[str, Any, Any]] = Counter()
    for e in events:
        if e["type"] == "task.exit":
            exits[(e["id"], e["data"].get("instance"), e["data"].get("pid"))] += 1
    return exits


def check_exits_once(events: list[dict[str, Any]]) -> None:
    dup = {k: n for k, n in exit_counts(events).items() if n > 1}
    assert not dup, f"exits recorded more than once: {dup}"


def quiet_view(d: Daemon, history: list[dict[str, Any]] | None = None
               ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """``ps`` and the whole history as of the same seq (crash loops keep appending: retry
    until nothing was appended in between). *history*, the log as read before, is extended
    in place with what was appended since (a long soak reads each event once)."""
    events = [] if history is None else history
    for _ in range(100):
        before = d.call("status")["last_seq"]
        rows = d.ps()
        events.extend(d.stream("events", since=events[-1]["seq"] if events else 0))
        if events and events[-1]["seq"] == before == d.call("status")["last_seq"]:
            return rows, events
    raise AssertionError("the daemon never stood still long enough to compare ps and the log")


def by_container(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("id"):
            by_id.setdefault(e["id"], []).append(e)
    return by_id


def check_tasks(cid: str, events: list[dict[str, Any]], row: dict[str, Any]) -> None:
    """One container's history: each task created, started at most once and ended once, in
    that order; a task after the first only after a recorded restart (or a start by command
    of a stopped container, after its ``task.delete``); each restart recorded once (followed
    by its task, unless a stop cancelled it)."""
    running: tuple[Any, Any] | None = None  # (instance, pid) of the task not ended yet
    started = False
    tasks = 0
    pending = False  # a restart recorded, its task not created yet
    deleted = False  # the last task was deleted: a start by command may follow
    history = [(e["seq"], e["type"]) for e in events]
    for e in events:
        kind, data = e["type"], e["data"]
        if kind == "task.create":
            assert running is None, f"{cid}: a task created before the last ended: {history}"
            assert tasks == 0 or pending or deleted, \
                f"{cid}: a new task without a restart: {history}"
            running, started = (data.get("instance"), data.get("pid")), False
            pending = deleted = False
            tasks += 1
        elif kind == "task.start":
            assert running is not None and not started, f"{cid}: a start twice: {history}"
            started = True
        elif kind == "task.exit":
            assert running is not None, f"{cid}: an exit without a task: {history}"
            running = None
        elif kind == "container.restart":
            assert running is None, f"{cid}: a restart while a task runs: {history}"
            assert not pending, f"{cid}: a restart recorded twice: {history}"
            pending = True
        elif kind == "task.delete":
            deleted = True
        elif kind in ("container.stop", "container.giveup"):
            pending = False  # a stop (or the daemon giving up) cancels a pending restart
    if pending:
        assert row["state"] == "restarting", (cid, row, history)
    if row["state"] == "stopped":
        assert running is None, f"{cid}: stopped, but its last task has not ended: {history}"
    restarts = sum(1 for e in events if e["type"] == "container.restart")
    assert row["restarts"] == restarts, (cid, row, history)


def restart_lost(d: Daemon, cid: str) -> bool:
    """A stopped policy container that must run again, whose shim is gone, and for which no
    one recorded a decision: a restart was lost."""
    from events import shim_api
    from supervisor.shims import shim_alive

    info = d.call("inspect", id=cid)
    restart = info["restart"]
    if info["state"] != "stopped" or restart["stopped_by_user"] or restart["gave_up"]:
        return False
    if restart["policy"] == "on-failure" and info["exit_status"] == 0:
        return False
    return not shim_alive(shim_api.shim_dir(d.root, cid))
