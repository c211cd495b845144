"""The shim driving runc: create with the shim's pipes, the reparented init, exit, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from oci_helpers import busybox_rootfs, needs_runc, unique_id  # noqa: F401  (fixture)
from shim_helpers import Shims

from events import shim_api


@pytest.fixture
def shims(root: Path):
    factory = Shims(root)
    try:
        yield factory
    finally:
        factory.cleanup()


@needs_runc
def test_runc_container_under_the_shim(shims: Shims, busybox_rootfs: Path) -> None:  # noqa: F811
    shim = shims.start("echo hi from runc; exit 3", cid=unique_id("shim"), runtime="runc",
                       rootfs=str(busybox_rootfs))
    with open(f"/proc/{shim.task_pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == shim.pid  # reparented to the shim
    with shim.connect() as conn:
        assert conn.call("start") == {"pid": shim.task_pid}
        record = conn.call("wait")
        assert record["exit_status"] == 3
        assert conn.call("delete") == record
    shim.wait_gone()
    assert shim.log_lines()[-1].endswith("stdout F hi from runc")
    assert shim_api.read_exit_file(shim.dir) == record


@needs_runc
def test_runc_stop_and_force_delete(shims: Shims, busybox_rootfs: Path) -> None:  # noqa: F811
    shim = shims.start(["sleep", "30"], cid=unique_id("shim"), runtime="runc",
                       rootfs=str(busybox_rootfs))
    with shim.connect() as conn:
        conn.call("start")
        # sleep is pid 1 of its namespace: it has no default action for SIGTERM, so the
        # shim's own timer escalates to SIGKILL
        assert conn.call("stop", timeout=0.3)["exit_status"] == 137
        conn.call("delete")
    shim.wait_gone()
    other = shims.start(["sleep", "30"], cid=unique_id("shim"), runtime="runc",
                        rootfs=str(busybox_rootfs))
    with other.connect() as conn:
        conn.call("start")
        assert conn.call("delete", force=True)["exit_status"] == 137
    other.wait_gone()
