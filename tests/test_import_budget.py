"""The import budget: what a one-shot ``supervisorctl`` command and a shim may import.

A one-shot command is a short-lived process whose cost is mostly its imports (``import trio``
alone is ~100 ms here, ``structlog`` ~80 ms, ``typing`` ~3 ms), and every shim carries the pages
of every module it imported for the whole life of its container. So the modules they import are
a budget, listed here explicitly and enforced by listing what the real processes import, never
by timing them (the machine is shared and noisy; benchmarks live under ``bench/``).

How it is measured: the real console script (``.venv/bin/supervisorctl``, under the flags its
first lines start Python with: ``-IS``) or the real ``python -I -m shim start`` runs under
``python -X importtime`` against a real daemon or a real shim lifecycle, and every module named
in that trace, minus what the bare interpreter imports by itself with the same flags (``python
-IS -c pass``: ``encodings``, ``io``...), must be in the list.
``-X importtime`` also names imports that were attempted and failed (``msvcrt``, ``nt``,
``org.python.core`` from the standard library's portability probes): they cost a path search,
so they are listed too.

When a command truly needs a new module, add it to the list of that command (or to
``CLI_COMMON`` if every command needs it) in the same commit, and say in the commit message what
it costs (``python -X importtime``) and why it cannot be imported lazily by the one command that
uses it. Never add trio, structlog, typing or anything of :data:`NEVER_IN_CLI` to the CLI's
lists: import those inside the function that needs them, or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import Daemon

from events import shim_api
from events.rpc import BlockingConnection

PYTHON = sys.executable
CTL_SCRIPT = Path(sys.executable).parent / "supervisorctl"
#: How the console script starts Python (its shell line: see bin/supervisorctl).
CTL_FLAGS = "-IS"

#: Never in a one-shot command (each is several ms, or a whole framework, of every call).
NEVER_IN_CLI = frozenset({
    "trio", "structlog", "typing", "asyncio", "nats", "dataclasses", "pathlib", "logging",
    "contextlib", "shutil", "subprocess", "threading", "inspect", "tempfile", "uuid",
    "tomllib", "xmlrpc", "http", "email", "urllib", "argparse", "locale", "gettext", "socket",
    "selectors", "msgpack", "datetime", "struct",
})
#: Never in a shim: the shim is stdlib + msgpack + ``events`` + ``shim`` (DESIGN.md).
NEVER_IN_SHIM = frozenset({"trio", "structlog", "supervisor", "asyncio", "nats", "logging",
                           "argparse", "sniffio", "outcome", "attr"})

#: What every ``supervisorctl`` command imports today: ``os`` (which ``site`` imports in other
#: programs, with ``_collections_abc`` for ``os.environ``), the grammar's table and its reader
#: (:mod:`supervisor.ctl_args`: argparse, with re, enum, gettext and locale under it, only for
#: ``--help`` and a line with an error in it), the blocking client (on ``_socket``: the
#: ``socket`` module's enums and selectors are not needed to connect) and the framing with the
#: light payload codec (:mod:`events.minipack`: msgpack's own import, with the ``datetime``,
#: ``collections`` and ``struct`` under it, cost more than the whole rest of a command).
CLI_COMMON = frozenset({
    "os", "posixpath", "genericpath", "stat", "_stat", "_collections_abc",
    "__future__", "_socket", "events", "events.minipack", "events.rpc", "events.wire",
    "supervisor", "supervisor.ctl", "supervisor.ctl_args", "supervisor.ctl_commands",
    "supervisor.ctl_grammar", "supervisor.ctl_svgrammar", "supervisor.defaults",
})
#: Supervisor's verbs: its client (a port of Supervisor's supervisorctl), for its verbs only
_SUPERVISOR = frozenset({"supervisor.ctl_supervisor"})
#: events.render: the one event rendering (shared with `python -m events dump`), ~0.1 ms
_RENDER = frozenset({"events.render", "events.timefmt", "supervisor.ctl_render",
                     "supervisor.protocol"})
#: json (its decoder imports re, and re enum, functools and collections: the one-shot commands
#: that print JSON pay for them)
_JSON = frozenset({"json", "json.decoder", "json.encoder", "json.scanner", "_json", "re",
                   "re._casefix", "re._compiler", "re._constants", "re._parser", "_sre",
                   "copyreg", "enum", "functools", "_functools", "collections", "_collections",
                   "itertools", "keyword", "operator", "_operator", "reprlib", "types"})
#: a float in a reply (``info``'s uptime): the C ``_struct`` decodes it, without ``struct``
_FLOAT = frozenset({"_struct"})
#: Per command, on top of :data:`CLI_COMMON`.
CLI_EXTRA: dict[str, frozenset[str]] = {
    "run": frozenset(),
    "ps": _RENDER,
    "ps --json": _RENDER | _JSON,
    "status": _SUPERVISOR,  # Supervisor's table, rendered by ctl_supervisor
    "stop --all": _SUPERVISOR,
    "stop -t 5 --all": _SUPERVISOR | _FLOAT,  # seconds: checked without events.policy
    "info": _SUPERVISOR | _RENDER | _JSON | _FLOAT,
}

#: What the shim launcher preloads (so every shim forked from it has it) and what a fresh
#: ``shim start`` imports over a container's life, today.
SHIM_ALLOWED = frozenset({
    "__future__", "_collections", "_ctypes", "_datetime", "_functools", "_json", "_locale",
    "_operator", "_socket", "_sre", "_struct", "_typing", "_weakrefset",
    "_winapi", "array", "calendar", "collections", "collections.abc", "contextlib", "copy",
    "copyreg", "ctypes", "ctypes._endian", "datetime", "enum", "errno", "events",
    "events.domain", "events.durable", "events.ids", "events.procfs", "events.shim_api",
    "events.signals",
    "events.timefmt", "events.wire", "fcntl", "functools", "gc",
    "itertools", "json", "json.decoder", "json.encoder", "json.scanner", "keyword", "locale",
    "math", "msgpack", "msgpack._cmsgpack", "msgpack.exceptions", "msgpack.ext", "msvcrt", "nt",
    "ntpath", "operator", "org", "org.python", "org.python.core", "re",
    "re._casefix", "re._compiler", "re._constants", "re._parser", "reprlib", "select",
    "selectors", "shim", "shim.cgroups", "shim.launch", "shim.launcher", "shim.logs",
    "shim.oci", "shim.osutil", "shim.runtime", "shim.runtime_oci", "shim.runtime_process",
    "shim.server", "signal", "socket", "struct", "types", "typing", "warnings", "weakref",
    # the shim's split (loop, outbox, task, execs, handlers, health) and the restart policy
    "shim.loop", "shim.outbox", "shim.task", "shim.execs", "shim.handlers", "shim.health",
    "events.policy",
    # the runtime's commands, instead of subprocess (whose threading costs every shim ~0.4 MB
    # of pages: see docs/design.md, the shim's memory); no pathlib, random, urllib either
    "shim.command",
    # the runtime's command's CPU time (os.wait4 imports it for its struct_rusage anyway)
    "resource",
    # ``python -m``: only a fresh ``shim start`` pays these (the launcher is already running)
    "runpy", "importlib", "importlib._abc", "importlib.machinery", "importlib.util",
})

HOW_TO_UPDATE = (
    "If the command truly needs it, add it to {where} in tests/test_import_budget.py in the same "
    "commit, with its cost (`python -X importtime`) in the message; otherwise import it lazily "
    "in the one function that uses it.")


def traced_modules(stderr: str) -> set[str]:
    """Every module named in a ``-X importtime`` trace."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            parts = line.split("|")
            if len(parts) == 3 and parts[2].strip() != "imported package":
                names.add(parts[2].strip())
    return names


def interpreter_modules(*flags: str) -> set[str]:
    """What the bare interpreter imports by itself with these flags (site, codecs, .pth)."""
    proc = subprocess.run([PYTHON, *flags, "-X", "importtime", "-c", "pass"],
                          capture_output=True, text=True, check=True, cwd="/")
    return traced_modules(proc.stderr)


def ctl_imports(d: Daemon, *argv: str, ok: tuple[int, ...] = (0,)) -> set[str]:
    """What ``supervisorctl --root ROOT ARGV`` imports beyond the bare interpreter; it must
    succeed (a failing command takes other paths). ``status`` exits 3 when a program is not
    running, as Supervisor's does."""
    proc = subprocess.run([PYTHON, CTL_FLAGS, "-X", "importtime", str(CTL_SCRIPT), "--root",
                           str(d.root), *argv], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode in ok, (argv, proc.stdout, proc.stderr[-2000:])
    return traced_modules(proc.stderr) - interpreter_modules(CTL_FLAGS)


def over_budget(imported: set[str], allowed: frozenset[str]) -> list[str]:
    return sorted(imported - allowed)


@pytest.fixture
def with_containers(daemon: Daemon) -> Daemon:
    """A daemon with one running and one stopped container, so ``ps`` renders real rows."""
    daemon.run("sleep", "100")
    cid = daemon.run("true")
    daemon.wait_for(lambda: daemon.ps()[cid]["state"] == "stopped")
    return daemon


def test_the_console_script_starts_python_with_the_traced_flags() -> None:
    """The trace above is of the start users get: the script's shell line execs ``-IS``."""
    line = CTL_SCRIPT.read_text().splitlines()[1]
    assert f'exec "$d/python" {CTL_FLAGS} "$0" "$@"' in line


@pytest.mark.skipif(not CTL_SCRIPT.exists(), reason="no console script: pip install -e .")
@pytest.mark.parametrize("command", sorted(CLI_EXTRA))
def test_supervisorctl_imports_only_its_budget(with_containers: Daemon, command: str) -> None:
    argv = command.split()
    if argv[0] == "run":
        argv += ["--", "sleep", "100"]
    imported = ctl_imports(with_containers, *argv, ok=(0, 3) if argv[0] == "status" else (0,))
    # the trace is real: the modules every command needs are in it
    assert {"supervisor.ctl", "events.rpc", "events.wire"} <= imported, sorted(imported)
    forbidden = sorted({m.split(".")[0] for m in imported} & NEVER_IN_CLI)
    assert not forbidden, (
        f"`supervisorctl {command}` imports {forbidden}, which no one-shot command may import "
        "(each costs milliseconds of every call): import it inside the function that needs it.")
    extra = over_budget(imported, CLI_COMMON | CLI_EXTRA[command])
    assert not extra, (
        f"`supervisorctl {command}` imports modules outside its budget: {extra}. "
        + HOW_TO_UPDATE.format(where=f"CLI_EXTRA[{command!r}]"))


def test_the_budget_check_sees_an_added_import(with_containers: Daemon) -> None:
    """The check can fail: the same command with one more import is over budget."""
    proc = subprocess.run(
        [PYTHON, "-I", "-X", "importtime", "-c",
         "import sys, typing; from supervisor.ctl import main; sys.exit(main(sys.argv[1:]))",
         "--root", str(with_containers.root), "ps"],
        capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = traced_modules(proc.stderr) - interpreter_modules("-I")
    assert "typing" in over_budget(imported, CLI_COMMON | CLI_EXTRA["ps"])


def test_shim_launcher_preloads_only_the_shim_budget() -> None:
    """What the launcher imports before it forks: every launcher-started shim has it."""
    proc = subprocess.run([PYTHON, "-I", "-X", "importtime", "-c",
                           "from shim import launcher; launcher.preload()"],
                          capture_output=True, text=True, check=True, timeout=60, cwd="/")
    imported = traced_modules(proc.stderr) - interpreter_modules("-I")
    assert {"shim.server", "events.wire", "msgpack"} <= imported, sorted(imported)
    forbidden = sorted({m.split(".")[0] for m in imported} & NEVER_IN_SHIM)
    assert not forbidden, f"the shim launcher imports {forbidden}: a shim never may (DESIGN.md)"
    extra = over_budget(imported, SHIM_ALLOWED)
    assert not extra, (f"the shim launcher preloads modules outside the shim's budget: {extra}. "
                       + HOW_TO_UPDATE.format(where="SHIM_ALLOWED"))


def test_fresh_shim_imports_only_the_shim_budget(root: Path) -> None:
    """A ``shim start`` in a fresh interpreter, over a whole container life (start, kill,
    wait, delete): its trace before the fork is on the starter's stderr, the detached shim's
    on its fd 2, which is ``shim.log``."""
    cid = "budget"
    directory = shim_api.shim_dir(root, cid)
    directory.mkdir(parents=True)
    shim_api.write_spec(directory, {"id": cid, "instance": f"{cid}-1",
                                    "command": ["sleep", "100"],
                                    "env": {"PATH": "/usr/bin:/bin"}})
    start = subprocess.run([PYTHON, "-I", "-X", "importtime", "-m", "shim", "start", "--root",
                            str(root), "--id", cid],
                           capture_output=True, text=True, timeout=60, cwd="/")
    assert start.returncode == 0, start.stderr[-2000:]
    ready = json.loads(start.stdout)
    with BlockingConnection(ready["address"], role="supervisor", timeout=10) as conn:
        conn.call("start")
        conn.call("kill", signal=9)
        conn.call("wait")
        conn.call("delete")
    deadline = time.monotonic() + 10
    while Path(f"/proc/{ready['pid']}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # pytest is its subreaper
            os.waitpid(ready["pid"], os.WNOHANG)
        time.sleep(0.01)  # the shim exits after delete: its trace is complete
    log = (directory / shim_api.SHIM_LOG).read_text()
    imported = (traced_modules(start.stderr) | traced_modules(log)) - interpreter_modules("-I")
    assert {"shim.server", "shim.runtime_process", "events.wire"} <= imported, sorted(imported)
    forbidden = sorted({m.split(".")[0] for m in imported} & NEVER_IN_SHIM)
    assert not forbidden, f"the shim imports {forbidden}: a shim never may (DESIGN.md)"
    extra = over_budget(imported, SHIM_ALLOWED)
    assert not extra, (f"a fresh shim imports modules outside its budget: {extra}. "
                       + HOW_TO_UPDATE.format(where="SHIM_ALLOWED"))
