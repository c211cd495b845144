"""shim/oci.py: config generation and bundles (pure), and the driver against real runc and crun.

The runtime tests play the shim (tests/oci_helpers.Harness): pipes as the container's stdio,
``waitpid`` of the init (pytest is a subreaper), ``delete``; every container and cgroup is
removed at the end of each test, pass or fail.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import time
from pathlib import Path

import pytest
from oci_helpers import (
    Container,
    Harness,
    cgroup_dirs,
    exit_status,
    harness,
    needs_crun,
    needs_runc,
    read_all,
    reap,
    runtime_list,
    wait_for_children,
)

from events.procfs import read_stat
from shim import oci
from shim.cgroups import Cgroup, Layout, Mount
from shim.oci import (
    INIT_PATH,
    BundleError,
    RuntimeFailed,
    RuntimeNotFound,
    generate_config,
    make_process,
    prepare_bundle,
    resolve_runtime,
    write_json,
)

# -- config.json (no root needed) -----------------------------------------------------------


def spec(**fields: object) -> dict[str, object]:
    return {"id": "c1", "command": ["sh", "-c", "exit 5"], **fields}


def test_config_defaults_match_runc_spec(tmp_path: Path) -> None:
    config = generate_config(spec(), "rel/rootfs")
    assert config["ociVersion"] == "1.0.2"
    process = config["process"]
    assert process["terminal"] is False
    assert process["args"] == ["sh", "-c", "exit 5"]
    assert process["cwd"] == "/"
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}]
    assert process["capabilities"]["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL",
                                                   "CAP_NET_BIND_SERVICE"]
    assert any(e.startswith("PATH=") for e in process["env"])
    assert config["root"] == {"path": os.path.abspath("rel/rootfs"), "readonly": False}
    destinations = [m["destination"] for m in config["mounts"]]
    assert destinations == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                            "/sys/fs/cgroup"]
    linux = config["linux"]
    assert sorted(n["type"] for n in linux["namespaces"]) == ["ipc", "mount", "pid", "uts"]
    assert linux["cgroupsPath"] == "/tether/c1"
    with_instance = generate_config(spec(instance="0123abcd"), "/r")
    assert with_instance["linux"]["cgroupsPath"] == "/tether/c1-0123abcd"
    assert "/proc/kcore" in linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    json.dumps(config)  # serialisable as is


def test_config_from_spec_fields() -> None:
    config = generate_config(spec(env={"A": "1", "PATH": "/bin"}, cwd="/tmp",
                                  user={"uid": 65534, "gid": 65534},
                                  rlimits={"nofile": [64, 128]}, namespaces=["net"],
                                  limits={"memory": 64 << 20, "cpus": 0.5, "pids": 20}),
                             "/r", cgroups_path="/x/y")
    process = config["process"]
    assert process["env"] == ["A=1", "PATH=/bin"]
    assert process["cwd"] == "/tmp"
    assert process["user"] == {"uid": 65534, "gid": 65534}
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "soft": 64, "hard": 128}]
    assert {"type": "network"} in config["linux"]["namespaces"]
    resources = config["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 << 20}
    assert resources["cpu"] == {"quota": 50_000, "period": 100_000}
    assert resources["pids"] == {"limit": 20}
    assert config["linux"]["cgroupsPath"] == "/x/y"


def test_config_init_binds_a_static_tini(tmp_path: Path) -> None:
    tini = tmp_path / "tini-static"
    tini.write_bytes(b"")
    config = generate_config(spec(init=True), "/r", init_path=str(tini))
    assert config["process"]["args"] == [INIT_PATH, "--", "sh", "-c", "exit 5"]
    mount = config["mounts"][-1]
    assert mount == {"destination": INIT_PATH, "type": "bind", "source": str(tini),
                     "options": ["bind", "ro", "nosuid", "nodev"]}


def test_config_init_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oci, "INIT_CANDIDATES", ("/nonexistent/tini-static",))
    with pytest.raises(BundleError, match=r"no static tini found .*install tini"):
        generate_config(spec(init=True), "/r")


@pytest.mark.parametrize(("fields", "match"), [
    ({"command": []}, "non-empty list"),
    ({"command": "sh"}, "non-empty list"),
    ({"namespaces": ["time"]}, "unknown namespaces"),
    ({"cwd": "tmp"}, "absolute"),
    ({"rlimits": {"bogus": [1, 1]}}, "unknown rlimit"),
])
def test_config_rejects_bad_specs(fields: dict[str, object], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        generate_config(spec(**fields), "/r")


def test_make_process_for_exec() -> None:
    process = make_process(["ps"], {"A": "b"}, "/tmp")
    assert process["args"] == ["ps"]
    assert process["terminal"] is False
    assert "A=b" in process["env"]


def test_prepare_bundle_from_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    bundle = prepare_bundle(spec(rootfs=str(rootfs)), tmp_path / "shim" / "bundle")
    assert bundle == str(tmp_path / "shim" / "bundle")
    config = json.loads((Path(bundle) / "config.json").read_text())
    assert config["root"]["path"] == str(rootfs)
    assert not [p for p in Path(bundle).iterdir() if p.name != "config.json"]  # no temp left


def test_prepare_bundle_uses_a_given_bundle(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    write_json(tmp_path / "b" / "config.json", generate_config(spec(), "/r"))
    assert prepare_bundle(spec(bundle=str(tmp_path / "b")), tmp_path / "x") == str(tmp_path / "b")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("content", "match"), [
    (None, r"no config.json \(.*/b/config.json does not exist\)"),
    (b"{not json", r"cannot read .*/b/config.json"),
    (b"[1]", r"not an OCI config"),
])
def test_prepare_bundle_rejects_bad_bundles(tmp_path: Path, content: bytes | None,
                                            match: str) -> None:
    (tmp_path / "b").mkdir()
    if content is not None:
        (tmp_path / "b" / "config.json").write_bytes(content)
    with pytest.raises(BundleError, match=match):
        prepare_bundle(spec(bundle=str(tmp_path / "b")), tmp_path / "x")


def test_prepare_bundle_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="needs a rootfs or a bundle"):
        prepare_bundle(spec(runtime="runc"), tmp_path / "x")
    with pytest.raises(BundleError, match="both"):
        prepare_bundle(spec(rootfs="/", bundle="/"), tmp_path / "x")
    with pytest.raises(BundleError, match="is not a directory"):
        prepare_bundle(spec(rootfs=str(tmp_path / "none")), tmp_path / "x")


def test_resolve_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "my-runc"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert resolve_runtime(str(fake)) == str(fake)
    with pytest.raises(RuntimeNotFound, match="not found or not executable"):
        resolve_runtime(str(tmp_path / "nothing"))
    with pytest.raises(RuntimeNotFound, match="unknown runtime 'kata'"):
        resolve_runtime("kata")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(oci, "RUNTIME_DIRS", (str(tmp_path),))
    with pytest.raises(RuntimeNotFound,
                       match="runtime 'crun' not found: install crun or pass a path"):
        resolve_runtime("crun")


def test_crun_needs_the_private_view_only_on_hybrid() -> None:
    v1 = Mount("/sys/fs/cgroup/memory", "/", 1, frozenset({"memory"}))
    v2 = Mount("/sys/fs/cgroup/unified", "/", 2, frozenset({"hugetlb"}))
    hybrid = Layout(1, {"memory": v1}, v2, hybrid=True)
    assert oci.needs_private_cgroup_view("/usr/bin/crun", hybrid)
    assert not oci.needs_private_cgroup_view("/usr/sbin/runc", hybrid)
    assert not oci.needs_private_cgroup_view("/usr/bin/crun", Layout(1, {"memory": v1}))
    assert not oci.needs_private_cgroup_view("/usr/bin/crun", Layout(2, {}, v2))


def test_last_error_takes_the_last_error_after_the_offset(tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    old = json.dumps({"level": "error", "msg": "old"}) + "\n"
    log.write_text(old + json.dumps({"level": "warning", "msg": "w"}) + "\n"
                   + json.dumps({"level": "error", "msg": "new \"quoted\""}) + "\nnot json\n")
    assert oci._last_error(str(log), len(old)) == 'new "quoted"'
    assert oci._last_error(str(log), log.stat().st_size) == ""


# -- against the real runtimes --------------------------------------------------------------

RUNTIMES = [pytest.param("runc", marks=needs_runc), pytest.param("crun", marks=needs_crun)]


@pytest.fixture(params=RUNTIMES)
def h(request: pytest.FixtureRequest, tmp_path: Path, busybox_rootfs: Path):
    with harness(request.param, tmp_path, busybox_rootfs) as hh:
        yield hh
        assert hh.listed() == [], "a container was left in the runtime's state"


@pytest.fixture
def runc(tmp_path: Path, busybox_rootfs: Path):
    if reason := __import__("oci_helpers").runtime_missing("runc"):
        pytest.skip(reason)
    with harness("runc", tmp_path, busybox_rootfs) as hh:
        yield hh
        assert hh.listed() == []


def test_exit_status_output_and_delete(h: Harness) -> None:
    c = h.run(["sh", "-c", "echo out; echo err >&2; exit 5"], env={"A": "b"})
    assert c.wait() == 5
    assert c.read_output() == b"out\nerr\n"
    state = h.runtime.state(c.id)
    assert state["status"] == "stopped"
    h.runtime.delete(c.id)
    assert h.listed() == []
    assert runtime_list(h.runtime.binary, str(h.runtime.root)) == []
    assert cgroup_dirs(f"{h.cgroup_parent}/{c.id}") == []


def test_created_then_started(h: Harness) -> None:
    c = h.create(h.spec(["echo", "ran"]))
    assert h.runtime.state(c.id)["status"] == "created"
    assert h.runtime.state(c.id)["pid"] == c.pid
    assert os.waitpid(c.pid, os.WNOHANG) == (0, 0)  # alive, waiting for start
    h.runtime.start(c.id)
    assert c.wait() == 0
    assert c.read_output() == b"ran\n"
    h.runtime.delete(c.id)


def test_run_detached_creates_and_starts_in_one_command(h: Harness) -> None:
    """``run --detach``: the init runs the program when it returns, reparented to us (the
    harness is the subreaper); a bad command fails it as it fails create, leaving nothing."""
    spec = h.spec(["sh", "-c", "echo ran; exit 4"])
    c = Container(str(spec["id"]))
    h.containers.append(c)
    c.bundle = h.bundle(spec)
    r, w = os.pipe()
    c.output, c.fds = r, [r]
    try:
        c.pid = h.runtime.run(c.id, c.bundle, str(h.base / f"{c.id}.pid"), stdout=w, stderr=w)
    finally:
        os.close(w)
    # crun's intermediate may exit a moment after `run` returns: only then is the init ours
    deadline = time.monotonic() + 5
    while (st := read_stat(c.pid)) is not None and st.ppid != os.getpid() and \
            time.monotonic() < deadline:
        time.sleep(0.001)
    assert c.wait() == 4
    assert c.read_output() == b"ran\n"
    h.runtime.delete(c.id)
    bad = h.spec(["no-such-command"])
    with pytest.raises(RuntimeFailed) as info:
        h.runtime.run(str(bad["id"]), h.bundle(bad), str(h.base / "bad.pid"))
    assert "no-such-command" in info.value.words
    assert h.listed() == [] and not (h.base / "bad.pid").exists()


def test_sigkill_gives_137_and_delete_needs_stopped(h: Harness) -> None:
    c = h.run(["sleep", "100"])
    with pytest.raises(RuntimeFailed) as info:
        h.runtime.delete(c.id)
    assert info.value.words in str(info.value)
    assert "stopped" in info.value.words
    h.runtime.kill(c.id, signal.SIGKILL)
    assert c.wait() == 137
    h.runtime.delete(c.id)
    assert h.listed() == []


def test_init_forwards_sigterm(h: Harness) -> None:
    """`sleep` as pid 1 ignores SIGTERM (no handler); with the init it gets it: 143."""
    c = h.run(["sleep", "100"], init=True)
    wait_for_children(c.pid)  # tini is ready: before that the kernel drops the SIGTERM
    h.runtime.kill(c.id, signal.SIGTERM)
    assert c.wait(timeout=5) == 143
    h.runtime.delete(c.id)


def test_kill_all(h: Harness) -> None:
    """pid 1 (sh, no handler) ignores SIGTERM; with --all its children get it too and die."""
    c = h.run(["sh", "-c", "sleep 100 & sleep 100 & wait; echo children gone"])
    deadline = time.monotonic() + 5
    while len(wait_for_children(c.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    h.runtime.kill(c.id, signal.SIGTERM, all=True)
    assert c.wait() == 0
    assert c.read_output(timeout=5) == b"children gone\n"
    h.runtime.delete(c.id)


def test_bad_command_fails_at_create_and_leaves_nothing(h: Harness) -> None:
    s = h.spec(["no-such-command"])
    with pytest.raises(RuntimeFailed) as info:
        h.create(s)
    words = info.value.words
    entries = [json.loads(line) for line in Path(h.runtime.log_path).read_text().splitlines()
               if line.startswith("{")]
    logged = [e["msg"] for e in entries if e.get("level") == "error"]
    assert words == logged[-1]  # word for word from the runtime's log
    assert "no-such-command" in words
    assert words in str(info.value)
    assert h.listed() == []
    assert not (h.base / h.runtime.kind / str(s["id"])).exists()
    assert not (h.base / f"{s['id']}.pid").exists()
    assert cgroup_dirs(f"{h.cgroup_parent}/{s['id']}") == []


def test_bundle_without_config_fails_with_the_runtimes_words(h: Harness) -> None:
    empty = h.base / "empty-bundle"
    empty.mkdir()
    with pytest.raises(BundleError, match=r"no config\.json"):
        prepare_bundle({"bundle": str(empty)}, h.base / "x")
    with pytest.raises(RuntimeFailed, match=r"config\.json") as info:
        h.create({"id": "nobundle"}, bundle=str(empty))
    assert info.value.command[0] == h.runtime.binary
    assert h.listed() == []


def test_state_of_a_missing_container(h: Harness) -> None:
    with pytest.raises(RuntimeFailed) as info:
        h.runtime.state("nope")
    assert info.value.not_found


def test_delete_can_be_retried(h: Harness) -> None:
    c = h.run(["true"])
    assert c.wait() == 0
    h.runtime.delete(c.id)
    with pytest.raises(RuntimeFailed) as info:
        h.runtime.delete(c.id)
    assert info.value.not_found
    h.runtime.delete(c.id, missing_ok=True)


def test_exec_detached(h: Harness) -> None:
    c = h.run(["sleep", "100"])
    process = h.base / "process.json"
    write_json(process, make_process(["sh", "-c", "echo from exec; exit 3"]))
    r, w = os.pipe()
    try:
        pid = h.runtime.exec(c.id, str(process), str(h.base / "exec.pid"), stdout=w, stderr=w)
        os.close(w)
        ws = reap(pid)
        assert ws is not None and exit_status(ws) == 3
        assert read_all(r) == b"from exec\n"
    finally:
        os.close(r)
    h.runtime.kill(c.id, signal.SIGKILL)
    assert c.wait() == 137
    h.runtime.delete(c.id)


def _zombies_inside(h: Harness, container_id: str) -> list[str]:
    process = h.base / "ps.json"
    write_json(process, make_process(["ps", "-o", "stat,pid,ppid,comm"]))
    r, w = os.pipe()
    try:
        pid = h.runtime.exec(container_id, str(process), str(h.base / "ps.pid"),
                             stdout=w, stderr=w)
        os.close(w)
        reap(pid)
        lines = read_all(r).decode().splitlines()[1:]
    finally:
        os.close(r)
    return [line for line in lines if line.split()[0].startswith("Z")]


@pytest.mark.parametrize("init", [False, True])
def test_init_reaps_orphans(h: Harness, init: bool) -> None:
    c = h.run(["sh", "-c", "(sleep 0.05 &); (sleep 0.05 &); exec sleep 100"], init=init)
    deadline = time.monotonic() + 3
    zombies = _zombies_inside(h, c.id)
    while not init and len(zombies) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        zombies = _zombies_inside(h, c.id)
    if init:
        time.sleep(0.3)
        zombies = _zombies_inside(h, c.id)
        assert zombies == []
    else:
        assert len(zombies) == 2, zombies
    h.runtime.kill(c.id, signal.SIGKILL, all=True)
    assert c.wait() == 137
    h.runtime.delete(c.id)


def test_memory_limit_oom_is_detected(h: Harness) -> None:
    s = h.spec(["sh", "-c", "x=a; while true; do x=$x$x; done"], limits={"memory": 32 << 20})
    c = h.create(s)
    cg = Cgroup.from_pid(c.pid)
    assert cg.paths["memory"].endswith(f"/{h.cgroup_parent}/{c.id}")
    with open(os.path.join(cg.paths["memory"], "memory.limit_in_bytes")) as f:
        assert int(f.read()) == 32 << 20
    with cg.oom_watch() as watch, selectors.DefaultSelector() as sel:
        sel.register(watch, selectors.EVENT_READ)
        h.runtime.start(c.id)
        assert c.wait(timeout=20) == 137
        assert sel.select(timeout=5), "the OOM fd never became readable"
        assert watch.read() == 1
        assert watch.read() == 0  # drained; the count is not reported twice
    h.runtime.delete(c.id)
    assert not cg.exists()


def test_cpu_and_pids_limits_reach_the_cgroup(runc: Harness) -> None:
    c = runc.create(runc.spec(["true"], limits={"cpus": 0.5, "pids": 20}))
    cg = Cgroup.from_pid(c.pid)
    with open(os.path.join(cg.paths["cpu"], "cpu.cfs_quota_us")) as f:
        assert int(f.read()) == 50_000
    with open(os.path.join(cg.paths["pids"], "pids.max")) as f:
        assert f.read().strip() == "20"
    runc.runtime.delete(c.id, force=True)
    assert cgroup_dirs(f"{runc.cgroup_parent}/{c.id}") == []


def test_network_namespace_only_when_asked(runc: Harness) -> None:
    mine = os.readlink("/proc/self/ns/net")
    shared = runc.create(runc.spec(["true"]))
    private = runc.create(runc.spec(["true"], namespaces=["net"]))
    assert os.readlink(f"/proc/{shared.pid}/ns/net") == mine
    assert os.readlink(f"/proc/{private.pid}/ns/net") != mine
    assert os.readlink(f"/proc/{shared.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    for c in (shared, private):
        runc.runtime.delete(c.id, force=True)


def test_user_cwd_env_hostname(runc: Harness) -> None:
    c = runc.run(["sh", "-c", "id -u; pwd; echo $GREETING; hostname"],
                 user={"uid": 65534, "gid": 65534}, cwd="/tmp", env={"GREETING": "hi"})
    assert c.wait() == 0
    assert c.read_output().decode().split() == ["65534", "/tmp", "hi", c.id]
    runc.runtime.delete(c.id)


def _under_hidden_unified() -> list[str]:
    """What lies in the host's /sys/fs/cgroup tmpfs *beneath* the cgroup2 mount (seen from a
    throw-away namespace where that mount is detached)."""
    import subprocess

    out = subprocess.run(["unshare", "-m", "--propagation", "slave", "sh", "-c",
                          "umount -l /sys/fs/cgroup/unified && ls -A /sys/fs/cgroup/unified"],
                         capture_output=True, check=True)
    return out.stdout.decode().split()


@needs_crun
def test_crun_leaves_nothing_beneath_the_hidden_cgroup2(tmp_path: Path,
                                                        busybox_rootfs: Path) -> None:
    from shim.cgroups import detect_layout

    if not detect_layout().hybrid or shutil.which("unshare") is None:
        pytest.skip("only on a hybrid cgroup layout (crun's private mount namespace)")
    with harness("crun", tmp_path, busybox_rootfs) as hh:
        assert hh.runtime.hides_unified
        c = hh.run(["true"])
        assert c.wait() == 0
        hh.runtime.delete(c.id)
        assert hh.cgroup_parent.split("/")[0] not in _under_hidden_unified()
