"""The early server (supervisor/early.py): after a start, ``ps`` and ``status`` are answered from
the recovered state before the daemon has loaded trio or structlog; every other request waits
for the full server and is served by it; the handover drops no connection and leaks none; and a
kill -9 anywhere in that window loses nothing.

``TETHER_EARLY_HOLD`` (supervisor/daemon.py) holds the daemon before it loads the rest while a
file exists, and lists the modules it had imported: the early window as long as a test needs.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from daemon_helpers import Daemon
from history_checks import by_container, check_exits_once, check_seqs, check_tasks, wait_reconciled

from events import shim_api, wire

#: What the early window must not need (the point of it: these cost most of a start).
HEAVY = ("trio", "structlog", "asyncio")


def held_start(d: Daemon, hold: Path) -> None:
    """Start ``d`` held in its early window (``status`` answers; nothing else has loaded)."""
    hold.touch()
    d.env = {**os.environ, "TETHER_EARLY_HOLD": str(hold)}
    d.start()
    # the early server answers before the daemon reaches its hold and lists its modules
    d.wait_for(lambda: Path(f"{hold}.modules").exists(), timeout=15)


def release(d: Daemon, hold: Path) -> None:
    """End the hold and wait for the handover (the full server logs that it started)."""
    starts = d.stderr().count('"supervisord started"')
    hold.unlink()
    d.wait_for(lambda: d.stderr().count('"supervisord started"') > starts)


class Raw:
    """A client on a raw socket: frames sent as given, replies read by id."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.decoder = wire.FrameDecoder()
        self.got: dict[int | None, dict[str, Any]] = {}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self) -> None:
        self.send(wire.encode(wire.hello("client")))

    def request(self, rid: int, method: str, **params: Any) -> bytes:
        return wire.encode(wire.request(rid, method, params))

    def pump(self, timeout: float) -> None:
        """Read whatever arrives within ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                return
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:  # closed with our bytes unread: after its reply
                return
            if not data:
                return
            for message in self.decoder.feed(data):
                self.got["hello" if "hello" in message else message.get("id")] = message

    def reply(self, rid: int, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while rid not in self.got and time.monotonic() < deadline:
            self.pump(0.05)
        return self.got[rid]

    def close(self) -> None:
        self.sock.close()


def sockets_of(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


def test_modules_of_the_daemons_early_path_exclude_trio_and_structlog() -> None:
    """The import budget of everything the daemon runs before the early server answers."""
    import subprocess
    import sys

    code = ("import sys; import supervisor.daemon, supervisor.early, supervisor.probe, "
            "supervisor.restore, supervisor.rows, supervisor.apisocket; "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parent.parent)
    assert out.stdout.strip() == "[]"


def test_ps_answered_before_trio_is_the_ps_after_the_handover(daemon: Daemon,
                                                              tmp_path: Path) -> None:
    for name in ("a", "b", "orphan"):
        daemon.run("sleep", "1000", name=name)
    daemon.run("sh", "-c", "exit 3", name="done")
    # in its back-off for a minute: its shim lives, no task runs
    daemon.run("sh", "-c", "exit 1", name="looping", restart={"policy": "always", "delay": 60})
    daemon.call("stop", id="b", timeout=5)
    daemon.wait_for(lambda: daemon.ps()["done"]["state"] == "stopped"
                    and daemon.ps()["looping"]["state"] == "restarting")
    daemon.kill9()
    shim_of = {cid: int((daemon.root / "shims" / cid / shim_api.PID_FILE).read_text())
               for cid in ("orphan", "looping")}
    os.kill(shim_of["orphan"], signal.SIGKILL)  # its task runs on, but nothing proves it ours
    # the back-off's shim cannot answer: reconciliation waits for it, past the handover
    os.kill(shim_of["looping"], signal.SIGSTOP)
    hold = tmp_path / "hold"
    try:
        held_start(daemon, hold)
        early = daemon.call("ps", all=True)
        assert daemon.call("status")["reconciling"] is True
        imported = set((tmp_path / "hold.modules").read_text().split())
        assert not imported & set(HEAVY), "the early window loaded " \
            f"{sorted(imported & set(HEAVY))}"
        states = {r["id"]: r["state"] for r in early}
        # proven running (their tasks run under their live shims); stopped ones as the log
        # says; the others unknown until reconciled
        assert states == {"a": "running", "b": "stopped", "done": "stopped",
                          "orphan": "unknown", "looping": "unknown"}
        assert [r["id"] for r in daemon.call("ps")] == ["a", "orphan", "looping"]
        release(daemon, hold)
        after = {r["id"]: r for r in daemon.call("ps", all=True)}
        assert after["looping"] == next(r for r in early if r["id"] == "looping")
        # the full server's ps is the early one, but for what reconciliation did meanwhile
        # (the orphan's lost shim, recorded at once)
        assert [r for r in daemon.call("ps", all=True) if r["id"] != "orphan"] == \
            [r for r in early if r["id"] != "orphan"]
    finally:
        os.kill(shim_of["looping"], signal.SIGCONT)
    daemon.reconciled(timeout=20)
    rows = daemon.ps()
    assert rows["a"]["state"] == "running" and rows["looping"]["state"] == "restarting"
    assert rows["a"]["pid"] == next(r for r in early if r["id"] == "a")["pid"]
    daemon.call("rm", id="orphan", force=True)  # its task still runs: rm -f ends it


def test_requests_in_the_early_window_are_served_by_the_full_server(daemon: Daemon,
                                                                    tmp_path: Path) -> None:
    daemon.run("sleep", "1000", name="old")
    daemon.kill9()
    hold = tmp_path / "hold"
    held_start(daemon, hold)
    pipelined, idle, partial = Raw(daemon.socket), Raw(daemon.socket), Raw(daemon.socket)
    try:
        # ps, then a mutating call, then ps again, in one write: the first is answered now,
        # the rest wait for the full server (which runs pipelined requests concurrently)
        pipelined.hello()
        pipelined.send(pipelined.request(1, "ps", all=True)
                       + pipelined.request(2, "run", spec={"command": ["sleep", "1000"],
                                                           "name": "new"})
                       + pipelined.request(3, "ps", all=True)
                       + pipelined.request(4, "stop", id="old", timeout=5))
        idle.hello()
        # half a request frame now, the rest after the handover
        frame = partial.request(1, "ps", all=True)
        partial.hello()
        partial.send(frame[:3])
        assert [r["id"] for r in pipelined.reply(1)["result"]] == ["old"]
        assert "hello" in idle.reply("hello") and "hello" in partial.reply("hello")  # type: ignore[arg-type]
        pipelined.pump(0.5)
        assert 2 not in pipelined.got and 3 not in pipelined.got  # not answered, not refused
        assert (daemon.root / "shims/new").exists() is False
        release(daemon, hold)
        assert pipelined.reply(2)["result"]["id"] == "new"
        assert "old" in {r["id"] for r in pipelined.reply(3)["result"]}
        assert pipelined.reply(4)["result"]["exit_status"] == 143
        partial.send(frame[3:])
        assert {r["id"] for r in partial.reply(1)["result"]} == {"old", "new"}
        idle.send(idle.request(7, "status"))
        assert idle.reply(7)["result"]["ok"] is True
        # every handed-over connection is the full server's now: closed when its client goes
        with_clients = sockets_of(daemon.pid)
    finally:
        for client in (pipelined, idle, partial):
            client.close()
    daemon.wait_for(lambda: sockets_of(daemon.pid) <= with_clients - 3)
    assert daemon.stream("events", types=["container.create"])[-1]["id"] == "new"


def test_a_refused_peer_and_a_bad_hello_in_the_early_window_get_the_full_servers_answer(
        daemon: Daemon, tmp_path: Path) -> None:
    daemon.kill9()
    hold = tmp_path / "hold"
    held_start(daemon, hold)
    bad = Raw(daemon.socket)
    try:
        bad.send(wire.encode({"hello": {"proto": 99, "role": "client"}}))
        bad.pump(0.3)
        assert not bad.got  # not the early server's to answer
        release(daemon, hold)
        err = bad.reply(None)  # type: ignore[arg-type]
        assert err["error"]["code"] == "protocol" and "99" in err["error"]["message"]
    finally:
        bad.close()


def test_sigterm_in_the_early_window_stops_the_daemon_cleanly(daemon: Daemon,
                                                             tmp_path: Path) -> None:
    daemon.kill9()
    hold = tmp_path / "hold"
    held_start(daemon, hold)
    assert daemon.stop() == 0
    assert '"supervisord stopped; containers keep running"' in daemon.stderr()
    hold.unlink()
    types = [e["type"] for e in daemon.start().stream("events")]
    assert types.count("supervisor.stop") == 1


def test_kill9_in_the_early_window_and_the_handover_loses_nothing(daemon: Daemon) -> None:
    """The crash suite's case for the early server: kill -9 at random moments from exec
    through the handover, while containers exit and clients ask to run new ones. Every
    acknowledged run is there, no exit is lost or recorded twice, seqs have no gap."""
    rng = random.Random(int(os.environ.get("TETHER_CRASH_SEED", "20261129")))
    daemon.run("sleep", "1000", name="steady")
    acked: set[str] = set()
    exits: dict[str, int] = {}
    for n in range(12):
        name = f"ends{n}"
        code = n % 5 + 1
        daemon.run("sh", "-c", f"sleep 0.{rng.randint(1, 4)}; exit {code}", name=name)
        exits[name] = code
        daemon.kill9()
        daemon.start()  # returns once the early server answers status

        def ask(i: int = n) -> None:
            try:
                with daemon.connect(5) as conn:
                    acked.add(conn.call("run", spec={"command": ["sleep", "1000"],
                                                     "name": f"asked{i}"})["id"])
            except (OSError, wire.ProtocolError, wire.RemoteError):
                pass  # the daemon died first: nothing was promised

        client = threading.Thread(target=ask)
        client.start()
        time.sleep(rng.uniform(0.0, 0.35))  # the early window, the handover, or just after
        daemon.kill9()
        client.join()
        daemon.start()
    rows = wait_reconciled(daemon)
    assert acked <= set(rows), f"acknowledged runs lost: {sorted(acked - set(rows))}"
    assert rows["steady"]["state"] == "running"
    events = daemon.stream("events")
    check_seqs(events)
    check_exits_once(events)
    per = by_container(events)
    for name, code in exits.items():
        daemon.wait_for(lambda name=name: daemon.ps()[name]["state"] == "stopped", timeout=15)
        statuses = [e["data"]["exit_status"] for e in daemon.stream("events", ids=[name])
                    if e["type"] == "task.exit"]
        assert statuses == [code], (name, statuses)
    rows = daemon.ps()
    for cid, row in rows.items():
        check_tasks(cid, per.get(cid, []), row)


def test_the_connection_cap_holds_across_the_handover(daemon: Daemon, tmp_path: Path) -> None:
    """Connections over the cap in the early window are not served there, and the full
    server refuses them as it would have at their accept; the admitted ones stay admitted."""
    daemon.kill9()
    hold = tmp_path / "hold"
    hold.touch()
    daemon.env = {**os.environ, "TETHER_EARLY_HOLD": str(hold), "TETHER_MAX_CONNECTIONS": "4"}
    daemon.start()  # its status connection has come and gone: no slot taken
    clients = [Raw(daemon.socket) for _ in range(5)]  # root: every slot is ours, 4 of them
    try:
        for client in clients:
            client.hello()
        for client in clients[:4]:
            assert "hello" in client.reply("hello")  # type: ignore[arg-type]
        clients[4].pump(0.3)
        assert not clients[4].got
        release(daemon, hold)
        refused = clients[4].reply(None)  # type: ignore[arg-type]
        assert "too many connections (4)" in refused["error"]["message"]
        clients[0].send(clients[0].request(1, "ps"))
        assert clients[0].reply(1)["result"] == []
    finally:
        for client in clients:
            client.close()
