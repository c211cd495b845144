"""Helpers for tests against real OCI runtimes: a busybox rootfs, skip markers, and a harness
that plays the shim's part (pipes as stdio, waitpid of the reparented init, cleanup).

The rootfs is built once per session from the static busybox (``busybox-static``; no network,
a few ms) and shared read-only: containers never write into it (the init is bind-mounted under
/dev, a tmpfs), so every test can use the same one.

pytest is a child subreaper (tests/conftest.py), so once ``runc create`` has exited the
container init is pytest's child and ``os.waitpid(pid, 0)`` gives its real exit status, as it
will for the shim.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = ("sh", "sleep", "echo", "cat", "ps", "true", "false", "kill", "ls", "id", "env",
           "pwd", "hostname", "dd", "tail", "head", "wc", "grep", "mkdir", "rm", "touch", "yes",
           "awk", "sed", "trap", "test", "seq", "usleep", "nproc")
TEST_CGROUP_PARENT = "tether-test"


def static_busybox() -> str | None:
    """A statically linked busybox (a dynamic one would need the host's libc in the rootfs)."""
    for path in BUSYBOX_CANDIDATES:
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        # A dynamic ELF names its interpreter (PT_INTERP: /lib64/ld-linux...).
        if b"ld-linux" not in head and b"ld-musl" not in head:
            return path
    return None


def build_busybox_rootfs(target: str | os.PathLike[str]) -> Path:
    """bin/ (busybox + applet symlinks), etc/passwd and group, and empty proc/ dev/ sys/ tmp/."""
    busybox = static_busybox()
    if busybox is None:
        raise RuntimeError("no static busybox: apt-get install busybox-static")
    root = Path(target)
    for d in ("bin", "etc", "proc", "dev", "sys", "tmp", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        link = root / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "nobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc" / "group").write_text("root:x:0:\nnobody:x:65534:\n")
    return root


def runtime_missing(name: str) -> str | None:
    """Why tests of runtime *name* cannot run here, or None."""
    if os.geteuid() != 0:
        return "OCI runtime tests need root"
    if shutil.which(name) is None and not any(
            os.path.exists(os.path.join(d, name)) for d in ("/usr/sbin", "/usr/bin")):
        return f"{name} not installed (bash .ci/setup installs it as root)"
    if static_busybox() is None:
        return "no static busybox (bash .ci/setup installs busybox-static as root)"
    return None


needs_runc = pytest.mark.skipif(runtime_missing("runc") is not None,
                                reason=runtime_missing("runc") or "")
needs_crun = pytest.mark.skipif(runtime_missing("crun") is not None,
                                reason=runtime_missing("crun") or "")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup tests need root")


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def cgroup_dirs(name: str) -> list[str]:
    """Existing directories of cgroup *name* in any mounted hierarchy."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/sys/fs/cgroup"):
            path = os.path.join("/sys/fs/cgroup", entry, name.strip("/"))
            if os.path.isdir(path):
                found.append(path)
    unified = os.path.join("/sys/fs/cgroup", name.strip("/"))
    if os.path.isdir(unified) and os.path.exists(os.path.join(unified, "cgroup.procs")):
        found.append(unified)
    return found


def remove_cgroup_tree(name: str) -> None:
    """rmdir *name* and its children everywhere (children first), killing what is left."""
    for top in cgroup_dirs(name):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
            procs = os.path.join(dirpath, "cgroup.procs")
            with contextlib.suppress(OSError), open(procs) as f:
                for pid in f.read().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            for _ in range(100):
                try:
                    os.rmdir(dirpath)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def reap(pid: int, timeout: float = 10.0) -> int | None:
    """waitpid *pid* (our child: the subreaper got it) with a deadline; its wait status."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} still running after {timeout} s")
        time.sleep(0.005)


def wait_for_children(pid: int, timeout: float = 5.0) -> list[int]:
    """Poll until *pid* has a child: with the tini init, that means tini is set up (it blocks
    signals before it forks the command). Before that, a SIGTERM to the container's pid 1,
    which has no handler yet, is dropped by the kernel."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(x) for x in f.read().split()]
            if children:
                return children
        if time.monotonic() > deadline:
            raise TimeoutError(f"pid {pid} has no child after {timeout} s")
        time.sleep(0.001)


def exit_status(wait_status: int) -> int:
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.WEXITSTATUS(wait_status)


def read_all(fd: int, timeout: float = 10.0) -> bytes:
    """Everything until EOF (every writer closed: the container's processes are gone)."""
    import selectors

    chunks = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no EOF on fd {fd} after {timeout} s: {b''.join(chunks)!r}")
            if not sel.select(left):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@dataclass
class Container:
    """What the harness knows of one container: its id, init pid and the read end of its output
    (stdout and stderr share one pipe, as in a log)."""

    id: str
    pid: int = 0
    output: int = -1
    bundle: str = ""
    status: int | None = None
    fds: list[int] = field(default_factory=list)

    def wait(self, timeout: float = 10.0) -> int:
        if self.status is None:
            ws = reap(self.pid, timeout)
            self.status = exit_status(ws) if ws is not None else -1
        return self.status

    def read_output(self, timeout: float = 10.0) -> bytes:
        return read_all(self.output, timeout)


class Harness:
    """Plays the shim: runs containers through :class:`shim.oci.OciCli` with pipes, reaps
    their init, and deletes everything (``delete --force``, SIGKILL by pid, rmdir cgroups) at
    the end, whatever the test did."""

    def __init__(self, runtime_name: str, base: Path, rootfs: Path) -> None:
        from shim.oci import OciCli

        self.base = base
        self.rootfs = rootfs
        self.runtime = OciCli(runtime_name, root=str(base / runtime_name),
                                  log_path=base / f"{runtime_name}.log.json")
        self.containers: list[Container] = []
        self.cgroup_parent = f"{TEST_CGROUP_PARENT}/{base.name}-{uuid.uuid4().hex[:6]}"

    def spec(self, command: list[str], **fields: object) -> dict[str, object]:
        return {"id": unique_id(), "command": command, "rootfs": str(self.rootfs),
                "runtime": self.runtime.kind, **fields}

    def bundle(self, spec: dict[str, object]) -> str:
        from shim.oci import prepare_bundle

        return prepare_bundle(spec, self.base / "bundles" / str(spec["id"]),
                              cgroups_path=f"/{self.cgroup_parent}/{spec['id']}")

    def create(self, spec: dict[str, object], bundle: str | None = None) -> Container:
        c = Container(str(spec["id"]))
        self.containers.append(c)
        c.bundle = bundle or self.bundle(spec)
        r, w = os.pipe()
        os.set_blocking(r, False)
        c.output, c.fds = r, [r]
        try:
            c.pid = self.runtime.create(c.id, c.bundle, str(self.base / f"{c.id}.pid"),
                                        stdin=None, stdout=w, stderr=w)
        finally:
            os.close(w)
        return c

    def run(self, command: list[str], **fields: object) -> Container:
        c = self.create(self.spec(command, **fields))
        self.runtime.start(c.id)
        return c

    def cleanup(self) -> None:
        for c in self.containers:
            with contextlib.suppress(Exception):
                self.runtime.delete(c.id, force=True)
            if c.pid and c.status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(c.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    reap(c.pid, 5)
            for fd in c.fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        remove_cgroup_tree(self.cgroup_parent)
        with contextlib.suppress(OSError):
            for entry in os.listdir("/sys/fs/cgroup"):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join("/sys/fs/cgroup", entry, TEST_CGROUP_PARENT))

    def listed(self) -> list[str]:
        """Ids the runtime still knows under this root (``list``)."""
        return [entry["id"] for entry in self.runtime.list()]


@contextlib.contextmanager
def harness(runtime_name: str, base: Path, rootfs: Path) -> Iterator[Harness]:
    h = Harness(runtime_name, base, rootfs)
    try:
        yield h
    finally:
        h.cleanup()


def runtime_list(binary: str, root: str) -> list[str]:
    """``BINARY --root ROOT list`` by hand (not through the driver), as an operator would."""
    out = subprocess.run([binary, "--root", root, "list", "-q"], capture_output=True,
                         check=False).stdout.decode()
    return out.split()


def json_dump(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj))
