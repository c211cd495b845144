"""A shim that dies while the daemon replays its backlog after a restart (soak seeds 301, 171).

The daemon, started again, links each shim: ``state`` first (how far its events go), then the
backlog of events it has not had acknowledged, each appended and acknowledged in turn. A shim
SIGKILLed half-way through that replay must cost nothing anyone was told: what it sent before
it died is still the daemon's to record (an acknowledgement that cannot be sent is no reason
to stop reading), and its ``state`` answer (now stale) is no evidence that the log lost
acknowledged events: recovery must not "adopt" the dead shim's last word over the log, which
left the container ``running`` a task nobody watched, whose end was never recorded.
"""

from __future__ import annotations

import os
import signal
import time

from daemon_helpers import Daemon
from history_checks import by_container, check_exits_once, check_seqs, check_tasks, quiet_view

from events import shim_api
from events.procfs import is_running

LOST_HISTORY = "adopted a shim the log did not account for"


def crash_loop(d: Daemon, cid: str) -> int:
    """A container restarting as fast as its shim can (no back-off); its shim's pid."""
    d.call("run", spec={"name": cid, "command": ["sh", "-c", "exit 3"],
                        "restart": {"policy": "always", "delay": 0.0, "max_delay": 0.0}})
    d.wait_for(lambda: d.ps()[cid]["restarts"] >= 3)
    return int((d.root / "shims" / cid / shim_api.PID_FILE).read_text())


def test_shims_killed_while_their_backlogs_are_replayed_are_recorded_not_adopted(daemon):
    # four at once: whether the old mistake showed (an adoption) was a race of its own
    ids = [f"loop{i}" for i in range(4)]
    shims = [crash_loop(daemon, cid) for cid in ids]
    daemon.kill9()
    time.sleep(0.5)  # a hundred or more events wait in each shim for the daemon
    before = daemon_last_seq(daemon)
    daemon.start()
    # kill the shims once the replay has begun (the daemon appends and acknowledges one event
    # of a backlog at a time: it lasts long enough to be caught in the middle)
    daemon.wait_for(lambda: daemon.call("status")["last_seq"] > before + 8, interval=0.002)
    for shim in shims:
        os.kill(shim, signal.SIGKILL)
    daemon.wait_for(lambda: not any(is_running(shim) for shim in shims))
    daemon.reconciled(timeout=30)
    adopted = [e for e in daemon.stream("events", types=["container.adopt"])]
    assert not adopted, "the shims' unsent events are no acknowledged events the log lost"
    assert LOST_HISTORY not in daemon.stderr()
    # the shims are gone: the daemon decides for the containers now (their policy: restart);
    # a stop ends each (it would wait in vain for the end of a task no one watches)
    for cid in ids:
        daemon.call("stop", id=cid, timeout=1)
    daemon.wait_for(lambda: all(r["state"] == "stopped" for r in daemon.ps().values()))
    now, history = quiet_view(daemon)
    check_seqs(history)
    check_exits_once(history)
    for cid, events in by_container(history).items():
        check_tasks(cid, events, now[cid])


def daemon_last_seq(d: Daemon) -> int:
    """The last seq of the log of a daemon that is down (its next start's first event
    follows it): read through a daemon-less reader of the log."""
    from events.log import EventLog

    log = EventLog.open(d.root)
    try:
        return log.last_seq
    finally:
        log.close()
