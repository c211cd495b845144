"""Shared fixtures: a root per test, and a guard that no test leaks a process.

Shims are detached (double fork, setsid), so a test that fails half-way would leave them and
their containers running. The pytest process makes itself a child subreaper: every detached
process a test starts is reparented to pytest rather than to pid 1 (which reaps orphans only
every couple of seconds on this machine), and the ``no_leaks`` guard below finds every process
whose command line names the test's ``tmp_path``, kills it and its descendants by pid, and waits
for them to be gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from events.procfs import process_table as _proc_table
from events.procfs import processes_naming

PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


_become_subreaper()


def is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2 :].split()[0] in (b"Z", b"X")


def kill_and_wait(pids: list[int], timeout: float = 10.0) -> None:
    """SIGKILL each pid, reap the ones that are our children, wait until all are gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if is_zombie_or_gone(pid):
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                pending.discard(pid)
        if pending:
            time.sleep(0.01)


def reap_adopted_orphans() -> None:
    """Reap zombies that were reparented to pytest (the subreaper) and are not Popen children."""
    for pid, (ppid, _) in _proc_table().items():
        if ppid == os.getpid() and is_zombie_or_gone(pid):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh Tether root for this test (its own events/, shims/, sockets)."""
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def shims(root: Path):
    """A ``shim_helpers.Shims`` factory: every shim and container it started is ended after the
    test, by pid, even when the test fails."""
    from shim_helpers import Shims

    factory = Shims(root)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def daemon_factory(root: Path, request: pytest.FixtureRequest
                   ) -> Iterator[Callable[..., Any]]:
    """``make(*args, root_dir=None, start=True, **kwargs)`` -> a ``daemon_helpers.Daemon``
    (started unless ``start=False``); every one made is cleaned up after the test, with all
    its shims and containers (lost tasks included), by pid. A lost task the log says ended or
    removed fails the test (unless marked ``allow_leaks``): the product should have ended it."""
    from daemon_helpers import Daemon

    made: list[Daemon] = []

    def make(*args: str, root_dir: str | os.PathLike[str] | None = None,
             start: bool = True, **kwargs: Any) -> Daemon:
        d = Daemon(root_dir or root, *args, **kwargs)
        made.append(d)
        if start:
            d.start()
        return d

    leaks: list[str] = []
    try:
        yield make
    finally:
        for d in made:
            leaks += d.cleanup()
    if leaks and not request.node.get_closest_marker("allow_leaks"):
        pytest.fail(f"processes of tasks the log says ended or removed, still running "
                    f"(killed now): {leaks}", pytrace=False)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Any]) -> Any:
    """A started supervisord on the test's root, cleaned up (with all its shims) afterwards."""
    return daemon_factory()


@pytest.fixture(autouse=True)
def no_leaks(tmp_path: Path, request: pytest.FixtureRequest):
    """Fail a test that leaves processes behind, after killing them so the next test is clean."""
    yield
    marker = str(tmp_path)
    leaked = processes_naming(marker)
    if leaked:
        described = {pid: _proc_table().get(pid, (0, "?"))[1] for pid in leaked}
        kill_and_wait(leaked)
        reap_adopted_orphans()
        if not request.node.get_closest_marker("allow_leaks"):
            pytest.fail(f"test leaked processes (killed now): {described}", pytrace=False)
    reap_adopted_orphans()


def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``tmp_path/mnt`` for the test (a disk a test can fill),
    unmounted after it; skips without root or where mounting is refused."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip(f"mounting a {size} tmpfs (a disk to fill) needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- fixtures of the helper modules (defined here so no test imports a fixture) ---------------


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One busybox rootfs per session, shared read-only by every container."""
    from oci_helpers import build_busybox_rootfs, static_busybox

    if static_busybox() is None:
        pytest.skip("no static busybox (apt-get install busybox-static)")
    return build_busybox_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[Any]:
    """One JetStream server (no cluster), killed by pid after the test."""
    from nats_helpers import NATS_SERVER, NatsServer, ensure_gone

    if not NATS_SERVER:
        pytest.skip("needs Debian's nats-server (bash .ci/setup installs it as root)")
    server = NatsServer("solo", tmp_path / "nats")
    try:
        server.start()
        yield server
    finally:
        ensure_gone([server])


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Any]:
    """Three routed JetStream servers, the meta leader elected; all killed after the test."""
    from nats_helpers import NATS_SERVER, NatsCluster, ensure_gone

    if not NATS_SERVER:
        pytest.skip("needs Debian's nats-server (bash .ci/setup installs it as root)")
    cluster = NatsCluster(tmp_path / "nats")
    try:
        cluster.start_all()
        yield cluster
    finally:
        ensure_gone(list(cluster.servers.values()))
