"""The crash suite for adoption: a log that lost its tail, and the daemon SIGKILLed at random
moments while it adopts the survivors (before, during and after each ``container.adopt``).

Each round: ``old`` containers the log keeps, ``lost`` ones created after the copy of
``ROOT/events`` that is then put back (with the snapshot removed, or kept and ``--repair``), some
of them with a restart policy; while the daemon is down the shim of one lost container may be
SIGKILLed too (its task lives on: a process the daemon cannot account for). Then the daemon is
started and SIGKILLed 1-3 times at a random delay, and started a last time. Afterwards:

* nothing was killed: every container's process (marked by its ``$0``) runs exactly once,
  with the pid it had before the history was lost;
* every lost container with a live shim is in ``ps``, ``running``, adopted by exactly one
  ``container.adopt`` however many daemons died around it, and it is an ordinary container
  (``stop`` records one exit, 143);
* the lost container whose shim was killed is not in ``ps``, its directory and its task are
  left alone (the test ends the task itself);
* seqs are gap-free.

``TETHER_ADOPT_CRASH_ROUNDS`` (default 6) and ``TETHER_CRASH_SEED`` tune it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time

from conftest import kill_and_wait
from daemon_helpers import Daemon

from events.procfs import is_running, process_table

ROUNDS = int(os.environ.get("TETHER_ADOPT_CRASH_ROUNDS", "6"))
SEED = int(os.environ.get("TETHER_CRASH_SEED", "20261128"))
RUN = f"{os.getpid():x}{random.getrandbits(24):06x}"


def spec(cid: str, policy: str) -> dict:
    return {"command": ["sh", "-c", "while :; do sleep 1; done", f"adopt-{RUN}-{cid}"], "name": cid,
            "restart": {"policy": policy}}


def markers() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for pid, (_, cmd) in process_table().items():
        for word in cmd.split():
            if word.startswith(f"adopt-{RUN}-"):
                found.setdefault(word.rsplit("-", 1)[1], []).append(pid)
    return found


def one_round(d: Daemon, rng: random.Random, n: int) -> None:
    old = [f"o{n}x{i}" for i in range(rng.randint(1, 2))]
    lost = [f"l{n}x{i}" for i in range(rng.randint(2, 4))]
    policies = ("no", "always", "on-failure")
    for cid in old:
        d.call("run", spec=spec(cid, rng.choice(policies)))
    d.stop()
    backup = d.root.parent / f"events.bak{n}"
    shutil.copytree(d.root / "events", backup)
    d.start()
    for cid in lost:
        d.call("run", spec=spec(cid, rng.choice(policies)))
    pids = {cid: row["pid"] for cid, row in d.ps().items()}
    d.kill9() if rng.random() < 0.5 else d.stop()
    repair = rng.random() < 0.5
    shutil.rmtree(d.root / "events")
    shutil.copytree(backup, d.root / "events")
    if not repair and (d.root / "snapshot").exists():
        (d.root / "snapshot").unlink()
    orphaned = None
    if rng.random() < 0.5:  # a lost container's shim dies too: its task is nobody's
        orphaned = rng.choice(lost)
        shim_pid = int((d.root / "shims" / orphaned / "shim.pid").read_text())
        os.kill(shim_pid, signal.SIGKILL)
        kill_and_wait([shim_pid])
    d.args = ["--repair"] if repair else []
    for _ in range(rng.randint(1, 3)):
        d.start()
        # mostly inside reconciliation (a few ms after the socket answers), sometimes after
        time.sleep(rng.choice((0.0, rng.uniform(0, 0.03), rng.uniform(0, 0.4))))
        d.kill9()
    d.start().reconciled(timeout=30)
    try:
        check(d, old, lost, orphaned, pids)
    finally:
        if orphaned is not None:
            kill_and_wait(markers().get(orphaned, []))


def check(d: Daemon, old: list[str], lost: list[str], orphaned: str | None,
          pids: dict[str, int]) -> None:
    rows = d.ps()
    found = markers()
    events = d.stream("events")
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    for cid in [*old, *lost]:
        assert found.get(cid) == [pids[cid]], (cid, found.get(cid), pids[cid])
        assert is_running(pids[cid])
    for cid in lost:
        adopts = [e for e in events if e["id"] == cid and e["type"] == "container.adopt"]
        if cid == orphaned:
            assert cid not in rows and not adopts
            assert (d.root / "shims" / cid).is_dir()
            continue
        assert rows[cid]["state"] == "running" and rows[cid]["pid"] == pids[cid], rows[cid]
        assert len(adopts) == 1, (cid, adopts)
    for cid in old:
        assert rows[cid]["state"] == "running" and rows[cid]["pid"] == pids[cid]
    survivor = next(cid for cid in lost if cid != orphaned)
    assert d.call("stop", id=survivor, timeout=5)["exit_status"] == 143
    exits = [e for e in d.stream("events", types=["task.exit"]) if e["id"] == survivor]
    assert len(exits) == 1, exits


def test_adoption_survives_kill9_at_random_moments(daemon_factory, tmp_path):
    rng = random.Random(SEED)
    for n in range(ROUNDS):
        d = daemon_factory(root_dir=tmp_path / f"r{n}", start=False)
        d.start()
        try:
            one_round(d, rng, n)
        except BaseException:
            print(f"adoption crash round {n} failed; seed {SEED}")
            raise
        finally:
            d.cleanup()
