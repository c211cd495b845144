"""The grammar of supervisorctl: every command, its flags and their values, and :func:`parse`.

One table (:data:`GRAMMAR`) names the commands with their help and their arguments. Each
command's arguments are a function that makes argparse's calls (``add_argument``...), read two
ways: recorded as a table that :mod:`supervisor.ctl_args` reads a well-formed command line
from, without importing argparse (which, with what it imports, costs a one-shot command more
than its round trip to the daemon), and built into argparse's parser
(:mod:`supervisor.ctl_argparse`) for ``--help`` and for every line with an error in it, so the
messages are argparse's. Only the named command's arguments are built.

The grammar is docker's: global options, the command, its options, then (``run``,
``create``, ``exec``) the command line to run, which starts at the first word that is not an
option or an option's value (``--`` is accepted too), so ``supervisorctl run python3 --help``
runs ``python3 --help``. A usage error names the command (``supervisorctl run: ...``) and
exits 2.

(Longer than our usual module: it is the one table of the CLI, and splitting it would put a
command's flags in one place and their value types in another.)
"""

from __future__ import annotations

import os

from supervisor import ctl_svgrammar as _supervisor
from supervisor.ctl import EXIT_USAGE, CtlError

TYPE_CHECKING = False  # not typing's: every one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any, Protocol

    class Arguments(Protocol):
        """What a command's definition calls: argparse's own methods, read by argparse
        (:mod:`supervisor.ctl_argparse`) or recorded (:mod:`supervisor.ctl_args`)."""

        def add_argument(self, *names: str, **kwargs: Any) -> object: ...

        def add_argument_group(self, title: str) -> Arguments: ...

        def add_mutually_exclusive_group(self) -> Arguments: ...

__all__ = ["EPILOG", "GRAMMAR", "HIDDEN", "SHELL_ONLY", "TAKES_COMMAND", "UNSUPPORTED",
           "BadValue", "Namespace", "ParserExit", "build_parser", "command_parser", "parse",
           "split_command", "takes_value", "usage_error"]

EPILOG = """\
Exit codes: 0 ok; 1 failed; 2 usage; wait and exec exit with the container's or the process's
status (128+N if killed by signal N), 125 when supervisorctl has no status to give (the reason
on stderr; also wait, logs -f and events -f when supervisord went away and did not come back
within --reconnect seconds); exec 126/127 when the command cannot run / is not found;
130 interrupted; 141 the reader of our output left (| head).
With no command: an interactive shell."""


class BadValue(Exception):
    """A value its flag refuses; argparse (:mod:`supervisor.ctl_argparse`) reports the message
    as its own ``argument --memory: invalid size ...``."""


#: A flag left out of ``--help`` (argparse's ``SUPPRESS``, read by :mod:`supervisor.ctl_argparse`).
HIDDEN = "(hidden)"
#: The action of a docker flag refused with its reason (``why``): ``-i``, ``-t``.
UNSUPPORTED = "unsupported"


#: The largest whole number a value may take: the wire's (msgpack's) signed 64-bit integers.
_MAX_WHOLE = 2**63 - 1
#: events.policy.MAX_SECONDS (a week), written here: importing events.policy would load
#: events.domain's enums into every ``stop -t`` (tests/test_ctl_args.py checks they match)
_MAX_SECONDS = 7 * 24 * 3600.0
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``64m``, ``1g``, ``512k``, ``1048576`` (bytes) -> bytes; binary units like docker's."""
    bad = f"invalid size {text!r}: use bytes or a number with k, m, g or t (e.g. 64m, 1g)"
    s = text.strip().lower()
    if s.endswith("ib"):
        s = s[:-2]
    elif s.endswith("b") and len(s) > 1 and not s[-2].isdigit():
        s = s[:-1]
    unit = s[-1:] if s[-1:].isalpha() else ""
    number = s[: len(s) - len(unit)]
    if unit not in _SIZE_UNITS or not number:
        raise BadValue(bad)
    try:
        value = float(number) * _SIZE_UNITS[unit]
    except ValueError:
        raise BadValue(bad) from None
    if not value < _MAX_WHOLE:  # also nan and inf (1e400m)
        raise BadValue(f"invalid size {text!r}: too large")
    result = int(value)
    if result <= 0:
        raise BadValue(f"invalid size {text!r}: must be more than 0 bytes")
    return result


def parse_signal(text: str) -> int:
    """``TERM``, ``SIGTERM``, ``term``, ``15`` -> 15. Checked here so a typo is a usage error."""
    from events.signals import InvalidSignal, parse_signal  # only `kill` pays for it

    try:
        return parse_signal(text)
    except InvalidSignal as exc:
        raise BadValue(str(exc)) from None


def parse_env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not key:
        raise BadValue(f"invalid environment variable {text!r}: use KEY=VALUE")
    if not sep:  # docker's `-e KEY`: take it from our environment
        if key not in os.environ:
            raise BadValue(
                f"-e {key}: not set in this environment; use KEY=VALUE")
        value = os.environ[key]
    return key, value


def parse_label(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    if not key:
        raise BadValue(f"invalid label {text!r}: use KEY=VALUE or KEY")
    return key, value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadValue(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise BadValue(f"expected 0 or more, got {value}")
    if value > _MAX_WHOLE:  # the wire's integers are 64-bit
        raise BadValue(f"expected at most {_MAX_WHOLE}, got {text}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise BadValue("expected 1 or more, got 0")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise BadValue(f"expected a number above 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """Seconds (``stop -t``, ``--stop-timeout``, ``--reconnect``): finite, from 0 to a week
    (events.policy.MAX_SECONDS): ``inf``, ``nan`` and ``1e308`` are usage errors here, as the
    daemon would refuse them."""
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number of seconds, got {text!r}") from None
    if not 0 <= value <= _MAX_SECONDS:  # also nan; inf would overflow a socket timeout
        raise BadValue(f"expected a number of seconds from 0 to {_MAX_SECONDS:g}, got {text!r}")
    return value


def parse_restart_policy(text: str) -> tuple[str, int | None]:
    """``--restart``: docker's ``no|on-failure[:MAX]|always|unless-stopped``."""
    from events.policy import parse_restart  # only run/create pay for it

    try:
        return parse_restart(text)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def parse_seconds(text: str) -> float:
    """A supervision duration: seconds, finite, from 0 to a week (events.policy.seconds)."""
    from events.policy import seconds

    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a number of seconds, got {text!r}") from None
    try:
        return seconds(value, "the value")
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def tail_lines(text: str) -> int | None:
    """``--tail N``; docker's ``all`` is every line."""
    return None if text == "all" else non_negative_int(text)


def since_time(text: str) -> int:
    from supervisor.ctl_values import parse_since  # only `logs --since` pays for it

    try:
        return parse_since(text)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def parse_runtime(value: str) -> str:
    """``process``, ``runc``, ``crun``, or a path to a runc-compatible binary (made absolute:
    the shim resolves it, from another working directory)."""
    if value in ("process", "runc", "crun"):
        return value
    if "/" in value:
        return os.path.abspath(value)
    raise BadValue(
        f"unknown runtime {value!r}: use process, runc, crun or the path of a runc-compatible "
        "binary (e.g. ./my-runc)")


# -- the commands ------------------------------------------------------------------------------


class ParserExit(Exception):
    """``--help`` or ``--version`` was printed: stop here with ``status`` (0)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


_RECONNECT_HELP = ("if supervisord goes away, wait this long for it to come back, then exit "
                   "125 (default 60; 0: at once)")


def _spec_arguments(p: Arguments) -> None:
    p.add_argument("--name", help="the container's id (generated when absent)")
    p.add_argument("--runtime", default="process", type=parse_runtime,
                   metavar="process|runc|crun|PATH",
                   help="how to run it: a plain process on the host (default), an OCI runtime, "
                        "or the path of any runc-compatible binary")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rootfs", metavar="DIR", help="root filesystem (needs an OCI runtime)")
    where.add_argument("--bundle", metavar="DIR", help="an OCI bundle (needs an OCI runtime)")
    p.add_argument("-e", "--env", metavar="K=V", action="append", type=parse_env, default=[],
                   help="set an environment variable; -e K takes ours (repeatable)")
    p.add_argument("--env-file", metavar="FILE", action="append", default=[],
                   help="read K=V lines from FILE (# comments; -e wins) (repeatable)")
    p.add_argument("-w", "--cwd", "--workdir", dest="cwd", metavar="DIR",
                   help="working directory of the command")
    p.add_argument("-u", "--user", metavar="USER[:GROUP]",
                   help="run as this user: a name or uid, and a group name or gid")
    p.add_argument("-l", "--label", metavar="K=V", action="append", type=parse_label,
                   default=[], help="a label, for ps --filter label=K[=V] (repeatable)")
    p.add_argument("--init", action="store_true",
                   help="run an init (tini) as pid 1 that reaps zombies and forwards signals")
    p.add_argument("-m", "--memory", metavar="SIZE", type=parse_size,
                   help="memory limit: bytes, or with a unit (64m, 1g)")
    p.add_argument("--cpus", metavar="N", type=positive_float,
                   help="CPU limit in CPUs, e.g. 0.5 (CFS quota)")
    p.add_argument("--pids-limit", metavar="N", type=positive_int,
                   help="most processes the container may have at once")
    p.add_argument("--stop-signal", metavar="SIGNAL", type=parse_signal,
                   help="what stop sends first (default TERM)")
    p.add_argument("--stop-timeout", metavar="SECONDS", type=non_negative_float,
                   help="grace time before stop sends SIGKILL (default 10)")
    p.add_argument("--rm", action="store_true",
                   help="remove the container once it has exited (the daemon does it)")
    p.add_argument("--shim-group", metavar="NAME",
                   help="share one shim process with the other programs of group NAME "
                        "(process runtime; saves memory; one shim's death loses the exit "
                        "statuses of the whole group)")
    _supervision_arguments(p)
    p.add_argument("-d", "--detach", action="store_true",
                   help="accepted for docker's habit: containers always run detached")
    p.add_argument("-i", "--interactive", action=UNSUPPORTED, help=HIDDEN,
                   why="containers run detached, without a terminal or stdin; follow the "
                       "output with `supervisorctl logs -f ID`, run more with `exec`")
    p.add_argument("-t", "--tty", action=UNSUPPORTED, help=HIDDEN,
                   why="containers run detached, without a terminal; follow the output with "
                       "`supervisorctl logs -f ID`")


def _supervision_arguments(p: Arguments) -> None:
    """docker's restart policies and HEALTHCHECK (docs/design.md, section 8)."""
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


def _g_run(p: Arguments) -> None:
    _spec_arguments(p)


def _g_ids(p: Arguments) -> None:
    p.add_argument("ids", nargs="+", metavar="ID")


def _g_ps(p: Arguments) -> None:
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only the ids, one per line")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="state=S (status=, as docker's; implies -a), label=K[=V], id=PREFIX, "
                        "name=TEXT, exited=STATUS; keys AND, a repeated key ORs")
    p.add_argument("--no-trunc", action="store_true", help="show whole commands")
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _g_inspect(p: Arguments) -> None:
    p.add_argument("id", metavar="ID")


def _g_kill(p: Arguments) -> None:
    p.add_argument("-s", "--signal", type=parse_signal, default="KILL", metavar="SIGNAL",
                   help="a name (TERM, SIGTERM) or a number (default KILL)")
    _g_ids(p)


def _g_rm(p: Arguments) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill it first if it runs")
    p.add_argument("--all", action="store_true",
                   help="every stopped container (with -f: every container)")
    p.add_argument("ids", nargs="*", metavar="ID")


def _g_wait(p: Arguments) -> None:
    p.add_argument("--reconnect", type=non_negative_float, default=60.0, metavar="SECONDS",
                   help=_RECONNECT_HELP)
    p.add_argument("id", metavar="ID")


def _g_logs(p: Arguments) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    p.add_argument("-n", "--tail", type=tail_lines, metavar="N",
                   help="only the last N lines (all: every line)")
    p.add_argument("--since", type=since_time, metavar="TIME",
                   help="only lines from TIME on: RFC 3339, unix seconds, or ago (10m, 1h30m)")
    p.add_argument("-t", "--timestamps", action="store_true",
                   help="start each line with its RFC 3339 time")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per line: time, stream, partial, line (non-UTF-8 as "
                        "{\"base64\": ...})")
    p.add_argument("--reconnect", type=non_negative_float, default=60.0, metavar="SECONDS",
                   help="with -f: " + _RECONNECT_HELP)
    p.add_argument("id", metavar="ID")


def _g_exec(p: Arguments) -> None:
    p.add_argument("-e", "--env", metavar="K=V", action="append", type=parse_env,
                   default=[], help="add to the container's environment (repeatable)")
    p.add_argument("-w", "--cwd", "--workdir", dest="cwd", metavar="DIR",
                   help="working directory (default: the container's)")
    p.add_argument("id", metavar="ID")


def since_arg(text: str) -> int | str:
    """``events --since``: a seq (checked here), or a time that only ``--nats`` reads (checked
    there)."""
    if text.strip().isdigit():
        return non_negative_int(text)
    if text.strip().startswith("-"):
        raise BadValue(f"expected 0 or more, got {text}")
    return text


def _g_events(p: Arguments) -> None:
    p.add_argument("--since", type=since_arg, default=0, metavar="SEQ|TIME",
                   help="only events after this seq (default: from the start); with --nats "
                        "also a time: RFC 3339 or a duration ago (10m)")
    p.add_argument("--type", dest="types", action="append", metavar="T",
                   help="only this type or type prefix, e.g. task.exit or task (repeatable)")
    p.add_argument("--id", dest="ids", action="append", metavar="ID",
                   help="only this container's events (repeatable)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--reconnect", type=non_negative_float, default=60.0, metavar="SECONDS",
                   help="with -f: " + _RECONNECT_HELP)
    p.add_argument("--nats", metavar="URL[,URL...]",
                   help="read the fleet stream of a NATS JetStream cluster instead (what "
                        "supervisord-export publishes); lines start with the node")
    p.add_argument("--node", metavar="NAME|all",
                   help="with --nats: only this node's events (default: all)")
    p.add_argument("--stream", default="TETHER", help="with --nats: the stream's name")


def _g_none(p: Arguments) -> None:
    pass


def _g_help(p: Arguments) -> None:
    p.add_argument("topic", nargs="?", metavar="COMMAND")


def _g_completion(p: Arguments) -> None:
    p.add_argument("shell", choices=["bash"],
                   help="print the completion script (source <(supervisorctl completion bash))")


_SPEC_USAGE = "%(prog)s [OPTIONS] CMD [ARGS...]"

#: name -> (one-line help, its arguments, usage or None). Order: as ``--help`` lists them.
GRAMMAR: dict[str, tuple[str, Callable[[Arguments], None], str | None]] = {
    "run": ("create and start a container, print its id", _g_run, _SPEC_USAGE),
    "create": ("create a container without starting it, print its id", _g_run, _SPEC_USAGE),
    "ps": ("list containers", _g_ps, None),
    "inspect": ("full JSON of a container: state, spec, history", _g_inspect, None),
    "kill": ("send a signal to a container (default KILL)", _g_kill, None),
    "rm": ("remove a container (-f: even if running)", _g_rm, None),
    "wait": ("block until a container exits; exit with its status", _g_wait, None),
    "logs": ("a container's output, byte for byte", _g_logs, None),
    "exec": ("run another process in a running container", _g_exec,
             "%(prog)s [-e K=V] [-w DIR] ID CMD [ARGS...]"),
    "events": ("the event log, then live events with --follow", _g_events, None),
    "shutdown": ("stop the daemon (containers keep running)", _g_none, None),
    "help": ("list the commands, or `help COMMAND`", _g_help, None),
    "completion": ("print a shell completion script: completion bash", _g_completion, None),
}

# Supervisor's verbs (status, start, stop, restart, signal, tail, pid, avail, reread, update,
# clear) and apply: where a verb exists in both, Supervisor's meaning wins (DESIGN.md).
GRAMMAR.update(_supervisor.GRAMMAR)

#: Commands whose trailing words are a command line: how many positionals come before it.
TAKES_COMMAND = {"run": 0, "create": 0, "exec": 1}
#: Commands that only the interactive shell has.
SHELL_ONLY = {"quit": "leave the shell"}


def command_parser(name: str, shell: bool = False) -> argparse.ArgumentParser:
    """argparse's parser of one command (its help, its errors): :mod:`supervisor.ctl_argparse`."""
    from supervisor.ctl_argparse import command_parser

    return command_parser(name, shell)


def _supervisor_option(word: str) -> tuple[str, str | None] | None:
    """Supervisor's global option in ``word`` (``-c FILE``, ``-cFILE``, ``--serverurl=URL``):
    its name and its value when the word holds it; None for any other word."""
    name, eq, value = word.partition("=")
    if word[:2] in ("-c", "-s", "-u", "-p") and not word.startswith("--"):
        name, value, eq = word[:2], word[2:], "=" if len(word) > 2 else ""
    from_word = _SUPERVISOR_OPTIONS.get(name)
    if from_word is None:
        return None
    return from_word, (value if eq else None)


#: Supervisor's supervisorctl options that name the daemon (:mod:`supervisor.ctl_svconf`).
_SUPERVISOR_OPTIONS = {"-c": "configuration", "--configuration": "configuration",
                       "-s": "serverurl", "--serverurl": "serverurl",
                       "-u": "username", "--username": "username",
                       "-p": "password", "--password": "password"}


def build_parser(prog: str = "supervisorctl", shell: bool = False) -> argparse.ArgumentParser:
    """argparse's parser of the whole CLI's help: :mod:`supervisor.ctl_argparse`."""
    from supervisor.ctl_argparse import build_parser

    return build_parser(prog, shell)


def takes_value(name: str) -> dict[str, bool]:
    """Each option string of the command -> whether it takes a value (``-m`` yes, ``-d`` no)."""
    from supervisor.ctl_args import record

    return record(name).takes_value


def split_command(takes: Mapping[str, bool], words: Sequence[str],
                  leading: int) -> tuple[list[str], list[str]]:
    """``[options and leading positionals]``, ``[the command line]``.

    The command starts at the first word that is neither an option, nor an option's value,
    nor one of the ``leading`` positionals (``exec``'s ID); ``--`` ends the options too. So
    ``run --name a python3 --help`` gives python3 its ``--help``, as ``docker run`` and
    ``sudo`` do. ``takes``: :func:`takes_value` of the command.
    """
    head: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            while leading and i < len(words):
                head.append(words[i])
                leading -= 1
                i += 1
            break
        if word.startswith("-") and word != "-":
            head.append(word)
            i += 1
            if word.startswith("--"):
                needs_value = "=" not in word and takes.get(word, False)
            else:  # a cluster (-dm 64m): the first letter that takes a value ends it
                needs_value = False
                for j, letter in enumerate(word[1:], start=2):
                    if takes.get("-" + letter):
                        needs_value = j == len(word)  # else the value is attached: -eK=V
                        break
            if needs_value and i < len(words):
                head.append(words[i])
                i += 1
            continue
        if leading:
            head.append(word)
            leading -= 1
            i += 1
            continue
        break
    return head, list(words[i:])


class Namespace:
    """The parsed command line: argparse's ``Namespace`` (attributes, ``in``, ``==``), which the
    fast path gives without importing argparse."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __eq__(self, other: object) -> bool:
        return hasattr(other, "__dict__") and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]  # as argparse's: mutable, compared by value

    def __contains__(self, key: str) -> bool:
        return key in self.__dict__

    def __repr__(self) -> str:
        return "Namespace(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


def parse(argv: Sequence[str], shell: bool = False) -> argparse.Namespace:
    """A command line (or a shell line) -> the namespace of its command.

    Global options come first (``--root``, ``--socket``, ``--version``, ``--help``); the first
    other word is the command. Its words are read straight from :data:`GRAMMAR`
    (:mod:`supervisor.ctl_args`, no argparse); a line that reader is not sure of (help, an
    error, an abbreviation) goes to argparse (:mod:`supervisor.ctl_argparse`), which reads it
    the same way or says what is wrong.
    """
    root = sock = None
    supervisors: dict[str, str] = {}  # Supervisor's -c/-s/-u/-p (supervisor.ctl_svconf)
    i = 0
    while not shell and i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        option = _supervisor_option(word)
        if option is not None:
            key, given = option
            if given is None:
                if i + 1 >= len(argv):
                    build_parser().error(f"argument {word}: expected one argument")
                given = argv[i + 1]
                i += 1
            supervisors[key] = given
            i += 1
        elif name in ("--root", "--socket"):
            if not eq:
                if i + 1 >= len(argv):
                    build_parser().error(f"argument {name}: expected one argument")
                value = argv[i + 1]
                i += 1
            if (root if name == "--socket" else sock) is not None:
                build_parser().error("argument --socket: not allowed with argument --root")
            if name == "--root":
                root = value
            else:
                sock = value
            i += 1
        elif word.startswith("-"):
            build_parser().parse_args(argv[i:])  # --help, --version, or the error it makes
            raise AssertionError("unreachable: argparse printed or raised")
        else:
            break
    if supervisors and root is None and sock is None:
        from supervisor import ctl_svconf

        if "serverurl" in supervisors:
            root = ctl_svconf.root_from_url(supervisors["serverurl"])
        elif "configuration" in supervisors:
            root = ctl_svconf.root_from_config(supervisors["configuration"])
    words = list(argv[i:])
    if words and not shell and any(c.isspace() for c in words[0]):
        # Supervisor's supervisorctl joins its arguments into one line and splits it on white
        # space: ``supervisorctl 'signal HUP' web`` (as ansible's module calls it) is a command
        joined = " ".join(words).split()
        if joined and joined[0] in _supervisor.VERBS:
            words = joined
    if not words:
        return _namespace(cmd=None, root=root, socket=sock)
    name = words[0]
    if shell and name in SHELL_ONLY:
        return _namespace(cmd=name, root=None, socket=None)
    if name not in GRAMMAR or (shell and name == "completion"):
        build_parser(prog="" if shell else "supervisorctl", shell=shell).parse_args(words)
        raise AssertionError("unreachable: argparse rejected the command")
    from supervisor.ctl_args import read, record

    table = record(name)
    rest = words[1:]
    command: list[str] = []
    if name in TAKES_COMMAND:
        rest, command = split_command(table.takes_value, rest, TAKES_COMMAND[name])
    values = read(table, rest) if command or name not in TAKES_COMMAND else None
    if values is not None:
        args = _namespace(**values)
    else:
        p = command_parser(name, shell)
        args = p.parse_args(rest)
        if name in TAKES_COMMAND and not command:
            p.error("the command to run is missing: give it after the options, e.g. "
                    f"{p.prog} {'ID ' if name == 'exec' else ''}sleep 60")
    if name in TAKES_COMMAND:
        args.command = command
    args.cmd, args.root, args.socket, args.shell = name, root, sock, shell
    return args


def _namespace(**values: Any) -> argparse.Namespace:
    return Namespace(**values)  # type: ignore[return-value]  # argparse.Namespace's face


def usage_error(args: argparse.Namespace, message: str) -> CtlError:
    """A usage error found after parsing (two flags that exclude each other, a bad file): said
    like argparse's own, naming the command, with the hint of the one-shot CLI or the shell."""
    if getattr(args, "shell", False):
        return CtlError(f"{args.cmd}: {message}\nTry 'help {args.cmd}'.", EXIT_USAGE)
    return CtlError(f"supervisorctl {args.cmd}: {message}\nTry 'supervisorctl {args.cmd} "
                    "--help'.", EXIT_USAGE)
