"""``supervisorctl``: the command line of Tether, a blocking client of ``ROOT/supervisord.sock``.

Fast on purpose: a one-shot command is one short-lived process, so its cost is mostly imports.
This module imports only argparse, os, sys and (when a command needs them) the sans-IO codec and
the blocking client :mod:`events.rpc`; never trio, never structlog (trio alone costs 90 ms).

The commands and their flags are DESIGN.md's CLI table, a promise to users; so are the exit codes
(0 ok, 1 failed, 2 usage, 130 interrupted) and the ``--json`` lines. Every error goes to stderr,
says what went wrong and what to do about it.
"""

from __future__ import annotations

import argparse
import os
import sys

from supervisor.defaults import default_root

TYPE_CHECKING = False  # not typing's: every one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from events.rpc import BlockingConnection

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Seconds a one-shot request may wait for the daemon. Long enough for a group commit under
#: load, short enough that a wedged daemon gives an error rather than a hung terminal.
CALL_TIMEOUT = 30.0
#: Longest socket path the kernel accepts (``sun_path`` is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


class CtlError(Exception):
    """A failure to report on stderr (no traceback) with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def socket_path(root: str | None, sock: str | None) -> str:
    if sock:
        return sock
    return os.path.join(root or default_root(), "supervisord.sock")


# -- parsing helpers ---------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` (bytes) -> bytes; binary units like docker's."""
    s = text.strip().lower()
    if s.endswith("ib"):
        s = s[:-2]
    elif s.endswith("b") and len(s) > 1 and not s[-2].isdigit():
        s = s[:-1]
    unit = s[-1:] if s[-1:].isalpha() else ""
    number = s[: len(s) - len(unit)]
    if unit not in _SIZE_UNITS or not number:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a number with k, m, g or t (e.g. 64m, 1g)")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a number with k, m, g or t (e.g. 64m, 1g)"
        ) from None
    result = int(value * _SIZE_UNITS[unit])
    if result <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be more than 0 bytes")
    return result


def parse_signal(text: str) -> int:
    """``TERM``, ``SIGTERM``, ``term``, ``15`` -> 15. Checked here so a typo is a usage error."""
    from events.signals import InvalidSignal, parse_signal  # only `kill` pays for it

    try:
        return parse_signal(text)
    except InvalidSignal as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"invalid environment variable {text!r}: use KEY=VALUE")
    if not sep:  # docker's `-e KEY`: take it from our environment
        if key not in os.environ:
            raise argparse.ArgumentTypeError(
                f"-e {key}: not set in this environment; use KEY=VALUE")
        value = os.environ[key]
    return key, value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected 1 or more, got 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value < float("inf"):  # also nan; inf would overflow the socket timeout
        raise argparse.ArgumentTypeError(f"expected 0 or more seconds, got {text!r}")
    return value


# -- the parser --------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so the interactive shell survives a typo."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CtlError(f"{self.prog}: {message}\nTry '{self.prog} --help'.", EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            sys.stderr.write(message)
        raise _ParserExit(status)


class _ShellParser(_Parser):
    """The parser of one shell line: its hints point at the shell's `help`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        name = self.prog.strip()
        where = f"{name}: " if name else ""
        raise CtlError(f"{where}{message}\nTry 'help {name}'.".replace("help '", "help'"),
                       EXIT_USAGE)


class _ParserExit(Exception):
    """``--help`` was printed: stop here with ``status`` (0)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parse_runtime(value: str) -> str:
    """``process``, ``runc``, ``crun``, or a path to a runc-compatible binary (made absolute:
    the shim resolves it, from another working directory)."""
    if value in ("process", "runc", "crun"):
        return value
    if "/" in value:
        return os.path.abspath(value)
    raise argparse.ArgumentTypeError(
        f"unknown runtime {value!r}: use process, runc, crun or the path of a runc-compatible "
        "binary (e.g. ./my-runc)")


def parse_restart_policy(text: str) -> tuple[str, int | None]:
    """``--restart``: docker's ``no|on-failure[:MAX]|always|unless-stopped``."""
    from events.policy import parse_restart  # only run/create pay for it

    try:
        return parse_restart(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_seconds(text: str) -> float:
    """A duration flag: seconds, finite, from 0 to a week (events.policy.seconds)."""
    from events.policy import seconds

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    try:
        return seconds(value, "the value")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The supervision flags of run/create and the spec fields they set (section 8 of the design).
_RESTART_FLAGS = {"restart_delay": "delay", "restart_max_delay": "max_delay",
                  "restart_reset": "reset"}
_HEALTH_FLAGS = {"health_interval": "interval", "health_timeout": "timeout",
                 "health_retries": "retries", "health_start_period": "start_period"}


def _add_supervision_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("restart policy and health check (docker's meanings)")
    g.add_argument("--restart", type=parse_restart_policy, metavar="POLICY",
                   help="no (default), on-failure[:MAX] (a non-zero status or a signal; give "
                        "up after MAX in a row), always, unless-stopped")
    g.add_argument("--restart-delay", type=parse_seconds, metavar="S",
                   help="first back-off (default 0.1 s); doubles after each restart in a row")
    g.add_argument("--restart-max-delay", type=parse_seconds, metavar="S",
                   help="the back-off's cap (default 60 s)")
    g.add_argument("--restart-reset", type=parse_seconds, metavar="S",
                   help="a task that ran this long resets the back-off (default 10 s)")
    g.add_argument("--health-cmd", metavar="CMD",
                   help="health check: `sh -c CMD` inside the container, 0 = healthy")
    g.add_argument("--health-interval", type=parse_seconds, metavar="S",
                   help="between checks (default 30 s)")
    g.add_argument("--health-timeout", type=parse_seconds, metavar="S",
                   help="a check that takes longer fails (default 30 s)")
    g.add_argument("--health-retries", type=positive_int, metavar="N",
                   help="failures in a row that make it unhealthy (default 3)")
    g.add_argument("--health-start-period", type=parse_seconds, metavar="S",
                   help="failures before this do not count (default 0)")
    g.add_argument("--health-restart", action="store_true",
                   help="restart an unhealthy container through its restart policy")


def _supervision_spec(args: argparse.Namespace) -> dict[str, Any]:
    """``restart``/``health`` of the spec from the flags; a usage error names the flag."""
    from events import policy

    def usage(message: str) -> CtlError:  # worded like argparse's own errors
        return CtlError(f"supervisorctl {args.cmd}: {message}\nTry 'supervisorctl {args.cmd} "
                        "--help'.", EXIT_USAGE)

    out: dict[str, Any] = {}
    restart: dict[str, Any] = {}
    if args.restart is not None:
        restart["policy"], restart["max_retries"] = args.restart
    restart.update({key: getattr(args, flag) for flag, key in _RESTART_FLAGS.items()
                    if getattr(args, flag) is not None})
    given = [flag for flag in (*_HEALTH_FLAGS, "health_restart")
             if getattr(args, flag) not in (None, False)]
    if given and args.health_cmd is None:
        raise usage(f"--{given[0].replace('_', '-')} needs --health-cmd")
    health: dict[str, Any] = {key: getattr(args, flag) for flag, key in _HEALTH_FLAGS.items()
                              if getattr(args, flag) is not None}
    if args.health_restart:
        health["restart"] = True
    if args.health_cmd is not None:
        health["cmd"] = args.health_cmd
    names = {f"restart.{key}": f"--{flag.replace('_', '-')}"
             for flag, key in _RESTART_FLAGS.items()}
    names.update({f"health.{key}": f"--{flag.replace('_', '-')}"
                  for flag, key in _HEALTH_FLAGS.items()})
    names.update({"health.cmd": "--health-cmd", "restart.max_retries": "--restart"})
    try:
        checked = policy.restart_spec(restart or None)
        policy.health_spec(health or None)
    except ValueError as exc:
        message = str(exc)
        for field, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
            message = message.replace(field, flag)
        raise usage(message) from None
    if health.get("restart") and checked["policy"] == "no":
        raise usage("--health-restart restarts through the restart policy: give one with "
                    "--restart (e.g. --restart on-failure)")
    if restart:
        out["restart"] = restart
    if health:
        out["health"] = health
    return out


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="the container's id (generated when absent)")
    p.add_argument("--runtime", default="process", type=parse_runtime,
                   metavar="process|runc|crun|PATH",
                   help="how to run it: a plain process (default), an OCI runtime, or the path "
                        "of any runc-compatible binary")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rootfs", metavar="DIR", help="root filesystem (OCI runtimes)")
    where.add_argument("--bundle", metavar="DIR", help="an OCI bundle (config.json + rootfs)")
    p.add_argument("-e", "--env", metavar="K=V", action="append", type=parse_env, default=[],
                   help="set an environment variable (repeatable)")
    p.add_argument("--cwd", metavar="D", help="working directory of the command")
    p.add_argument("--init", action="store_true",
                   help="run an init (tini) as pid 1 that reaps zombies and forwards signals")
    p.add_argument("--memory", metavar="M", type=parse_size,
                   help="memory limit: bytes, or with a unit (64m, 1g)")
    p.add_argument("--cpus", metavar="N", type=positive_float,
                   help="CPU limit in CPUs, e.g. 0.5 (CFS quota)")
    p.add_argument("--pids-limit", metavar="N", type=positive_int,
                   help="most processes the container may have at once")
    _add_supervision_arguments(p)
    p.add_argument("command", nargs="+", metavar="CMD",
                   help="the command and its arguments (put them after --)")


def _define_commands(sub: Any, only: str | None, shell: bool) -> None:
    """Add the subcommands (just ``only`` when given: see :func:`build_parser`)."""

    overridden: frozenset[str] = frozenset()

    def add(name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser | None:
        if (only is not None and name != only) or name in overridden:
            return None
        return sub.add_parser(name, help=help, formatter_class=_formatter, **kwargs)

    # Supervisor's verbs (status, start, stop, restart, signal, tail, pid, avail, reread,
    # update, clear) and apply: where a verb exists in both, Supervisor's meaning wins.
    from supervisor import ctl_supervisor

    overridden = ctl_supervisor.define(add)

    spec_usage = "%(prog)s [options] -- CMD [ARGS...]"
    if p := add("run", "create and start a container, print its id", usage=spec_usage):
        _add_spec_arguments(p)
    if p := add("create", "create a container without starting it, print its id",
                usage=spec_usage):
        _add_spec_arguments(p)
    if p := add("start", "start a created container"):
        p.add_argument("ids", nargs="+", metavar="ID")
    if p := add("ps", "list containers"):
        p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
    if p := add("inspect", "full JSON of a container: state, spec, history"):
        p.add_argument("id", metavar="ID")
    if p := add("stop", "SIGTERM, then SIGKILL after the grace time"):
        p.add_argument("-t", "--time", type=non_negative_float, metavar="SECONDS",
                       help="grace time before SIGKILL (default: the container's, 10 s)")
        p.add_argument("ids", nargs="+", metavar="ID")
    if p := add("kill", "send a signal to a container (default KILL)"):
        p.add_argument("-s", "--signal", type=parse_signal, default="KILL", metavar="SIGNAL",
                       help="a name (TERM, SIGTERM) or a number (default KILL)")
        p.add_argument("ids", nargs="+", metavar="ID")
    if p := add("restart", "stop a container and start it again"):
        p.add_argument("-t", "--time", type=non_negative_float, metavar="SECONDS",
                       help="grace time before SIGKILL")
        p.add_argument("ids", nargs="+", metavar="ID")
    if p := add("rm", "remove a container (-f: even if running)"):
        p.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
        p.add_argument("ids", nargs="+", metavar="ID")
    if p := add("wait", "block until a container exits; exit with its status"):
        p.add_argument("id", metavar="ID")
    if p := add("logs", "a container's output"):
        p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
        p.add_argument("--tail", type=non_negative_int, metavar="N",
                       help="only the last N lines")
        p.add_argument("id", metavar="ID")
    if p := add("exec", "run another process in a running container",
                usage="%(prog)s [-e K=V] [--cwd D] ID -- CMD [ARGS...]"):
        p.add_argument("-e", "--env", metavar="K=V", action="append", type=parse_env,
                       default=[], help="add to the container's environment (repeatable)")
        p.add_argument("--cwd", metavar="D", help="working directory (default: the container's)")
        p.add_argument("id", metavar="ID")
        p.add_argument("command", nargs="+", metavar="CMD")
    if p := add("events", "the event log, then live events with --follow"):
        p.add_argument("--since", type=non_negative_int, default=0, metavar="SEQ",
                       help="only events after this seq (default: from the start)")
        p.add_argument("--type", dest="types", action="append", metavar="T",
                       help="only this type or type prefix, e.g. task.exit or task (repeatable)")
        p.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="only this container's events (repeatable)")
        p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
        p.add_argument("--json", action="store_true", help="one JSON object per line")
    if p := add("status", "is the daemon up and healthy"):
        p.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    if p := add("info", "version, paths, counts"):
        p.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    add("shutdown", "stop the daemon (containers keep running)")
    if shell:
        if p := add("help", "list commands, or `help COMMAND`"):
            p.add_argument("topic", nargs="?")
        add("quit", "leave the shell")


def _terminal_width() -> int:
    """What argparse would compute, without importing shutil (3 ms of every one-shot run)."""
    try:
        return int(os.environ["COLUMNS"]) - 2
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns - 2
    except (OSError, ValueError, AttributeError):
        return 78


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_terminal_width())


def build_parser(prog: str = "supervisorctl", shell: bool = False,
                 only: str | None = None) -> _Parser:
    """The whole CLI. ``shell=True`` builds the parser of one line of the interactive shell.

    ``only`` builds just that subcommand: argparse validates every argument as it is added, and
    defining all sixteen commands costs more than a whole ``ps`` round trip to the daemon.
    """
    cls = _ShellParser if shell else _Parser
    parser = cls(
        prog=prog,
        description="Control supervisord: run, list, stop and watch containers.",
        epilog="With no command: an interactive shell. Exit codes: 0 ok, 1 failed, 2 usage.",
        formatter_class=_formatter,
    )
    if not shell:
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--root", metavar="DIR",
                            help=f"supervisord's root (default: {default_root()})")
        target.add_argument("--socket", metavar="PATH",
                            help="the API socket (default: ROOT/supervisord.sock)")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=cls)
    _define_commands(sub, only, shell)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after ``--root X`` / ``--socket X``), if plainly there.

    Anything unusual (an unknown word, ``-h``, no command) gives None and the full parser, so
    errors and help list every command.
    """
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("--root", "--socket"):
            i += 2
        elif word.startswith(("--root=", "--socket=")):
            i += 1
        elif word in COMMANDS:
            return word
        else:
            return None
    return None


# -- talking to the daemon ---------------------------------------------------------------------


class Target:
    """Where the daemon is, and how to say so when it is not there."""

    def __init__(self, root: str | None, sock: str | None) -> None:
        self.root = root
        self.path = socket_path(root, sock)
        self.explicit_socket = sock is not None

    def _start_hint(self) -> str:
        if self.explicit_socket:
            return "supervisord --root DIR (the socket is DIR/supervisord.sock)"
        return f"supervisord --root {self.root or default_root()}"

    def connect(self, call_timeout: float | None = CALL_TIMEOUT) -> BlockingConnection:
        """Connect and exchange hellos (within :data:`CALL_TIMEOUT`, whatever the command), then
        bound each later socket operation by ``call_timeout`` (None: a command that may
        legitimately wait for a long time, like ``wait`` or ``stop`` with a long grace)."""
        conn = self._connect(CALL_TIMEOUT)
        conn.settimeout(call_timeout)
        return conn

    def _connect(self, timeout: float) -> BlockingConnection:
        from events import wire
        from events.rpc import BlockingConnection

        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise CtlError(
                f"socket path {self.path} is {len(os.fsencode(self.path))} bytes, over the "
                f"kernel's {MAX_SOCKET_PATH}-byte limit; use a shorter --root or --socket")
        try:
            return BlockingConnection(self.path, timeout=timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise CtlError(
                f"cannot connect to {self.path}: {exc.strerror} — is supervisord running? "
                f"({self._start_hint()})") from None
        except PermissionError as exc:
            raise CtlError(
                f"cannot connect to {self.path}: {exc.strerror} — run as root or as a member of "
                "the socket's group (supervisord --group NAME)") from None
        except TimeoutError:
            raise CtlError(
                f"{self.path}: supervisord did not answer the hello within {timeout:g} s — is "
                "it stuck? (check its log, or restart it: containers keep running)") from None
        except ConnectionError as exc:
            raise CtlError(
                f"{self.path}: the connection was closed during the hello ({exc}) — is "
                "supervisord shutting down?") from None
        except wire.RemoteError as exc:
            raise CtlError(f"{self.path}: supervisord refused the connection: {exc}") from None
        except wire.ProtocolError as exc:
            raise CtlError(
                f"{self.path}: not a supervisord of this version ({exc}); is it the right "
                "socket, and are supervisorctl and supervisord from the same release?") from None


_HINTS = {
    "not_found": "`supervisorctl ps -a` lists the containers",
    "conflict": "`supervisorctl ps -a` shows each container's state",
    "unknown_method": "supervisord is older than this supervisorctl; upgrade it",
    "no_space": "free disk space under the root, then try again: nothing was changed",
    "unavailable": "the container's shim cannot be reached; `supervisorctl inspect ID` shows why",
}


def remote_message(command: str, exc: Any) -> str:
    """An error reply of the daemon, as a sentence with a hint when we have one."""
    hint = None if "supervisorctl" in exc.message else _HINTS.get(exc.code)
    text = f"{command}: {exc.message} ({exc.code})"
    return f"{text}\n  hint: {hint}" if hint else text


# -- commands ----------------------------------------------------------------------------------


def _out(text: str) -> None:
    sys.stdout.write(text)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": list(args.command), "runtime": args.runtime,
                            "env": dict(args.env)}
    for key in ("name", "cwd", "rootfs", "bundle", "memory", "cpus", "pids_limit"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    if args.init:
        spec["init"] = True
    spec.update(_supervision_spec(args))
    return spec


def cmd_run(t: Target, args: argparse.Namespace) -> int:
    spec = _spec(args)  # a usage error does not need the daemon
    with t.connect() as c:
        result = c.call(args.cmd, spec=spec)
    _out(f"{result['id']}\n")
    return EXIT_OK


def _each(ids: Sequence[str], what: str, action: Callable[[str], Any]) -> int:
    """Apply ``action`` to every id like docker: report each failure, go on, exit 1 if any."""
    from events import wire

    status = EXIT_OK
    for cid in ids:
        try:
            action(cid)
        except wire.RemoteError as exc:
            sys.stderr.write(f"supervisorctl {remote_message(f'{what} {cid}', exc)}\n")
            status = EXIT_FAILED
        else:
            _out(f"{cid}\n")
            sys.stdout.flush()
    return status


def cmd_start(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        return _each(args.ids, "start", lambda cid: c.call("start", id=cid))


def cmd_stop(t: Target, args: argparse.Namespace) -> int:
    # Waits for the exit to be durable: the grace time plus a margin for SIGKILL and fsync (or
    # without a bound when the grace is the container's own, which we do not know).
    timeout = None if args.time is None else args.time + CALL_TIMEOUT
    params = {} if args.time is None else {"timeout": args.time}
    with t.connect(call_timeout=timeout) as c:
        return _each(args.ids, "stop", lambda cid: c.call("stop", id=cid, **params))


def cmd_restart(t: Target, args: argparse.Namespace) -> int:
    params = {} if args.time is None else {"timeout": args.time}
    with t.connect(call_timeout=None) as c:
        return _each(args.ids, "restart", lambda cid: c.call("restart", id=cid, **params))


def cmd_kill(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        return _each(args.ids, "kill", lambda cid: c.call("kill", id=cid, signal=args.signal))


def cmd_rm(t: Target, args: argparse.Namespace) -> int:
    with t.connect(call_timeout=None if args.force else CALL_TIMEOUT) as c:
        return _each(args.ids, "rm", lambda cid: c.call("rm", id=cid, force=args.force))


def cmd_ps(t: Target, args: argparse.Namespace) -> int:
    import time

    from supervisor import ctl_render

    with t.connect() as c:
        rows = c.call("ps", all=args.all)
    rows = list(rows or [])
    if args.json:
        _out(ctl_render.ps_json_lines(rows))
    else:
        _out(ctl_render.ps_table(rows, time.time_ns()))
    return EXIT_OK


def cmd_inspect(t: Target, args: argparse.Namespace) -> int:
    from supervisor import ctl_render

    with t.connect() as c:
        obj = c.call("inspect", id=args.id)
    _out(ctl_render.inspect_json(obj) + "\n")
    return EXIT_OK


def cmd_wait(t: Target, args: argparse.Namespace) -> int:
    with t.connect(call_timeout=None) as c:  # a container may run for days
        result = c.call("wait", id=args.id)
    status = (result or {}).get("exit_status")
    if status is None:
        _out("unknown\n")
        sys.stderr.write(f"supervisorctl wait {args.id}: the exit status is unknown "
                         "(its shim was lost); `supervisorctl inspect` shows what is known\n")
        return EXIT_FAILED
    _out(f"{status}\n")
    return int(status) & 0xFF


def _write_line(item: dict[str, Any]) -> None:
    """One log item to its stream; a partial line is continued by the next item, so no newline."""
    stream = sys.stderr if item.get("stream") == "stderr" else sys.stdout
    line = item.get("line", b"")
    data = line if isinstance(line, bytes | bytearray) else str(line).encode("utf-8", "replace")
    stream.flush()
    stream.buffer.write(data if item.get("partial") else bytes(data) + b"\n")


def cmd_logs(t: Target, args: argparse.Namespace) -> int:
    with t.connect(call_timeout=None if args.follow else CALL_TIMEOUT) as c:
        for item in c.stream("logs", id=args.id, tail=args.tail, follow=args.follow):
            _write_line(item)
            if args.follow:
                sys.stdout.buffer.flush()
                sys.stderr.buffer.flush()
    return EXIT_OK


def cmd_exec(t: Target, args: argparse.Namespace) -> int:
    """The exec'd process's output as it comes (bytes, unchanged), on our stdout/stderr; our
    exit code is its status (128 + signal when killed)."""
    status = EXIT_FAILED
    params: dict[str, Any] = {"id": args.id, "command": list(args.command)}
    if args.env:
        params["env"] = dict(args.env)
    if args.cwd:
        params["cwd"] = args.cwd
    with t.connect(call_timeout=None) as c:
        for item in c.stream("exec", **params):
            if "exit_status" in item:
                status = int(item["exit_status"] if item["exit_status"] is not None else 1)
                continue
            out = sys.stderr if item.get("stream") == "stderr" else sys.stdout
            data = item.get("data", b"")
            out.buffer.write(data if isinstance(data, bytes) else str(data).encode())
            out.buffer.flush()
    return status & 0xFF


def cmd_events(t: Target, args: argparse.Namespace) -> int:
    from events import wire
    from supervisor import ctl_render

    render = ctl_render.event_json if args.json else ctl_render.event_line
    last = args.since
    params: dict[str, Any] = {"since": args.since, "follow": args.follow}
    if args.types:
        params["types"] = args.types
    if args.ids:
        params["ids"] = args.ids
    # No bound: the history can be long, and --follow waits for new events.
    with t.connect(call_timeout=None) as c:
        try:
            for record in c.stream("events", **params):
                _out(render(record) + "\n")
                last = record.get("seq", last)
                if args.follow:
                    sys.stdout.flush()
        except wire.RemoteError as exc:
            if exc.code != "too_slow":
                raise
            sys.stdout.flush()
            raise CtlError(
                f"events: {exc.message} (too_slow): this reader fell behind the daemon's buffer "
                f"and was cut off after seq {last}; resume without a gap with: supervisorctl "
                f"events --since {last}{' --follow' if args.follow else ''}") from None
    return EXIT_OK


def _print_map(obj: Any, as_json: bool) -> None:
    from supervisor import ctl_render

    if as_json or not isinstance(obj, dict):
        _out(ctl_render.dumps(obj) + "\n")
        return
    width = max((len(str(k)) for k in obj), default=0)
    for key, value in obj.items():
        if isinstance(value, dict | list):
            shown = ctl_render.dumps(value)
        elif isinstance(value, float):
            shown = f"{value:.3f}"
        else:
            shown = value
        _out(f"{str(key) + ':':<{width + 1}} {shown}\n")


def cmd_status(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        result = c.call("status")
    _print_map(result, args.json)
    return EXIT_OK if isinstance(result, dict) and result.get("ok", True) else EXIT_FAILED


def cmd_info(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        result = c.call("info")
    _print_map(result, args.json)
    return EXIT_OK


#: Seconds ``shutdown`` waits for the daemon's process to be gone before it says so.
SHUTDOWN_WAIT = 15.0


def cmd_shutdown(t: Target, args: argparse.Namespace) -> int:
    """Ask the daemon to stop, then wait until it has: scripts may restart it right after."""
    import time

    from events import procfs

    with t.connect() as c:
        pid = c.peer.get("pid")
        c.call("shutdown")
        deadline = time.monotonic() + SHUTDOWN_WAIT
        c.settimeout(SHUTDOWN_WAIT)
        try:  # the daemon closes our connection as it exits
            while time.monotonic() < deadline:
                c.recv()
        except (OSError, ValueError):
            pass
    while isinstance(pid, int) and time.monotonic() < deadline:
        if not procfs.is_running(pid):
            break
        time.sleep(0.02)
    else:
        if isinstance(pid, int):
            sys.stderr.write(f"supervisorctl shutdown: supervisord (pid {pid}) is still running "
                             f"after {SHUTDOWN_WAIT:g} s\n")
            return EXIT_FAILED
    _out(f"supervisord{f' (pid {pid})' if pid else ''} stopped; containers keep running\n")
    return EXIT_OK


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "run": cmd_run, "create": cmd_run, "start": cmd_start, "ps": cmd_ps, "inspect": cmd_inspect,
    "stop": cmd_stop, "kill": cmd_kill, "restart": cmd_restart, "rm": cmd_rm, "wait": cmd_wait,
    "logs": cmd_logs, "exec": cmd_exec, "events": cmd_events, "status": cmd_status,
    "info": cmd_info, "shutdown": cmd_shutdown,
}

from supervisor.ctl_supervisor import COMMANDS as _SUPERVISOR_COMMANDS  # noqa: E402

COMMANDS.update(_SUPERVISOR_COMMANDS)

#: Commands for which a dropped connection means "the daemon went away" rather than a bug.
_LONG_RUNNING = {"wait", "logs", "events", "exec"}


def dispatch(t: Target, args: argparse.Namespace) -> int:
    """Run one parsed command; every expected failure becomes a :class:`CtlError`."""
    from events import wire

    command = args.cmd
    try:
        return COMMANDS[command](t, args)
    except wire.RemoteError as exc:
        raise CtlError(remote_message(command, exc)) from None
    except TimeoutError:
        raise CtlError(
            f"{command}: no answer from supervisord at {t.path} within {CALL_TIMEOUT:g} s — is "
            "it overloaded or stuck? (`supervisorctl status`)") from None
    except ConnectionError as exc:
        what = "while streaming" if command in _LONG_RUNNING else "before answering"
        raise CtlError(
            f"{command}: supervisord closed the connection {what} ({exc}) — did it stop or "
            f"crash? Containers keep running; restart it ({t._start_hint()}) and "
            "try again") from None
    except wire.ProtocolError as exc:
        raise CtlError(f"{command}: supervisord sent something unexpected: {exc}") from None


def _quiet_broken_pipe() -> int:
    """``supervisorctl ps | head -1``: the reader left; exit without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_command_word(argv))
    try:
        args = parser.parse_args(argv)
        target = Target(args.root, args.socket)
        if args.cmd is None:
            from supervisor.ctl_shell import Shell

            return Shell(target).run()
        code = dispatch(target, args)
        sys.stdout.flush()
        return code
    except _ParserExit as exc:
        return exc.status
    except CtlError as exc:
        sys.stdout.flush()
        message = str(exc)
        if exc.code != EXIT_USAGE and not message.startswith("supervisorctl"):
            message = f"supervisorctl {message}" if _starts_with_command(message) else \
                f"supervisorctl: {message}"
        sys.stderr.write(message + "\n")
        return exc.code
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _starts_with_command(message: str) -> bool:
    head = message.split(":", 1)[0].split(" ", 1)[0]
    return head in COMMANDS


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
