"""``python -m events verify|dump|repair``: what an operator sees, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from events.log import HEADER_SIZE, EventLog, segment_name
from events.snapshot import write_snapshot

T0 = 1_795_830_000_123_456_789


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "events", *args], capture_output=True,
                          text=True, timeout=60)


def make_log(root: Path, n: int = 6) -> None:
    with EventLog.open(root, segment_size=200) as log:
        for i in range(n):
            log.append([("task.exit", f"c{i}", {"exit_status": i, "out": b"ok",
                                                 "raw": b"\xff\x00", "msg": "two words"})],
                       time_ns=T0 + i)


def test_verify_ok(root: Path) -> None:
    make_log(root)
    write_snapshot(root, 3, {})
    res = run("verify", str(root))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "6 record(s), seqs 1..6" in res.stdout
    assert "snapshot: seq 3" in res.stdout and res.stdout.rstrip().endswith("ok")


def test_verify_reports_file_and_offset_and_exits_1(root: Path) -> None:
    make_log(root)
    path = root / "events" / segment_name(1)
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 9] ^= 0x10
    path.write_bytes(data)
    res = run("verify", str(root))
    assert res.returncode == 1
    assert f"{path}: byte offset {HEADER_SIZE}" in res.stdout
    assert "repair" in res.stdout


def test_verify_without_a_log_exits_1(tmp_path: Path) -> None:
    res = run("verify", str(tmp_path / "nothing"))
    assert res.returncode == 1 and "no event log" in res.stderr


def test_dump_json_lines_parse(root: Path) -> None:
    make_log(root)
    res = run("dump", str(root), "--json")
    assert res.returncode == 0, res.stderr
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["seq"] for o in objs] == [1, 2, 3, 4, 5, 6]
    assert list(objs[0]) == ["seq", "time", "type", "id", "data"]
    assert objs[0]["time"].endswith(".123456789Z")
    assert objs[0]["data"]["out"] == "ok"
    assert objs[0]["data"]["raw"] == {"base64": "/wA="}
    res = run("dump", str(root), "--since", "4", "--json")
    assert [json.loads(line)["seq"] for line in res.stdout.splitlines()] == [5, 6]


def test_dump_text_lines(root: Path) -> None:
    make_log(root, 2)
    lines = run("dump", str(root)).stdout.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith("2 ") and "task.exit c1" in lines[1]
    assert "exit_status=1" in lines[1] and 'msg="two words"' in lines[1]


def test_dump_prints_what_precedes_damage_then_fails(root: Path) -> None:
    make_log(root)
    with EventLog.open(root, segment_size=200) as log:
        _, path = log.segments()[1]
    data = bytearray(path.read_bytes())
    data[HEADER_SIZE + 12] ^= 1
    path.write_bytes(data)
    res = run("dump", str(root), "--json")
    assert res.returncode == 1
    assert str(path) in res.stderr and "byte offset" in res.stderr
    seqs = [json.loads(line)["seq"] for line in res.stdout.splitlines()]
    assert seqs == list(range(1, int(path.name[:20])))


def test_repair_then_verify(root: Path) -> None:
    make_log(root)
    path = root / "events" / segment_name(1)
    data = bytearray(path.read_bytes())
    data[-3] ^= 1  # last record of the first segment: later segments exist, so corruption
    path.write_bytes(data)
    assert run("verify", str(root)).returncode == 1
    res = run("repair", str(root))
    assert res.returncode == 0, res.stderr
    assert "repaired" in res.stdout and ".broken" in res.stdout
    assert run("verify", str(root)).returncode == 0
    assert "nothing to repair" in run("repair", str(root)).stdout


def test_usage_errors_exit_2(root: Path) -> None:
    assert run().returncode == 2
    assert run("frobnicate", str(root)).returncode == 2
    assert run("dump", str(root), "--since", "x").returncode == 2


def test_verify_after_a_power_cut_warns_then_notes_the_evidence(root: Path) -> None:
    with EventLog.open(root) as log:
        log.append([("task.start", "c", {"pid": 1})], time_ns=T0)
        log.append([("task.exit", "c", {"pad": "x" * 9000})], time_ns=T0)  # the unsynced one
    path = root / "events" / segment_name(1)
    data = path.read_bytes()
    path.write_bytes(data[:4096] + bytes(4096) + data[8192:])  # its middle page never written
    res = run("verify", str(root))
    assert res.returncode == 0, res.stdout  # a torn tail is not damage: the next open cuts it
    assert "(format 2: 1), 1 record(s)" in res.stdout
    assert "warning:" in res.stdout and "torn tail" in res.stdout
    assert [line.split()[0] for line in run("dump", str(root)).stdout.splitlines()] == ["1"]
    EventLog.open(root).close()
    res = run("verify", str(root))
    assert res.returncode == 0 and "1 record(s)" in res.stdout
    assert f"note: {path}.torn holds the unsynced tail" in res.stdout
