"""The shim driving runc and crun (and the process runtime's limits, init and exec): create
with the shim's pipes, the reparented init, exit, OOM, exec, delete; nothing left behind.

Every shim, container, runtime state and cgroup goes in the ``shims`` fixture's teardown
(by pid; ``delete --force``; rmdir), so a failing test leaks nothing."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from oci_helpers import (
    needs_crun,
    needs_root,
    needs_runc,
    runtime_list,
    unique_id,
    wait_for_children,
)
from shim_helpers import (
    ENV,
    ShimHandle,
    Shims,
    cmdline,
    leftover_cgroups,
    no_shim_processes,
    poll,
    proc_stat,
    sig_ignored,
    tree,
)

from events import shim_api, wire
from events.rpc import BlockingConnection


@needs_runc
def test_runc_container_under_the_shim(shims: Shims, busybox_rootfs: Path) -> None:
    shim = shims.start("echo hi from runc; exit 3", cid=unique_id("shim"), runtime="runc",
                       rootfs=str(busybox_rootfs))
    with open(f"/proc/{shim.task_pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == shim.pid  # reparented to the shim
    with shim.connect() as conn:
        assert conn.call("start")["pid"] == shim.task_pid
        record = conn.call("wait")
        assert record["exit_status"] == 3
        assert conn.call("delete") == record
    shim.wait_gone()
    assert shim.log_lines()[-1].endswith("stdout F hi from runc")
    assert shim_api.read_exit_file(shim.dir) == record


def _exe_name(pid: int) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


@needs_runc
def test_runc_stop_and_force_delete(shims: Shims, busybox_rootfs: Path) -> None:
    shim = shims.start(["sleep", "30"], cid=unique_id("shim"), runtime="runc",
                       rootfs=str(busybox_rootfs))
    with shim.connect() as conn:
        pid = conn.call("start")["pid"]
        # `runc start` returns before runc's init has exec'd sleep; a SIGTERM in that window
        # ends runc init (a Go program: status 2), which is not what this test is about
        poll(lambda: _exe_name(pid) == "busybox", what="sleep exec'd in the container")
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


# -- phase 2: the whole OCI path through the shim ---------------------------------------------

RUNTIMES = [pytest.param("runc", marks=needs_runc), pytest.param("crun", marks=needs_crun)]


def oci(shims: Shims, rootfs: Path, command: list[str] | str, runtime: str = "runc",
        **spec: Any) -> ShimHandle:
    return shims.start(command, cid=unique_id("shim"), runtime=runtime, rootfs=str(rootfs),
                       **spec)


def listed(root: Path, runtime: str) -> list[str]:
    from shim.oci import resolve_runtime

    if not (root / runtime).exists():
        return []
    return runtime_list(resolve_runtime(runtime), str(root / runtime))


def events_until_exit(conn: BlockingConnection) -> list[dict[str, Any]]:
    """Every event of the shim's stream up to and including ``task.exit``."""
    seen = []
    for event in conn.stream("events"):
        seen.append(event)
        if event["type"] == "task.exit":
            return seen
    raise AssertionError(f"stream ended without task.exit: {seen}")


def cgroup_of(shim: ShimHandle) -> str:
    return f"tether/{shim.id}-{shim_api.read_spec(shim.dir)['instance']}"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_run_exit_status_times_and_delete_leave_nothing(
        shims: Shims, busybox_rootfs: Path, root: Path, runtime: str) -> None:
    shim = oci(shims, busybox_rootfs, "echo out; echo err >&2; exit 5", runtime)
    assert leftover_cgroups(cgroup_of(shim))
    with shim.connect() as conn, shim.connect() as events:
        before = time.time_ns()
        conn.call("start")
        assert conn.call("wait")["exit_status"] == 5
        seen = events_until_exit(events)
        types = [e["type"] for e in seen]
        assert types == ["task.create", "task.start", "task.exit"]
        created, started = seen[0]["data"]["created_at"], seen[1]["data"]["started_at"]
        assert created <= before <= started <= seen[2]["data"]["exited_at"]
        # runc delete ran once the init was reaped: nothing of the runtime's is left
        poll(lambda: not listed(root, runtime), what="runtime state gone after the exit")
        assert not leftover_cgroups(cgroup_of(shim))
        assert conn.call("delete")["exit_status"] == 5
    shim.wait_gone()
    lines = shim.log_lines()
    assert any(x.endswith("stdout F out") for x in lines)
    assert any(x.endswith("stderr F err") for x in lines)
    assert listed(root, runtime) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_shim_run_starts_the_container_in_one_runtime_command(
        shims: Shims, busybox_rootfs: Path, root: Path, runtime: str) -> None:
    """``shim start --run``: ``runc run --detach``, the init reparented to the shim and running when
    the ready map comes back; the events are a create's and a start's, in order."""
    shim = oci(shims, busybox_rootfs, "echo up; exec sleep 30", runtime, run=True)
    assert shim.ready["created_at"] <= shim.ready["started_at"]
    # crun's intermediate may exit a moment after `run --detach` returns (the init, even one
    # that already exited, is the shim's once it has: a zombie is reparented with its status)
    poll(lambda: int(proc_stat(shim.task_pid)[1]) == shim.pid, what="reparented to the shim")
    poll(lambda: _exe_name(shim.task_pid) == "busybox", what="the program exec'd")
    with shim.connect() as conn, shim.connect() as events:
        assert conn.call("state")["status"] == "running"
        conn.call("kill", signal=9)
        seen = events_until_exit(events)
        assert [e["type"] for e in seen] == ["task.create", "task.start", "task.exit"]
        assert seen[-1]["data"]["exit_status"] == 137
        conn.call("delete")
    shim.wait_gone()
    assert any(x.endswith("stdout F up") for x in shim.log_lines())
    assert listed(root, runtime) == []


@needs_runc
def test_sigkill_gives_137_and_a_bad_command_fails_start_word_for_word(
        shims: Shims, busybox_rootfs: Path, root: Path) -> None:
    shim = oci(shims, busybox_rootfs, ["sleep", "30"])
    with shim.connect() as conn:
        conn.call("start")
        os.kill(shim.pid, signal.SIGTERM)  # ignored by the shim; not inherited by the container
        assert sig_ignored(shim.task_pid) & 0b110 == 0
        conn.call("kill", signal=9)
        assert conn.call("wait")["exit_status"] == 137
        conn.call("delete")
    shim.wait_gone()
    cid = shims.write_spec(unique_id("shim"), command=["/no/such"], runtime="runc",
                           rootfs=str(busybox_rootfs))
    proc = shims.run_start(cid)
    if proc.returncode == 0:  # runc 1.1 reports a missing command at start, not create
        shim = shims.adopt(json.loads(proc.stdout), proc.args[-1])
        with pytest.raises(wire.RemoteError) as info:
            shim.call("start")
        assert info.value.code == "exec_failed"
        message = str(info.value)
        shim.call("delete")
        shim.wait_gone()
    else:
        message = proc.stderr
    # runc's own words: 'runc create failed: unable to start container process: exec:
    # "/no/such": stat /no/such: no such file or directory'
    assert "/no/such" in message and "no such file or directory" in message.lower()
    # the failed create left nothing: no shim, no runc state, no cgroup
    assert no_shim_processes(root)
    poll(lambda: not listed(root, "runc"), what="runc state gone")
    instance = shim_api.read_spec(root / "shims" / cid)["instance"]
    assert not leftover_cgroups(f"tether/{cid}-{instance}")


@needs_runc
def test_stop_of_an_obedient_container(shims: Shims, busybox_rootfs: Path) -> None:
    shim = oci(shims, busybox_rootfs, ["sleep", "30"], init=True)
    with shim.connect() as conn:
        conn.call("start")
        wait_for_children(shim.task_pid)  # tini has its handlers once it forked the command
        started = time.monotonic()
        record = conn.call("stop", timeout=10)
        assert record["exit_status"] == 143 and time.monotonic() - started < 5
        conn.call("delete")
    shim.wait_gone()


ZOMBIE_MAKER = "(sleep 0.05 &); exec sleep 30"  # the orphan's new parent is pid 1: sleep


def zombies(pid: int) -> int:
    count = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            count += proc_stat(p)[0] == "Z"
    return count


@pytest.mark.parametrize("kind", [*RUNTIMES, pytest.param("process", marks=needs_root)])
def test_init_reaps_orphans_inside_the_container(
        shims: Shims, busybox_rootfs: Path, kind: str) -> None:
    counts = {}
    for init in (False, True):
        if kind in ("runc", "crun"):
            shim = oci(shims, busybox_rootfs, ZOMBIE_MAKER, kind, init=init)
        else:  # a pid namespace: the command's pid 1 is sleep, or tini with init
            shim = shims.start(ZOMBIE_MAKER, cid=unique_id("shim"), namespaces=["pid"],
                               init=init)
        shim.call("start")
        # ``exec sleep 30`` ran (so the orphan was forked) and the orphan (sleep 0.05) has
        # exited: a zombie under sleep, or reaped by tini
        def orphan_done(shim: ShimHandle = shim) -> bool:
            cmds = [cmdline(p) for p in tree(shim.task_pid)]
            return b"sleep\x0030\x00" in cmds and b"sleep\x000.05\x00" not in cmds

        poll(orphan_done, what="the orphan's exit")
        if init:  # the orphan may have been forked but not yet exec'd: let it end, unreaped
            time.sleep(0.5)
        else:  # without an init nothing reaps it: its zombie appears (and stays)
            poll(lambda shim=shim: zombies(shim.task_pid) >= 1, what="the orphan's zombie")
        counts[init] = zombies(shim.task_pid)
        assert shim.call("delete", force=True)["exit_status"] == 137
        shim.wait_gone()
    assert counts[False] >= 1 and counts[True] == 0


@pytest.mark.parametrize("kind", [*RUNTIMES, pytest.param("process", marks=needs_root)])
def test_memory_hog_gives_task_oom_then_exit_137(
        shims: Shims, busybox_rootfs: Path, kind: str) -> None:
    hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    limits = {"memory": 32 << 20}
    if kind in ("runc", "crun"):
        shim = oci(shims, busybox_rootfs, hog, kind, limits=limits)
    else:
        shim = shims.start(hog, cid=unique_id("shim"), limits=limits)
    cgroup = cgroup_of(shim)
    assert leftover_cgroups(cgroup)
    with shim.connect() as conn, shim.connect() as events:
        conn.call("start")
        types = [(e["type"], e["data"]) for e in events_until_exit(events)]
        assert [t for t, _ in types] == ["task.create", "task.start", "task.oom", "task.exit"]
        assert types[2][1] == {} and types[3][1]["exit_status"] == 137
        poll(lambda: not leftover_cgroups(cgroup), what="the cgroup removed after the exit")
        conn.call("delete")
    shim.wait_gone()
    assert not leftover_cgroups(cgroup)


@pytest.mark.parametrize("kind", [*RUNTIMES, pytest.param("process", marks=needs_root),
                                  "plain"])
def test_exec_streams_output_and_status_and_publishes_events(
        shims: Shims, busybox_rootfs: Path, kind: str) -> None:
    if kind in ("runc", "crun"):
        shim = oci(shims, busybox_rootfs, ["sleep", "30"], kind, env={"WHO": "container"})
    elif kind == "process":
        shim = shims.start(["sleep", "30"], cid=unique_id("shim"),
                           namespaces=["pid", "mount", "uts", "ipc"],
                           env={**ENV, "WHO": "container"})
    else:
        shim = shims.start(["sleep", "30"], cid=unique_id("shim"),
                           env={**ENV, "WHO": "container"})
    with shim.connect() as conn, shim.connect() as events:
        with pytest.raises(wire.RemoteError) as info:  # created, not running
            conn.call("exec", exec_id="e0", command=["true"])
        assert info.value.code == "conflict"
        conn.call("start")
        items = list(conn.stream("exec", exec_id="e1", command=[
            "sh", "-c", "echo out $WHO; echo err >&2; readlink /proc/self/ns/uts; exit 7"]))
        out = b"".join(i["data"] for i in items if i.get("stream") == "stdout")
        err = b"".join(i["data"] for i in items if i.get("stream") == "stderr")
        assert out.startswith(b"out container\n") and err == b"err\n"
        assert items[-1] == {"exit_status": 7, "signal": 0}
        if kind != "plain":  # the exec'd process is in the container's uts namespace
            assert out.split(b"\n")[1].decode() == os.readlink(f"/proc/{shim.task_pid}/ns/uts")
        items = list(conn.stream("exec", exec_id="e2", command=["sh", "-c", "kill -9 $$"],
                                 env={"PATH": "/bin:/usr/bin"}, cwd="/"))
        assert items == [{"exit_status": 137, "signal": 9}]
        for bad, code in [({"exec_id": "e1", "command": ["true"]}, "conflict"),
                          ({"exec_id": "../x", "command": ["true"]}, "invalid"),
                          ({"exec_id": "e3", "command": []}, "invalid"),
                          ({"exec_id": "e4", "command": ["/no/such/cmd"]}, "exec_failed")]:
            with pytest.raises(wire.RemoteError) as info:
                list(conn.stream("exec", **bad))
            assert info.value.code == code, bad
        conn.call("kill", signal=9)
        seen = [(e["type"], e["data"]) for e in events_until_exit(events)]
    execs = [(t, d["exec_id"], d.get("exit_status")) for t, d in seen if t.startswith("task.exec")]
    assert execs == [("task.exec.start", "e1", None), ("task.exec.exit", "e1", 7),
                     ("task.exec.start", "e2", None), ("task.exec.exit", "e2", 137)]
    shim.call("delete")
    shim.wait_gone()


@needs_runc
def test_a_bad_bundle_is_a_clear_error_and_leaks_nothing(
        shims: Shims, busybox_rootfs: Path, root: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bundle"
    empty.mkdir()
    for spec, words in [({"bundle": str(empty)}, "config.json"),
                        ({"rootfs": str(tmp_path / "nope")}, "is not a directory"),
                        ({"rootfs": str(busybox_rootfs), "cwd": "relative"}, "cwd"),
                        ({"runtime": "/no/runc"}, "not found")]:
        cid = shims.write_spec(unique_id("bad"), command=["true"],
                               **{"runtime": "runc", **spec})
        proc = shims.run_start(cid)
        assert proc.returncode == 1 and words in proc.stderr, (spec, proc.stderr)
        assert no_shim_processes(root)
        assert listed(root, "runc") == []
        instance = shim_api.read_spec(shim_api.shim_dir(root, cid))["instance"]
        assert not leftover_cgroups(f"tether/{cid}-{instance}")


@needs_runc
def test_an_oom_kill_of_a_child_is_reported_while_the_container_runs_on(
        shims: Shims, busybox_rootfs: Path) -> None:
    shim = oci(shims, busybox_rootfs, "dd if=/dev/zero of=/dev/null bs=64M count=1; "
               "echo dd=$?; exit 0", limits={"memory": 32 << 20})
    with shim.connect() as conn, shim.connect() as events:
        conn.call("start")
        seen = [(e["type"], e["data"].get("exit_status")) for e in events_until_exit(events)]
        assert seen == [("task.create", None), ("task.start", None), ("task.oom", None),
                        ("task.exit", 0)]
        conn.call("delete")
    shim.wait_gone()
    assert shim.log_lines()[-1].endswith("stdout F dd=137")


def _state_pid(root: Path, runtime: str, cid: str) -> tuple[int, str]:
    import json
    import subprocess

    from shim.oci import resolve_runtime

    out = subprocess.run([resolve_runtime(runtime), "--root", str(root / runtime), "state", cid],
                         capture_output=True, check=True).stdout
    state = json.loads(out)
    return int(state["pid"]), str(state["status"])


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_restarted_oci_container_is_recreated_clean_with_its_init(
        shims: Shims, busybox_rootfs: Path, root: Path, runtime: str) -> None:
    """SIGKILL of the container's init (tini, with --init): the shim deletes the old container
    and creates + starts a new one from the same bundle: new init pid, runtime state and cgroup
    of the new one only; exec and --init work in it."""
    shim = oci(shims, busybox_rootfs, ["sleep", "30"], runtime, init=True,
               restart={"policy": "always", "delay": 0})
    shim.call("start")
    cgroup = cgroup_of(shim)
    old = shim.task_pid
    os.kill(old, signal.SIGKILL)

    def restarted() -> int:
        state = shim.call("state")
        return int(state["pid"]) if state["status"] == "running" and state["pid"] != old else 0

    new = poll(restarted, what="the container running again")
    shims._track(new)
    assert listed(root, runtime) == [shim.id]
    assert _state_pid(root, runtime, shim.id) == (new, "running")
    assert int(proc_stat(new)[1]) == shim.pid  # reparented to the shim again
    with open(f"/proc/{new}/cmdline", "rb") as f:
        assert f.read().startswith(b"/dev/tether-init\x00")  # --init (tini) still in front
    dirs = leftover_cgroups(cgroup)
    assert dirs  # the same cgroup path, made again, holding the new container only
    pids = {int(p) for d in dirs if os.path.exists(f"{d}/cgroup.procs")
            for p in open(f"{d}/cgroup.procs").read().split()}  # noqa: SIM115
    assert new in pids and old not in pids
    with shim.connect() as conn:
        items = list(conn.stream("exec", exec_id="after", command=["sh", "-c", "echo $$"]))
    assert items[-1] == {"exit_status": 0, "signal": 0}
    assert shim.call("delete", force=True)["exit_status"] == 137
    shim.wait_gone()
    assert listed(root, runtime) == []
    assert not leftover_cgroups(cgroup)


@pytest.mark.parametrize("kind", [*RUNTIMES, pytest.param("process", marks=needs_root)])
def test_the_oom_watch_is_armed_again_for_each_restarted_task(
        shims: Shims, busybox_rootfs: Path, kind: str) -> None:
    """on-failure:1: two runs, each OOM-killed: each ``task.exit`` has its ``task.oom`` first
    (the second run's cgroup is a new one, watched anew), then the policy gives up."""
    from shim_helpers import EventReader

    hog = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"]
    spec = {"limits": {"memory": 32 << 20},
            "restart": {"policy": "on-failure", "max_retries": 1, "delay": 0}}
    if kind in ("runc", "crun"):
        shim = oci(shims, busybox_rootfs, hog, kind, **spec)
    else:
        shim = shims.start(hog, cid=unique_id("shim"), **spec)
    cgroup = cgroup_of(shim)
    reader = EventReader(shim)
    shim.call("start")
    reader.until(lambda items: items and items[-1]["type"] == "container.giveup")
    assert reader.types() == ["task.create", "task.start", "task.oom", "task.exit",
                              "container.restart", "task.create", "task.start", "task.oom",
                              "task.exit", "container.giveup"]
    assert [e["exit_status"] for e in reader.of("task.exit")] == [137, 137]
    shim.wait_gone()  # given up, everything acknowledged
    assert not leftover_cgroups(cgroup)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_health_check_runs_inside_the_oci_container(
        shims: Shims, busybox_rootfs: Path, runtime: str) -> None:
    mark = f"/tmp/healthy-{runtime}-{os.getpid()}"  # the rootfs is shared by the session
    shim = oci(shims, busybox_rootfs, ["sleep", "30"], runtime, env={"WHO": "inside"},
               health={"cmd": f"echo $WHO $(hostname); test -f {mark}", "interval": 0.05,
                       "retries": 1})
    shim.call("start")
    poll(lambda: shim.call("state")["health"]["status"] == "unhealthy", what="unhealthy")
    result = shim.call("state")["health"]["log"][-1]
    assert result["exit_code"] == 1 and result["output"].startswith("inside ")
    with shim.connect() as conn:  # the check saw the container's file system, not the host's
        list(conn.stream("exec", exec_id="mark", command=["touch", mark]))
    poll(lambda: shim.call("state")["health"]["status"] == "healthy", what="healthy")
    assert shim.call("delete", force=True)["exit_status"] == 137
    shim.wait_gone()
    assert listed(shims.root, runtime) == []
    (busybox_rootfs / mark.lstrip("/")).unlink()
