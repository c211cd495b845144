"""``GET /metrics``: parsed by prometheus_client's own text parser, numbers checked against the
daemon's ``ps`` and against the processes that really run (/proc)."""


from __future__ import annotations

import socket
from typing import Any

from conftest import _proc_table
from daemon_helpers import Daemon
from prometheus_client.parser import text_string_to_metric_families


def scrape(d: Daemon) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.root / "supervisor.sock"))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/plain; version=0.0.4" in head
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()))
            samples[key] = sample.value
    return samples


def shim_processes(d: Daemon) -> int:
    marker = f"-m shim start --root {d.root} --id "
    return len({cmd.split(marker, 1)[1].split()[0] for _, cmd in _proc_table().values()
                if marker in cmd})


def test_metrics_match_ps_and_the_processes(daemon: Daemon) -> None:
    daemon.run("sleep", "1000", name="a")
    daemon.run("sleep", "1000", name="b")
    daemon.run("sh", "-c", "exit 3", name="quick")
    daemon.call("create", spec={"command": ["true"], "name": "idle"})
    daemon.wait_for(lambda: daemon.ps()["quick"]["state"] == "stopped")
    daemon.call("restart", id="b")
    daemon.call("restart", id="b")
    rows = daemon.ps()
    m = daemon.wait_for(lambda: (lambda s: s if s["tether_task_exits_total"] >= 3 else None)(
        scrape(daemon)))
    states = {state: sum(1 for r in rows.values() if r["state"] == state)
              for state in ("created", "running", "stopped")}
    for state, n in states.items():
        assert m[f"tether_containers{{state={state}}}"] == n, (state, m)
    assert m["tether_containers{state=unknown}"] == 0
    restarts = sum(r["restarts"] for r in rows.values())
    assert m["tether_container_restarts_total"] == restarts == 2
    assert m["tether_task_exits_total"] == 3  # quick, and b's task twice
    assert m["tether_events_total"] == daemon.call("status")["last_seq"]
    # the processes behind the numbers: the shims the daemon links to are the shims that run
    # (a replaced shim takes a moment to exit)
    daemon.wait_for(lambda: shim_processes(daemon) == scrape(daemon)["tether_shims"])
    assert m["tether_shims"] >= states["running"] == 2
    for cid in ("a", "b"):
        assert rows[cid]["state"] == "running"
        with open(f"/proc/{rows[cid]['pid']}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[0] == b"sleep"
    assert m["tether_log_fsync_seconds_count"] >= 1
    assert m["tether_log_fsync_seconds_bucket{le=+Inf}"] == m["tether_log_fsync_seconds_count"]
    assert 0 < m["tether_log_fsync_seconds_sum"] < 60
    assert m["tether_subscribers"] == 0
    assert m["tether_build_info{version=0.1.0}"] == 1
