"""What authorized clients can take from a daemon: descriptors and memory (a printed table).

    .venv/bin/python bench/limits.py [--other /work/main] [--half 2000] [--subs 20]

For each checkout (this one, and ``--other`` when given, each with its own ``.venv``), on a
private root: the daemon's open descriptors after ``--half`` connections that say hello and
then send half a frame (held open), whether a ``ps`` still answers, and the daemon's RSS before
and while ``--subs`` subscribers follow ``events`` from seq 0 without ever reading (over a
history of 30 creates with a 100 KB label each), then once their stall is over. The crowd is
this process's uid: as root it takes root's slot too (tests/test_limits.py shows that slot
against another uid). Every process it starts is ended by pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
#: The subscriber stall given to the daemons (TETHER_SUBSCRIBER_STALL; a checkout without the
#: setting ignores it): short, so that the run shows what a cut gives back.
STALL = 5.0


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(checkout: Path, half: int, subs: int) -> dict[str, object]:
    sys.path.insert(0, str(checkout))
    from events import wire
    from events.rpc import BlockingConnection

    tmp = Path(tempfile.mkdtemp(prefix="tl-bench-"))
    root = tmp / "root"
    py = checkout / ".venv/bin/python"
    daemon = subprocess.Popen([str(py), "-m", "supervisor.daemon", "--root", str(root),
                               "--log-format", "json"], cwd=checkout,
                              env={**os.environ, "TETHER_SUBSCRIBER_STALL": str(STALL)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = str(root / "supervisord.sock")
    held: list[socket.socket] = []
    out: dict[str, object] = {}
    try:
        for _ in range(200):
            if os.path.exists(sock):
                try:
                    with BlockingConnection(sock, timeout=5) as c:
                        c.call("status")
                    break
                except OSError:
                    pass
            time.sleep(0.05)
        base_fds = _fds(daemon.pid)
        hello = wire.encode(wire.hello("client"))
        refused = 0
        for _ in range(half):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            for _ in range(500):  # the listen backlog is full until the daemon accepts
                try:
                    s.connect(sock)
                    break
                except BlockingIOError:
                    time.sleep(0.01)
            with contextlib.suppress(OSError):  # a refused one may be closed already
                s.sendall(hello + b"\x00\x00")
            held.append(s)
        time.sleep(1.0)
        out["fds"] = f"{base_fds} -> {_fds(daemon.pid)}"
        for s in held:
            s.setblocking(False)
            try:
                if b"too many" in s.recv(4096):
                    refused += 1
            except OSError:
                pass
        out["refused"] = refused
        try:
            with BlockingConnection(sock, timeout=5) as c:
                c.call("ps")
            out["ps"] = "answers"
        except Exception as exc:
            out["ps"] = f"fails: {str(exc)[:40]}"
        for s in held:
            s.close()
        held.clear()
        time.sleep(1.0)
        with BlockingConnection(sock, timeout=30) as c:
            for i in range(30):
                c.call("create", spec={"command": ["true"], "name": f"c{i}",
                                       "labels": {"big": "x" * 100_000}})
        rss0 = _rss_mb(daemon.pid)
        readers = []
        for _ in range(subs):
            conn = BlockingConnection(sock, timeout=30)
            with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as same:
                same.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.send_request("events", {"since": 0, "follow": True})
            readers.append(conn)
        time.sleep(5.0)
        out["rss"] = f"{rss0:.0f} -> {_rss_mb(daemon.pid):.0f} MB"
        time.sleep(STALL + 5.0)  # past the stall: this checkout cuts them
        with BlockingConnection(sock, timeout=30) as c:
            left = c.call("info")["subscribers"]
        out["later"] = f"{left} subs, {_rss_mb(daemon.pid):.0f} MB"
        for conn in readers:
            conn.close()
    finally:
        for s in held:
            s.close()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True,
                                   text=True).stdout.splitlines()[1:]:
            pid, _, args = line.strip().partition(" ")
            if str(tmp) in args:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
        sys.path.remove(str(checkout))
        for name in [m for m in sys.modules if m.split(".")[0] in ("events", "supervisor")]:
            del sys.modules[name]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--other", type=Path, default=None, help="another checkout to compare")
    p.add_argument("--half", type=int, default=2000)
    p.add_argument("--subs", type=int, default=20)
    args = p.parse_args()
    rows = {"this": measure(HERE, args.half, args.subs)}
    if args.other is not None:
        rows[str(args.other)] = measure(args.other.resolve(), args.half, args.subs)
    keys = ["fds", "refused", "ps", "rss", "later"]
    print(f"{'checkout':<14}" + "".join(f"{k:>24}" for k in keys))
    for name, row in rows.items():
        print(f"{name[-14:]:<14}" + "".join(f"{row.get(k)!s:>24}" for k in keys))


if __name__ == "__main__":
    main()
