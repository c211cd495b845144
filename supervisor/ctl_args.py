"""supervisorctl's command lines read straight from the grammar's table, without argparse.

A one-shot command is a short-lived process whose cost is mostly its imports, and argparse (with
``re``, ``enum``, ``gettext`` and ``locale`` under it) and the building of a command's parser
cost more than the whole round trip to the daemon. Nearly every command line a person or a
script types is well-formed, so :func:`read` reads it from the same table as argparse does
(:data:`supervisor.ctl_grammar.GRAMMAR`, whose functions are recorded by :class:`Table`) and
gives the values argparse would give.

It declines (returns None) at the first thing it cannot be sure argparse reads the same way:
``--help``, an abbreviated or unknown option, a value that starts with ``-``, a value its type
refuses, positionals split by options, ``--``, a missing or a surplus argument, both options of
an exclusive pair, a docker flag we refuse, a definition it does not know. argparse
(:mod:`supervisor.ctl_argparse`) then parses the line again and prints the help or says what
is wrong, so every message and exit status stays argparse's. ``tests/test_ctl_args.py`` checks,
over generated command lines, that whatever this module accepts argparse accepts with the same
values.
"""

from __future__ import annotations

from supervisor.ctl_grammar import GRAMMAR, UNSUPPORTED
from supervisor.ctl_svgrammar import PREFIX_CHARS

TYPE_CHECKING = False  # not typing's: every one-shot command imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

__all__ = ["Table", "read", "record"]

#: argparse's actions this reader knows, and whether each takes a value.
_KINDS = {None: True, "store": True, "append": True, "store_true": False, UNSUPPORTED: False}
#: Keywords that change nothing in what a command line means.
_COSMETIC = frozenset({"help", "metavar", "why"})
_KNOWN = _COSMETIC | {"action", "nargs", "type", "default", "dest", "required", "choices"}
#: Actions that take no value (for :attr:`Table.takes_value` when the reader gives up).
_NO_VALUE = frozenset({"store_true", "store_false", "store_const", "append_const", "count",
                       "help", "version", UNSUPPORTED})


class _Action:
    __slots__ = ("choices", "convert", "default", "dest", "group", "kind", "nargs", "required")

    def __init__(self, dest: str, kind: str | None, nargs: str | None,
                 convert: Callable[[str], Any] | None, default: Any, required: bool,
                 choices: Sequence[Any] | None, group: int | None) -> None:
        self.dest = dest
        self.kind = kind
        self.nargs = nargs
        self.convert = convert
        self.default = default
        self.required = required
        self.choices = choices
        self.group = group

    def value(self, text: str) -> Any:
        """The converted value (a type's error propagates: the reader declines)."""
        value = self.convert(text) if self.convert is not None else text
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} is not one of the choices")
        return value


class Table:
    """One command's arguments, recorded from its grammar function (argparse's own calls)."""

    def __init__(self, prefix_chars: str = "-") -> None:
        #: False when the definition uses something :func:`read` does not know.
        self.fast = prefix_chars == "-"
        self.options: dict[str, _Action] = {}
        self.actions: list[_Action] = []
        self.positionals: list[_Action] = []
        #: each option string -> whether it takes a value (``split_command`` reads it)
        self.takes_value: dict[str, bool] = {}
        self._groups = 0
        self._group: int | None = None

    def add_argument(self, *names: str, **kwargs: Any) -> object:
        kind = kwargs.get("action")
        nargs = kwargs.get("nargs")
        positional = not names[0].startswith("-")
        if not positional:
            takes = kind not in _NO_VALUE and nargs != 0
            for name in names:
                self.takes_value[name] = takes
        if (set(kwargs) - _KNOWN or kind not in _KINDS
                or nargs not in ((None, "?", "*", "+") if positional else (None,))
                or (positional and (kind is not None or len(names) > 1))
                or (not positional
                    and any(len(n) > 2 and not n.startswith("--") for n in names))):
            self.fast = False
            return None
        if positional:
            dest = names[0]
        else:
            longs = [n for n in names if n.startswith("--")]
            dest = kwargs.get("dest") or (longs or names)[0].lstrip("-").replace("-", "_")
        default = kwargs.get("default", False if kind == "store_true" else None)
        action = _Action(dest, kind, nargs, kwargs.get("type"), default,
                         bool(kwargs.get("required")), kwargs.get("choices"), self._group)
        if positional:
            self.positionals.append(action)
        else:
            self.actions.append(action)
            for name in names:
                self.options[name] = action
        return None

    def add_argument_group(self, title: str) -> Table:
        return self

    def add_mutually_exclusive_group(self) -> _Exclusive:
        self._groups += 1
        return _Exclusive(self, self._groups)


class _Exclusive:
    """The arguments of one mutually exclusive group: at most one may be given."""

    def __init__(self, table: Table, group: int) -> None:
        self._table = table
        self._id = group

    def add_argument(self, *names: str, **kwargs: Any) -> object:
        self._table._group = self._id
        try:
            return self._table.add_argument(*names, **kwargs)
        finally:
            self._table._group = None

    def add_argument_group(self, title: str) -> _Exclusive:
        return self

    def add_mutually_exclusive_group(self) -> _Exclusive:
        self._table.fast = False  # argparse's nesting: not ours to guess
        return self


def record(name: str) -> Table:
    """The recorded table of command ``name`` of :data:`~supervisor.ctl_grammar.GRAMMAR`."""
    table = Table(PREFIX_CHARS.get(name, "-"))
    GRAMMAR[name][1](table)
    return table


class _Decline(Exception):
    """Not sure: argparse reads this line."""


def read(table: Table, words: Sequence[str]) -> dict[str, Any] | None:
    """The values argparse would give for ``words`` (a command's words after its name), or None
    when this reader is not sure of them (see the module's docstring)."""
    if not table.fast:
        return None
    try:
        return _read(table, words)
    except Exception:  # _Decline, or a value its type refuses: argparse says it in its words
        return None


def _read(table: Table, words: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    given: dict[int, _Action] = {}  # exclusive group -> the option given in it
    seen: set[str] = set()
    positional: list[str] = []
    after_positionals = False  # an option came after positional words
    i = 0

    def take(action: _Action, attached: str | None) -> None:
        nonlocal i
        if action.kind == UNSUPPORTED:
            raise _Decline
        if action.group is not None and given.setdefault(action.group, action) is not action:
            raise _Decline
        seen.add(action.dest)
        if action.kind == "store_true":
            if attached is not None:
                raise _Decline
            values[action.dest] = True
            return
        if attached is None:
            if i >= len(words) or words[i].startswith("-"):
                raise _Decline  # missing, or it may be an option (argparse decides)
            attached = words[i]
            i += 1
        elif attached == "--":
            raise _Decline  # argparse drops a value "--", even --name=--
        value = action.value(attached)
        if action.kind == "append":
            values.setdefault(action.dest, list(action.default or ()))
            values[action.dest].append(value)
        else:
            values[action.dest] = value

    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            raise _Decline
        if not word.startswith("-") or word == "-":
            if after_positionals:
                raise _Decline  # positionals split by options: argparse's own rules
            positional.append(word)
            continue
        if positional:
            after_positionals = True
        exact = table.options.get(word)
        if exact is not None:
            take(exact, None)
        elif word.startswith("--"):
            name, eq, attached = word.partition("=")
            action = table.options.get(name)
            if not eq or action is None:
                raise _Decline  # unknown, or an abbreviation
            take(action, attached)
        else:
            name, eq, attached = word.partition("=")
            action = table.options.get(name)
            if eq and action is not None:  # -m=64m
                take(action, attached)
                continue
            # a cluster: -dm 64m, -eK=V (the first letter that takes a value takes the rest)
            for j in range(1, len(word)):
                action = table.options.get("-" + word[j])
                if action is None:
                    raise _Decline
                if action.kind == "store_true" or action.kind == UNSUPPORTED:
                    take(action, None)
                    continue
                take(action, word[j + 1:] or None)
                break
    _fill_positionals(table.positionals, positional, values)
    for action in table.actions:
        if action.dest in seen:
            continue
        if action.required:
            raise _Decline
        default = action.default
        if action.kind == "append" and isinstance(default, list):
            default = list(default)
        elif isinstance(default, str) and action.convert is not None:
            default = action.convert(default)  # argparse converts a string default
        values[action.dest] = default
    return values


def _fill_positionals(actions: list[_Action], words: list[str], values: dict[str, Any]) -> None:
    """argparse's greedy match, left to right: each takes what it can while leaving the
    following ones their minimum."""
    least = [1 if a.nargs in (None, "+") else 0 for a in actions]
    i = 0
    for k, action in enumerate(actions):
        room = len(words) - i - sum(least[k + 1:])
        if action.nargs is None:
            if room < 1:
                raise _Decline
            values[action.dest] = action.value(words[i])
            i += 1
        elif action.nargs == "?":
            if room >= 1:
                values[action.dest] = action.value(words[i])
                i += 1
            else:
                default = action.default
                if isinstance(default, str):
                    default = action.value(default)
                values[action.dest] = default
        else:
            count = max(room, 0)
            if action.nargs == "+" and count < 1:
                raise _Decline
            taken = [action.value(w) for w in words[i:i + count]]
            i += count
            if not taken and action.default is not None:
                taken = action.default
            values[action.dest] = taken
    if i != len(words):
        raise _Decline
