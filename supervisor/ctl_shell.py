"""The interactive ``supervisorctl`` (no command given): the same commands, one per line.

Like Supervisor's own ``supervisorctl`` shell: a :class:`cmd.Cmd` loop with ``help`` and ``quit``.
Every line is parsed by the very grammar of the one-shot CLI
(:func:`supervisor.ctl_grammar.parse`), so the shell can never drift from the command line.
Each command opens its own connection: the shell outlives a daemon restart without noticing.
"""

from __future__ import annotations

import argparse
import cmd
import shlex
import sys

from supervisor import ctl, ctl_grammar
from supervisor.ctl_commands import cmd_help


class Shell(cmd.Cmd):
    intro = "Tether supervisorctl. Type `help` for the commands, `quit` to leave."
    prompt = "tether> "

    def __init__(self, target: ctl.Target) -> None:
        super().__init__()
        self.target = target
        self.status = ctl.EXIT_OK

    def run(self) -> int:
        if not sys.stdin.isatty():
            self.intro = None  # type: ignore[assignment]  # typeshed: str; cmd.Cmd takes None
            self.prompt = ""
        while True:
            try:
                self.cmdloop()
                return self.status
            except KeyboardInterrupt:  # Ctrl-C cancels the line (or a `logs -f`), not the shell
                sys.stdout.write("\n")
                self.intro = None  # type: ignore[assignment]  # as above

    # cmd.Cmd hooks -------------------------------------------------------------------------

    def emptyline(self) -> bool:
        return False  # do not repeat the last command (it could be `rm`)

    def default(self, line: str) -> bool:  # type: ignore[override]  # typeshed: None
        try:
            words = shlex.split(line)
        except ValueError as exc:
            sys.stderr.write(f"{exc}\n")
            self.status = ctl.EXIT_USAGE
            return False
        if not words:
            return False
        try:
            args = ctl_grammar.parse(words, shell=True)
            if args.cmd in ctl_grammar.SHELL_ONLY:
                return True  # quit
            self.status = ctl.dispatch(self.target, args)
        except ctl_grammar.ParserExit as exc:
            self.status = exc.status
        except ctl.CtlError as exc:
            ctl.warn(str(exc).lstrip(": "))
            self.status = exc.code
        ctl.flush()
        return False

    def do_help(self, arg: str) -> bool:
        try:
            self.status = cmd_help(None, argparse.Namespace(topic=arg.strip() or None),
                                   shell=True)
        except ctl.CtlError as exc:
            ctl.warn(str(exc))
            self.status = exc.code
        return False

    def do_quit(self, arg: str) -> bool:
        return True

    do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:
        if sys.stdin.isatty():
            sys.stdout.write("\n")
        return True

    def completenames(self, text: str, *ignored: object) -> list[str]:
        names = [c for c in ctl_grammar.GRAMMAR if c != "completion"]
        return [c for c in [*names, *ctl_grammar.SHELL_ONLY] if c.startswith(text)]

