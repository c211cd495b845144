"""The soak: concurrent clients and every kind of fault at once, then a checker over the history.

    .venv/bin/python bench/soak.py --minutes N --seed S [--root DIR] [--clients K]

For N minutes, in rounds of about 15 s, ``--clients`` threads (each on its own connection,
reconnecting when the daemon dies under it) ``run``, ``create``, ``start``, ``stop``,
``restart``, ``kill`` (TERM, KILL, INT, USR1), ``rm -f`` and ``exec`` random containers: short
ones that exit with a status their command chose (``sh -c 'sleep 0.X; exit N'``), long ones,
and crash loops under ``always``, ``on-failure`` and ``on-failure:3``. Meanwhile one chaos
thread kill -9s the daemon (and starts it again), the shim launcher and shims, SIGSTOPs and
SIGCONTs the daemon, the launcher, shims and tasks, and (as root, ROOT on a 16 MB tmpfs) fills
the disk with a file and empties it again; a subscriber follows the log live and resumes with
``since`` after every crash. At the end of each round everything is let go (SIGCONT, the disk
emptied, the daemon up) and the history is checked (``tests/history_checks.py``, shared with
the crash suite):

* seqs gap-free; each task's exit in the log exactly once, with the status its command chose,
  or 128 + a signal the soak sent that container, or unknown (null, with a reason) only for a
  container whose shim the soak killed or that it removed; each exec's exit once, and the
  status a client saw is the one its command chose (or a signal's);
* a container's tasks alternate with a ``container.restart`` between them, restarts counted
  in ``ps``; no policy restart lost; a stopped container's last task has ended;
* ``ps`` agrees with ``/proc``: a running container's pid is alive, is its command (its
  marker) and started when its ``task.create`` says; a stopped one has no process left;
* no client got an error other than the ones a fault explains (``conflict``, ``not_found``,
  ``no_space``, ``unavailable``...); an ``internal`` or a hang is a failure;
* the daemon's log shows no adoption (``container.adopt``): nothing cuts the event log here, so
  one would say that the log lost events it had acknowledged, even if the adoption set the
  state right.

At the end every container is removed (``rm -f``) and the daemon shut down: no process of the
soak may be left (none naming the root, none carrying the run's environment marker) and no
zombie under a daemon or shim. A failure prints the seed and the command that reproduces it
(the seed fixes every random choice; the interleaving still depends on the machine, so run a
failing seed a few times); a copy of ROOT (the event log, the shims' files) is kept beside the
daemon's log. ``tests/test_soak.py`` runs it for about 40 s with a fixed seed.

The script imports the tests' helpers (``tests/daemon_helpers.py``, the conftest's process
table); like pytest it makes itself a child subreaper, so shims and lost tasks are reparented
to it, and it reaps them the way init would.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import (  # noqa: E402
    _proc_table,
    kill_and_wait,
    processes_naming,
    reap_adopted_orphans,
)
from daemon_helpers import Daemon  # noqa: E402
from history_checks import (  # noqa: E402
    DaemonGone,
    Follower,
)
from soak_check import (  # noqa: E402
    EXPECTED_ERRORS,
    FAULTS,
    FILL,
    KILL_SIGNALS,
    MAX_LIVE,
    ROUND_SECONDS,
    TMPFS_SIZE,
    Soak,
    SoakFailure,
    check,
    finish,
    soak_processes,
)

from events import wire  # noqa: E402
from events.rpc import BlockingConnection  # noqa: E402

# -- the clients --------------------------------------------------------------------------------

def client(s: Soak, rng: random.Random, stop: threading.Event) -> None:
    """Random operations until *stop*, reconnecting whenever the daemon dies under us."""
    while not stop.is_set():
        try:
            with BlockingConnection(s.d.socket, timeout=30) as conn:
                while not stop.is_set():
                    operate(s, conn, rng)
        except DaemonGone:
            time.sleep(0.05)
        except Exception as exc:  # a finding, not a reason to stop the others
            s.fail(f"a client failed: {exc!r}")
            return


def operate(s: Soak, conn: BlockingConnection, rng: random.Random) -> None:
    op = rng.choice(["short", "short", "long", "loop", "loop", "created", "start", "stop",
                     "restart", "kill", "rm", "exec", "exec"])
    with s.lock:
        live = [t for t in s.items.values() if t.acked and not t.rm]
    if op in ("short", "long", "loop", "created") and len(live) >= MAX_LIVE:
        op = "rm"  # crash loops append all the time: keep the fleet (and the log) bounded
    if op in ("short", "long", "loop", "created"):
        t = s.new(rng, op)
        try:
            conn.call("create" if op == "created" else "run", spec=s.spec(t, rng))
            t.acked = True
        except wire.RemoteError as exc:
            expected(s, op, t.cid, exc)
        return
    if not live:
        return
    t = rng.choice(live)
    try:
        if op == "start" and not t.started:
            t.started = True
            conn.call("start", id=t.cid)
        elif op == "stop":
            t.signals |= {signal.SIGTERM, signal.SIGKILL}
            conn.call("stop", id=t.cid, timeout=0.5)
        elif op == "restart":
            t.signals |= {signal.SIGTERM, signal.SIGKILL}
            t.started = True
            conn.call("restart", id=t.cid, timeout=0.5)
        elif op == "kill":
            sig = rng.choice(KILL_SIGNALS)
            t.signals.add(sig)
            conn.call("kill", id=t.cid, signal=int(sig))
        elif op == "rm":
            t.rm = "uncertain"
            t.signals.add(signal.SIGKILL)
            conn.call("rm", id=t.cid, force=True)
            t.rm = "acked"
        elif op == "exec":
            code = rng.randint(0, 60)
            items = list(conn.stream("exec", id=t.cid, command=["sh", "-c", f"exit {code}"]))
            status = items[-1].get("exit_status") if items else None
            s.execs += 1
            # an exec dies with its container (kill of the whole tree, rm -f)
            if status not in {code} | {128 + sig for sig in KILL_SIGNALS}:
                s.fail(f"exec in {t.cid} chose {code}, its client saw {items[-1:]}")
    except wire.RemoteError as exc:
        if op == "rm":
            t.rm = "" if exc.code != "not_found" else t.rm
        expected(s, op, t.cid, exc)


def expected(s: Soak, op: str, cid: str, exc: wire.RemoteError) -> None:
    with s.lock:
        s.errors[exc.code] += 1
        s.replies.setdefault(cid, []).append(f"{op}: {exc.code}: {exc}")
    if exc.code not in EXPECTED_ERRORS:
        s.fail(f"{op} {cid}: unexpected error {exc.code}: {exc}")


# -- the faults ---------------------------------------------------------------------------------

def pids_of(s: Soak, what: str) -> list[int]:
    """Live pids of the daemon, the launcher, the shims or the tasks of this soak."""
    root = str(s.d.root)
    if what == "daemon":
        return [s.d.pid] if s.d.running() else []
    table = _proc_table()
    if what == "launcher":
        return [p for p, (_, c) in table.items() if "-m shim launcher" in c and root in c]
    if what == "shim":
        shims = {p for p, (_, c) in table.items() if "-m shim start" in c and root in c}
        # a shim's child that has not exec'd yet (a task, an exec, a health check) still shows
        # the shim's command line: killing it is killing a task, not a shim
        return [p for p in shims if table[p][0] not in shims]
    return [p for p, (_, c) in table.items() if f"mark-s{s.run}-" in c]


def fill_disk(root: Path) -> None:
    """Write a file until the tmpfs is full (ENOSPC)."""
    chunk = b"\0" * (1 << 20)
    fd = os.open(root / FILL, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while os.write(fd, chunk):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def chaos(s: Soak, rng: random.Random, stop: threading.Event, follower: Follower) -> None:
    """One fault at a time, at random moments; everything let go before it returns."""
    try:
        faults(s, rng, stop, follower)
    except Exception as exc:  # e.g. the daemon did not come back
        s.fail(f"chaos: {exc!r}")
    finally:
        for what in ("daemon", "launcher", "shim", "task"):  # nothing stays stopped
            for pid in pids_of(s, what):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        empty_disk(s)
        if not s.d.running():
            follower.join()
            s.d.start()
            follower.start()


def faults(s: Soak, rng: random.Random, stop: threading.Event, follower: Follower) -> None:
    """Until *stop*: kill -9 of the daemon (started again at once), the launcher or a shim;
    SIGSTOP for up to a second of the daemon, the launcher, a shim or a task; the disk filled,
    or emptied. A daemon killed while the disk is full starts once it is empty."""
    full = False
    while not stop.wait(rng.uniform(0.05, 0.6)):
        reap_adopted_orphans()
        fault = rng.choice(FAULTS)
        if fault not in s.kinds:
            continue
        if fault == "daemon":
            s.d.kill9()
            follower.join()
            time.sleep(rng.uniform(0, 0.3))
            if full:
                full = empty_disk(s)
            s.d.start()
            follower.start()
        elif fault in ("launcher", "shim"):
            pids = pids_of(s, fault)
            if not pids:
                continue
            pid = rng.choice(pids)
            if fault == "shim":
                hit_shim(s, pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        elif fault == "stop":
            pids = pids_of(s, rng.choice(["daemon", "launcher", "shim", "task"]))
            if not pids:
                continue
            pid = rng.choice(pids)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                time.sleep(rng.uniform(0.05, 1.0))
                os.kill(pid, signal.SIGCONT)
        elif fault == "disk" and s.disk:
            if full:
                full = empty_disk(s)
            else:
                fill_disk(s.d.root)
                full = True
        else:
            continue
        s.faults[fault] += 1


def hit_shim(s: Soak, pid: int) -> None:
    """Mark the container whose shim *pid* is: its exit may be unknown now."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cid = cmd[cmd.index(b"--id") + 1].decode()
    except (OSError, ValueError, IndexError):
        return
    t = s.items.get(cid)
    if t is not None:
        t.shim_killed = True


def empty_disk(s: Soak) -> bool:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(s.d.root / FILL)
    return False


# -- the run ------------------------------------------------------------------------------------

def mount_tmpfs(root: Path) -> str:
    """ROOT on a small tmpfs, so that the disk can fill; '' or why not."""
    if os.geteuid() != 0:
        return "not root: the full-disk part is skipped"
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs",
                           str(root)], capture_output=True, text=True)
    if proc.returncode:
        return f"mount -t tmpfs failed ({proc.stderr.strip()}): the full-disk part is skipped"
    return ""


def soak(d: Daemon, seconds: float, seed: int, clients: int = 3,
         kinds: frozenset[str] = frozenset(FAULTS)) -> Soak:
    """Run the soak on *d* (not started yet; its root is mounted as a tmpfs when possible) for
    *seconds*, with the faults *kinds*; returns the soak's record, or raises
    :class:`SoakFailure` naming the seed."""
    master = random.Random(seed)
    s = Soak(d, seed, f"{os.getpid():x}{master.getrandbits(16):04x}", kinds=kinds)
    why = mount_tmpfs(d.root) if "disk" in kinds else "no disk faults asked for"
    s.disk = not why
    print(f"soak: seed {seed}, {seconds:.0f} s, {clients} clients, root {d.root}"
          + (f" on a {TMPFS_SIZE} tmpfs" if s.disk else f" ({why})"), flush=True)
    try:
        run_rounds(s, seconds, clients)
    except AssertionError as exc:
        s.problems.append(str(exc))
    except Exception as exc:  # a wait that timed out, a daemon that did not start: findings too
        where = "".join(traceback.format_tb(exc.__traceback__)[-4:]).rstrip()
        s.problems.append(f"{type(exc).__name__}: {exc}\n{where}")
    finally:  # nothing stays: not even what the checker found left over
        d.cleanup()
        kill_and_wait(list(soak_processes(s)))
        reap_adopted_orphans()
        if s.problems:  # the log and the shims' files, for the post-mortem (a tmpfs goes)
            with contextlib.suppress(OSError):
                os.unlink(d.root / FILL)
            subprocess.run(["cp", "-a", str(d.root), str(d.stderr_path.parent / "root-copy")],
                           check=False)
        if s.disk:
            subprocess.run(["umount", "-l", str(d.root)], check=False)
    summary = (f"soak: {s.n} containers, {s.execs} execs, faults {dict(s.faults)}, "
               f"errors {dict(s.errors)}")
    print(summary, flush=True)
    if s.problems:
        minutes = max(1, round(seconds / 60))
        faults = "" if kinds == frozenset(FAULTS) else f" --faults {','.join(sorted(kinds))}"
        raise SoakFailure(f"soak FAILED with seed {seed}:\n  " + "\n  ".join(s.problems[:10])
                          + f"\nreproduce: .venv/bin/python bench/soak.py --minutes {minutes} "
                          f"--seed {seed}{faults}  (the seed fixes every choice, not the "
                          "interleaving: run it a few times)")
    return s


def run_rounds(s: Soak, seconds: float, clients: int) -> None:
    d = s.d
    d.start()
    follower = Follower(d)
    follower.start()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and not s.problems:
        n += 1
        stop = threading.Event()
        rngs = [random.Random(f"{s.seed}-{n}-{i}") for i in range(clients + 1)]
        threads = [threading.Thread(target=client, args=(s, rngs[i], stop), daemon=True)
                   for i in range(clients)]
        threads.append(threading.Thread(target=chaos, args=(s, rngs[-1], stop, follower),
                                        daemon=True))
        for th in threads:
            th.start()
        stop.wait(min(ROUND_SECONDS, max(1.0, end - time.monotonic())))
        stop.set()
        for th in threads:
            th.join(90)
            if th.is_alive():
                raise AssertionError(f"round {n}: a client or the chaos hung (90 s)")
        reap_adopted_orphans()
        check(s)
        tidy(s, random.Random(f"{s.seed}-{n}-tidy"))
    finish(s, follower)


def tidy(s: Soak, rng: random.Random) -> None:
    """Remove some containers so the number alive stays small."""
    live = [t for t in s.items.values() if t.acked and not t.rm]
    for t in rng.sample(live, max(0, len(live) - 10)):
        t.rm = "uncertain"
        t.signals.add(signal.SIGKILL)
        s.d.call("rm", id=t.cid, force=True)
        t.rm = "acked"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--root", help="an empty directory (default: a fresh one under /tmp)")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--faults", default=",".join(sorted(set(FAULTS))),
                        help="which faults, comma-separated (default: all)")
    args = parser.parse_args()
    kinds = frozenset(args.faults.split(",")) - {""}
    if not kinds <= set(FAULTS):
        parser.error(f"--faults: choose from {sorted(set(FAULTS))}")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a hang: kill -USR1 shows where
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    base = Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))  # sockets need short paths
    root = Path(args.root) if args.root else base / "root"
    d = Daemon(root, stderr_path=base / "supervisord.stderr")
    try:
        soak(d, args.minutes * 60, seed, args.clients, kinds)
    except SoakFailure as exc:
        print(exc, file=sys.stderr)
        print(f"the daemon's log: {d.stderr_path} (its root: {base / 'root-copy'})",
              file=sys.stderr)
        return 1
    finally:
        d.cleanup()
        kill_and_wait(processes_naming(str(root)))
        reap_adopted_orphans()
    shutil.rmtree(base, ignore_errors=True)
    print(f"soak: OK (seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
