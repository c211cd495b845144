"""What a lost shim's ended task left in its process group (:func:`supervisor.links.end_leftovers`):
ended only where the group is provably the task's, since pids (and so group ids) are reused."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import kill_and_wait

from events.procfs import group_members, is_running, starttime
from supervisor.links import end_leftovers

#: A task as the process runtime makes it: its own session and group, a child, then it dies
#: (SIGKILL), leaving the child; its parent (this test) does not reap it yet.
TASK = ("import os, subprocess, sys, time\nos.setsid()\n"
        "child = subprocess.Popen(['sleep', '30'])\nprint(child.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n")


def _task_left_a_child() -> tuple[subprocess.Popen[str], int, int]:
    """``(the task, its start time, the child it left)``: the task a zombie (its Popen kept:
    collected, it would reap it), the child alive."""
    proc = subprocess.Popen([sys.executable, "-c", TASK], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    started = starttime(proc.pid)
    deadline = time.monotonic() + 10
    while is_running(proc.pid):  # the task dies by its own SIGKILL
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert starttime(proc.pid) == started  # unreaped: a zombie still holding its pid
    return proc, started or 0, child


def test_a_zombie_task_proves_its_group_whenever_its_members_started() -> None:
    """The task is still there unreaped (its start time says it is the task): its group is its
    own, so its leftovers go, even with no time bound (one started within the tick of its end
    could not be proven by the bound)."""
    task, started, child = _task_left_a_child()
    pid = task.pid
    try:
        assert end_leftovers(pid, None) == []  # no bound, no proof: left alone
        assert is_running(child)
        assert end_leftovers(pid, None, started + 1) == []  # another process's start time
        assert is_running(child)
        assert end_leftovers(pid, None, started) == [child]
        deadline = time.monotonic() + 5
        while group_members(pid):
            assert time.monotonic() < deadline, "the leftover was not ended"
            time.sleep(0.005)
    finally:
        kill_and_wait([child])
        task.wait()
    assert end_leftovers(pid, time.time_ns(), started) == []  # reaped and nothing left
