"""Supervisor's read-only XML-RPC, and the native ``info``/``inspect``/``xmlrpc``, answered by
the early server (supervisor/early.py) before the daemon has loaded trio: Debian's own
``supervisorctl status`` right after a restart, the same answers as the full server's after the
handover, the full server's limits and errors, and nothing lost by a kill -9 meanwhile.

A daemon held in its early window (``TETHER_EARLY_HOLD``: tests/test_early.py) has not loaded
trio: what it answers there, the early server answered.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import h11
import pytest
from daemon_helpers import Daemon
from test_early import HEAVY, held_start, release

from events import shim_api
from supervisor import httpreq

DEBIAN_CTL = "/usr/bin/supervisorctl"
needs_debian = pytest.mark.skipif(not os.path.exists(DEBIAN_CTL),
                                  reason="needs Debian's supervisor package (.ci/setup "
                                  "installs it)")


def _env() -> dict[str, str]:
    """Debian's supervisorctl must import Debian's ``supervisor``, never ours."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def debian_status(d: Daemon, *names: str, timeout: float = 30
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DEBIAN_CTL, "-s", f"unix://{d.root}/supervisor.sock", "status",
                           *names], capture_output=True, text=True, timeout=timeout,
                          env=_env(), cwd=d.root)


class Http:
    """A raw HTTP/1.1 client on ``ROOT/supervisor.sock``: requests written as given,
    responses read by their ``content-length``."""

    def __init__(self, d: Daemon) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(d.root / "supervisor.sock"))
        self.buf = b""

    @staticmethod
    def post(method: str, *params: Any, close: bool = False, body: bytes | None = None) -> bytes:
        data = body if body is not None else xmlrpc.client.dumps(params, method).encode()
        return (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                + (b"Connection: close\r\n" if close else b"")
                + b"Content-Length: %d\r\n\r\n" % len(data) + data)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += data

    def response(self, timeout: float = 30.0) -> tuple[int, dict[bytes, bytes], bytes]:
        """The next response: status, headers (lower-case names), body; TimeoutError."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def call(self, method: str, *params: Any) -> Any:
        self.send(self.post(method, *params))
        status, _, body = self.response()
        assert status == 200, body
        return xmlrpc.client.loads(body)[0][0]

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def proxy(d: Daemon) -> Any:
    """Supervisor's own transport (what its supervisorctl uses), from Python."""

    class Transport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> Any:
            import http.client

            class Conn(http.client.HTTPConnection):
                def connect(self) -> None:
                    self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    self.sock.connect(str(d.root / "supervisor.sock"))

            return Conn("localhost")

    return xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=Transport())


def comparable(infos: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Process infos without what time changes (``now``, the uptime in ``description``)."""
    return [{k: v for k, v in i.items() if k not in ("now", "description")} for i in infos]


def test_h11_writes_the_early_servers_responses_byte_for_byte() -> None:
    """The early server's responses (supervisor/httpreq.py) are what h11 writes for the full
    server's: a result, a result to a client that asked to close, and an error (closed)."""
    for asked_close in (False, True):
        for status, error in ((200, False), (400, True)):
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(Http.post("supervisor.getPID", close=asked_close))
            while not isinstance(conn.next_event(), h11.EndOfMessage):
                pass
            body = b"<x/>"
            headers = [(b"content-type", b"text/xml"), (b"content-length", b"4"),
                       (b"server", b"tether")] + ([(b"connection", b"close")] if error else [])
            ours = conn.send(h11.Response(status_code=status, headers=headers,
                                          reason=b"OK" if status == 200 else b"Bad Request"))
            ours = (ours or b"") + (conn.send(h11.Data(data=body)) or b"")
            assert httpreq.response(status, body, b"text/xml", asked_close=asked_close,
                                    error=error) == ours


@pytest.mark.parametrize("request_bytes", [
    b"GET /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # not a POST
    b"POST /RPC2/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # another target
    b"POST /RPC2 HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    b"POST /RPC2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",  # no Host (h11: 400)
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",  # 413
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n folded\r\nContent-Length: 0\r\n\r\n",
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n",
    b"\x16\x03\x01 a TLS hello",
    b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"y" * (70 << 10),  # 431
])
def test_what_the_early_server_does_not_read_is_left_for_the_full_server(
        request_bytes: bytes) -> None:
    with pytest.raises(httpreq.NotPlain):
        httpreq.parse(request_bytes)


def _prepare(d: Daemon) -> dict[str, int]:
    """Containers in each state Supervisor shows after a restart; the daemon killed -9 and
    the orphan's shim too (its task runs on, but nothing proves it ours). Returns shims."""
    for name in ("a", "orphan"):
        d.run("sleep", "1000", name=name)
    d.run("sh", "-c", "exit 3", name="done")
    d.wait_for(lambda: d.ps()["done"]["state"] == "stopped")
    d.kill9()
    shim = int((d.root / "shims/orphan" / shim_api.PID_FILE).read_text())
    os.kill(shim, signal.SIGKILL)
    return {"orphan": shim}


@needs_debian
def test_debian_supervisorctl_status_is_answered_before_trio_as_after_the_handover(
        daemon: Daemon, tmp_path: Path) -> None:
    """A container the kernel does not prove running is UNKNOWN (Supervisor's state for one
    it cannot tell), as the full server shows it until it is reconciled: never RUNNING (it may
    be gone) nor STOPPED (it may run)."""
    _prepare(daemon)
    hold = tmp_path / "hold"
    held_start(daemon, hold)
    out = debian_status(daemon)
    imported = set((tmp_path / "hold.modules").read_text().split())
    assert not imported & set(HEAVY)
    table = {line.split()[0]: line.split(None, 2)[1:] for line in out.stdout.splitlines()}
    assert table["a"][0] == "RUNNING" and table["a"][1].startswith("pid ")
    assert table["orphan"] == ["UNKNOWN"]
    assert table["done"][0] == "EXITED"
    assert out.returncode == 3  # Supervisor's: something listed is not running
    assert debian_status(daemon, "a").returncode == 0
    missing = debian_status(daemon, "nosuch")
    assert "nosuch: ERROR (no such process)" in missing.stdout and missing.returncode == 4
    # the same through Supervisor's own transport, and every read-only method
    early = proxy(daemon)
    infos = early.supervisor.getAllProcessInfo()
    singles = [early.supervisor.getProcessInfo(name) for name in ("a", "done", "orphan")]
    others = [early.supervisor.getAPIVersion(), early.supervisor.getSupervisorVersion(),
              early.supervisor.getIdentification(), early.supervisor.getState(),
              early.supervisor.getPID(), early.system.listMethods(),
              early.system.methodSignature("supervisor.getProcessInfo"),
              early.system.multicall([{"methodName": "supervisor.getPID"},
                                      {"methodName": "supervisor.getProcessInfo",
                                       "params": ["nosuch"]}])]
    with pytest.raises(xmlrpc.client.Fault) as fault:
        early.supervisor.getProcessInfo("nosuch")
    assert fault.value.faultCode == 10
    with pytest.raises(xmlrpc.client.Fault) as fault:
        early.supervisor.noSuchMethod()
    assert fault.value.faultCode == 1
    native = {"info": daemon.call("info"), "inspect": daemon.call("inspect", id="a"),
              "xmlrpc": daemon.call("xmlrpc", name="supervisor.getAllProcessInfo")}
    assert native["info"]["containers"]["unknown"] == 1
    assert daemon.call("status")["reconciling"] is True  # still held: all of it was early
    release(daemon, hold)
    full = proxy(daemon)
    after = full.supervisor.getAllProcessInfo()
    # the same, but for the orphan (reconciliation records its lost shim meanwhile)
    assert [i for i in comparable(after) if i["name"] != "orphan"] == \
        [i for i in comparable(infos) if i["name"] != "orphan"]
    assert comparable([full.supervisor.getProcessInfo(n) for n in ("a", "done")]) == \
        comparable(singles[:2])
    assert [full.supervisor.getAPIVersion(), full.supervisor.getSupervisorVersion(),
            full.supervisor.getIdentification(), full.supervisor.getState(),
            full.supervisor.getPID(), full.system.listMethods(),
            full.system.methodSignature("supervisor.getProcessInfo"),
            full.system.multicall([{"methodName": "supervisor.getPID"},
                                   {"methodName": "supervisor.getProcessInfo",
                                    "params": ["nosuch"]}])] == others
    info = daemon.call("info")
    moving = ("containers", "shims", "last_seq")  # reconciliation records the orphan's end
    assert {k: v for k, v in info.items() if k not in moving} == \
        {k: v for k, v in native["info"].items() if k not in moving}
    assert daemon.call("inspect", id="a") == native["inspect"]
    daemon.reconciled(timeout=20)
    daemon.call("rm", id="orphan", force=True)  # its task still runs: rm -f ends it


def test_http_requests_in_the_early_window_get_the_full_servers_answer(
        daemon: Daemon, tmp_path: Path) -> None:
    """A read-only call is answered at once; a malformed body gets the full server's 400 and
    its close, at once; a mutating call (pipelined after a read-only one), malformed HTTP and a
    request cut in half wait for the full server and are served by it. Other clients are
    served throughout."""
    daemon.run("sleep", "1000", name="old")
    daemon.kill9()
    hold = tmp_path / "hold"
    held_start(daemon, hold)
    bad_xml, pipelined, bad_http, partial, other = (Http(daemon) for _ in range(5))
    try:
        bad_xml.send(Http.post("", body=b"<methodCall><methodName>x</methodName><params>"))
        status, headers, body = bad_xml.response()
        assert status == 400 and body.startswith(b"not an XML-RPC call")
        assert headers[b"connection"] == b"close" and bad_xml.closed()
        pipelined.send(Http.post("supervisor.getPID")
                       + Http.post("supervisor.stopProcess", "old")
                       + Http.post("supervisor.getProcessInfo", "old"))
        status, _, body = pipelined.response()
        assert status == 200 and xmlrpc.client.loads(body)[0][0] == daemon.pid
        bad_http.send(b"POST /RPC2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n")  # no Host
        partial_request = Http.post("supervisor.getPID")
        partial.send(partial_request[:20])
        assert other.call("supervisor.getIdentification") == "supervisor"
        with pytest.raises(TimeoutError):
            pipelined.response(timeout=0.5)  # not answered, not refused
        assert daemon.call("ps")[0]["state"] == "running"
        release(daemon, hold)
        status, _, body = pipelined.response()
        assert status == 200 and xmlrpc.client.loads(body)[0][0] is True
        status, _, body = pipelined.response()
        assert xmlrpc.client.loads(body)[0][0]["statename"] == "STOPPED"
        status, _, body = bad_http.response()
        assert status == 400 and b"Host" in body
        partial.send(partial_request[20:])
        assert xmlrpc.client.loads(partial.response()[2])[0][0] == daemon.pid
        assert other.call("supervisor.getState")["statename"] == "RUNNING"
    finally:
        for client in (bad_xml, pipelined, bad_http, partial, other):
            client.close()


def test_the_http_connection_cap_holds_across_the_handover(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    daemon.kill9()
    hold = tmp_path / "hold"
    hold.touch()
    daemon.env = {**os.environ, "TETHER_EARLY_HOLD": str(hold), "TETHER_MAX_CONNECTIONS": "4"}
    daemon.start()
    clients = [Http(daemon) for _ in range(5)]  # root: every slot is ours, 4 of them
    try:
        for client in clients:
            client.send(Http.post("supervisor.getPID"))
        for client in clients[:4]:
            assert xmlrpc.client.loads(client.response()[2])[0][0] == daemon.pid
        with pytest.raises(TimeoutError):
            clients[4].response(timeout=0.3)
        release(daemon, hold)
        status, _, body = clients[4].response()
        assert status == 503 and b"too many connections (4)" in body
        assert clients[0].call("supervisor.getState")["statename"] == "RUNNING"
    finally:
        for client in clients:
            client.close()


def test_kill9_around_the_handover_with_xmlrpc_clients_loses_nothing(daemon: Daemon) -> None:
    """The crash suite's case for the early XML-RPC: kill -9 at random moments from exec
    through the handover while a Supervisor client polls and stops programs. Every stop it was
    told of (``True``) is recorded, and the daemon ends with one ``container.stop`` each."""
    rng = random.Random(int(os.environ.get("TETHER_CRASH_SEED", "20261129")))
    names = [f"p{n}" for n in range(6)]
    for name in names:
        daemon.run("sleep", "1000", name=name)
    told: set[str] = set()
    for name in names:
        daemon.kill9()
        daemon.start()

        def client(target: str = name) -> None:
            try:
                server = proxy(daemon)
                server.supervisor.getAllProcessInfo()
                if server.supervisor.stopProcess(target) is True:
                    told.add(target)
            except (OSError, xmlrpc.client.Error, ConnectionError):
                pass  # the daemon died first: nothing was promised

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(rng.uniform(0.0, 0.35))
        daemon.kill9()
        thread.join(60)
        daemon.start()
    daemon.reconciled(timeout=30)
    rows = daemon.ps()
    for name in told:
        assert rows[name]["state"] == "stopped", (name, rows[name])
    stops = [e["id"] for e in daemon.stream("events", types=["container.stop"])]
    assert sorted(stops) == sorted(set(stops)), stops
    assert told <= set(stops)
    for name in names:  # the rest were never stopped: still running
        if name not in stops:
            assert rows[name]["state"] == "running", (name, rows[name])
