"""After a kill -9 of supervisord: how soon Supervisor's tools, and ours, are answered (not a test).

    .venv/bin/python bench/restart.py [--containers 20] [--rounds 7] [--vs /work/main]
                                      [--only xmlrpc,debian,ps]

Each tree (this one, and with ``--vs`` another checkout of Tether, e.g. main) gets a daemon on a
private root under /tmp with N ``sleep`` containers; rounds alternate between the trees. Each
round kills the daemon -9, execs it again, and times from the exec:

* ``xmlrpc first``: Supervisor's ``getAllProcessInfo`` on ``ROOT/supervisor.sock`` answered at
  all (``xmlrpc.client``, as Supervisor's tools; connection refused or missing: retried);
* ``xmlrpc all``: the same, until every container is RUNNING;
* ``debian status``: Debian's ``/usr/bin/supervisorctl status`` run again and again, whole
  processes, until one exits 0 (all RUNNING);
* ``ps all``: the native ``ps`` (in-process) until every container is listed running.

Medians, and the ratio this / other. Compile both trees' bytecode first (``python -m
compileall events shim supervisor``) when ``PYTHONDONTWRITEBYTECODE`` is set: a tree whose
edited modules compile at every start loses ~10 ms a start to it. Every process started is
killed by pid at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from cleanup import kill_everything_naming  # noqa: E402

from events.rpc import BlockingConnection  # noqa: E402

DEBIAN_CTL = "/usr/bin/supervisorctl"
LIMIT = 60.0


class Tree:
    """One checkout's daemon on its own root."""

    def __init__(self, repo: Path, base: Path, label: str) -> None:
        self.repo = repo
        self.label = label
        self.root = base / label
        self.root.mkdir()
        self.sock = str(self.root / "supervisord.sock")
        self.http = str(self.root / "supervisor.sock")
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> float:
        """Exec the daemon; returns the time of the exec (perf_counter)."""
        t0 = time.perf_counter()
        with open(self.root.parent / f"{self.label}.log", "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.daemon", "--root", str(self.root),
                 "--log-format", "json"], stdout=subprocess.DEVNULL, stderr=err,
                cwd=self.repo)
        return t0

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def call(self, method: str, **params: Any) -> Any:
        deadline = time.monotonic() + LIMIT
        while True:
            try:
                with BlockingConnection(self.sock, timeout=30) as c:
                    return c.call(method, **params)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)


def _proxy(path: str) -> Any:
    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> Any:
            class Conn(http.client.HTTPConnection):
                def connect(self) -> None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.connect(path)

            return Conn("localhost")

    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=Transport())


def _until(t0: float, ask: Callable[[], bool]) -> float:
    while True:
        try:
            if ask():
                return time.perf_counter() - t0
        except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException):
            pass
        if time.perf_counter() - t0 > LIMIT:
            raise RuntimeError("not answered within a minute")
        time.sleep(0.002)


def round_xmlrpc(tree: Tree, n: int) -> tuple[float, float]:
    tree.kill9()
    t0 = tree.spawn()
    first = _until(t0, lambda: isinstance(_proxy(tree.http).supervisor.getAllProcessInfo(),
                                          list))
    every = _until(t0, lambda: sum(i["statename"] == "RUNNING" for i in
                                   _proxy(tree.http).supervisor.getAllProcessInfo()) >= n)
    return first, every


def round_debian(tree: Tree) -> float:
    tree.kill9()
    t0 = tree.spawn()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return _until(t0, lambda: subprocess.run(
        [DEBIAN_CTL, "-s", f"unix://{tree.http}", "status"], capture_output=True,
        env=env).returncode == 0)


def round_ps(tree: Tree, n: int) -> float:
    tree.kill9()
    t0 = tree.spawn()
    return _until(t0, lambda: sum(r["state"] == "running"
                                  for r in tree.call("ps")) >= n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--vs", type=Path, default=None, help="another checkout of Tether")
    ap.add_argument("--only", default="xmlrpc,debian,ps",
                    help="comma-separated: xmlrpc, debian, ps (default all)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    base = Path(tempfile.mkdtemp(prefix="trs-", dir="/tmp"))
    trees = [Tree(REPO, base, "this")]
    if args.vs is not None:
        trees.append(Tree(args.vs.resolve(), base, "other"))
    samples: dict[tuple[str, str], list[float]] = {}
    try:
        for tree in trees:
            tree.spawn()
            for i in range(args.containers):
                tree.call("run", spec={"command": ["sleep", "100000"], "name": f"s{i}"})
        for r in range(args.rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                if "xmlrpc" in only:
                    first, every = round_xmlrpc(tree, args.containers)
                    samples.setdefault((tree.label, "xmlrpc first"), []).append(first)
                    samples.setdefault((tree.label, "xmlrpc all"), []).append(every)
                if "debian" in only and os.path.exists(DEBIAN_CTL):
                    samples.setdefault((tree.label, "debian status"), []).append(
                        round_debian(tree))
                if "ps" in only:
                    samples.setdefault((tree.label, "ps all"), []).append(
                        round_ps(tree, args.containers))
        for tree in trees:
            tree.stop()
    finally:
        for tree in trees:
            if tree.proc is not None and tree.proc.poll() is None:
                tree.proc.kill()
        killed = kill_everything_naming(str(base))
        time.sleep(0.5)
        killed += kill_everything_naming(str(base))
        shutil.rmtree(base, ignore_errors=True)
    what = sorted({k[1] for k in samples}, key=["xmlrpc first", "xmlrpc all", "debian status",
                                                  "ps all"].index)
    print(f"\nkill -9 -> restart, {args.containers} containers, {args.rounds} rounds "
          "(medians, ms from the exec)")
    print(f"{'measure':<16}{'this':>10}{'other':>10}{'ratio':>8}")
    for w in what:
        this = statistics.median(samples[("this", w)]) * 1000
        line = f"{w:<16}{this:>10.0f}"
        if ("other", w) in samples:
            other = statistics.median(samples[("other", w)]) * 1000
            line += f"{other:>10.0f}{this / other:>8.2f}"
        print(line)
    print(f"(cleanup killed {killed} leftover processes)")


if __name__ == "__main__":
    main()
