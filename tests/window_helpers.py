"""Kill the shim while its OCI runtime makes the container: shared by the start-window tests
(``tests/test_oci_start_window.py``) and the crash suite's OCI case."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from conftest import _proc_table
from oci_helpers import runtime_list
from shim_helpers import children_of, cmdline

from events import shim_api

#: When to kill, after the runtime command was first seen (seconds): `runc run` takes tens of
#: milliseconds here, so the later ones land after it made the container, or returned.
DELAYS = (0.0, 0.003, 0.008, 0.015, 0.025, 0.04)
#: The verbs of the command that makes the container (``run --detach``, or ``create``).
MAKING = (b"\0run\0--detach\0", b"\0create\0--bundle\0")


def kill_the_shim_while_its_runtime_runs(root: Path, cid: str, delay: float,
                                         deadline: float, kill: bool = True) -> int | None:
    """SIGKILL *cid*'s shim *delay* seconds after its runtime command that makes the container
    was first seen running (a child of the shim): the shim's pid, or None if the start ended
    first (the shim's pid from ``shim.pid``, written before it runs the runtime). Without
    *kill*, only wait for that moment (the caller kills something else then)."""
    pid_file = shim_api.shim_dir(root, cid) / shim_api.PID_FILE
    shim_pid = 0
    while time.monotonic() < deadline:
        if not shim_pid:
            try:
                shim_pid = int(pid_file.read_text())
            except (OSError, ValueError):
                continue
        if not cmdline(shim_pid):
            return None
        if any(any(verb in cmdline(kid) for verb in MAKING) for kid in children_of(shim_pid)):
            time.sleep(delay)
            if kill:
                os.kill(shim_pid, signal.SIGKILL)
            return shim_pid
    return None


def left_of(root: Path, runtime: str, cid: str, marker: str) -> list[str]:
    """What is left of container *cid*: processes carrying *marker* (its program) or running
    a runtime command on it, the runtime's state of it."""
    left = [f"process {pid}: {cmd}" for pid, (_, cmd) in _proc_table().items()
            if marker in cmd or (f"--root {root}/{runtime} " in cmd and cmd.endswith(f" {cid} "))]
    if cid in runtime_list(runtime, str(root / runtime)):
        left.append(f"{runtime} list shows {cid}")
    if (root / runtime / cid).exists():
        left.append(f"{root / runtime / cid} exists")
    return left
