"""The examples do what the README says, against a real daemon.

examples/subscriber.py: every exit printed once, in order, across a kill -9 and restart of the
daemon (including an exit that happens while it is down) and across a restart of the
subscriber itself.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from daemon_helpers import Daemon

REPO = Path(__file__).resolve().parent.parent
SUBSCRIBER = REPO / "examples" / "subscriber.py"
LINE = re.compile(r"exit seq=(\d+) id=(\S+) exit_status=(\S+) ")


class Subscriber:
    """examples/subscriber.py in a subprocess, its stdout lines in a queue."""

    def __init__(self, d: Daemon, state: Path, log: Path, *args: str) -> None:
        self.err = open(log, "ab")  # noqa: SIM115 - handed to the child, closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(SUBSCRIBER), "--root", str(d.root), "--state", str(state),
             *args], stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=REPO)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def next(self, timeout: float = 15.0) -> tuple[int, str, int]:
        line = self.lines.get(timeout=timeout)
        self.seen.append(line)
        match = LINE.match(line)
        assert match, line
        return int(match[1]), match[2], int(match[3])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(10)
        self.err.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.err.close()


def exits_in_log(d: Daemon) -> list[tuple[int, str, int]]:
    return [(e["seq"], e["id"], e["data"]["exit_status"])
            for e in d.stream("events", since=0, types=["task.exit"], follow=False)]


def test_subscriber_resumes_across_restarts_without_duplicate_or_gap(daemon: Daemon,
                                                                     tmp_path: Path) -> None:
    state = tmp_path / "exits.seq"
    log = tmp_path / "subscriber.log"
    printed: list[tuple[int, str, int]] = []

    sub = Subscriber(daemon, state, log)
    try:
        daemon.run("sh", "-c", "exit 1", name="first")
        printed.append(sub.next())
        assert printed[-1][1:] == ("first", 1)

        # The daemon is SIGKILLed; a container exits while it is down; the daemon comes back.
        daemon.run("sh", "-c", "sleep 0.5; exit 5", name="during-downtime")
        daemon.kill9()
        daemon.start()
        printed.append(sub.next())
        assert printed[-1][1:] == ("during-downtime", 5)
        daemon.run("sh", "-c", "exit 6", name="after-restart")
        printed.append(sub.next())
        assert printed[-1][1:] == ("after-restart", 6)

        # The subscriber itself stops; an exit happens meanwhile; it restarts from its file.
        assert sub.stop() == 0
        assert int(state.read_text()) == printed[-1][0]
        daemon.run("sh", "-c", "exit 3", name="while-subscriber-down")
        daemon.call("wait", id="while-subscriber-down")
        sub = Subscriber(daemon, state, log)
        printed.append(sub.next())
        assert printed[-1][1:] == ("while-subscriber-down", 3)

        # Both sides crash: kill -9 of the subscriber, then of the daemon. (Once the seq of the
        # last line is saved: a kill between the two syscalls that print a line and record it
        # would repeat that line, the one window no program can close; see the docstring.)
        seq = printed[-1][0]
        daemon.wait_for(lambda: int(state.read_text() or 0) == seq)
        sub.kill()
        daemon.run("sh", "-c", "sleep 0.3; exit 4", name="both-down")
        daemon.kill9()
        daemon.start()
        sub = Subscriber(daemon, state, log)
        printed.append(sub.next())
        assert printed[-1][1:] == ("both-down", 4)

        # Nothing more arrives: no duplicate of anything already printed.
        try:
            extra = sub.lines.get(timeout=0.5)
        except queue.Empty:
            extra = None
        assert extra is None, f"printed again: {extra}"
    finally:
        sub.kill()

    assert printed == exits_in_log(daemon), log.read_text()
    seqs = [seq for seq, _, _ in printed]
    assert seqs == sorted(set(seqs))


def test_subscriber_with_an_output_file_is_exactly_once_even_across_its_kill9(
        daemon: Daemon, tmp_path: Path) -> None:
    """With --output FILE the last line of the file is the position: a kill -9 at any moment,
    even between writing a line and saving its seq, repeats nothing."""
    state, out, log = tmp_path / "exits.seq", tmp_path / "exits.txt", tmp_path / "sub.log"

    def lines() -> list[str]:
        return out.read_text().splitlines() if out.exists() else []

    expected = []
    for round_ in range(4):
        sub = Subscriber(daemon, state, log, "--output", str(out))
        try:
            name = f"job{round_}"
            daemon.run("sh", "-c", f"exit {round_ + 1}", name=name)
            expected.append((name, round_ + 1))
            want = len(expected)
            deadline = time.monotonic() + 15
            while len(lines()) < want and time.monotonic() < deadline:
                pass  # spin: kill as soon as the line is there, before the seq may be saved
            sub.proc.kill()
            sub.proc.wait(10)
        finally:
            sub.kill()
    # The window itself, made deterministic: a state file behind the output (as if killed
    # between writing the line and saving its seq). It resumes after the output's last line.
    state.write_text("1\n")
    sub = Subscriber(daemon, state, log, "--output", str(out))
    try:
        daemon.run("sh", "-c", "exit 9", name="last")
        expected.append(("last", 9))
        daemon.wait_for(lambda: len(lines()) >= len(expected))
        time.sleep(0.2)  # room for a (wrong) duplicate to show up
    finally:
        sub.kill()
    assert "already has seq" in log.read_text()
    got = [LINE.match(line) for line in lines()]
    assert all(got), lines()
    assert [(m[2], int(m[3])) for m in got if m] == expected
    assert [int(m[1]) for m in got if m] == [seq for seq, _, _ in exits_in_log(daemon)]
