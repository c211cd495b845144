"""shim/cgroups.py: layout detection (pure, from mountinfo texts) and, as root, real cgroups:
limits, joining before exec, OOM detection, removal. Every cgroup is removed at the end."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from oci_helpers import (
    TEST_CGROUP_PARENT,
    cgroup_dirs,
    exit_status,
    needs_root,
    reap,
    remove_cgroup_tree,
    static_busybox,
)

from shim.cgroups import (
    Cgroup,
    CgroupError,
    Layout,
    Mount,
    _join_mount,
    detect_layout,
    parse_mountinfo,
    prune_parents,
)

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
COMOUNTED = """\
25 22 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
26 22 0:23 /docker/abc /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
27 22 0:24 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
"""
UNIFIED = """\
22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
23 1 0:5 / /my\\040dir rw - ext4 /dev/vda rw
"""


def test_parse_hybrid() -> None:
    layout = detect_layout(HYBRID)
    assert layout.version == 1 and layout.hybrid
    assert layout.mounts["memory"].mountpoint == "/sys/fs/cgroup/memory"
    assert layout.mounts["cpu"].mountpoint == "/sys/fs/cgroup/cpu"
    assert "name=systemd" in layout.mounts
    assert layout.unified is not None and layout.unified.mountpoint == "/sys/fs/cgroup/unified"


def test_parse_comounted_and_nested_root() -> None:
    layout = detect_layout(COMOUNTED)
    assert layout.version == 1 and not layout.hybrid
    assert layout.mounts["cpu"] is layout.mounts["cpuacct"]
    memory = layout.mounts["memory"]
    assert memory.root == "/docker/abc"
    # /proc/PID/cgroup paths are relative to the hierarchy root, the mount shows a subtree.
    assert _join_mount(memory, "/docker/abc/tether/x") == "/sys/fs/cgroup/memory/tether/x"
    assert _join_mount(layout.mounts["pids"], "/tether/x") == "/sys/fs/cgroup/pids/tether/x"


def test_parse_unified_and_escapes() -> None:
    mounts = parse_mountinfo(UNIFIED)
    assert [m.version for m in mounts] == [2]
    layout = detect_layout(UNIFIED)
    assert layout.version == 2 and not layout.hybrid
    assert layout.mount_for("memory") == layout.unified
    assert parse_mountinfo("1 1 0:1 / /a\\040b rw - cgroup2 x rw")[0].mountpoint == "/a b"


def test_a_covered_mount_is_not_visible() -> None:
    covered = HYBRID + "50 41 0:60 / /sys/fs/cgroup/unified rw - tmpfs tmpfs rw\n"
    layout = detect_layout(covered)
    assert layout.version == 1 and not layout.hybrid and layout.unified is None


def test_v2_join_mount() -> None:
    unified = Mount("/sys/fs/cgroup", "/", 2, frozenset({"memory"}))
    assert _join_mount(unified, "/tether/x") == "/sys/fs/cgroup/tether/x"


def test_this_machine_layout_is_detected() -> None:
    layout = detect_layout()
    assert layout.version in (1, 2)
    if layout.version == 1:
        assert all(c in layout.mounts for c in ("memory", "cpu", "pids"))


# -- real cgroups (root) --------------------------------------------------------------------


@pytest.fixture
def name() -> Iterator[str]:
    n = f"{TEST_CGROUP_PARENT}/cg-{uuid.uuid4().hex[:10]}"
    yield n
    remove_cgroup_tree(n)
    prune_parents(n)


def spawn_in(cg: Cgroup, argv: list[str]) -> int:
    """fork; the child joins *cg* and execs *argv* (the process runtime's order)."""
    pid = os.fork()
    if pid == 0:
        try:
            cg.join()
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    return pid


def busybox() -> str:
    path = static_busybox()
    if path is None:
        pytest.skip("no static busybox")
    return path


@needs_root
def test_create_applies_limits_and_remove_cleans_up(name: str) -> None:
    cg = Cgroup.create(name, {"memory": 64 << 20, "cpus": 1.5, "pids": 50})
    assert cg.exists()
    if cg.layout.version == 1:
        with open(os.path.join(cg.paths["memory"], "memory.limit_in_bytes")) as f:
            assert int(f.read()) == 64 << 20
        with open(os.path.join(cg.paths["cpu"], "cpu.cfs_quota_us")) as f:
            assert int(f.read()) == 150_000
        with open(os.path.join(cg.paths["cpu"], "cpu.cfs_period_us")) as f:
            assert int(f.read()) == 100_000
    else:
        with open(os.path.join(cg.paths["cpu"], "cpu.max")) as f:
            assert f.read().split() == ["150000", "100000"]
    with open(os.path.join(cg.paths["pids"], "pids.max")) as f:
        assert f.read().strip() == "50"
    cg.remove()
    assert not cg.exists()
    assert cgroup_dirs(name) == []
    cg.remove()  # gone already: fine


@needs_root
def test_failed_create_leaves_nothing(name: str) -> None:
    with pytest.raises(CgroupError, match=r"pids\.max"):
        Cgroup.create(name, {"pids": -5})
    assert cgroup_dirs(name) == []


@needs_root
def test_existing_cgroup_is_refused(name: str) -> None:
    cg = Cgroup.create(name)
    with pytest.raises(CgroupError, match="exists"):
        Cgroup.create(name)
    cg.remove()


@needs_root
def test_join_before_exec_and_from_pid(name: str) -> None:
    cg = Cgroup.create(name)
    pid = spawn_in(cg, [busybox(), "sleep", "10"])
    try:
        deadline = time.monotonic() + 5
        wanted = {c: cg.paths[c] for c in ("memory", "cpu", "pids")}
        # join() writes one controller after the other: wait for the last one.
        while ({c: Cgroup.from_pid(pid).paths.get(c) for c in wanted} != wanted
               and time.monotonic() < deadline):
            time.sleep(0.005)
        assert {c: Cgroup.from_pid(pid).paths.get(c) for c in wanted} == wanted
        assert cg.pids() == [pid]
        with pytest.raises(CgroupError, match=r"processes left: \[\d+\]"):
            cg.remove(timeout=0.05)
        assert cg.kill_all(signal.SIGKILL) == 1
        ws = reap(pid)
        assert ws is not None and exit_status(ws) == 137
    finally:
        reap_quietly(pid)
    cg.remove()
    assert cgroup_dirs(name) == []


def reap_quietly(pid: int) -> None:
    """Whatever the test did: the child is killed and reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    reap(pid)


@needs_root
def test_pids_limit_stops_forks(name: str) -> None:
    cg = Cgroup.create(name, {"pids": 3})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(w, 2)
            cg.join()
            os.execv(busybox(), ["sh", "-c",
                                 "for i in 1 2 3 4 5 6; do sleep 0.2 & done; wait"])
        finally:
            os._exit(127)
    os.close(w)
    reap(pid)
    with os.fdopen(r, "rb") as f:
        assert b"can't fork" in f.read()
    cg.remove()


@needs_root
def test_oom_kill_is_detected_once(name: str) -> None:
    cg = Cgroup.create(name, {"memory": 32 << 20})
    with cg.oom_watch() as watch, selectors.DefaultSelector() as sel:
        sel.register(watch, selectors.EVENT_READ)
        pid = spawn_in(cg, [busybox(), "sh", "-c", "x=a; while true; do x=$x$x; done"])
        ws = reap(pid, timeout=20)
        assert ws is not None and exit_status(ws) == 137
        assert sel.select(timeout=5), "OOM fd not readable"
        assert watch.read() == 1
        assert cg.oom_kills() == 1
        assert watch.read() == 0
    cg.remove()


@needs_root
def test_a_fresh_watch_reports_a_kill_from_before_it_existed(name: str) -> None:
    """A program started at once (``runc run``) may be OOM-killed before the shim watches:
    a watch on the task's own new cgroup counts from zero, an ordinary one from now."""
    cg = Cgroup.create(name, {"memory": 32 << 20})
    pid = spawn_in(cg, [busybox(), "sh", "-c", "x=a; while true; do x=$x$x; done"])
    ws = reap(pid, timeout=20)
    assert ws is not None and exit_status(ws) == 137
    with cg.oom_watch(fresh=True) as fresh, cg.oom_watch() as ordinary:
        assert fresh.read() == 1 and fresh.read() == 0
        assert ordinary.read() == 0
    cg.remove()


@needs_root
def test_no_false_oom(name: str) -> None:
    cg = Cgroup.create(name, {"memory": 32 << 20})
    watch = cg.oom_watch()
    with selectors.DefaultSelector() as sel:
        sel.register(watch, selectors.EVENT_READ)
        pid = spawn_in(cg, [busybox(), "true"])
        ws = reap(pid)
        assert ws is not None and exit_status(ws) == 0
        assert sel.select(timeout=0.05) == []
        assert watch.read() == 0
        cg.remove()
        # v1 signals the eventfd when the cgroup goes: still not an OOM.
        sel.select(timeout=0.2)
        assert watch.read() == 0
    watch.close()


@needs_root
def test_create_needs_a_sane_name() -> None:
    for bad in ("", "/", "a/../b"):
        with pytest.raises(CgroupError, match="bad cgroup name"):
            Cgroup.create(bad)


@needs_root
def test_v2_mechanics_on_the_unified_mount(name: str) -> None:
    """On a hybrid machine the cgroup2 tree has (almost) no controllers, but making a cgroup,
    joining it, finding it from a pid and removing it work as on a v2-only machine."""
    real = detect_layout()
    if real.unified is None:
        pytest.skip("no cgroup2 mount")
    layout = Layout(2, {}, real.unified, hybrid=False)
    cg = Cgroup.create(name, {}, layout=layout)
    assert set(cg.paths.values()) == {os.path.join(real.unified.mountpoint, name)}
    pid = spawn_in(cg, [busybox(), "sleep", "10"])
    try:
        deadline = time.monotonic() + 5
        while pid not in cg.pids() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cg.pids() == [pid]
        assert Cgroup.from_pid(pid, layout=layout).paths == cg.paths
    finally:
        reap_quietly(pid)
    cg.remove()
    assert not cg.exists()
