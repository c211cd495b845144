"""supervisord-export against real nats-server processes on 127.0.0.1 and real supervisords.

What a fleet operator relies on: every event of every node's log is in the stream exactly once,
in the node's order, across restarts of the exporter and of the daemon, a re-created root, a
compacted log (said loudly, recorded as ``export.gap``), and what a crashed exporter leaves in
the stream; bad input is a clear error and a non-zero exit with nothing published.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from daemon_helpers import Daemon
from nats_helpers import (
    EXPORT,
    ExportProc,
    NatsCluster,
    NatsServer,
    fleet_events,
    free_port,
    local_events,
    need_nats_server,
    wait_exported,
)

from events import wire
from supervisor.fleet import broker, records


def _run_exits(d: Daemon, n: int, status_base: int = 0) -> None:
    for i in range(n):
        d.run("sh", "-c", f"exit {(status_base + i) % 100}")
    d.wait_for(lambda: all(r["state"] == "stopped" for r in d.ps().values()), timeout=30)


async def _stream(servers: str, stream: str = "TETHER") -> Any:
    nc = await nats.connect(servers.split(","))
    try:
        return await nc.jetstream().stream_info(stream)
    finally:
        await nc.close()


def stream_info(servers: str, stream: str = "TETHER") -> Any:
    return asyncio.run(_stream(servers, stream))


def test_two_nodes_on_a_three_server_cluster_every_event_once_in_order(
        nats_cluster: NatsCluster, daemon_factory: Any, tmp_path: Path) -> None:
    a = daemon_factory(root_dir=tmp_path / "a")
    b = daemon_factory(root_dir=tmp_path / "b")
    _run_exits(a, 3)
    ea = ExportProc(a.root, nats_cluster.urls, "node-a").start()
    eb = ExportProc(b.root, nats_cluster.urls, "node-b").start()
    try:
        for i in range(4):  # containers exit on both while both exporters run
            _run_exits(a, 2, i)
            _run_exits(b, 2, i)
        fa = wait_exported(nats_cluster.urls, a, "node-a")
        fb = wait_exported(nats_cluster.urls, b, "node-b")
        info = stream_info(nats_cluster.urls)
        assert info.config.num_replicas == 3 and info.config.subjects == ["tether.>"]
        assert info.state.messages == len(fa) + len(fb)  # exactly once: nothing else in it
        assert sum(e["type"] == "task.exit" for e in fa) == 11
        assert [e["seq"] for e in fb] == list(range(1, len(fb) + 1))
    finally:
        assert ea.stop() == 0 and eb.stop() == 0
    # no hole, gap or refusal (a transient timeout on a loaded machine is a warning, retried)
    assert not [r for e in (ea, eb) for r in e.log_lines() if r.get("level") == "error"]


def test_restarts_of_exporter_and_daemon_resume_from_the_stream(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(root_dir=tmp_path / "r")
    e = ExportProc(d.root, nats_server.url, "n1").start()
    _run_exits(d, 3)
    wait_exported(nats_server.url, d, "n1")
    e.kill9()  # no local state to go stale: the restart reads the stream
    _run_exits(d, 2)
    e.start()
    wait_exported(nats_server.url, d, "n1")
    d.kill9()  # the exporter waits for the daemon and resumes
    time.sleep(0.5)
    d.start()
    _run_exits(d, 2)
    events = wait_exported(nats_server.url, d, "n1")
    assert stream_info(nats_server.url).state.messages == len(events)
    assert e.stop() == 0
    assert any("daemon unavailable" in r.get("event", "") for r in e.log_lines())


def test_a_recreated_root_is_a_new_log_exported_from_seq_1(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory(root_dir=tmp_path / "r")
    e = ExportProc(d.root, nats_server.url, "n1").start()
    _run_exits(d, 2)
    old = wait_exported(nats_server.url, d, "n1")
    e.stop()
    d.stop()
    shutil.rmtree(d.root)  # same node name, new log: its seqs 1, 2, ... must not be deduplicated
    d.start()
    _run_exits(d, 1)
    e.start()
    new = local_events(d)
    deadline = time.monotonic() + 30
    while fleet_events(nats_server.url, "n1") != old + new:
        assert time.monotonic() < deadline, fleet_events(nats_server.url, "n1")[-3:]
        time.sleep(0.3)
    assert e.stop() == 0
    assert any("new one" in r.get("event", "") for r in e.log_lines())


def test_a_log_compacted_past_the_position_is_a_loud_gap_event(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    d = daemon_factory("--snapshot-every", "5", "--retain-events", "2", "--segment-size",
                       "4096", root_dir=tmp_path / "r")
    _run_exits(d, 12)
    d.restart()  # a snapshot and compaction at the stop
    with pytest.raises(wire.RemoteError) as refused:
        d.stream("events")
    first = int(refused.value.message.rsplit(" ", 1)[1])  # "... the oldest kept is N"
    assert first > 2, "the log was not compacted: the test needs a compacted log"
    e = ExportProc(d.root, nats_server.url, "n1").start()
    local = local_events(d, since=first - 1)
    deadline = time.monotonic() + 30
    while True:
        fleet = fleet_events(nats_server.url, "n1")
        if fleet[1:] == local:
            break
        assert time.monotonic() < deadline, (fleet[:2], local[:2])
        time.sleep(0.3)
    gap = fleet[0]
    assert gap["type"] == records.GAP_TYPE and gap["seq"] == first - 1
    assert gap["data"]["first"] == 1 and gap["data"]["last"] == first - 1
    e.stop()
    assert any(r.get("level") == "error" and "EVENTS LOST" in r.get("event", "")
               for r in e.log_lines())


# -- what a crashed exporter leaves behind --------------------------------------------------


async def _publish(servers: str, node: str, log_id: str, items: list[dict[str, Any]],
                   acked: records.Position) -> None:
    """Publish as an exporter does (same stream, subjects, ids and headers)."""
    nc = await nats.connect(servers.split(","))
    try:
        js = nc.jetstream()
        await broker.ensure_stream(js, "TETHER", None)
        for record in items:
            event = records.FleetEvent(node, log_id, record["seq"], record["time"],
                                       record["type"], record["id"], record["data"])
            await js.publish(records.subject_for(node, event.type), records.encode(event),
                             headers=records.headers(event, acked))
    finally:
        await nc.close()


def _raw_log(d: Daemon) -> list[dict[str, Any]]:
    return d.stream("events")


def test_stored_but_unacknowledged_publishes_are_not_sent_again(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    """The exporter died after JetStream stored messages it never saw acked: its restart
    reads them back from the stream and does not re-send them, even past the dup window."""
    d = daemon_factory(root_dir=tmp_path / "r")
    _run_exits(d, 3)
    log = _raw_log(d)
    log_id = d.call("info")["log_id"]
    # The stream as the dead exporter left it: 8 events, the last 5 sent while 3 were acked.
    asyncio.run(_publish(nats_server.url, "n1", log_id, log[:3], records.Position(log_id)))
    asyncio.run(_publish(nats_server.url, "n1", log_id, log[3:8],
                         records.Position(log_id, 3, 3)))
    e = ExportProc(d.root, nats_server.url, "n1").start()
    events = wait_exported(nats_server.url, d, "n1")
    assert e.stop() == 0
    assert stream_info(nats_server.url).state.messages == len(events)
    assert not any(r.get("level") == "error" for r in e.log_lines())


def test_a_publish_the_broker_dropped_while_it_stored_a_later_one_is_sent_again(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    """A leader change can drop message k while k+1 (in flight behind it) is stored: the next
    session checks the messages that were in flight and publishes k again, out of order and
    said so, rather than lose it."""
    d = daemon_factory(root_dir=tmp_path / "r")
    _run_exits(d, 3)
    log = _raw_log(d)
    log_id = d.call("info")["log_id"]
    asyncio.run(_publish(nats_server.url, "n1", log_id, log[:3], records.Position(log_id)))
    asyncio.run(_publish(nats_server.url, "n1", log_id, log[3:5] + log[6:8],
                         records.Position(log_id, 3, 3)))  # seq 6 lost in flight
    e = ExportProc(d.root, nats_server.url, "n1").start()
    deadline = time.monotonic() + 30
    while True:
        fleet = fleet_events(nats_server.url, "n1")
        if sorted(x["seq"] for x in fleet) == [x["seq"] for x in local_events(d)]:
            break
        assert time.monotonic() < deadline, [x["seq"] for x in fleet]
        time.sleep(0.3)
    seqs = [x["seq"] for x in fleet]
    assert len(seqs) == len(set(seqs))  # every event once
    assert seqs[:8] == [1, 2, 3, 4, 5, 7, 8, 6]  # the lost one came late, not never
    assert e.stop() == 0
    assert any(r.get("level") == "error" and r.get("seq") == 6 for r in e.log_lines())


# -- bad input -------------------------------------------------------------------------------


def _run_export(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXPORT, *args], capture_output=True, text=True, timeout=timeout)


def test_an_unreachable_broker_at_start_is_a_clear_error(daemon_factory: Any,
                                                         tmp_path: Path) -> None:
    d = daemon_factory(root_dir=tmp_path / "r")
    port = free_port()
    proc = _run_export("--root", str(d.root), "--nats", f"nats://127.0.0.1:{port}", "--node",
                       "n1")
    assert proc.returncode == 1
    assert f"no NATS server answered at nats://127.0.0.1:{port}" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--node", "a.b"], "invalid node name 'a.b'"),
    (["--nats", "http://x:1"], "invalid NATS URL"),
    (["--creds", "/nonexistent/creds"], "no such file"),
])
def test_bad_arguments_are_usage_errors(args: list[str], message: str, tmp_path: Path) -> None:
    base = {"--nats": "nats://127.0.0.1:4222", "--node": "n1"}
    argv = ["--root", str(tmp_path)]
    for flag, value in base.items():
        if flag not in args:
            argv += [flag, value]
    proc = _run_export(*argv, *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@need_nats_server
def test_bad_credentials_are_refused_with_nothing_published(daemon_factory: Any,
                                                            tmp_path: Path) -> None:
    server = NatsServer("auth", tmp_path / "nats", auth=("tether", "s3cret"))
    d = daemon_factory(root_dir=tmp_path / "r")
    try:
        server.start()
        proc = _run_export("--root", str(d.root), "--nats", server.url, "--node", "n1",
                           "--user", "tether", "--password", "wrong")
        assert proc.returncode == 1
        assert "refused the credentials" in proc.stderr and "--user/--password" in proc.stderr
        proc = subprocess.Popen([EXPORT, "--root", str(d.root), "--nats", server.url, "--node",
                                 "n1", "--user", "tether", "--password", "s3cret"],
                                stderr=subprocess.PIPE, text=True)
        try:  # the right ones work, against the same server
            url = f"nats://tether:s3cret@127.0.0.1:{server.port}"
            deadline = time.monotonic() + 20
            while not fleet_events(url, "n1"):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            proc.terminate()
            assert proc.wait(20) == 0
    finally:
        server.kill9()


def test_a_stream_with_other_subjects_is_refused_and_left_alone(
        nats_server: NatsServer, daemon_factory: Any, tmp_path: Path) -> None:
    async def make() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().add_stream(name="TETHER", subjects=["orders.>"])
        finally:
            await nc.close()

    asyncio.run(make())
    d = daemon_factory(root_dir=tmp_path / "r")
    proc = _run_export("--root", str(d.root), "--nats", nats_server.url, "--node", "n1")
    assert proc.returncode == 1
    assert "exists with subjects ['orders.>'], not tether.>" in proc.stderr
    info = stream_info(nats_server.url)
    assert info.config.subjects == ["orders.>"] and info.state.messages == 0
    # ... and a stream name that does not exist but whose subjects another stream takes:
    asyncio.run(_add(nats_server.url, "OTHER", ["tether.>"], delete="TETHER"))
    proc = _run_export("--root", str(d.root), "--nats", nats_server.url, "--node", "n1")
    assert proc.returncode == 1 and "overlap" in proc.stderr, proc.stderr


async def _add(servers: str, name: str, subjects: list[str], delete: str) -> None:
    nc = await nats.connect(servers)
    try:
        js = nc.jetstream()
        await js.delete_stream(delete)
        await js.add_stream(name=name, subjects=subjects)
    finally:
        await nc.close()


def test_the_message_contract(nats_server: NatsServer, daemon_factory: Any,
                              tmp_path: Path) -> None:
    """Subject, Msg-Id and headers, body: what a consumer in any language reads."""
    d = daemon_factory(root_dir=tmp_path / "r")
    _run_exits(d, 1)
    log_id = d.call("info")["log_id"]
    e = ExportProc(d.root, nats_server.url, "n1").start()
    wait_exported(nats_server.url, d, "n1")
    e.stop()

    async def last() -> Any:
        nc = await nats.connect(nats_server.url)
        try:
            return await nc.jetstream().get_last_msg("TETHER", "tether.n1.task.exit")
        finally:
            await nc.close()

    msg = asyncio.run(last())
    exit_event = next(x for x in d.stream("events") if x["type"] == "task.exit")
    seq = exit_event["seq"]
    assert msg.subject == "tether.n1.task.exit"
    assert msg.headers["Nats-Msg-Id"] == f"n1/{log_id}/{seq}"
    assert msg.headers["Tether-Id"] == exit_event["id"]
    body = json.loads(msg.data)
    assert body == {"node": "n1", "log_id": log_id, **exit_event}


def test_a_retried_publish_is_dropped_by_its_msg_id(nats_server: NatsServer,
                                                     tmp_path: Path) -> None:
    """What makes a retry after an ack timeout (or a leader change) harmless: the same event
    published again carries the same Nats-Msg-Id and JetStream keeps one copy; an event of
    another log with the same node and seq is another message."""
    from supervisor.fleet.export import ExportConfig, Exporter

    async def go() -> tuple[list[int], int]:
        exporter = Exporter(ExportConfig(root=str(tmp_path), servers=[nats_server.url],
                                         node="n1"))
        await exporter.connect()
        try:
            event = records.FleetEvent("n1", "a" * 32, 1, 0, "task.exit", "c", {})
            other_log = records.FleetEvent("n1", "b" * 32, 1, 0, "task.exit", "c", {})
            start = records.Position("a" * 32)
            seqs = [await exporter.publish_one(e, start) for e in (event, event, other_log)]
            return seqs, exporter.published
        finally:
            await exporter.close()

    seqs, published = asyncio.run(go())
    assert seqs == [1, 1, 2] and published == 3
    assert stream_info(nats_server.url).state.messages == 2
