"""The benches' clean-up: end every process a bench started under its private root, by pid.

A bench's shims and containers are detached (double fork, setsid): they are found by the root
their command lines name, with all their descendants, SIGKILLed, reaped when they are ours, and
waited for until each is gone or a zombie (a detached one is reaped by its subreaper, later).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from events.procfs import processes_naming, read_stat

__all__ = ["kill_everything_naming"]


def kill_everything_naming(text: str, timeout: float = 20.0) -> int:
    """SIGKILL every process whose command line names ``text``, and its descendants; wait until
    each is gone or a zombie. Returns how many there were."""
    found = processes_naming(text)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in found:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if all((stat := read_stat(pid)) is None or not stat.alive for pid in found):
            break
        time.sleep(0.02)
    return len(found)
