"""The three systems of ``bench/compare.py``, each on private paths under one temp directory.

* :class:`Tether`: our ``.venv/bin/supervisord`` on a private root, driven by our
  ``.venv/bin/supervisorctl`` (whole processes) or the blocking client (in-process);
* :class:`Containerd`: Debian's ``/usr/bin/containerd`` from a generated config (its own
  socket, root, state and runc root; the CRI plugin off, as a plain ``ctr`` user has it),
  driven by ``/usr/bin/ctr`` in a namespace of its own;
* :class:`DebianSupervisor`: Debian's ``/usr/bin/supervisord`` from a generated config (its own
  unix socket, pid file and logs), driven by ``/usr/bin/supervisorctl`` or, in-process, by an
  XML-RPC call over its socket (Debian's ``supervisor`` package cannot be imported here: our
  package has the same name).

Every process any of them starts names the temp directory in its command line (or descends
from one that does), so :func:`kill_everything_under` (bench/cleanup.py) ends them all by pid
at the end, also after a Ctrl-C, whatever state the run was in. Nothing here ever looks at a
process that is not ours, and Debian's system services are never used (see
:func:`ensure_debian_packages`).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cleanup import kill_everything_naming as kill_everything_under  # noqa: E402, F401 (compare.py and phases.py use it from here)

from events.procfs import process_table as proc_table  # noqa: E402
from events.rpc import BlockingConnection  # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
CTR = "/usr/bin/ctr"
CONTAINERD = "/usr/bin/containerd"
DEBIAN_SUPERVISORD = "/usr/bin/supervisord"
DEBIAN_SUPERVISORCTL = "/usr/bin/supervisorctl"
RUNC = "/usr/sbin/runc" if os.path.exists("/usr/sbin/runc") else "/usr/bin/runc"
#: Debian packages the comparison needs, and the command each must provide.
PACKAGES = {"containerd": CONTAINERD, "supervisor": DEBIAN_SUPERVISORD, "runc": RUNC,
            "busybox-static": "/bin/busybox"}
#: How long to wait for another apt/dpkg (a helper's ``.ci/setup``) to release its lock.
APT_LOCK_WAIT = 600.0


# -- processes ---------------------------------------------------------------------------------


def process_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:].split()[0].decode()
    except OSError:
        return ""


def pss_kb(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss``, ``Pss_Anon``, ``Pss_File`` of *pid* in kB (``smaps_rollup``)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


def wait_connectable(path: str, proc: subprocess.Popen[bytes], what: str,
                     timeout: float = 30.0) -> None:
    """Until a unix socket at *path* accepts a connection (the server listens)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
                return
            except OSError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {path} within {timeout:g} s")
        time.sleep(0.001)


def cgroups_under(parent: str, token: str) -> list[str]:
    """Cgroup names ``parent/X`` (in any hierarchy) whose X contains *token*."""
    found = set()
    with contextlib.suppress(OSError):
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            top = os.path.join("/sys/fs/cgroup", hierarchy, parent)
            with contextlib.suppress(OSError):
                found.update(f"{parent}/{e}" for e in os.listdir(top) if token in e)
    with contextlib.suppress(OSError):  # the unified layout
        top = os.path.join("/sys/fs/cgroup", parent)
        found.update(f"{parent}/{e}" for e in os.listdir(top) if token in e)
    return sorted(found)


def run_quiet(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def timed(argv: list[str], detaches: bool = False,
          ok: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    """Seconds one whole command took (fork to exit), and its result; fails on non-zero.

    ``detaches``: the command leaves a process behind that keeps its stdio (``runc run -d``
    hands its own to the container), so its output goes to /dev/null, not to a pipe we would
    wait on forever.
    """
    out = subprocess.DEVNULL if detaches else subprocess.PIPE
    t = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False)
    took = time.perf_counter() - t
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: "
                           f"{(proc.stderr or b'').decode(errors='replace').strip()}")
    return took, proc


# -- Debian packages ---------------------------------------------------------------------------


def _service_pids() -> set[int]:
    """Processes that look like Debian's own services of these packages: containerd without
    a config of ours, supervisord with the system's configuration."""
    found = set()
    for pid, (_, cmd) in proc_table().items():
        argv = cmd.split()
        ours = "--config" in argv or "-c" in argv
        system_containerd = argv[:1] == [CONTAINERD] and not ours
        system_supervisord = DEBIAN_SUPERVISORD in argv[:2] and "/etc/supervisor/" in cmd
        if system_containerd or system_supervisord:
            found.add(pid)
    return found


def ensure_debian_packages(log: Any = print) -> None:
    """``apt-get install`` what is missing (as root; never in CI: the benchmark only).

    Another apt may hold the lock for minutes (a helper's ``.ci/setup``): wait and retry. Debian's
    packages may start their services: whatever service process appears during the install is
    stopped by its pid, and the comparison always starts its own instances on private paths.
    """
    missing = [name for name, path in PACKAGES.items() if not os.path.exists(path)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise SystemExit(f"missing {', '.join(missing)}: run as root to install them with "
                         "apt-get, or install them yourself")
    if os.environ.get("CI"):
        raise SystemExit(f"missing {', '.join(missing)}: the comparison never installs in CI")
    before = _service_pids()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + APT_LOCK_WAIT
    updated = False
    while True:
        log(f"compare: apt-get install {' '.join(missing)}")
        if not updated:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False,
                           stdin=subprocess.DEVNULL)
            updated = True
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if proc.returncode == 0:
            break
        err = proc.stderr.decode(errors="replace")
        if "lock" in err.lower() and time.monotonic() < deadline:
            log("compare: apt is busy (another install holds its lock); retrying in 10 s")
            time.sleep(10)
            continue
        raise SystemExit(f"apt-get install {' '.join(missing)} failed:\n{err}")
    for pid in _service_pids() - before:
        log(f"compare: stopping a service the install started (pid {pid})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


# -- Tether ------------------------------------------------------------------------------------


class Tether:
    """Our supervisord on a private root; its CLI by its venv path (never PATH)."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "t"
        self.root = self.dir / "r"
        self.root.mkdir(parents=True)
        self.sock = str(self.root / "supervisord.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.ctl_path = str(VENV_BIN / "supervisorctl")
        self.log_from = 0

    def start(self) -> None:
        """Exec the daemon (default log format, as users run it), until its socket listens."""
        with open(self.dir / "daemon.log", "ab") as err:
            self.log_from = err.tell()  # this daemon's lines begin here
            self.proc = subprocess.Popen([str(VENV_BIN / "supervisord"), "--root", str(self.root)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        wait_connectable(self.sock, self.proc, "supervisord")

    def wait_launcher(self, timeout: float = 15.0) -> None:
        """Until this daemon's shim launcher said it is ready: before that, shims start in
        fresh interpreters (tens of ms more), which is not what a run measures. (Its own
        lines only: the daemon answers ``ps`` before it logs that it started.)"""
        log = self.dir / "daemon.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"shim launcher ready" in log.read_bytes()[self.log_from:]:
                return
            time.sleep(0.01)
        raise RuntimeError(f"the shim launcher did not start; see {log}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def conn(self, timeout: float = 120.0) -> BlockingConnection:
        return BlockingConnection(self.sock, timeout=timeout)

    def ctl(self, *args: str) -> list[str]:
        return [self.ctl_path, "--root", str(self.root), *args]

    def ps(self) -> list[dict[str, Any]]:
        with self.conn() as c:
            return list(c.call("ps", all=True) or [])

    def running(self) -> list[dict[str, Any]]:
        return [row for row in self.ps() if row["state"] == "running"]

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def shim_pids(self) -> list[int]:
        return [pid for pid, (_, cmd) in proc_table().items()
                if str(self.root) in cmd and " shim start" in cmd
                and process_state(pid) not in ("Z", "X", "")]

    def launcher_pid(self) -> int | None:
        for pid, (_, cmd) in proc_table().items():
            if str(self.root) in cmd and "shim launcher" in cmd and \
                    process_state(pid) not in ("Z", "X", ""):
                return pid
        return None


# -- containerd --------------------------------------------------------------------------------


class Containerd:
    """Debian's containerd on private socket/root/state, driven by ``ctr`` in its namespace."""

    NAMESPACE = "tether-compare"

    def __init__(self, base: Path) -> None:
        self.dir = base / "c"
        self.dir.mkdir(parents=True)
        self.sock = str(self.dir / "c.sock")
        self.runc_root = str(self.dir / "runc")
        self.config = self.dir / "config.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{self.dir / "root"}"\n'
            f'state = "{self.dir / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            "[grpc]\n"
            f'  address = "{self.sock}"\n'
            "[ttrpc]\n"
            f'  address = "{self.dir / "t.sock"}"\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "containerd.log", "ab") as err:
            self.proc = subprocess.Popen([CONTAINERD, "--config", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        wait_connectable(self.sock, self.proc, "containerd")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def ctr(self, *args: str) -> list[str]:
        return [CTR, "--address", self.sock, "--namespace", self.NAMESPACE, *args]

    def run_argv(self, cid: str, rootfs: Path, command: list[str]) -> list[str]:
        return self.ctr("run", "-d", "--null-io", "--runc-root", self.runc_root, "--rootfs",
                        str(rootfs), cid, *command)

    def rm_argvs(self, cid: str) -> list[list[str]]:
        """What removing a running container takes with ctr: two commands."""
        return [self.ctr("task", "delete", "-f", cid), self.ctr("container", "delete", cid)]

    def tasks(self) -> dict[str, tuple[int, str]]:
        """id -> (pid, status) from ``ctr task ls``."""
        out = run_quiet(self.ctr("task", "ls")).stdout.decode()
        return parse_task_ls(out)

    def shim_pids(self) -> list[int]:
        return [pid for pid, (_, cmd) in proc_table().items()
                if "containerd-shim-runc-v2" in cmd and self.sock in cmd
                and process_state(pid) not in ("Z", "X", "")]

    def remove_all(self) -> None:
        """Every task and container of our namespace (cleanup, or between phases)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for cid in self.tasks():
            run_quiet(self.ctr("task", "delete", "-f", cid), check=False)
        out = run_quiet(self.ctr("container", "ls", "-q"), check=False).stdout.decode()
        for cid in out.split():
            run_quiet(self.ctr("container", "delete", cid), check=False)


def parse_task_ls(out: str) -> dict[str, tuple[int, str]]:
    tasks = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 3:
            tasks[parts[0]] = (int(parts[1]), parts[2])
    return tasks


# -- Debian's Supervisor -----------------------------------------------------------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self._path)
        self.sock = s


class DebianSupervisor:
    """Debian's supervisord 4.x from a generated config with N ``sleep`` programs."""

    def __init__(self, base: Path) -> None:
        self.dir = base / "s"
        (self.dir / "logs").mkdir(parents=True)
        self.sock = str(self.dir / "s.sock")
        self.config = self.dir / "supervisord.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self.programs = 0

    def write_config(self, programs: int, command: str = "/bin/sleep 100000") -> None:
        """``startsecs=0``: RUNNING as soon as spawned (Tether's ``running`` is the exec too)."""
        self.programs = programs
        lines = [
            "[unix_http_server]", f"file={self.sock}", "chmod=0700", "",
            "[supervisord]", "nodaemon=true", f"logfile={self.dir / 'supervisord.log'}",
            f"pidfile={self.dir / 'supervisord.pid'}", f"childlogdir={self.dir / 'logs'}",
            "loglevel=warn", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{self.sock}", "",
        ]
        for i in range(programs):
            lines += [f"[program:p{i:03d}]", f"command={command}", "startsecs=0",
                      "autorestart=false", ""]
        self.config.write_text("\n".join(lines))

    def start(self) -> None:
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen([DEBIAN_SUPERVISORD, "--nodaemon", "--configuration",
                                          str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         env=_clean_env())

    def wait_connectable(self) -> None:
        assert self.proc is not None
        wait_connectable(self.sock, self.proc, "Debian's supervisord")

    def call(self, method: str, *params: Any) -> Any:
        conn = _UnixHTTPConnection(self.sock)
        try:
            body = xmlrpc.client.dumps(tuple(params), method).encode()
            conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
            reply = conn.getresponse().read()
        finally:
            conn.close()
        return xmlrpc.client.loads(reply)[0][0]

    def running_count(self) -> int:
        try:
            infos = self.call("supervisor.getAllProcessInfo")
        except (OSError, xmlrpc.client.Fault, http.client.HTTPException):
            return 0
        return sum(1 for info in infos if info["statename"] == "RUNNING")

    def status_argv(self) -> list[str]:
        return [DEBIAN_SUPERVISORCTL, "--configuration", str(self.config), "status"]

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM: supervisord stops its programs, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _clean_env() -> dict[str, str]:
    """Debian's Python tools run with the system interpreter: none of our venv's settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return env


# -- bare runc ---------------------------------------------------------------------------------


class BareRunc:
    """``runc run -d`` of a prepared bundle, on a private ``--root``."""

    CGROUP_PARENT = "tether-compare"

    def __init__(self, base: Path, rootfs: Path) -> None:
        self.dir = base / "runc"
        self.dir.mkdir(parents=True)
        self.rootfs = rootfs
        self.n = 0

    def bundle(self, command: list[str]) -> tuple[str, str]:
        from shim.oci import prepare_bundle

        self.n += 1
        cid = f"bare-{self.n}"
        spec = {"id": cid, "command": command, "rootfs": str(self.rootfs), "runtime": "runc"}
        bundle = prepare_bundle(spec, self.dir / "bundles" / cid,
                                cgroups_path=f"/{self.CGROUP_PARENT}/{cid}")
        return cid, str(bundle)

    def argv(self, *args: str) -> list[str]:
        return [RUNC, "--root", str(self.dir / "state"), *args]

    def run_argv(self, cid: str, bundle: str) -> list[str]:
        return self.argv("run", "-d", "--bundle", bundle, "--pid-file",
                         str(self.dir / f"{cid}.pid"), cid)

    def delete(self, cid: str) -> None:
        run_quiet(self.argv("delete", "-f", cid), check=False)

    def remove_all(self) -> None:
        out = run_quiet(self.argv("list", "-q"), check=False).stdout.decode()
        for cid in out.split():
            self.delete(cid)


@contextlib.contextmanager
def line_reader(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A long-running command whose stdout lines we read (``ctr events``)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, bufsize=0)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def which_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).decode(errors="replace").strip().splitlines()
    return text[0] if text else "?"


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)
