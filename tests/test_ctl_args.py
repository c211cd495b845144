"""The argparse-free reader of command lines (supervisor.ctl_args) against argparse itself.

Whatever the fast reader accepts, argparse must accept with the same values: over generated
command lines made of each command's own option strings (exact, clustered, abbreviated, with
``=``), values that are good, bad or look like options, and positional words. The other way
round, every well-formed line generated from the grammar (every command, every option in each
of its spellings, values its type takes, positionals as many as their ``nargs`` allow) takes
the fast path with argparse's values: otherwise the CLI silently pays for argparse again.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import time
from collections.abc import Iterator
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor import ctl_argparse, ctl_args, ctl_grammar
from supervisor.ctl import CtlError

COMMANDS = sorted(ctl_grammar.GRAMMAR)

#: Values that are good for some option and bad for others, or look like options.
VALUES = ["", "-", "-x", "--", "5", "0", "-5", "1.5", "inf", "nan", "KILL", "TERM", "sigterm",
          "64m", "1g", "K=V", "K", "PATH", "a=b", "bash", "zsh", "all", "runc", "process",
          "./my-runc", "on-failure:3", "always", "state=running", "10m", "x y", "web", "1000:1000"]


@functools.cache
def argparse_parser(name: str) -> argparse.ArgumentParser:
    return ctl_argparse.command_parser(name)


def argparse_values(name: str, words: list[str]) -> dict[str, object] | None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return vars(argparse_parser(name).parse_args(words))
        except (CtlError, ctl_grammar.ParserExit):
            return None


@contextlib.contextmanager
def one_clock() -> Iterator[None]:
    """``logs --since 10m`` is a time ago: both readers must see the same now."""
    now = time.time_ns()
    with mock.patch("time.time_ns", lambda: now):
        yield


@st.composite
def command_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    name = draw(st.sampled_from(COMMANDS))
    table = ctl_args.record(name)
    options = sorted(table.takes_value) or ["--json"]
    shorts = [o[1] for o in options if len(o) == 2]
    word = st.one_of(
        st.sampled_from(options),
        st.sampled_from(VALUES),
        st.builds(lambda o, v: f"{o}={v}", st.sampled_from(options), st.sampled_from(VALUES)),
        st.builds(lambda o, n: o[:n], st.sampled_from(options), st.integers(2, 6)),
        st.builds(lambda cs, v: "-" + "".join(cs) + v,
                  st.lists(st.sampled_from(shorts or ["a"]), min_size=1, max_size=3),
                  st.sampled_from(["", "5", "K=V", "64m", "=x"])),
        st.sampled_from(["a", "b", "c1", "--help", "-h"]),
    )
    return name, draw(st.lists(word, max_size=6))


@settings(max_examples=1500, deadline=None)
@given(command_lines())
def test_what_the_fast_reader_accepts_argparse_reads_the_same(line: tuple[str, list[str]]
                                                              ) -> None:
    name, words = line
    with one_clock():
        fast = ctl_args.read(ctl_args.record(name), words)
        if fast is not None:
            assert fast == argparse_values(name, words), (name, words)


#: Commands whose grammar the fast reader does not read (Supervisor's ``tail +N``).
NOT_FAST = {"tail"}


def test_the_fast_reader_reads_every_command_but_those_named() -> None:
    assert {n for n in COMMANDS if not ctl_args.record(n).fast} == NOT_FAST


def good_values(action: ctl_args._Action) -> list[str]:
    """Words of :data:`VALUES` (and a few more) that ``action``'s type and choices take."""
    good = []
    for text in [*VALUES, *(map(str, action.choices or ())), "1m", "state=running"]:
        if text.startswith("-") or text in good:
            continue
        with one_clock():
            try:
                action.value(text)
            except Exception:
                continue
        good.append(text)
    assert good, f"no value in VALUES suits {action.dest}: add one"
    return good


def option_words(table: ctl_args.Table, option: str, draw: st.DrawFn) -> list[str]:
    """``option`` with a good value, in one of the spellings argparse takes."""
    action = table.options[option]
    if not table.takes_value[option]:
        return [option]
    value = draw(st.sampled_from(good_values(action)))
    spelling = draw(st.sampled_from(["apart", "equals", "attached"]))
    if spelling == "equals" or (spelling == "attached" and option.startswith("--")):
        return [f"{option}={value}"]
    if spelling == "attached" and value:
        return [option + value]  # -m64m
    return [option, value]


@st.composite
def well_formed_lines(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A line argparse accepts, built from the command's own table."""
    name = draw(st.sampled_from(sorted(set(COMMANDS) - NOT_FAST)))
    table = ctl_args.record(name)
    usable = sorted(o for o, a in table.options.items() if a.kind != ctl_grammar.UNSUPPORTED)
    words: list[str] = []
    groups: set[int] = set()
    for option in draw(st.lists(st.sampled_from(usable), max_size=5)) if usable else ():
        action = table.options[option]
        if action.group is not None:
            if action.group in groups and all(table.options[o] is not action for o in words
                                              if o in table.options):
                continue  # one option of an exclusive group
            groups.add(action.group)
        words += option_words(table, option, draw)
    for action in table.actions:  # a required option must be there
        if action.required and not any(table.options.get(w.partition("=")[0]) is action
                                       for w in words):
            option = next(o for o, a in table.options.items() if a is action)
            words += option_words(table, option, draw)
    positionals: list[str] = []
    for action in table.positionals:
        least, most = {None: (1, 1), "?": (0, 1), "*": (0, 3), "+": (1, 3)}[action.nargs]
        count = draw(st.integers(least, most))
        positionals += [draw(st.sampled_from(good_values(action))) for _ in range(count)]
    if name in ctl_grammar.TAKES_COMMAND:  # options, exec's ID, then the command to run
        return name, words + positionals + ["sleep", "-x", "--help"]
    if draw(st.booleans()):
        return name, positionals + words  # `stop web -t 5` as well as `stop -t 5 web`
    return name, words + positionals


@settings(max_examples=1000, deadline=None)
@given(well_formed_lines())
def test_every_well_formed_line_takes_the_fast_path(line: tuple[str, list[str]]) -> None:
    name, words = line
    rest = words
    if name in ctl_grammar.TAKES_COMMAND:
        rest, command = ctl_grammar.split_command(ctl_args.record(name).takes_value, words,
                                                  ctl_grammar.TAKES_COMMAND[name])
        assert command == ["sleep", "-x", "--help"], (name, words)
    with one_clock():
        fast = ctl_args.read(ctl_args.record(name), rest)
        assert fast is not None, f"{[name, *words]} went to argparse"
        assert fast == argparse_values(name, rest), (name, words)


@pytest.mark.parametrize("argv", [
    ["ps"], ["ps", "-a"], ["ps", "-aq"], ["ps", "-a", "-q"], ["ps", "--json"],
    ["ps", "-a", "--filter", "state=running", "--no-trunc"], ["ps", "-f", "label=k=v"],
    ["status"], ["status", "web"], ["status", "--json"], ["info"], ["info", "--json"],
    ["stop", "web"], ["stop", "-t", "5", "web", "db"], ["stop", "--all"], ["start", "web"],
    ["restart", "web"], ["rm", "web"], ["rm", "-f", "web", "db"], ["rm", "-f", "--all"],
    ["kill", "web"], ["kill", "-s", "TERM", "web"], ["kill", "-sHUP", "web"],
    ["inspect", "web"], ["wait", "web"], ["logs", "web"], ["logs", "-f", "-n", "10", "web"],
    ["events", "--since", "5", "--type", "task.exit", "-f"], ["pid", "all"],
    ["run", "--name", "web", "-d", "--", "sleep", "100"],
    ["run", "--runtime", "runc", "--rootfs", "/r", "-e", "K=V", "-m", "64m", "--restart",
     "on-failure:3", "sleep", "100"],
    ["run", "-dm", "64m", "-eK=V", "--memory=1g", "--rm", "true"],
    ["create", "--name", "a", "-l", "k=v", "--init", "sleep", "1"],
    ["exec", "-e", "A=1", "web", "ls", "-l"],
])
def test_everyday_lines_take_the_fast_path_with_argparse_values(argv: list[str]) -> None:
    name = argv[0]
    takes = ctl_args.record(name).takes_value
    rest, command = argv[1:], []
    if name in ctl_grammar.TAKES_COMMAND:
        rest, command = ctl_grammar.split_command(takes, rest, ctl_grammar.TAKES_COMMAND[name])
        assert command
    fast = ctl_args.read(ctl_args.record(name), rest)
    assert fast is not None, f"{argv} went to argparse"
    assert fast == argparse_values(name, rest)
    parsed = ctl_grammar.parse(argv)
    assert isinstance(parsed, ctl_grammar.Namespace)  # not argparse's: it was never imported
    assert parsed.cmd == name and (not command or parsed.command == command)


@pytest.mark.parametrize("argv", [
    ["ps", "--help"], ["ps", "-h"], ["ps", "--no-tr"], ["ps", "-x"], ["ps", "extra"],
    ["stop", "-t"], ["stop", "-t", "-5", "web"], ["kill", "-s", "NOPE", "web"],
    ["rm", "a", "-f", "b"], ["run", "-i", "sleep", "1"], ["run", "--rootfs", "a", "--bundle", "b",
                                                          "x"],
    ["apply"], ["completion", "zsh"], ["tail", "-f", "web"], ["logs", "--", "web"],
    ["ps", "--json=1"], ["ps", "-a=1"],
])
def test_what_it_is_not_sure_of_goes_to_argparse(argv: list[str]) -> None:
    name = argv[0]
    rest = argv[1:]
    if name in ctl_grammar.TAKES_COMMAND:
        rest, _ = ctl_grammar.split_command(ctl_args.record(name).takes_value, rest,
                                            ctl_grammar.TAKES_COMMAND[name])
    assert ctl_args.read(ctl_args.record(name), rest) is None


def test_the_cli_bound_on_seconds_is_the_daemons() -> None:
    """``stop -t`` and friends check seconds against a copy of the daemon's bound (importing
    it would load events.domain into every such command): the two must agree."""
    from events import policy
    from supervisor import ctl_grammar

    assert ctl_grammar._MAX_SECONDS == policy.MAX_SECONDS
