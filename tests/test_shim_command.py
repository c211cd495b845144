"""``shim.command.run_command``, with real processes: what ``subprocess`` did for the runtime's
commands (stdio, captured output, exit codes, exec and preexec failures, the timeout), without
importing ``threading`` into the shim."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from events.procfs import process_table
from shim import command
from shim.command import DEVNULL, PIPE, PreexecFailed, TimedOut, last_ran, run_command

CAPTURE = [DEVNULL, PIPE, PIPE]


def test_output_is_captured_and_the_exit_code_returned() -> None:
    done = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], CAPTURE, 10)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"out\n", b"err\n")
    assert done.args == ["sh", "-c", "echo out; echo err >&2; exit 3"]


def test_a_long_output_never_blocks_the_command() -> None:
    done = run_command(["sh", "-c", "head -c 1000000 /dev/zero; echo done >&2"], CAPTURE, 10)
    assert len(done.stdout or b"") == 1_000_000 and done.stderr == b"done\n"


def test_a_signal_is_a_negative_code() -> None:
    assert run_command(["sh", "-c", "kill -KILL $$"], CAPTURE, 10).returncode == -9


def test_our_fds_become_its_stdio_and_nothing_else_is_inherited() -> None:
    r, w = os.pipe()
    os.set_inheritable(r, True)  # even an inheritable fd of ours stays ours
    try:
        done = run_command(["sh", "-c", "echo to-our-pipe; ls /proc/self/fd"],
                           [DEVNULL, w, DEVNULL], 10)
        os.close(w)
        out = os.read(r, 65536).decode().split()
    finally:
        os.close(r)
    assert done.returncode == 0 and done.stdout is None
    assert out[0] == "to-our-pipe"
    assert sorted(int(fd) for fd in out[1:]) <= [0, 1, 2, 3]  # 3: ls's own directory fd


def test_sigpipe_is_back_to_its_default_in_the_command() -> None:
    """Python (and the shim) ignore SIGPIPE; an ignored disposition survives exec."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    done = run_command(["grep", "SigIgn", "/proc/self/status"], CAPTURE, 10)
    ignored = int((done.stdout or b"").split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))


def test_a_missing_program_is_the_exec_error() -> None:
    with pytest.raises(FileNotFoundError) as info:
        run_command(["/nonexistent/runtime", "state"], CAPTURE, 10)
    assert info.value.errno == 2 and info.value.filename == "/nonexistent/runtime"


def test_a_failing_preexec_is_reported_and_nothing_runs() -> None:
    marker = f"/tmp/tether-preexec-{os.getpid()}"

    def fail() -> None:
        raise OSError(1, "unshare(CLONE_NEWNS)")

    with pytest.raises(PreexecFailed, match="unshare"):
        run_command(["touch", marker], CAPTURE, 10, fail)
    assert not os.path.exists(marker)


def test_the_timeout_kills_and_reaps() -> None:
    seconds = f"30.{os.getpid()}"  # its command line is its marker
    with pytest.raises(TimedOut, match=r"killed after 0\.2 s"):
        run_command(["sleep", seconds], CAPTURE, 0.2)
    assert not [p for p, (_, cmd) in process_table().items() if seconds in cmd]
    assert not _zombie_children()


def _zombie_children() -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z" and int(fields[1]) == os.getpid():
                found.append(int(name))
    return found


def test_the_shim_never_imports_threading() -> None:
    """Everything the launcher preloads, and so every shim has: no ``threading`` (its fork
    handler dirties pages in every forked shim), no ``random`` (same), no ``subprocess``; no
    ``pathlib`` either (the pages of its code and objects a shim would touch)."""
    import subprocess

    code = ("import sys\nfrom shim import launcher\nlauncher.preload()\n"
            "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout.split()
    assert "shim.runtime_oci" in out and "shim.server" in out
    assert not {"threading", "random", "subprocess", "pathlib"} & set(out)


def test_last_ran_says_when_the_command_ran_and_its_cpu_time(monkeypatch) -> None:
    """What the shim's ready line reports of its runtime's command when bench/phases.py
    asks (``TETHER_SHIM_PHASES``): a command that only waits has a wall time of its wait and
    almost no CPU time; one that works has CPU time; each run replaces the last. Not asked,
    nothing is kept (a shim writes no pages for it)."""
    monkeypatch.setattr(command, "MEASURE", False)
    monkeypatch.setattr(command, "_last", [])
    run_command(["/bin/true"], [DEVNULL, DEVNULL, DEVNULL], timeout=10)
    assert last_ran() is None
    monkeypatch.setattr(command, "MEASURE", True)
    before = time.time_ns()
    run_command(["/bin/sleep", "0.2"], [DEVNULL, DEVNULL, DEVNULL], timeout=10)
    slept = last_ran()
    assert slept is not None
    assert before <= slept.spawned_ns < slept.exited_ns <= time.time_ns()
    assert slept.exited_ns - slept.spawned_ns >= 200_000_000
    assert slept.cpu_ns < 100_000_000
    busy = "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"
    run_command(["/bin/sh", "-c", busy], [DEVNULL, DEVNULL, DEVNULL], timeout=60)
    worked = last_ran()
    assert worked is not None and worked.spawned_ns >= slept.exited_ns
    assert worked.cpu_ns > 0
