"""The fleet's readers: ``supervisorctl events --nats`` (the local output plus the node) and
``examples/fleet_subscriber.py`` (a durable consumer acting on every exit once), against real
nats-servers fed by real exporters; and the pure parts of the message contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import CTL, REPO
from nats_helpers import (
    ExportProc,
    NatsServer,
    fleet_events,
    free_port,
    local_events,
    wait_exported,
)

from supervisor.fleet import records
from supervisor.fleet.reader import ReaderError, parse_since

# -- the contract, pure ------------------------------------------------------------------------


@pytest.mark.parametrize("etype, subject", [
    ("task.exit", "tether.n1.task.exit"),
    ("task.exec.start", "tether.n1.task.exec.start"),
    ("container.giveup", "tether.n1.container.giveup"),  # a type this version does not know
    ("bad type", "tether.n1._invalid"),
    ("a..b", "tether.n1._invalid"),
    ("x.>", "tether.n1._invalid"),
    ("", "tether.n1._invalid"),
])
def test_subjects(etype: str, subject: str) -> None:
    assert records.subject_for("n1", etype) == subject


@pytest.mark.parametrize("name", ["a.b", "", "has space", "x*", "é", "a" * 65])
def test_node_names_are_one_subject_token(name: str) -> None:
    with pytest.raises(records.InvalidNode):
        records.validate_node(name)


def test_body_and_headers_round_trip() -> None:
    event = records.FleetEvent("n1", "ab" * 16, 7, 123, "future.type", "web",
                               {"x": [1, 2], "b": b"\xffraw"})
    decoded = records.decode(records.encode(event))
    assert decoded.data == {"x": [1, 2], "b": "\ufffdraw"}  # bytes as in events --json
    assert decoded.record() == {**event.record(), "data": decoded.data}
    hdrs = records.headers(event, records.Position("ab" * 16, 5, 40))
    assert hdrs["Nats-Msg-Id"] == f"n1/{'ab' * 16}/7"
    last, acked = records.position_of(hdrs, 44)
    assert (last.seq, last.stream_seq, acked.seq, acked.stream_seq) == (7, 44, 5, 40)
    with pytest.raises(records.BadMessage):
        records.decode(b'{"seq": 1}')
    with pytest.raises(records.BadMessage):
        records.position_of({"Nats-Msg-Id": "x"}, 1)
    assert records.parse_msg_id(hdrs) == ("n1", "ab" * 16, 7)


def test_since_parsing() -> None:
    now = 1_800_000_000 * 10**9
    assert parse_since("42", now) == ("seq", 42)
    assert parse_since("10m", now) == ("time", now - 600 * 10**9)
    assert parse_since("1h30m", now) == ("time", now - 5400 * 10**9)
    assert parse_since("2026-11-28T02:10:00.5Z", now) == ("time", 1795831800 * 10**9 + 5 * 10**8)
    assert parse_since("2026-11-28T03:10:00+01:00", now) == ("time", 1795831800 * 10**9)
    for bad in ("yesterday", "10x", "2026-11-28"):
        with pytest.raises(ReaderError):
            parse_since(bad, now)


# -- supervisorctl events --nats ---------------------------------------------------------------


def _ctl(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CTL, *argv], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


@pytest.fixture
def fleet(nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> Any:
    """Two nodes exported to one server, a few exits each, everything in the stream."""
    nodes = {}
    exporters = []
    for name in ("a", "b"):
        d = daemon_factory(root_dir=tmp_path / name)
        for i in range(3):
            d.run("sh", "-c", f"exit {i}")
        d.wait_for(lambda d=d: all(r["state"] == "stopped" for r in d.ps().values()))
        exporters.append(ExportProc(d.root, nats_server.url, name).start())
        nodes[name] = d
    for name, d in nodes.items():
        wait_exported(nats_server.url, d, name)
    try:
        yield nats_server.url, nodes
    finally:
        for e in exporters:
            e.stop()


def test_the_same_lines_as_local_events_plus_the_node(fleet: Any) -> None:
    url, nodes = fleet
    for name, d in nodes.items():
        local = _ctl("--root", str(d.root), "events").stdout.splitlines()
        remote = _ctl("events", "--nats", url, "--node", name).stdout.splitlines()
        assert remote == [f"{name} {line}" for line in local]
    both = _ctl("events", "--nats", url, "--json").stdout.splitlines()
    assert {json.loads(x)["node"] for x in both} == {"a", "b"}
    assert len(both) == sum(len(local_events(d)) for d in nodes.values())


def test_filters_since_seq_since_time_type_and_id(fleet: Any) -> None:
    url, nodes = fleet
    local = local_events(nodes["a"])
    assert fleet_events(url, "a", "--since", "5") == local[5:]
    assert fleet_events(url, "a", "--since", str(local[-1]["seq"])) == []
    exits = [e for e in local if e["type"] == "task.exit"]
    assert fleet_events(url, "a", "--type", "task.exit") == exits
    assert fleet_events(url, "a", "--type", "task.exit", "--id", exits[1]["id"]) == exits[1:2]
    assert fleet_events(url, "a", "--since", "1h") == local
    later = _ctl("events", "--nats", url, "--since", "2099-01-01T00:00:00Z")
    assert later.returncode == 0 and later.stdout == ""


def test_follow_prints_new_events_of_every_node_as_they_come(fleet: Any) -> None:
    url, nodes = fleet
    proc = subprocess.Popen([*CTL, "events", "--nats", url, "--follow", "--type", "task.exit",
                             "--since", "0s"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        time.sleep(1.5)  # subscribed (an ordered consumer) before the exits happen
        cid = nodes["b"].run("sh", "-c", "exit 42")
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("b ") and "task.exit" in line and f" {cid} " in line
        assert "exit_status=42" in line
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130


@pytest.mark.parametrize("argv, code, message", [
    (["events", "--nats", "nats://127.0.0.1:1", "--since", "5"], 2, "add --node NAME"),
    (["events", "--node", "a"], 2, "--node needs --nats"),
    (["events", "--since", "10m"], 2, "the local log takes a seq"),
    (["events", "--nats", "nats://127.0.0.1:1", "--since", "soon"], 2, "RFC 3339"),
    (["events", "--nats", "nats://127.0.0.1:1", "--node", "a.b"], 2, "invalid node name"),
    (["events", "--nats", "ftp://x:1"], 2, "invalid NATS URL"),
])
def test_bad_input_is_a_usage_error(argv: list[str], code: int, message: str) -> None:
    proc = _ctl(*argv)
    assert proc.returncode == code and message in proc.stderr, proc.stderr
    assert proc.stderr.startswith("supervisorctl events: ")


def test_no_broker_or_no_stream_is_a_clear_failure(nats_server: NatsServer) -> None:
    port = free_port()
    proc = _ctl("events", "--nats", f"nats://127.0.0.1:{port}")
    assert proc.returncode == 1 and "no NATS server answered" in proc.stderr
    proc = _ctl("events", "--nats", nats_server.url)
    assert proc.returncode == 1 and "no stream TETHER" in proc.stderr


def test_other_commands_never_import_nats_or_asyncio(daemon_factory: Any,
                                                     tmp_path: Path) -> None:
    d = daemon_factory(root_dir=tmp_path / "r")
    code = ("import sys\nfrom supervisor import ctl\n"
            f"rc = ctl.main(['--root', {str(d.root)!r}, 'ps'])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('nats', 'asyncio', 'supervisor') and m != 'supervisor.ctl_render'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=30).stdout.splitlines()[-1]
    assert "nats" not in out and "asyncio" not in out and "fleet" not in out, out
    assert out.startswith("0 ")


# -- examples/fleet_subscriber.py -------------------------------------------------------------

SUBSCRIBER = str(REPO / "examples" / "fleet_subscriber.py")


def test_fleet_subscriber_acts_on_every_exit_once_across_its_kill9(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    nodes = {n: daemon_factory(root_dir=tmp_path / n) for n in ("a", "b")}
    exporters = [ExportProc(d.root, nats_server.url, n).start() for n, d in nodes.items()]
    out = tmp_path / "exits"
    argv = [sys.executable, SUBSCRIBER, "--nats", nats_server.url, "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sub = None
    try:
        for round_ in range(3):
            for d in nodes.values():
                for i in range(3):
                    d.run("sh", "-c", f"exit {round_ * 3 + i}")
            for name, d in nodes.items():
                wait_exported(nats_server.url, d, name)
            sub = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE)
            time.sleep(1.0 + round_)
            sub.send_signal(signal.SIGKILL)  # at any moment, even between acting and acking
            sub.wait()
        sub = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        nodes["a"].run("sh", "-c", "exit 99")  # one more, acted on by this last incarnation
        wait_exported(nats_server.url, nodes["a"], "a")
        expected = sorted((n, e["seq"]) for n, d in nodes.items() for e in local_events(d)
                          if e["type"] == "task.exit")
        deadline = time.monotonic() + 30
        while True:
            lines = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
            if len(lines) >= len(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted((x["node"], x["seq"]) for x in lines) == expected
        sub.send_signal(signal.SIGTERM)
        assert sub.wait(10) == 0
    finally:
        if sub is not None and sub.poll() is None:
            sub.kill()
            sub.wait()
        for e in exporters:
            e.stop()
