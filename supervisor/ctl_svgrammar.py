"""The grammar of Supervisor's verbs in Tether's ``supervisorctl`` (:mod:`supervisor.ctl_supervisor`
runs them): their arguments and one-line help, in :data:`supervisor.ctl_grammar.GRAMMAR`'s shape.

Apart from the verbs themselves so that every command can read the whole grammar without
importing Supervisor's client (``ps`` and ``run`` never run one of its verbs).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: every one-shot command imports this module
if TYPE_CHECKING:
    from collections.abc import Callable

    from supervisor.ctl_grammar import Arguments

__all__ = ["GRAMMAR", "PREFIX_CHARS", "VERBS"]

#: What a verb that takes processes calls them in its usage.
NAMES = "NAME|GROUP:*|all"


def _g_status(p: Arguments) -> None:
    p.add_argument("names", nargs="*", metavar=NAMES)
    p.add_argument("--json", action="store_true", help="one process info object per line")


def _g_names(p: Arguments) -> None:
    p.add_argument("names", nargs="+", metavar=NAMES)


def _g_stop(p: Arguments) -> None:
    from supervisor.ctl_grammar import non_negative_float

    p.add_argument("-t", "--time", type=non_negative_float, metavar="SECONDS",
                   help="grace time before SIGKILL (default: the program's)")
    p.add_argument("--all", action="store_true",
                   help="every process (docker's --all; the same as the name all)")
    p.add_argument("names", nargs="*", metavar=NAMES)


def _g_signal(p: Arguments) -> None:
    p.add_argument("signal", metavar="SIGNAL", help="a name (HUP, TERM) or a number")
    _g_names(p)


def _g_tail(p: Arguments) -> None:
    p.add_argument("words", nargs="+", metavar="ARG")


def _g_pid(p: Arguments) -> None:
    p.add_argument("names", nargs="*", metavar="NAME|all")


def _g_none(p: Arguments) -> None:
    pass


def _g_clear(p: Arguments) -> None:
    p.add_argument("names", nargs="+", metavar="NAME|all")


def _g_groups(p: Arguments) -> None:
    p.add_argument("names", nargs="+", metavar="GROUP")


def _g_apply(p: Arguments) -> None:
    p.add_argument("-f", "--file", required=True, metavar="FILE")
    p.add_argument("--prune", action="store_true",
                   help="remove programs that are not in the file (never `run` containers)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def _g_info(p: Arguments) -> None:
    p.add_argument("--json", action="store_true", help="the daemon's answer as JSON")


#: Supervisor's verbs in :data:`supervisor.ctl_grammar.GRAMMAR`'s shape: name -> (one-line
#: help, its arguments, usage or None). Where a name is also a docker-style verb, this wins.
GRAMMAR: dict[str, tuple[str, Callable[[Arguments], None], str | None]] = {
    "status": ("Supervisor's process table (exit 3 if one listed is not running)", _g_status,
               None),
    "start": ("start processes: names, groups (GROUP:*) or all", _g_names, None),
    "stop": ("stop processes (stop signal, then KILL after stopwaitsecs)", _g_stop, None),
    "restart": ("stop, then start processes", _g_stop, None),
    "signal": ("send a signal to processes", _g_signal, None),
    "tail": ("a process's output: tail [-f|-N] NAME [stdout|stderr]", _g_tail,
             "%(prog)s [-f | -N] NAME [stdout|stderr]"),
    "pid": ("the pid of supervisord, of processes, or of all", _g_pid, None),
    "avail": ("every configured process (in use or not)", _g_none, None),
    "reread": ("what `update` would change (the --config file, or the applied file)", _g_none,
               None),
    "update": ("apply the --config file (or the applied file) again, with prune", _g_none, None),
    "clear": ("clear processes' logs", _g_clear, None),
    "add": ("create and start groups of the program file that are not in use", _g_groups,
            None),
    "remove": ("remove stopped groups (the program file keeps them: `add` brings them back)",
               _g_groups, None),
    "apply": ("apply a program file (Tether TOML or supervisord.conf)", _g_apply, None),
    "info": ("daemon health, version, paths, counts", _g_info, None),
}
#: ``tail -f`` and ``tail -100`` are Supervisor's words, not options: its parser takes none.
PREFIX_CHARS = {"tail": "+"}
#: The verbs :mod:`supervisor.ctl_supervisor` runs (docker-style verbs of the same names give way).
VERBS = frozenset(GRAMMAR)
