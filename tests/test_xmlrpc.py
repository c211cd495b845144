"""Supervisor's XML-RPC interface on ``ROOT/supervisor.sock``: the methods through
``xmlrpc.client`` with Supervisor's own transport (``supervisor.xmlrpc.SupervisorTransport``
from Debian's package, so run by Debian's python), ``system.multicall`` included; and the HTTP
server's limits: a body over 1 MiB, a slow client, a malformed request, an entity bomb, basic
auth on TCP and the peer-credential rule, each costing only the client that caused it."""


from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import textwrap
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import Daemon

DEBIAN_PYTHON = "/usr/bin/python3"
DEBIAN_SUPERVISOR = "/usr/lib/python3/dist-packages/supervisor/xmlrpc.py"

CONF = """\
    [program:web]
    command=sh -c 'echo hello; exec sleep 1000'
    startsecs=0
    [program:worker]
    command=sleep 1000
    process_name=%(program_name)s_%(process_num)02d
    numprocs=2
    startsecs=0
    """

CLIENT = r'''
import json, sys, xmlrpc.client
from supervisor.xmlrpc import SupervisorTransport
proxy = xmlrpc.client.ServerProxy(
    "http://127.0.0.1", transport=SupervisorTransport(None, None, "unix://" + sys.argv[1]))
out = {}
def call(key, fn, *args):
    try:
        out[key] = fn(*args)
    except xmlrpc.client.Fault as exc:
        out[key] = {"fault": exc.faultCode, "text": exc.faultString}
s = proxy.supervisor
call("getVersion", s.getVersion)
call("getAPIVersion", s.getAPIVersion)
call("getSupervisorVersion", s.getSupervisorVersion)
call("getIdentification", s.getIdentification)
call("getState", s.getState)
call("getPID", s.getPID)
call("getAllProcessInfo", s.getAllProcessInfo)
call("getProcessInfo", s.getProcessInfo, "worker:worker_01")
call("badName", s.getProcessInfo, "nope")
call("stopProcess", s.stopProcess, "web")
call("notRunning", s.stopProcess, "web")
call("startProcess", s.startProcess, "web")
call("alreadyStarted", s.startProcess, "web")
call("stopProcessGroup", s.stopProcessGroup, "worker")
call("startProcessGroup", s.startProcessGroup, "worker")
call("signalProcess", s.signalProcess, "worker:worker_00", "CONT")
call("badSignal", s.signalProcess, "web", "NOPE")
call("signalProcessGroup", s.signalProcessGroup, "worker", "CONT")
call("signalAllProcesses", s.signalAllProcesses, "CONT")
call("readProcessStdoutLog", s.readProcessStdoutLog, "web", 0, 0)
call("readProcessStderrLog", s.readProcessStderrLog, "web", 0, 100)
call("badArguments", s.readProcessStdoutLog, "web", -5, 5)
call("tailProcessStdoutLog", s.tailProcessStdoutLog, "web", 0, 3)
call("tailProcessStderrLog", s.tailProcessStderrLog, "web", 0, 10)
call("clearProcessLogs", s.clearProcessLogs, "web")
call("afterClear", s.readProcessStdoutLog, "web", 0, 0)
call("clearAllProcessLogs", s.clearAllProcessLogs)
call("getAllConfigInfo", s.getAllConfigInfo)
call("reloadConfig", s.reloadConfig)
call("removeStillRunning", s.removeProcessGroup, "worker")
call("stopAllProcesses", s.stopAllProcesses)
call("removeProcessGroup", s.removeProcessGroup, "worker")
call("addProcessGroup", s.addProcessGroup, "worker")
call("alreadyAdded", s.addProcessGroup, "worker")
call("startAllProcesses", s.startAllProcesses)
call("readLog", s.readLog, -300, 0)
call("unknownMethod", s.noSuchMethod)
call("incorrectParameters", s.getProcessInfo)
call("listMethods", proxy.system.listMethods)
call("methodHelp", proxy.system.methodHelp, "supervisor.getPID")
call("methodSignature", proxy.system.methodSignature, "supervisor.stopProcess")
call("multicall", proxy.system.multicall, [
    {"methodName": "supervisor.getAPIVersion", "params": []},
    {"methodName": "supervisor.getProcessInfo", "params": ["nope"]},
    {"methodName": "supervisor.getProcessInfo", "params": ["web"]},
    {"methodName": "system.multicall", "params": [[]]}])
print(json.dumps(out))
'''


@pytest.fixture
def daemon_with_programs(daemon_factory, tmp_path: Path) -> Daemon:
    conf = tmp_path / "supervisord.conf"
    conf.write_text(textwrap.dedent(CONF))
    d = daemon_factory("--config", str(conf),
                       env={**os.environ, "TETHER_HTTP_REQUEST_TIMEOUT": "1"})
    d.wait_for(lambda: all(r["state"] == "running" for r in d.ps().values())
               and len(d.ps()) == 3, timeout=15)
    return d


@pytest.mark.skipif(not os.path.exists(DEBIAN_SUPERVISOR),
                    reason="needs Debian's supervisor package (.ci/setup installs it)")
def test_every_method_through_supervisors_transport(daemon_with_programs: Daemon) -> None:
    d = daemon_with_programs
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([DEBIAN_PYTHON, "-c", CLIENT, str(d.root / "supervisor.sock")],
                          capture_output=True, text=True, timeout=120, env=env, cwd="/")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["getVersion"] == "3.0" and r["getAPIVersion"] == "3.0"
    assert r["getSupervisorVersion"].startswith("4.")
    assert r["getIdentification"] == "supervisor"
    assert r["getState"] == {"statecode": 1, "statename": "RUNNING"}
    assert r["getPID"] == d.pid
    infos = {i["name"]: i for i in r["getAllProcessInfo"]}
    assert sorted(infos) == ["web", "worker_00", "worker_01"]
    keys = {"name", "group", "start", "stop", "now", "state", "statename", "spawnerr",
            "exitstatus", "logfile", "stdout_logfile", "stderr_logfile", "pid", "description"}
    assert all(set(i) == keys for i in infos.values())
    assert infos["web"]["state"] == 20 and infos["web"]["statename"] == "RUNNING"
    assert r["getProcessInfo"]["group"] == "worker"
    assert r["badName"] == {"fault": 10, "text": "BAD_NAME: nope"}
    assert r["stopProcess"] is True and r["notRunning"]["fault"] == 70
    assert r["startProcess"] is True and r["alreadyStarted"]["fault"] == 60
    assert [x["status"] for x in r["stopProcessGroup"]] == [80, 80]
    assert [x["name"] for x in r["startProcessGroup"]] == ["worker_00", "worker_01"]
    assert r["signalProcess"] is True and r["badSignal"]["fault"] == 11
    assert len(r["signalProcessGroup"]) == 2 and len(r["signalAllProcesses"]) == 3
    assert "hello\n" in r["readProcessStdoutLog"]
    assert r["readProcessStderrLog"] == ""
    assert r["badArguments"]["fault"] == 3
    data, offset, overflow = r["tailProcessStdoutLog"]
    assert (data, overflow) == ("lo\n", True) and offset >= 6
    assert r["tailProcessStderrLog"] == ["", 0, False]
    assert r["clearProcessLogs"] is True and r["afterClear"] == ""
    assert {x["status"] for x in r["clearAllProcessLogs"]} == {80}
    config = {i["name"]: i for i in r["getAllConfigInfo"]}
    assert config["worker_01"]["group"] == "worker" and config["web"]["inuse"] is True
    assert r["reloadConfig"] == [[[], [], []]]
    assert r["removeStillRunning"]["fault"] == 91
    assert len(r["stopAllProcesses"]) == 3
    assert r["removeProcessGroup"] is True
    assert r["addProcessGroup"] is True and r["alreadyAdded"]["fault"] == 90
    assert [x["name"] for x in r["startAllProcesses"]] == ["web"]  # add autostarted worker
    assert "task.start web" in r["readLog"] and len(r["readLog"]) <= 300
    assert r["unknownMethod"]["fault"] == 1 and r["incorrectParameters"]["fault"] == 2
    assert "system.multicall" in r["listMethods"] and "supervisor.tailProcessStdoutLog" in \
        r["listMethods"]
    assert "PID" in r["methodHelp"]
    assert r["methodSignature"] == ["boolean", "string", "boolean"]
    version, bad, info, recursive = r["multicall"]
    assert version == "3.0" and bad["faultCode"] == 10 and info["name"] == "web"
    assert recursive["faultCode"] == 2
    # the state the calls left
    rows = d.ps()
    assert {k: v["state"] for k, v in rows.items()} == dict.fromkeys(
        ("web", "worker_00", "worker_01"), "running")


# -- the HTTP server's limits, with raw sockets --------------------------------------------


def raw(d: Daemon, data: bytes, *, wait: float = 10.0) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(wait)
        s.connect(str(d.root / "supervisor.sock"))
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def post(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (b"POST /RPC2 HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            b"Content-Length: " + str(n).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def still_serves(d: Daemon) -> None:
    reply = raw(d, post(xmlrpc.client.dumps((), "supervisor.getAPIVersion").encode()))
    assert b"200 OK" in reply and b"<string>3.0</string>" in reply


def test_bad_clients_get_clear_errors_and_cost_nobody_else(daemon_with_programs: Daemon
                                                         ) -> None:
    d = daemon_with_programs
    assert stat.S_IMODE(os.stat(d.root / "supervisor.sock").st_mode) == 0o600
    still_serves(d)
    # a body over 1 MiB: 413, whatever it says
    reply = raw(d, post(b"x" * 10, length=(1 << 20) + 1))
    assert reply.startswith(b"HTTP/1.1 413 ")
    # malformed HTTP, and a body that is not XML-RPC: 400
    assert raw(d, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert raw(d, post(b"<methodCall><oops")).startswith(b"HTTP/1.1 400 ")
    # an entity bomb: refused before any expansion
    bomb = (b'<?xml version="1.0"?><!DOCTYPE b [<!ENTITY a "aaaaaaaaaa">'
            + b"".join(b'<!ENTITY a%d "&a%s;&a%s;&a%s;&a%s;&a%s;&a%s;&a%s;&a%s;&a%s;&a%s;">'
                       % (i, *(str(i - 1).encode() if i > 1 else b"",) * 10)
                       for i in range(1, 9))
            + b']><methodCall><methodName>&a8;</methodName></methodCall>')
    reply = raw(d, post(bomb))
    assert reply.startswith(b"HTTP/1.1 400 ") and b"document type" in reply
    # an unknown path, a wrong method
    assert raw(d, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw(d, b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    # a slow client (half a request head) gets 408, and meanwhile everyone else is served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(d.root / "supervisor.sock"))
        slow.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n")
        began = time.monotonic()
        still_serves(d)
        slow.settimeout(10)
        reply = slow.recv(65536)
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert time.monotonic() - began < 9
    # ... and a slow body too
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.connect(str(d.root / "supervisor.sock"))
        slow.sendall(post(b"<methodCall>", length=100))
        slow.settimeout(10)
        assert slow.recv(65536).startswith(b"HTTP/1.1 408 ")
    still_serves(d)
    assert d.running()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_peer_credentials_are_the_second_gate(daemon_with_programs: Daemon) -> None:
    """Even with a socket whose mode lets anyone connect, another uid is refused (403)."""
    import shutil
    import tempfile

    d = daemon_with_programs
    os.chmod(d.root / "supervisor.sock", 0o666)
    # a path the other uid can reach: a hard link to the socket in an open directory
    where = tempfile.mkdtemp(prefix="tether-peercred-", dir="/tmp")
    os.chmod(where, 0o755)
    path = os.path.join(where, "s")
    os.link(d.root / "supervisor.sock", path)
    script = textwrap.dedent(f"""
        import os, socket
        os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect({path!r})
        s.sendall(b"POST /RPC2 HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n\\r\\n")
        print(s.recv(4096).split(b"\\r\\n")[0].decode())
        """)
    try:
        proc = subprocess.run([DEBIAN_PYTHON, "-c", script], capture_output=True, text=True,
                              timeout=30)
    finally:
        shutil.rmtree(where)
    assert proc.stdout.strip() == "HTTP/1.1 403 Forbidden", proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tcp_listener_with_basic_auth(daemon_factory, root: Path) -> None:
    port = _free_port()
    d = daemon_factory("--http-listen", f"127.0.0.1:{port}", "--http-user", "ops",
                       "--http-password", "s3cret")
    proxy = xmlrpc.client.ServerProxy(f"http://ops:s3cret@127.0.0.1:{port}/RPC2")
    assert proxy.supervisor.getAPIVersion() == "3.0"
    for user in ("ops:wrong", "other:s3cret"):
        with pytest.raises(xmlrpc.client.ProtocolError) as info:
            xmlrpc.client.ServerProxy(f"http://{user}@127.0.0.1:{port}/RPC2"
                                      ).supervisor.getPID()
        assert info.value.errcode == 401
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        token = base64.b64encode(b"ops:s3cret")
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + token
                  + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ") and b"tether_build_info" in data
    # the unix socket needs no password: its peer credentials decide
    assert b"200 OK" in raw(d, post(xmlrpc.client.dumps((), "supervisor.getPID").encode()))


def test_http_listen_refuses_an_open_non_loopback_address(daemon_factory) -> None:
    d = daemon_factory("--http-listen", "0.0.0.0:9", start=False)
    d.start(expect_fail=True)
    assert d.wait_exit() != 0
    assert "not a loopback address" in d.stderr()


def test_restart_reexecutes_and_keeps_every_program(daemon_with_programs: Daemon) -> None:
    d = daemon_with_programs
    before = {k: (v["state"], v["pid"]) for k, v in d.ps().items()}
    seq = d.call("status")["last_seq"]
    reply = raw(d, post(xmlrpc.client.dumps((), "supervisor.restart").encode()))
    assert b"<boolean>1</boolean>" in reply
    # one guarded call: the old daemon may answer, then go away before a second one
    d.wait_for(lambda: (s := _answers(d)) and s["last_seq"] > seq + 1, timeout=20)
    d.reconciled()
    assert d.call("status")["pid"] == d.pid  # re-executed in place: the same process
    assert {k: (v["state"], v["pid"]) for k, v in d.ps().items()} == before
    types = [e["type"] for e in d.stream("events", since=seq)]
    assert types[:2] == ["supervisor.stop", "supervisor.start"]
    assert not any(t.startswith(("task.", "container.")) for t in types)


def _answers(d: Daemon) -> Any:
    try:
        return d.call("status")
    except (OSError, ConnectionError):
        return None
