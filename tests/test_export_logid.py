"""The log identity (ROOT/log_id) the fleet exporter's Msg-Id is built on: created once,
durable before the first event, never rewritten, a new one for a re-created root."""

from __future__ import annotations

import shutil

from supervisor.logid import LOG_ID_FILE, InvalidLogId, ensure_log_id


def test_log_id_is_created_once_and_survives_restarts(daemon):
    first = daemon.call("info")["log_id"]
    assert len(first) == 32 and (daemon.root / LOG_ID_FILE).read_text().strip() == first
    daemon.kill9()
    daemon.start()
    daemon.restart()
    assert daemon.call("info")["log_id"] == first


def test_a_recreated_root_gets_a_new_log_id(daemon_factory, tmp_path):
    d = daemon_factory(root_dir=tmp_path / "r")
    old = d.call("info")["log_id"]
    d.stop()
    shutil.rmtree(d.root)
    d.start()
    assert d.call("info")["log_id"] != old
    assert [e["seq"] for e in d.stream("events")] == [1]  # and its seqs start again at 1


def test_a_damaged_log_id_is_refused_not_replaced(daemon_factory, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / LOG_ID_FILE).write_text("not an id\n")
    d = daemon_factory(root_dir=root, start=False)
    d.start(expect_fail=True)
    assert d.wait_exit() == 1
    assert "log_id" in d.stderr() and "restore it" in d.stderr()
    assert (root / LOG_ID_FILE).read_text() == "not an id\n"
    try:
        ensure_log_id(root)
    except InvalidLogId:
        pass
    else:
        raise AssertionError("a damaged log_id must raise")
