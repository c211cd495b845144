"""The crash-suite case of ``apply``: supervisord SIGKILLed at a random moment of an apply (of a
new file, and of a changed one), restarted, and the file applied again. Applying converges:
every program exists once, runs once (no doubled process, none missing), the stale ones are
replaced, and one more apply appends nothing."""


from __future__ import annotations

import os
import random
import subprocess
import time
from pathlib import Path

from conftest import _proc_table
from daemon_helpers import CTL, REPO, Daemon, ok

RUN = f"{os.getpid():x}{random.getrandbits(24):06x}"
SEED = int(os.environ.get("TETHER_CRASH_SEED", "20261129"))
PROGRAMS = 10


def write_file(path: Path, generation: int) -> None:
    parts = []
    for i in range(PROGRAMS):
        # half the programs change with every generation: their apply replaces them
        version = generation if i % 2 else 0
        parts.append(f'[programs.p{i}]\ncommand = ["sh", "-c", "sleep 1000; true", '
                     f'"mark-{RUN}-p{i}"]\nenv = {{ VERSION = "{version}" }}\n'
                     f'priority = {i}\n')
    path.write_text("\n".join(parts))


def marked(name: str) -> int:
    mark = f"mark-{RUN}-{name}"
    return sum(1 for _, cmd in _proc_table().values() if cmd.split()[-1:] == [mark])


def test_kill9_during_apply_then_apply_again(daemon_factory, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "programs.toml"
    d: Daemon = daemon_factory()
    interrupted = 0
    for generation in range(1, 5):
        write_file(path, generation)
        applying = subprocess.Popen([*CTL, "--root", str(d.root), "apply", "-f", str(path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    cwd=REPO)
        time.sleep(rng.uniform(0.02, 0.4))
        d.kill9()
        applying.wait(30)
        interrupted += applying.returncode != 0
        d.start().reconciled()
        ok(d, "apply", "-f", str(path))
        rows = d.ps()
        assert sorted(rows) == sorted(f"p{i}" for i in range(PROGRAMS))
        assert all(r["state"] == "running" for r in rows.values()), rows
        for name, row in rows.items():
            spec = d.call("inspect", id=name)["spec"]
            want = str(generation if int(name[1:]) % 2 else 0)
            assert spec["env"]["VERSION"] == want, (name, spec["env"])
            d.wait_for(lambda name=name: marked(name) == 1, timeout=10)
            assert row["pid"] and os.path.exists(f"/proc/{row['pid']}")
        seq = d.call("status")["last_seq"]
        assert "nothing to do" in ok(d, "apply", "-f", str(path))
        assert d.call("status")["last_seq"] == seq
    assert interrupted >= 2, "the kills came after the applies: the case tested nothing"
