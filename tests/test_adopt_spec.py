"""An adopted container's spec is rebuilt from its shim's ``spec.json``: the round trip
``validate_spec -> shim_spec -> api_spec`` must give back the spec the daemon stored."""

from __future__ import annotations

import pytest

from supervisor.adopt import api_spec
from supervisor.shims import shim_spec
from supervisor.spec import validate_spec

SPECS = [
    {"command": ["sleep", "1"]},
    {"command": ["sh", "-c", "exit 3"], "name": "x", "env": {"A": "1", "PATH": "/opt/bin"},
     "cwd": "/tmp", "labels": {"k": "v"}, "stop_signal": "SIGINT", "stop_timeout": 3,
     "restart": {"policy": "on-failure", "max_retries": 3}, "memory": 64 * 2**20,
     "cpus": 0.5, "pids_limit": 50, "log_max_size": 4096, "log_keep": 2,
     "health": {"cmd": "true", "interval": 2, "retries": 2, "restart": True}},
    {"command": ["true"], "user": {"uid": 1000, "gid": 1000}, "init": True,
     "restart": "always", "rlimits": {"nofile": [64, 64]}, "namespaces": ["uts"]},
]


@pytest.mark.parametrize("raw", SPECS)
def test_api_spec_gives_back_the_stored_spec(raw):
    stored = validate_spec(raw)
    got = api_spec(dict(shim_spec(raw.get("name") or "x", "i1", stored)))
    assert {**got, "name": None} == {**stored, "name": None}


def test_an_unusable_spec_json_is_refused():
    with pytest.raises(ValueError):
        api_spec({"command": [], "env": {}})
