"""The probe's rule (supervisor/probe.py): when a recovered container may be shown ``running``
before reconciliation. The record's part is a pure function (a table); the kernel's part is
checked on real processes and a real lock (the daemon's own case is in test_early.py)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from events.domain import ContainerState
from supervisor.probe import SHIM_LOCK, provable, proven_running, task_runs
from supervisor.projection import Container

BOOT = "boot-now"

RECORD = Container(id="web", state=ContainerState.RUNNING, spec={}, runtime="process",
                   created=1, create_seq=1, pid=100, shim_pid=99, instance="i1",
                   seen={"i1": 4}, boot_id=BOOT)


@pytest.mark.parametrize(("change", "expected"), [
    ({}, True),
    ({"state": ContainerState.CREATED}, False),         # reconciliation may start it
    ({"state": ContainerState.RESTARTING}, False),      # its back-off: the daemon may decide
    ({"state": ContainerState.STOPPED}, False),
    ({"stopped_by_user": True}, False),                  # the stop is sent again
    ({"gave_up": True}, False),
    ({"boot_id": "boot-before"}, False),                 # the reboot ended it
    ({"boot_id": None}, True),                           # unknown, and no daemon before
    ({"instance": None}, False),
    ({"pid": None}, False),
    ({"shim_pid": None}, False),
])
def test_what_the_record_must_say(change: dict[str, Any], expected: bool) -> None:
    assert provable(dataclasses.replace(RECORD, **change), BOOT, None) is expected


def test_a_record_without_its_boot_takes_the_previous_daemons() -> None:
    record = dataclasses.replace(RECORD, boot_id=None)
    assert provable(record, BOOT, BOOT) is True
    assert provable(record, BOOT, "boot-before") is False


def test_the_task_must_run_as_a_child_of_the_shim_that_holds_the_lock(tmp_path: Path) -> None:
    """This test plays the shim: it holds the directory's lock and is the task's parent."""
    directory = tmp_path / "shims" / "web"
    directory.mkdir(parents=True)
    task = subprocess.Popen(["sleep", "100"])
    record = dataclasses.replace(RECORD, pid=task.pid, shim_pid=os.getpid())
    try:
        assert not task_runs(tmp_path, record)  # no lock file: no shim
        fd = os.open(directory / SHIM_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert not task_runs(tmp_path, record)  # nobody holds it
            fcntl.flock(fd, fcntl.LOCK_EX)
            assert task_runs(tmp_path, record)
            assert proven_running(tmp_path, [record], BOOT, None) == {"web"}
            # the pid is not a child of the recorded shim: another process
            assert not task_runs(tmp_path, dataclasses.replace(record, shim_pid=1))
            task.kill()
            os.waitid(os.P_PID, task.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not reaped
            assert not task_runs(tmp_path, record)
        finally:
            os.close(fd)
    finally:
        task.kill()
        task.wait()
    assert not task_runs(tmp_path, record)  # gone


def test_a_symlinked_shim_directory_is_never_followed(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.mkdir()
    (tmp_path / "shims").mkdir()
    (tmp_path / "shims" / "web").symlink_to(real)
    fd = os.open(real / SHIM_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    task = subprocess.Popen(["sleep", "100"])
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        record = dataclasses.replace(RECORD, pid=task.pid, shim_pid=os.getpid())
        assert not task_runs(tmp_path, record)
    finally:
        os.close(fd)
        task.kill()
        task.wait()
