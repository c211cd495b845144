"""runc containers through the real supervisorctl and supervisord: survive a daemon kill -9,
exec, OOM/limits, times, and ``rm`` leaves no runtime state and no cgroup.

The fixture's teardown kills the daemon and every shim and container of the root by pid, then
force-deletes what runc still knows under the root and removes the containers' cgroups, so a
failing test leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon, ctl, ok
from oci_helpers import needs_root, needs_runc, runtime_list
from shim_helpers import Shims, leftover_cgroups

from events import shim_api


def ps(d: Daemon) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in map(json.loads, ok(d, "ps", "-a", "--json").splitlines())}


def cgroup_of(d: Daemon, cid: str) -> str:
    return f"tether/{cid}-{json.loads(ok(d, 'inspect', cid))['instance']}"


@pytest.fixture
def oci_daemon(daemon_factory: Any, root: Path) -> Iterator[Daemon]:
    d = daemon_factory()
    try:
        yield d
    finally:
        d.cleanup()
        leftovers = Shims(root)
        with contextlib.suppress(OSError):
            for entry in (root / "shims").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    spec = shim_api.read_spec(entry)
                    leftovers.cgroups.append(f"tether/{spec['id']}-{spec['instance']}")
        leftovers._cleanup_runtimes()


@needs_runc
def test_runc_survives_a_daemon_kill9_exec_and_rm(oci_daemon: Daemon, busybox_rootfs: Path,
                                                   root: Path) -> None:
    d = oci_daemon
    oci = ["--runtime", "runc", "--rootfs", str(busybox_rootfs)]
    assert ok(d, "run", *oci, "--name", "quick", "--", "sh", "-c", "sleep 0.5; exit 5") \
        == "quick\n"
    ok(d, "run", *oci, "--name", "long", "--", "sleep", "60")
    proc = ctl(d, "exec", "-e", "WHO=exec", "long", "--", "sh", "-c",
               "echo out $WHO; echo err >&2; exit 3")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "out exec\n", "err\n")
    pid = ps(d)["long"]["pid"]
    d.kill9()
    os.kill(pid, signal.SIGKILL)  # the container dies while the daemon is down
    time.sleep(0.6)  # and "quick" exits 5 meanwhile
    d.start()
    rows = d.wait_for(lambda: (r := ps(d)) and all(r[c]["state"] == "stopped"
                                                   for c in ("quick", "long")) and r)
    assert (rows["quick"]["exit_status"], rows["long"]["exit_status"]) == (5, 137)
    quick = rows["quick"]
    assert quick["created"] <= quick["started"] <= quick["finished"]
    events = [json.loads(line) for line in ok(d, "events", "--json", "--id", "long",
                                              "--type", "task.exec").splitlines()]
    assert [(e["type"], e["data"].get("exit_status")) for e in events] == [
        ("task.exec.start", None), ("task.exec.exit", 3)]
    assert events[0]["data"]["exec_id"] == events[1]["data"]["exec_id"]
    cgroups = [cgroup_of(d, c) for c in ("quick", "long")]
    proc = ctl(d, "exec", "long", "--", "true")
    assert proc.returncode == 125 and "conflict" in proc.stderr  # no status to give
    ok(d, "rm", "quick")
    ok(d, "rm", "long")
    assert runtime_list("runc", str(root / "runc")) == []
    assert not any(leftover_cgroups(c) for c in cgroups)


@needs_runc
def test_limits_and_oom_through_the_daemon(oci_daemon: Daemon, busybox_rootfs: Path) -> None:
    d = oci_daemon
    ok(d, "run", "--runtime", "runc", "--rootfs", str(busybox_rootfs), "--name", "limited",
       "--cpus", "0.5", "--pids-limit", "20", "--memory", "32m", "--", "sleep", "60")
    cgroup = cgroup_of(d, "limited")
    assert Path("/sys/fs/cgroup/pids", cgroup, "pids.max").read_text().strip() == "20"
    quota = Path("/sys/fs/cgroup/cpu", cgroup, "cpu.cfs_quota_us")  # v1 (this machine's)
    if quota.exists():
        assert quota.read_text().strip() == "50000"
    ok(d, "run", "--runtime", "runc", "--rootfs", str(busybox_rootfs), "--name", "hog",
       "--memory", "32m", "--", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
    waited = ctl(d, "wait", "hog")
    assert waited.returncode == 137
    assert json.loads(ok(d, "inspect", "hog"))["oom"] == 1
    types = [json.loads(line)["type"] for line in
             ok(d, "events", "--json", "--id", "hog", "--type", "task").splitlines()]
    assert types.index("task.oom") < types.index("task.exit")
    assert ctl(d, "run", "--pids-limit", "0", "--", "true").returncode == 2  # usage error


@needs_root
def test_process_runtime_limits_and_exec_through_the_daemon(oci_daemon: Daemon) -> None:
    d = oci_daemon
    ok(d, "run", "--name", "p", "--pids-limit", "30", "--", "sleep", "60")
    assert Path("/sys/fs/cgroup/pids", cgroup_of(d, "p"), "pids.max").read_text().strip() \
        == "30"
    proc = ctl(d, "exec", "--cwd", "/tmp", "p", "--", "sh", "-c", "pwd; cat /proc/self/cgroup")
    assert proc.returncode == 0 and proc.stdout.startswith("/tmp\n")
    assert f":pids:/{cgroup_of(d, 'p')}\n" in proc.stdout  # the exec'd process is limited too
    cgroup = cgroup_of(d, "p")
    ok(d, "rm", "-f", "p")
    assert not leftover_cgroups(cgroup)


@needs_runc
def test_runtime_given_as_a_path(oci_daemon: Daemon, busybox_rootfs: Path) -> None:
    """Any runc-compatible binary by its path; a path that is not there is a clear error that
    leaves nothing behind."""
    import shutil

    d = oci_daemon
    runc = shutil.which("runc") or "/usr/sbin/runc"
    ok(d, "run", "--runtime", runc, "--rootfs", str(busybox_rootfs), "--name", "bypath",
       "--", "sh", "-c", "exit 4")
    assert ctl(d, "wait", "bypath").returncode == 4
    assert ps(d)["bypath"]["runtime"] == runc
    bad = ctl(d, "run", "--runtime", "/no/such/runc", "--rootfs", str(busybox_rootfs),
              "--name", "nope", "--", "true")
    assert bad.returncode == 1 and "/no/such/runc" in bad.stderr, bad
    assert "nope" not in ps(d)


@needs_runc
def test_rm_force_of_a_running_container_leaves_no_runtime_state(
        oci_daemon: Daemon, busybox_rootfs: Path, root: Path) -> None:
    """``rm -f`` removes the shim's directory right after the shim's reply: the shim must
    have run ``runc delete`` before replying (its --log file lives in that directory)."""
    d = oci_daemon
    for init in ([], ["--init"]):
        cid = ok(d, "run", "--runtime", "runc", "--rootfs", str(busybox_rootfs), *init,
                 "--", "sleep", "100").strip()
        cgroup = cgroup_of(d, cid)
        assert leftover_cgroups(cgroup)
        ok(d, "rm", "-f", cid)
        assert runtime_list("runc", str(root / "runc")) == []
        assert not leftover_cgroups(cgroup)
