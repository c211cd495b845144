"""Real nats-server processes for tests: one JetStream server, or a 3-server JetStream cluster,
on 127.0.0.1 with free ports and a store directory under the test's tmp path.

Every server is started by this module and ended by it, by pid (``kill -9`` included), and
waited for: a test that fails half-way still leaves no nats-server behind (the fixtures'
teardown, and the conftest leak guard, which finds any process whose command line names the
test's tmp path: the config file does).

Usage::

    def test_x(nats_cluster):            # conftest's: 3 servers, JetStream, meta leader up
        nats_cluster.urls                # "nats://127.0.0.1:P1,nats://127.0.0.1:P2,..."
        nats_cluster.kill9("n2"); nats_cluster.start("n2")
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CTL, REPO, Daemon

__all__ = ["EXPORT", "NATS_SERVER", "ExportProc", "NatsCluster", "NatsServer", "ensure_gone",
           "fleet_events", "free_port", "local_events", "need_nats_server", "wait_exported"]

NATS_SERVER = shutil.which("nats-server", path="/usr/sbin:/usr/bin:/sbin:/bin") or ""

need_nats_server = pytest.mark.skipif(
    not NATS_SERVER, reason="needs Debian's nats-server (bash .ci/setup installs it as root)")


def free_port() -> int:
    """A port nobody listens on right now (the kernel's pick, released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Child:
    """A process a test started and may SIGKILL at any moment (``proc``: None until started)."""

    proc: subprocess.Popen[bytes] | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class NatsServer(_Child):
    """One nats-server with JetStream: ``start()`` returns once it answers ``/healthz``."""

    def __init__(self, name: str, workdir: Path, *, cluster: str | None = None,
                 routes: list[int] | None = None, auth: tuple[str, str] | None = None) -> None:
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.http_port = free_port()
        self.cluster_port = free_port() if cluster else None
        self.cluster = cluster
        self.routes = routes or []
        self.auth = auth
        self.store = workdir / name
        self.conf = workdir / f"{name}.conf"
        self.log = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def write_config(self) -> None:
        lines = [
            f"server_name: {self.name}",
            f"listen: 127.0.0.1:{self.port}",
            f"http: 127.0.0.1:{self.http_port}",
            "jetstream {",
            f'  store_dir: "{self.store}"',
            "  max_memory_store: 64MB",
            "  max_file_store: 1GB",
            "}",
        ]
        if self.auth:
            lines += ["authorization {", f'  user: "{self.auth[0]}"',
                      f'  password: "{self.auth[1]}"', "}"]
        if self.cluster:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines += ["cluster {", f"  name: {self.cluster}",
                      f"  listen: 127.0.0.1:{self.cluster_port}", f"  routes: [{routes}]", "}"]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> NatsServer:
        assert NATS_SERVER, "nats-server is not installed"
        assert not self.running(), f"{self.name} already running"
        self.store.mkdir(parents=True, exist_ok=True)
        self.write_config()
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen([NATS_SERVER, "-c", str(self.conf)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        if wait:
            self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited:\n{self.log_text()[-3000:]}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nats-server {self.name} not listening after {timeout} s")
            time.sleep(0.02)

    def varz(self, what: str = "jsz") -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/{what}",
                                    timeout=2) as r:
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        """SIGTERM (lame duck is SIGUSR2: not what a crash looks like), SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class NatsCluster:
    """Three JetStream servers routed to each other (``n1``, ``n2``, ``n3``)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.servers = {f"n{i}": NatsServer(f"n{i}", workdir, cluster="tether-test")
                        for i in range(1, size + 1)}
        ports = [s.cluster_port for s in self.servers.values()]
        for s in self.servers.values():
            s.routes = [p for p in ports if p is not None]

    @property
    def urls(self) -> str:
        return ",".join(s.url for s in self.servers.values())

    def start_all(self, timeout: float = 30.0) -> NatsCluster:
        for s in self.servers.values():
            if not s.running():
                s.start(wait=False)
        for s in self.servers.values():
            s.wait_listening()
        self.wait_ready(timeout)
        return self

    def start(self, name: str) -> None:
        self.servers[name].start()

    def kill9(self, name: str) -> None:
        self.servers[name].kill9()

    def stop_all(self) -> None:
        for s in self.servers.values():
            s.kill9()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every running server sees the same JetStream meta leader with all peers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                leaders = set()
                for s in self.servers.values():
                    if s.running():
                        meta = s.varz("jsz").get("meta_cluster") or {}
                        leaders.add(meta.get("leader"))
                if len(leaders) == 1 and None not in leaders and "" not in leaders:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no JetStream meta leader after {timeout} s:\n"
                                   + "\n".join(s.log_text()[-1500:]
                                               for s in self.servers.values()))
            time.sleep(0.1)

    def stream_leader(self, stream: str) -> str | None:
        """The server name leading ``stream`` (from any running server's /jsz)."""
        for s in self.servers.values():
            if not s.running():
                continue
            with contextlib.suppress(OSError):
                jsz = s.varz("jsz?streams=true&config=false")
                for account in jsz.get("account_details") or []:
                    for st in account.get("stream_detail") or []:
                        if st.get("name") == stream:
                            cluster = st.get("cluster") or {}
                            if cluster.get("leader"):
                                return str(cluster["leader"])
        return None

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.servers.values() if s.proc is not None]


def ensure_gone(servers: list[NatsServer]) -> None:
    for s in servers:
        s.kill9()
    for s in servers:
        if s.proc is not None:
            with contextlib.suppress(ChildProcessError):
                s.proc.wait(5)
            assert s.proc.poll() is not None, f"nats-server {s.name} (pid {s.proc.pid}) lives"




#: The venv's exporter (its console script), called by path as a user would.
EXPORT = str(Path(sys.executable).parent / "supervisord-export")


class ExportProc(_Child):
    """One ``supervisord-export`` process; its stderr (JSON log lines) in ``log``."""

    def __init__(self, root: Path, servers: str, node: str, *extra: str) -> None:
        self.root = root
        self.servers = servers
        self.node = node
        self.extra = list(extra)
        self.log = root.parent / f"export-{node}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [EXPORT, "--root", str(self.root), "--nats", self.servers, "--node", self.node,
                "--log-format", "json", *self.extra]

    def start(self) -> ExportProc:
        assert not self.running()
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, cwd=REPO)
        finally:
            log.close()
        return self

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def refilled(self) -> set[int]:
        """The seqs this exporter (all its runs) said it published again, out of order."""
        seqs = set()
        with contextlib.suppress(FileNotFoundError), open(self.log, "rb") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if "out of order" in str(entry.get("event")) and \
                            isinstance(entry.get("seq"), int):
                        seqs.add(entry["seq"])
        return seqs

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def fleet_events(servers: str, node: str, *extra: str) -> list[dict[str, Any]]:
    """``supervisorctl events --nats ... --node NODE --json``: the node's events as the fleet
    stream holds them, each line's ``node`` checked and removed (so it compares with local).
    No stream yet (the exporter creates it): none."""
    proc = subprocess.run([*CTL, "events", "--nats", servers, "--node", node, "--json", *extra],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    if proc.returncode == 1 and "no stream" in proc.stderr:
        return []
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        obj = json.loads(line)
        assert obj.pop("node") == node
        out.append(obj)
    return out


def local_events(daemon: Daemon, since: int = 0) -> list[dict[str, Any]]:
    """``supervisorctl --root ROOT events --json``: the node's own log."""
    proc = subprocess.run([*CTL, "--root", str(daemon.root), "events", "--json", "--since",
                           str(since)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def late_seqs(fleet: list[dict[str, Any]]) -> set[int]:
    """The seqs that stand after a higher seq in the stream's order."""
    late, top = set(), 0
    for e in fleet:
        seq = e.get("seq", 0)
        if seq < top:
            late.add(seq)
        top = max(top, seq)
    return late


def wait_exported(servers: str, daemon: Daemon, node: str, timeout: float = 60.0,
                  exporter: ExportProc | None = None) -> list[dict[str, Any]]:
    """Until the fleet stream holds exactly the node's log; returns it in stream order.

    In seq order, unless ``exporter`` is given: then an event may stand after a later one only
    if that exporter logged it as a hole it published again (docs/design.md section 10: a
    leader change can drop a pipelined publish while it stores a later one; the hole is filled
    late and said so). Every event once either way."""
    deadline = time.monotonic() + timeout
    while True:
        local = local_events(daemon)
        try:
            fleet = fleet_events(servers, node)
        except AssertionError as exc:  # e.g. the stream electing a leader for too long
            fleet = [{"error": str(exc)}]
        if fleet == local:
            return fleet
        late = late_seqs(fleet)
        if exporter is not None and late and late <= exporter.refilled() and sorted(
                fleet, key=lambda e: e.get("seq", 0)) == local:
            return fleet
        if time.monotonic() > deadline:
            seqs = [e["seq"] for e in fleet]
            raise AssertionError(
                f"{node}: the stream does not hold the log after {timeout} s: local has "
                f"{len(local)} events (last {local[-1]['seq'] if local else None}), the stream "
                f"{len(fleet)} (seqs {seqs[:5]}...{seqs[-5:]}); duplicates: "
                f"{len(seqs) - len(set(seqs))}; after a later seq: {sorted(late)[:10]}; "
                f"refilled by the exporter: "
                f"{sorted(exporter.refilled())[:10] if exporter else None}")
        time.sleep(0.3)
