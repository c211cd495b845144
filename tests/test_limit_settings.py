"""The client limits as settings (supervisor/limits.py): ``supervisord`` flags, the
``[supervisord]`` keys of a ``--config`` file (supervisord.conf or TOML), the environment as the
fallback; a flag wins over the file, the file over the environment. A bad value refuses the start
with one sentence naming the flag, the file's line and key, or the variable, and touches
nothing."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import Daemon

from events import wire
from supervisor import limits


def test_a_flag_wins_over_the_file_and_the_file_over_the_environment() -> None:
    file = {"max_connections": (7.0, "f.conf:3: tether_max_connections")}
    env = {"TETHER_MAX_CONNECTIONS": "9", "TETHER_FRAME_TIMEOUT": "4.5"}
    flags: dict[str, str | None] = {"max_connections": None, "frame_timeout": None,
                                    "http_request_timeout": "2"}
    chosen = limits.resolve(flags, file, env)
    assert chosen == limits.Limits(max_connections=7, frame_timeout=4.5,
                                   http_request_timeout=2.0)
    assert limits.resolve({**flags, "max_connections": "11"}, file, env).max_connections == 11
    default = limits.resolve({}, {}, {})
    assert default.frame_timeout == default.http_request_timeout == 30.0
    assert default.max_connections >= 4


def _refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-m", "supervisor.daemon", "--root", str(root),
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})
    assert proc.returncode != 0
    assert not root.exists()  # refused before anything was touched
    return proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("flag", "value", "rule"), [
    ("--max-connections", "1", "a whole number >= 2"),
    ("--max-connections", "many", "a whole number >= 2"),
    ("--frame-timeout", "0", "seconds > 0"),
    ("--http-request-timeout", "nan", "seconds > 0"),
])
def test_a_bad_flag_refuses_the_start_naming_it(tmp_path: Path, flag: str, value: str,
                                                rule: str) -> None:
    line = _refused(tmp_path, flag, value)
    assert line.startswith(f"supervisord: {flag}: must be {rule}") and repr(value) in line


def test_a_bad_file_setting_refuses_the_start_naming_file_line_and_key(tmp_path: Path) -> None:
    conf = tmp_path / "supervisord.conf"
    conf.write_text("[supervisord]\nlogfile = /var/log/x.log\n"
                    "tether_frame_timeout = soon\n\n[program:a]\ncommand = sleep 1\n")
    assert _refused(tmp_path, "--config", str(conf)).startswith(
        f"supervisord: --config: {conf}:3: [supervisord] tether_frame_timeout: must be "
        "seconds > 0")
    toml = tmp_path / "programs.toml"
    toml.write_text("[supervisord]\nmax_connections = 4\nhttp_request_timeout = -1\n")
    assert _refused(tmp_path, "--config", str(toml)).startswith(
        f"supervisord: --config: {toml}:3: supervisord.http_request_timeout: must be "
        "seconds > 0")
    toml.write_text("[supervisord]\nmax_conns = 4\n")
    assert "supervisord.max_conns: unknown key (known: frame_timeout, http_request_timeout, " \
        "max_connections)" in _refused(tmp_path, "--config", str(toml))


def test_a_bad_environment_value_refuses_the_start_naming_the_variable(tmp_path: Path) -> None:
    line = _refused(tmp_path, env={"TETHER_MAX_CONNECTIONS": "lots"})
    assert line.startswith("supervisord: TETHER_MAX_CONNECTIONS (environment): must be a "
                           "whole number >= 2") and "--max-connections" in line


def _hello(d: Daemon) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(d.socket)
    # a refusing daemon writes its refusal and may close before reading: read it
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(wire.encode(wire.hello("client")))
    return s


def _crowd(d: Daemon, cap: int) -> list[socket.socket]:
    """``cap`` + 1 connections of root's: at most ``cap`` greeted (a connection the daemon's
    own helpers just closed may still count), the rest refused naming the cap. Returns the
    greeted ones, open."""
    greeted, refused = [], []
    for _ in range(cap + 1):
        s = _hello(d)
        frame = _first_frame(s)
        if "hello" in frame:
            greeted.append(s)
        else:
            refused.append(str(frame))
            s.close()
    assert refused and all(f"too many connections ({cap})" in r for r in refused), refused
    assert greeted
    return greeted


def _first_frame(s: socket.socket) -> dict[str, object]:
    decoder = wire.FrameDecoder()
    while True:
        data = s.recv(65536)
        assert data, "closed without a frame"
        for message in decoder.feed(data):
            return message


@pytest.mark.parametrize("fmt", ["conf", "toml"])
def test_the_files_settings_are_the_daemons_limits(daemon_factory, tmp_path: Path,
                                                   fmt: str) -> None:
    """The file's cap (3) and timeouts, over the environment's cap (50)."""
    if fmt == "conf":
        conf = tmp_path / "supervisord.conf"
        conf.write_text("[supervisord]\ntether_max_connections = 3\ntether_frame_timeout = 1\n"
                        "tether_http_request_timeout = 1\n")
    else:
        conf = tmp_path / "programs.toml"
        conf.write_text("[supervisord]\nmax_connections = 3\nframe_timeout = 1\n"
                        "http_request_timeout = 1\n")
    d = daemon_factory("--config", str(conf), env={**os.environ, "TETHER_MAX_CONNECTIONS": "50"})
    d.reconciled()
    held = _crowd(d, 3)  # root may take every slot, its own included
    try:
        started = time.monotonic()
        held[0].sendall(wire.encode(wire.request(1, "ps", {}))[:3])  # a frame begun
        cut = _first_frame(held[0])
        assert "not finished within 1s" in str(cut) and time.monotonic() - started < 10
        http = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        http.settimeout(10)
        http.connect(str(d.root / "supervisor.sock"))
        http.sendall(b"POST /RPC2 HTTP/1.1\r\nhost: x\r\n")  # a head never finished
        assert http.recv(65536).startswith(b"HTTP/1.1 408")
        http.close()
    finally:
        for s in held:
            s.close()


def test_a_flag_sets_the_cap_over_the_environment(daemon_factory) -> None:
    d = daemon_factory("--max-connections", "2", env={**os.environ,
                                                      "TETHER_MAX_CONNECTIONS": "50"})
    d.reconciled()
    for s in _crowd(d, 2):
        s.close()
