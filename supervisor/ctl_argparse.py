"""argparse's reading of the grammar: ``--help``, and every command line with an error in it.

:func:`supervisor.ctl_grammar.parse` reads a well-formed command line without argparse
(:mod:`supervisor.ctl_args`); whatever that reader is not sure of comes here, so the help texts,
the error messages and the exit statuses are argparse's. Imported only then: argparse (with
``re``, ``enum``, ``gettext`` and ``locale`` under it) costs a one-shot command more than its
round trip to the daemon.

The grammar's functions (:data:`supervisor.ctl_grammar.GRAMMAR`) call argparse's own methods
through :class:`_Adapter`, which turns the grammar's two words of its own into argparse's:
``help=HIDDEN`` is ``argparse.SUPPRESS``, ``action=UNSUPPORTED`` the action that refuses a
docker flag with its reason; and a value's :class:`~supervisor.ctl_grammar.BadValue` becomes
argparse's ``ArgumentTypeError`` (its message, shown as ``argument --memory: ...``).
"""

from __future__ import annotations

import argparse
import os
import sys

from supervisor import ctl_grammar as grammar
from supervisor import ctl_svgrammar as _supervisor
from supervisor.ctl import EXIT_USAGE, CtlError
from supervisor.defaults import default_root

TYPE_CHECKING = False  # not typing's (~3 ms): a usage error is a one-shot command too
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn

__all__ = ["build_parser", "command_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so the interactive shell survives a typo."""

    def error(self, message: str) -> NoReturn:
        raise CtlError(f"{self.prog}: {message}\nTry '{self.prog} --help'.", EXIT_USAGE)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise grammar.ParserExit(status)


class _ShellParser(_Parser):
    """The parser of one shell line: its hints point at the shell's `help`."""

    def error(self, message: str) -> NoReturn:
        name = self.prog.strip()
        if name:
            raise CtlError(f"{name}: {message}\nTry 'help {name}'.", EXIT_USAGE)
        raise CtlError(f"{message}\nTry 'help'.", EXIT_USAGE)


class _Unsupported(argparse.Action):
    """A docker flag that cannot mean anything here: refused with the reason, not "unknown"."""

    def __init__(self, *args: Any, why: str = "", **kwargs: Any) -> None:
        self.why = why
        kwargs["nargs"] = 0
        super().__init__(*args, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        parser.error(f"{'/'.join(self.option_strings)}: {self.why}")


def _checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """``convert`` whose :class:`~supervisor.ctl_grammar.BadValue` argparse shows as its own
    error (any other ValueError keeps argparse's ``invalid NAME value``)."""

    def value(text: str) -> Any:
        try:
            return convert(text)
        except grammar.BadValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    value.__name__ = convert.__name__
    return value


class _Adapter:
    """The grammar's calls, made on an argparse parser (or one of its groups)."""

    def __init__(self, target: Any) -> None:
        self._target = target

    def add_argument(self, *names: str, **kwargs: Any) -> object:
        if kwargs.get("help") == grammar.HIDDEN:
            kwargs["help"] = argparse.SUPPRESS
        if kwargs.get("action") == grammar.UNSUPPORTED:
            kwargs["action"] = _Unsupported
        if "type" in kwargs:
            kwargs["type"] = _checked(kwargs["type"])
        return self._target.add_argument(*names, **kwargs)

    def add_argument_group(self, title: str) -> _Adapter:
        return _Adapter(self._target.add_argument_group(title))

    def add_mutually_exclusive_group(self) -> _Adapter:
        return _Adapter(self._target.add_mutually_exclusive_group())


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


def command_parser(name: str, shell: bool = False) -> _Parser:
    """The parser of one command: its errors name it (``supervisorctl run: ...``)."""
    text, define, usage = grammar.GRAMMAR[name]
    prog = name if shell else f"supervisorctl {name}"
    cls = _ShellParser if shell else _Parser
    p = cls(prog=prog, usage=usage, description=text[0].upper() + text[1:] + ".",
            prefix_chars=_supervisor.PREFIX_CHARS.get(name, "-"),
            formatter_class=_formatter,
            epilog=grammar.EPILOG if name in grammar.TAKES_COMMAND or name in (
                "wait", "logs", "events") else None)
    define(_Adapter(p))
    return p


def build_parser(prog: str = "supervisorctl", shell: bool = False) -> _Parser:
    """The whole CLI's help: global options and the list of commands (their own arguments are
    built only when one is named: :func:`command_parser`)."""
    cls = _ShellParser if shell else _Parser
    parser = cls(prog=prog, description="Control Tether's supervisord: run, list, stop and "
                 "watch containers.", epilog=grammar.EPILOG, formatter_class=_formatter)
    if not shell:
        parser.add_argument("--version", action="version", version=_version())
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--root", metavar="DIR",
                            help=f"supervisord's root (default: {default_root()})")
        target.add_argument("--socket", metavar="PATH",
                            help="the API socket (default: ROOT/supervisord.sock)")
        sv = parser.add_argument_group("Supervisor's options (for scripts written for it)")
        sv.add_argument("-c", "--configuration", metavar="FILE",
                        help="the root from FILE's [supervisorctl] serverurl = "
                        "unix://ROOT/supervisor.sock (or [unix_http_server] file)")
        sv.add_argument("-s", "--serverurl", metavar="URL",
                        help="the root from unix://ROOT/supervisor.sock")
        sv.add_argument("-u", "--username", metavar="USER", help="accepted, unused: on the "
                        "unix socket the caller's credentials decide")
        sv.add_argument("-p", "--password", metavar="PASSWORD", help="accepted, unused")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=cls)
    for name, (text, _, _) in grammar.GRAMMAR.items():
        if not (shell and name == "completion"):
            sub.add_parser(name, help=text)
    if shell:
        for name, text in grammar.SHELL_ONLY.items():
            sub.add_parser(name, help=text)
    return parser


def _version() -> str:
    from supervisor.version import version_line

    return version_line("supervisorctl")
