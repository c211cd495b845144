"""supervisord end to end: a real daemon process, real shims, real containers."""

from __future__ import annotations

import os
import socket
import stat
import struct
import threading
from pathlib import Path

import msgpack
import pytest
from daemon_helpers import Daemon

from events import wire
from events.rpc import BlockingConnection


def test_the_method_table_is_the_daemons_dispatch_table():
    """protocol.METHODS is the API's source of truth: the daemon builds its dispatch from it
    (and refuses to start with a method no one handles); Commands handles all but the methods
    of Supervisor compatibility, which supervisor.compat registers."""
    from supervisor import protocol
    from supervisor.commands import Commands

    handlers = {name for name, value in vars(Commands).items()
                if not name.startswith("_") and callable(value)} - {"extend", "missing"}
    assert handlers <= set(protocol.METHODS)
    assert set(protocol.METHODS) - handlers == {"apply", "update", "program_sources", "xmlrpc"}


def events_of(d: Daemon, **params) -> list[dict]:
    return d.stream("events", **params)


def test_run_ps_stop_wait_rm_round_trip(daemon):
    cid = daemon.run("sleep", "100", name="web")
    assert cid == "web"
    row = daemon.ps()["web"]
    assert row["state"] == "running" and row["pid"] > 0 and row["restarts"] == 0
    os.kill(row["pid"], 0)  # really running
    result = daemon.call("stop", id="web", timeout=5)
    assert result["exit_status"] == 143 and result["signal"] == 15
    assert daemon.call("wait", id="web")["exit_status"] == 143
    assert daemon.ps()["web"]["state"] == "stopped"
    assert "web" not in daemon.ps(all=False)
    daemon.call("rm", id="web")
    assert "web" not in daemon.ps()
    assert not (daemon.root / "shims" / "web").exists()
    types = [e["type"] for e in events_of(daemon) if e["id"] == "web"]
    # the stop is durable before it begins; rm of a container stopped by hand adds no stop
    assert types == ["container.create", "task.create", "task.start", "container.stop",
                     "task.exit", "container.delete"]
    assert [e["data"] for e in events_of(daemon, types=["container.stop"])] == [
        {"reason": "stop", "timeout": 5.0}]  # the stop's own timeout: resent as it was
    # rm freed the id
    assert daemon.run("true", name="web") == "web"
    assert daemon.call("wait", id="web")["exit_status"] == 0


def test_generated_ids_exit_status_logs_and_inspect(daemon):
    cid = daemon.run("sh", "-c", "echo out; echo err >&2; exit 7", env={"X": "1"})
    assert cid and "/" not in cid
    assert daemon.call("wait", id=cid)["exit_status"] == 7
    lines = daemon.stream("logs", id=cid)
    assert [(i["stream"], i["line"]) for i in lines] == [("stdout", b"out"), ("stderr", b"err")]
    assert all(isinstance(i["time"], int) and i["partial"] is False for i in lines)
    assert [i["line"] for i in daemon.stream("logs", id=cid, tail=1)] == [b"err"]
    info = daemon.call("inspect", id=cid)
    assert info["spec"]["env"] == {"X": "1"} and info["exit_status"] == 7
    assert [e["type"] for e in info["history"]] == ["container.create", "task.create",
                                                    "task.start", "task.exit"]


def test_logs_follow_streams_until_exit(daemon):
    cid = daemon.run("sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.1; done")
    lines = [i["line"] for i in daemon.stream("logs", id=cid, follow=True)]
    assert lines == [b"line1", b"line2", b"line3"]


def test_create_then_start_and_conflicts(daemon):
    cid = daemon.call("create", spec={"command": ["sleep", "100"], "name": "c1"})["id"]
    assert daemon.ps()["c1"]["state"] == "created"
    with pytest.raises(wire.RemoteError) as err:
        daemon.call("create", spec={"command": ["true"], "name": "c1"})
    assert err.value.code == "conflict"
    started = daemon.call("start", id=cid)
    assert started["pid"] == daemon.ps()["c1"]["pid"]
    with pytest.raises(wire.RemoteError) as err:
        daemon.call("start", id=cid)
    assert err.value.code == "conflict"
    with pytest.raises(wire.RemoteError) as err:
        daemon.call("rm", id=cid)
    assert err.value.code == "conflict"
    daemon.call("rm", id=cid, force=True)
    assert daemon.ps() == {}


def test_exec_failure_is_recorded_as_127(daemon):
    with pytest.raises(wire.RemoteError) as err:
        daemon.run("/nonexistent/binary", name="nx")
    assert err.value.code == "exec_failed"
    row = daemon.ps()["nx"]
    assert row["state"] == "stopped" and row["exit_status"] == 127


def test_kill_restart_and_restarts_count(daemon):
    daemon.run("sleep", "100", name="k")
    pid = daemon.ps()["k"]["pid"]
    daemon.call("kill", id="k", signal="KILL")
    assert daemon.call("wait", id="k")["exit_status"] == 137
    result = daemon.call("restart", id="k", timeout=1)
    assert result["pid"] != pid
    row = daemon.ps()["k"]
    assert (row["state"], row["restarts"], row["pid"]) == ("running", 1, result["pid"])
    daemon.call("restart", id="k", timeout=1)
    assert daemon.ps()["k"]["restarts"] == 2
    daemon.call("rm", id="k", force=True)


def test_bad_exec_requests_and_unknown_methods_are_refused(daemon):
    for method, params, code in (("exec", {}, "invalid"),
                                 ("exec", {"command": ["true"]}, "not_found"),
                                 ("frobnicate", {}, "unknown_method")):
        with pytest.raises(wire.RemoteError) as err:
            list(daemon.stream(method, id="x", **params))
        assert err.value.code == code


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 300, ".", "..", "a\0b"])
def test_bad_ids_are_refused_before_touching_a_path(daemon, bad):
    for method, params in (("run", {"spec": {"command": ["true"], "name": bad}}),
                           ("create", {"spec": {"command": ["true"], "name": bad}}),
                           ("start", {"id": bad}), ("stop", {"id": bad}),
                           ("kill", {"id": bad}), ("rm", {"id": bad}),
                           ("inspect", {"id": bad}), ("wait", {"id": bad}),
                           ("restart", {"id": bad})):
        with pytest.raises(wire.RemoteError) as err:
            daemon.call(method, **params)
        assert err.value.code == "invalid", method
        assert "container id" in err.value.message
    with pytest.raises(wire.RemoteError) as err:
        daemon.stream("logs", id=bad)
    assert err.value.code == "invalid"
    assert sorted(p.name for p in (daemon.root / "shims").iterdir()) == []
    assert not (daemon.root.parent / "x").exists()


def _raw(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(d.socket)
    return s


def _read_frames(s: socket.socket) -> list[dict]:
    dec = wire.FrameDecoder()
    out: list[dict] = []
    while True:
        try:
            data = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        out.extend(dec.feed(data))
    return out


HELLO = wire.encode(wire.hello("client"))


@pytest.mark.parametrize("payload,code", [
    (b"\x00\x00\x00\x05garbage-and-more", "protocol"),              # not msgpack
    (struct.pack(">I", 2**31) + b"x" * 100, "protocol"),            # a huge length header
    (struct.pack(">I", 3) + msgpack.packb([1, 2]), "protocol"),     # not a map
    (wire.encode({"hello": {"proto": 99, "role": "client"}}), "protocol"),  # wrong version
    (wire.encode({"id": 1, "method": "ps"}), "protocol"),           # no hello first
    (b"\xff" * 64, "protocol"),
])
def test_framing_errors_get_an_error_frame_then_close(daemon, payload, code):
    s = _raw(daemon)
    s.sendall(payload)
    frames = _read_frames(s)
    s.close()
    assert frames and frames[-1]["error"]["code"] == code, frames
    assert daemon.call("status")["ok"]


def test_bad_requests_after_hello_get_error_replies_on_a_live_connection(daemon):
    s = _raw(daemon)
    s.sendall(HELLO)
    s.sendall(wire.encode({"id": 1, "method": "nope"}))
    s.sendall(wire.encode({"id": 2, "method": "ps", "params": [1]}))
    s.sendall(wire.encode({"method": "ps"}))
    s.sendall(wire.encode({"id": 3, "method": "stop", "params": {"id": "x", "timeout": "soon"}}))
    s.sendall(wire.encode({"id": 4, "method": "run", "params": {"spec": {"command": "ls"}}}))
    s.sendall(wire.encode({"id": 5, "method": "status"}))
    s.settimeout(0.5)  # the connection stays open: read until quiet
    frames = _read_frames(s)
    s.close()
    by_id = {f.get("id"): f for f in frames if "hello" not in f}
    assert by_id[1]["error"]["code"] == "unknown_method"
    assert by_id[2]["error"]["code"] == "invalid"
    assert by_id[None]["error"]["code"] == "invalid"
    assert by_id[3]["error"]["code"] == "invalid"
    assert by_id[4]["error"]["code"] == "invalid"
    assert by_id[5]["result"]["ok"] is True


def test_many_bad_clients_do_not_disturb_a_good_one(daemon):
    def hammer():
        for _ in range(30):
            try:
                s = _raw(daemon)
                s.sendall(os.urandom(200))
                s.close()
            except OSError:
                pass

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    cid = daemon.run("true")
    for t in threads:
        t.join()
    assert daemon.call("wait", id=cid)["exit_status"] == 0
    assert daemon.running()


def test_socket_is_private(daemon):
    mode = stat.S_IMODE(os.stat(daemon.socket).st_mode)
    assert mode == 0o600


def test_events_since_then_follow_has_no_gap_and_no_duplicate(daemon):
    for _ in range(3):
        daemon.run("true")
    received: list[dict] = []
    mid = daemon.call("status")["last_seq"]
    conn = daemon.connect()
    stream = conn.stream("events", since=2, follow=True)
    stop = threading.Event()

    def workload():
        for _ in range(6):
            daemon.run("true")
        stop.set()
        daemon.run("true")  # events after stop is set: the loop below must see one to end

    worker = threading.Thread(target=workload)
    worker.start()
    try:
        for item in stream:
            received.append(item)
            if stop.is_set() and item["seq"] >= daemon.call("status")["last_seq"]:
                break
    finally:
        worker.join()
        conn.close()
    seqs = [e["seq"] for e in received]
    assert seqs == list(range(3, seqs[-1] + 1)), seqs
    assert seqs[-1] > mid
    filtered = daemon.stream("events", since=0, types=["task.exit"])
    assert filtered and all(e["type"] == "task.exit" for e in filtered)


def test_slow_subscriber_is_cut_off_with_too_slow_naming_its_last_seq(daemon):
    conn = daemon.connect()
    rid = conn.send_request("events", {"since": 0, "follow": True, "buffer": 3})
    for _ in range(12):  # about 45 events, while the subscriber reads nothing
        daemon.run("true", env={"PAD": "x" * 2000})
    got: list[dict] = []
    error = None
    while error is None:
        message = conn.recv()
        if message.get("id") != rid:
            continue
        if "item" in message:
            got.append(message["item"])
        elif "error" in message:
            error = message["error"]
    conn.close()
    assert error["code"] == "too_slow"
    last = got[-1]["seq"] if got else 0
    assert f"since={last}" in error["message"], (error, last)
    # resuming from the named seq loses nothing
    rest = daemon.stream("events", since=last)
    seqs = [e["seq"] for e in got] + [e["seq"] for e in rest]
    assert seqs == list(range(1, seqs[-1] + 1))


def test_sigterm_records_stop_and_containers_keep_running(daemon):
    daemon.run("sleep", "100", name="keep")
    pid = daemon.ps()["keep"]["pid"]
    assert daemon.stop() == 0
    os.kill(pid, 0)
    daemon.start().reconciled()
    assert daemon.ps()["keep"]["pid"] == pid
    assert daemon.ps()["keep"]["state"] == "running"
    types = [e["type"] for e in events_of(daemon, types=["supervisor"])]
    assert types == ["supervisor.start", "supervisor.stop", "supervisor.start"]


def test_shutdown_method(daemon):
    daemon.run("sleep", "100", name="keep")
    assert daemon.call("shutdown") is None
    assert daemon.wait_exit(10) == 0
    os.kill(int((daemon.root / "shims/keep/shim.pid").read_text()), 0)  # the shim lives on
    assert not os.path.exists(daemon.socket)


def test_info_and_status(daemon):
    daemon.run("sleep", "100", name="a")
    info = daemon.call("info")
    assert info["containers"]["running"] == 1 and info["root"] == str(daemon.root)
    status = daemon.call("status")
    assert status["ok"] and status["pid"] == daemon.pid and status["reconciling"] is False


def test_concurrent_runs_get_distinct_ids_and_gap_free_seqs(daemon):
    out: list[str] = []

    def one():
        with BlockingConnection(daemon.socket) as c:
            out.append(c.call("run", spec={"command": ["true"]})["id"])

    threads = [threading.Thread(target=one) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 20, out
    seqs = [e["seq"] for e in events_of(daemon)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_logs_read_and_follow_across_rotation(daemon):
    script = ("sleep 0.3; i=0; while [ $i -lt 400 ]; do echo line$i; i=$((i+1)); "
              "[ $((i % 50)) -eq 0 ] && sleep 0.05; done")
    cid = daemon.run("sh", "-c", script, log_max_size=4096, log_keep=50)
    followed = [i["line"] for i in daemon.stream("logs", id=cid, follow=True)]
    expected = [f"line{i}".encode() for i in range(400)]
    assert followed == expected
    rotated = list((daemon.root / "shims" / cid).glob("container.log.*"))
    assert len(rotated) >= 2, rotated
    assert [i["line"] for i in daemon.stream("logs", id=cid)] == expected
    assert [i["line"] for i in daemon.stream("logs", id=cid, tail=3)] == expected[-3:]


_AS_NOBODY = """
import os, sys
import msgpack  # the wire imports it on first use: by then, as nobody, the stdlib may be closed
from events.rpc import BlockingConnection
from events import wire
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # peer credentials are taken at connect
try:
    with BlockingConnection(sys.argv[1], timeout=5) as c:
        print("ok", c.call("status")["ok"])
except wire.RemoteError as exc:
    print("refused", exc.code)
except OSError as exc:
    print("oserror", exc.errno)
"""


@pytest.mark.parametrize("group", [None, "nogroup"])
def test_peer_credentials_are_checked(daemon_factory, tmp_path, group):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    import grp
    import subprocess
    import sys

    try:
        grp.getgrnam("nogroup")
    except KeyError:
        pytest.skip("no group 'nogroup' here")
    sockdir = tmp_path / "sock"
    sockdir.mkdir()
    os.chmod(sockdir, 0o755)
    for parent in (tmp_path, tmp_path.parent, tmp_path.parent.parent):
        os.chmod(parent, os.stat(parent).st_mode | 0o011)
    path = str(sockdir / "s.sock")
    args = ["--socket", path] + (["--group", group] if group else [])
    d = daemon_factory(*args)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == (0o660 if group else 0o600)
    os.chmod(path, 0o666)  # take the file mode out of the way: the second gate must hold
    out = subprocess.run([sys.executable, "-c", _AS_NOBODY, path], capture_output=True,
                         text=True, cwd=str(Path(__file__).resolve().parent.parent),
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve()
                                                              .parent.parent)})
    assert out.stdout.strip() == ("ok True" if group else "refused permission_denied"), out
    assert d.call("status")["ok"]


def test_a_shim_that_cannot_start_leaves_nothing(daemon):
    with pytest.raises(wire.RemoteError) as err:
        daemon.run("true", name="bad", cwd="/nonexistent/dir")
    assert err.value.code in ("invalid", "exec_failed"), err.value
    if err.value.code == "invalid":  # refused before a task existed: no trace at all
        assert "bad" not in daemon.ps()
        assert not (daemon.root / "shims" / "bad").exists()
    assert daemon.call("status")["ok"]


def test_created_containers_can_be_stopped_or_removed(daemon):
    daemon.call("create", spec={"command": ["sleep", "100"], "name": "c1"})
    daemon.call("create", spec={"command": ["sleep", "100"], "name": "c2"})
    result = daemon.call("stop", id="c1", timeout=1)
    assert result["exit_status"] is not None
    assert daemon.ps()["c1"]["state"] == "stopped"
    daemon.call("rm", id="c2")  # created is not running: no force needed
    assert "c2" not in daemon.ps()
    daemon.call("rm", id="c1")
    assert daemon.ps() == {}
    from conftest import processes_naming

    # a shim ends just after its delete's reply: gone soon, and nothing of it stays
    for text in (str(daemon.root / "shims"), f"{daemon.root} --id c1", f"{daemon.root} --id c2"):
        daemon.wait_for(lambda text=text: processes_naming(text) == [])


def test_wait_returns_when_the_container_exits_later(daemon):
    daemon.run("sh", "-c", "sleep 0.3; exit 4", name="later")
    assert daemon.ps()["later"]["state"] == "running"  # wait is called before the exit
    assert daemon.call("wait", id="later")["exit_status"] == 4


def test_commands_on_one_container_serialize_and_others_run_in_parallel(daemon):
    daemon.run("sh", "-c", "trap 'echo term' TERM; echo ready; while :; do sleep 0.05; done",
               name="slow")
    daemon.wait_for_line("slow", "ready")
    results: dict[str, object] = {}

    def stop_slow():
        results["stop"] = daemon.call("stop", id="slow", timeout=1.5)

    def rm_slow():
        daemon.call("rm", id="slow")  # queued behind the stop on the container's lock
        results["rm"] = "done"

    stopper = threading.Thread(target=stop_slow)
    stopper.start()
    daemon.wait_for_line("slow", "term")  # the stop is under way (its SIGTERM is ignored)
    remover = threading.Thread(target=rm_slow)
    remover.start()
    # meanwhile another container is created, run and waited for: the stop does not hold it up
    other = daemon.run("true")
    assert daemon.call("wait", id=other)["exit_status"] == 0
    stopper.join()
    remover.join()
    assert results["stop"]["exit_status"] == 137 and results["rm"] == "done"
    assert "slow" not in daemon.ps()
    order = [(e["id"], e["type"]) for e in events_of(daemon)
             if e["type"] in ("task.exit", "container.delete")]
    # the other container ended while the stop was still waiting out its grace time, and the
    # rm did not fail with "running": it waited for the stop's exit
    assert order.index((other, "task.exit")) < order.index(("slow", "task.exit"))
    assert order.index(("slow", "task.exit")) < order.index(("slow", "container.delete"))


def test_json_logs_are_one_object_per_line(daemon):
    import json

    daemon.stop()
    lines = [line for line in daemon.stderr().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    events = [r["event"] for r in records]
    assert "supervisord started" in events and "supervisord stopped; containers keep running" \
        in events
    assert all("timestamp" in r and "level" in r for r in records)
