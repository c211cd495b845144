"""Authorized clients cannot exhaust the daemon (issue 10, item 7).

A half frame (or half an HTTP request) is cut after its timeout; connections are capped per
server with a clear refusal, the last slot kept for root; subscribers are capped, and one that
reads nothing is cut, so the daemon's descriptors and memory stay bounded while everyone else
is served (supervisor/admission.py, server.py, http.py, streams.py).

The crowd of clients is a real non-root process (uid/gid 65534, a member of the daemon's
``--group``) on a socket in a directory it may enter: SO_PEERCRED tells the daemon who it is.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from events import wire

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the crowd of clients "
                                "runs as another uid (65534), which only root can start")

NOBODY = 65534
CAP = 12
#: Descriptors the daemon may open meanwhile for itself (its shim launcher starts once
#: reconciliation has ended): far fewer than the crowd's 3 x CAP would take without the cap.
OWN = 6

#: The crowd: /usr/bin/python3 (the venv's may live where uid 65534 cannot read), stdlib only.
CROWD = r"""
import json, socket, sys, time
path, count, hello = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
admitted, refused, messages = [], 0, set()
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:  # a refusing daemon may close before reading our hello: its refusal is still there
        s.sendall(hello)
    except BrokenPipeError:
        pass
    got = s.recv(65536)
    if b"too many connections" in got:
        refused += 1
        messages.add(got[got.index(b"too many"):got.index(b"too many") + 25].decode())
        s.close()
    elif b"daemon" in got:
        s.sendall(b"\x00\x00")  # half a frame header: begun, never finished
        admitted.append(s)
    else:
        print(json.dumps({"unexpected": got.hex()}), flush=True)
        sys.exit(1)
print(json.dumps({"admitted": len(admitted), "refused": refused,
                  "messages": sorted(messages)}), flush=True)
sys.stdin.readline()
cut = 0
for s in admitted:
    s.settimeout(20)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    cut += b"not finished" in data
print(json.dumps({"cut": cut}), flush=True)
"""


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def open_dir():
    """A directory uid 65534 may enter (pytest's tmp_path is root's, mode 0700)."""
    path = tempfile.mkdtemp(prefix="tl-", dir="/tmp")
    os.chmod(path, 0o755)
    yield Path(path)
    for p in Path(path).iterdir():
        p.unlink()
    os.rmdir(path)


def test_half_frames_cannot_take_every_descriptor_and_root_keeps_a_slot(daemon_factory,
                                                                         open_dir):
    sock = str(open_dir / "s.sock")
    d = daemon_factory("--socket", sock, "--group", "nogroup",
                       env={**os.environ, "TETHER_MAX_CONNECTIONS": str(CAP),
                            "TETHER_FRAME_TIMEOUT": "3"})
    before = _fds(d.reconciled().pid)  # the full server (the early one holds fewer fds)
    hello = wire.encode(wire.hello("client")).hex()
    crowd = subprocess.Popen(["/usr/bin/python3", "-c", CROWD, sock, str(3 * CAP), hello],
                             user=NOBODY, group=NOBODY, extra_groups=[], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(crowd.stdout.readline())
        assert first["admitted"] == CAP - 1, first  # every slot but root's
        assert first["refused"] == 2 * CAP + 1, first
        assert first["messages"] == [f"too many connections ({CAP})"], first
        # the crowd holds every slot it may: root still gets its own
        rows = d.call("ps", all=True)
        assert rows == []
        assert _fds(d.pid) <= before + CAP + OWN, (before, _fds(d.pid))
        crowd.stdin.write("check\n")
        crowd.stdin.flush()
        second = json.loads(crowd.stdout.readline())
        assert second["cut"] == CAP - 1, second  # each half frame got its error, then EOF
    finally:
        crowd.kill()
        crowd.wait()
    d.wait_for(lambda: _fds(d.pid) <= before + OWN)
    assert d.call("status")["ok"]


def test_http_half_requests_are_capped_and_cut(daemon_factory):
    d = daemon_factory(env={**os.environ, "TETHER_MAX_CONNECTIONS": str(CAP),
                            "TETHER_HTTP_REQUEST_TIMEOUT": "3"})
    path = str(d.root / "supervisor.sock")
    before = _fds(d.reconciled().pid)  # the full server (the early one holds fewer fds)
    held = []
    try:
        for _ in range(CAP):  # root may fill every slot, its own included
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(path)
            s.sendall(b"POST /RPC2 HTTP/1.1\r\nhost: x\r\n")  # the head, never finished
            held.append(s)
        extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        extra.settimeout(10)
        extra.connect(path)
        answer = extra.recv(65536)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert f"too many connections ({CAP})".encode() in answer, answer
        assert _fds(d.pid) <= before + CAP + OWN
        for s in held:  # each half request: 408 within the timeout, then closed
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert data.startswith(b"HTTP/1.1 408"), data
    finally:
        for s in held:
            s.close()
    d.wait_for(lambda: _fds(d.pid) <= before + OWN)


def test_subscribers_are_capped_and_one_that_never_reads_is_cut(daemon_factory):
    d = daemon_factory("--subscriber-buffer", "50",
                       env={**os.environ, "TETHER_MAX_SUBSCRIBERS": "8",
                            "TETHER_SUBSCRIBER_STALL": "3"})
    for i in range(12):  # history heavier than any socket buffer: ~1.2 MB of events
        d.call("create", spec={"command": ["true"], "name": f"c{i}",
                               "labels": {"big": "x" * 100_000}})
    rss_before = _rss_kb(d.pid)
    readers = []
    try:
        for _ in range(8):
            conn = d.connect()
            with socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as same:
                same.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            conn.send_request("events", {"since": 0, "follow": True})
            readers.append(conn)
        d.wait_for(lambda: d.call("info")["subscribers"] == 8)
        with pytest.raises(wire.RemoteError) as err:
            d.stream("events", since=0, follow=True)
        assert err.value.code == "unavailable", err.value
        assert "too many subscribers (8)" in err.value.message
        peak = _rss_kb(d.pid)
        # they read nothing: each is cut after the stall, and its memory let go
        d.wait_for(lambda: d.call("info")["subscribers"] == 0, timeout=30)
        assert "subscriber cut" in d.stderr()
    finally:
        for conn in readers:
            conn.close()
    # 8 stalled subscribers of 1.2 MB of history: bounded well below a copy each of it all
    assert peak - rss_before < 60_000, (rss_before, peak)
    time.sleep(0.1)
    assert d.call("status")["ok"]
