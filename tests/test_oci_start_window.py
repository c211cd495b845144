"""A shim killed while its OCI runtime creates the container (``runc run --detach`` runs):
nothing of that container may be left, since no one would ever be told of it or end it.

A starter whose shim went silent waits for the runtime command of that container (the
spec names the runtime) to end and deletes the container (:func:`shim.launch.end_container`).
The kill lands at different moments of the runtime's run (right as it is spawned, while it
works, after it made the container), in a loop, until the window was hit several times; with
the starter that did not delete it, every hit left the container running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from daemon_helpers import Daemon
from oci_helpers import needs_crun, needs_runc, runtime_list, unique_id
from shim_helpers import Shims, leftover_cgroups, start_command
from window_helpers import DELAYS, kill_the_shim_while_its_runtime_runs, left_of

from events import shim_api, wire


def nothing_left(root: Path, runtime: str, cid: str, marker: str) -> None:
    """Nothing of *cid* left (SIGKILLed processes may be listed a moment longer)."""
    deadline = time.monotonic() + 5
    while left := left_of(root, runtime, cid, marker):
        assert time.monotonic() < deadline, f"left of {cid}: {left}"
        time.sleep(0.01)


def _trials(shims: Shims, runtime: str, rootfs: Path, wanted: int) -> None:
    hits = misses = 0
    while hits < wanted:
        assert hits + misses < 150, f"the window was hit {hits} times in {misses + hits} trials"
        marker = f"mark-{os.getpid()}-{time.monotonic_ns()}"
        cid = shims.write_spec(unique_id("win"), command=["sh", "-c", f"sleep 30; true {marker}"],
                               runtime=runtime, rootfs=str(rootfs))
        starter = subprocess.Popen(start_command(shims.root, cid, run=True),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = kill_the_shim_while_its_runtime_runs(
            shims.root, cid, DELAYS[(hits + misses) % len(DELAYS)], time.monotonic() + 20)
        out, err = starter.communicate(timeout=60)
        if starter.returncode == 0:  # ready came first: a start like any other
            misses += 1
            ready = json.loads(out)
            shims._track(ready["pid"])
            shims._track(ready["task_pid"])
            continue
        assert killed is not None, err
        assert shim_api.NO_READY in err and "could not be deleted" not in err, err
        hits += 1
        nothing_left(shims.root, runtime, cid, marker)
        assert not leftover_cgroups(shims.cgroups[-1])  # this container's (runc removes it)


@needs_runc
def test_a_shim_killed_while_runc_makes_its_container_leaves_nothing(
        shims: Shims, busybox_rootfs: Path) -> None:
    """``shim start --run`` of a runc container, the shim SIGKILLed while ``runc run`` runs:
    the start fails (the shim did not report ready) and no process, runc state or cgroup of
    the container is left."""
    _trials(shims, "runc", busybox_rootfs, wanted=6)


@needs_crun
def test_a_shim_killed_while_crun_makes_its_container_leaves_nothing(
        shims: Shims, busybox_rootfs: Path) -> None:
    """The same with crun (a few milliseconds: a narrower window)."""
    _trials(shims, "crun", busybox_rootfs, wanted=3)


@needs_runc
def test_the_daemon_serves_on_after_a_run_whose_shim_died_while_runc_ran(
        daemon: Daemon, busybox_rootfs: Path) -> None:
    """Through the daemon (its launcher is the starter): the client gets ``unavailable``
    naming the shim's silence, the log records no running task of it, nothing of it is left
    running, and the same name runs afterwards."""
    hits = 0
    for trial in range(60):
        if hits >= 3:
            break
        cid = f"win{trial}"
        marker = f"mark-{os.getpid()}-{cid}"
        killed: list[int | None] = []
        delay = DELAYS[trial % len(DELAYS)]
        killer = threading.Thread(target=lambda cid=cid, delay=delay, killed=killed: killed.append(
            kill_the_shim_while_its_runtime_runs(daemon.root, cid, delay,
                                                 time.monotonic() + 20)))
        killer.start()
        try:
            daemon.call("run", spec={"command": ["sh", "-c", f"sleep 30; true {marker}"],
                                     "name": cid, "runtime": "runc",
                                     "rootfs": str(busybox_rootfs)})
            ok = True
        except wire.RemoteError as exc:
            assert exc.code == "unavailable" and shim_api.NO_READY in exc.message, exc
            ok = False
        killer.join(30)
        if ok:  # ready came first
            daemon.call("rm", id=cid, force=True)
            continue
        assert killed and killed[0] is not None
        hits += 1
        nothing_left(daemon.root, "runc", cid, marker)
        row = daemon.ps().get(cid)
        assert row is None or row["state"] != "running", row
        if row is not None:
            daemon.call("rm", id=cid, force=True)
        # the name is free and runs
        daemon.call("run", spec={"command": ["sleep", "30"], "name": cid, "runtime": "runc",
                                 "rootfs": str(busybox_rootfs)})
        assert daemon.ps()[cid]["state"] == "running"
        daemon.call("rm", id=cid, force=True)
    assert hits >= 3, f"the window was hit {hits} times"
    assert runtime_list("runc", str(daemon.root / "runc")) == []
    history = daemon.stream("events")
    exits = [(e["id"], e["data"].get("instance")) for e in history if e["type"] == "task.exit"]
    assert len(exits) == len(set(exits)), exits



@needs_runc
def test_a_runc_container_whose_shim_was_killed_is_removed_and_restarted_whole(
        daemon: Daemon, busybox_rootfs: Path) -> None:
    """A running runc container whose shim is SIGKILLed (a lost shim: its runc state stays,
    since only the shim deleted it at the exit): once its task ends, ``restart`` runs a new
    task in a new shim of the same id (the old runc state does not refuse it), and ``rm -f``
    leaves no runc state, no cgroup, no process."""
    spec = {"command": ["sh", "-c", "sleep 30; true mark-lost"], "name": "lost",
            "runtime": "runc", "rootfs": str(busybox_rootfs)}
    marker = "mark-lost"
    daemon.call("run", spec=spec)
    for _ in range(2):  # killed after its start, then after the restart's
        row = daemon.ps()["lost"]
        shim_pid = int((shim_api.shim_dir(daemon.root, "lost") / shim_api.PID_FILE).read_text())
        os.kill(shim_pid, signal.SIGKILL)
        assert "lost" in runtime_list("runc", str(daemon.root / "runc"))
        os.kill(row["pid"], signal.SIGKILL)  # its task ends; the daemon records it
        daemon.wait_for(lambda: daemon.ps()["lost"]["state"] == "stopped")
        daemon.call("restart", id="lost", timeout=0.5)
        assert daemon.ps()["lost"]["state"] == "running"
    shim_pid = int((shim_api.shim_dir(daemon.root, "lost") / shim_api.PID_FILE).read_text())
    os.kill(shim_pid, signal.SIGKILL)
    daemon.call("rm", id="lost", force=True)
    nothing_left(daemon.root, "runc", "lost", marker)
    instances = {e["data"]["instance"] for e in daemon.stream("events")
                 if e["type"] == "task.create" and e["id"] == "lost"}
    assert len(instances) == 3
    for instance in instances:
        assert not leftover_cgroups(f"tether/lost-{instance}")
    daemon.call("run", spec=spec)  # the name is free
    assert daemon.ps()["lost"]["state"] == "running"
