"""``supervisorctl``: the command line of Tether, a blocking client of ``ROOT/supervisord.sock``.

Fast on purpose: a one-shot command is one short-lived process, so its cost is mostly the
interpreter's start and imports. ``bin/supervisorctl`` starts it without ``site`` and
:func:`entry` ends it without the interpreter's finalization; only os, sys, the sans-IO framing
with its light codec (:mod:`events.minipack`, not msgpack) and the blocking client
:mod:`events.rpc` are imported; never trio, never structlog, and argparse only for ``--help``
and a command line with an error in it.
Only the named command's arguments are read, and what few commands need lives in modules only
they import (``tests/test_import_budget.py`` lists what each command may import).

The modules of the CLI, each with one job:

* this one: exit codes, errors, output, where the daemon is (:class:`Target`), :func:`main`;
* :mod:`supervisor.ctl_grammar`: the commands, their flags and values, :func:`parse`;
  :mod:`supervisor.ctl_args` reads a well-formed line from that table, argparse
  (:mod:`supervisor.ctl_argparse`) the help and every line with an error in it;
* :mod:`supervisor.ctl_commands`: the one-shot commands (``run``, ``ps``, ``rm``, ...);
  :mod:`supervisor.ctl_supervisor`: Supervisor's verbs (``status``, ``stop``, ...), their
  grammar in :mod:`supervisor.ctl_svgrammar`;
* :mod:`supervisor.ctl_follow`: ``wait``, ``logs``, ``events``, ``exec`` (they outlive a
  connection, and reconnect);
* :mod:`supervisor.ctl_values`: ``--user``, ``--env-file``, ``--since``, ``--filter``;
* :mod:`supervisor.ctl_render`: what is shown; :mod:`supervisor.ctl_shell`: the shell;
  :mod:`supervisor.ctl_completion`: the bash completion script.

The commands, their flags, the exit codes and the ``--json`` lines are a promise to users
(``docs/design.md``, section 11). Every error goes to stderr, says what went wrong and what to
do about it.
"""

from __future__ import annotations

import os
import sys

from supervisor.defaults import default_root

TYPE_CHECKING = False  # not typing's: every one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

    from events.rpc import BlockingConnection

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: ``wait``/``exec``: supervisorctl has no status to pass on (the reason is on stderr), as
#: docker's 125; ``wait``, ``logs -f``, ``events -f``: the daemon went away and did not come
#: back within ``--reconnect`` seconds.
EXIT_NO_STATUS = 125
EXIT_INTERRUPTED = 130
#: Our reader left (``| head``): the status of a process killed by SIGPIPE, as Unix tools give.
EXIT_BROKEN_PIPE = 141

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


class DaemonGone(CtlError):
    """No supervisord answers on the socket (absent, refused, or it hung up on the hello)."""


class OutputClosed(Exception):
    """Our standard output's reader left (EPIPE): stop quietly, as ``cat | head`` does."""


def socket_path(root: str | None, sock: str | None) -> str:
    if sock:
        return sock
    return os.path.join(root or default_root(), "supervisord.sock")


# -- output ------------------------------------------------------------------------------------
# Every write to stdout/stderr goes through these: a BrokenPipeError there is our reader leaving,
# not the daemon's socket (both are ConnectionErrors, which dispatch reports as a lost daemon).


def out(text: str) -> None:
    try:
        sys.stdout.write(text)
    except BrokenPipeError:
        raise OutputClosed from None


def write_bytes(stream: Any, data: bytes) -> None:
    try:
        stream.flush()  # text already written to it goes first
        stream.buffer.write(data)
    except BrokenPipeError:
        raise OutputClosed from None


def flush(*streams: Any) -> None:
    try:
        for stream in streams or (sys.stdout,):
            stream.flush()
    except BrokenPipeError:
        raise OutputClosed from None


def warn(text: str) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except BrokenPipeError:
        raise OutputClosed from None


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

    def connect(self, call_timeout: float | None = CALL_TIMEOUT, *,
                stream: bool = False) -> BlockingConnection:
        """Connect and exchange hellos (within :data:`CALL_TIMEOUT`, whatever the command), then
        bound each later socket operation by ``call_timeout`` (None: a command that may
        legitimately wait for a long time, like ``wait`` or ``stop`` with a long grace).

        ``stream``: the connection carries many frames (``logs``, ``events``, ``exec``), which
        msgpack's C extension decodes (``wire.NATIVE``); the few small frames of every other
        command are read by ``wire.LIGHT``, which spares the command msgpack's import."""
        conn = self._connect(CALL_TIMEOUT, stream=stream)
        conn.settimeout(call_timeout)
        return conn

    def call(self, method: str, **params: Any) -> Any:
        """One request on a connection of its own, written with the hello: one round trip."""
        with self._connect(CALL_TIMEOUT, first=(method, params)) as conn:
            return conn.result()

    def _connect(self, timeout: float, *, stream: bool = False,
                 first: tuple[str, dict[str, Any]] | None = None) -> BlockingConnection:
        from events import wire
        from events.rpc import BlockingConnection

        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise CtlError(
                f"socket path {self.path} is {len(os.fsencode(self.path))} bytes, over the "
                f"kernel's {MAX_SOCKET_PATH}-byte limit; use a shorter --root or --socket")
        try:
            return BlockingConnection(self.path, timeout=timeout, first=first,
                                      codec=wire.NATIVE if stream else wire.LIGHT)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonGone(
                f"cannot connect to {self.path}: {exc.strerror} — is supervisord running? "
                f"({self._start_hint()}){self._supervisor_note()}") from None
        except PermissionError as exc:
            raise CtlError(
                f"cannot connect to {self.path}: {exc.strerror} — run as root or as a member of "
                "the socket's group (supervisord --group NAME)") from None
        except TimeoutError:
            raise CtlError(
                f"{self.path}: supervisord did not answer the hello within {timeout:g} s — is "
                "it stuck? (check its log, or restart it: containers keep running)") from None
        except ConnectionError as exc:
            raise DaemonGone(
                f"{self.path}: the connection was closed during the hello ({exc}) — is "
                "supervisord shutting down?") from None
        except wire.RemoteError as exc:
            raise CtlError(f"{self.path}: supervisord refused the connection: {exc}") from None
        except wire.ProtocolError as exc:
            raise CtlError(
                f"{self.path}: not a supervisord of this version ({exc}); is it the right "
                "socket, and are supervisorctl and supervisord from the same release?") from None

    @staticmethod
    def _supervisor_note() -> str:
        """Supervisor (the other project) answering at its own default socket: a user may have
        started the wrong ``supervisord``. Only on this error path: it costs a stat."""
        for path in ("/run/supervisor.sock", "/var/run/supervisor.sock", "/tmp/supervisor.sock"):
            if os.path.exists(path):
                return (f"\n  note: {path} exists: Supervisor's supervisord (another program "
                        "with the same command names) may be running; Tether's is "
                        f"{os.path.dirname(sys.argv[0]) or '.'}/supervisord")
        return ""


_HINTS = {
    "not_found": "`supervisorctl ps -a` lists the containers",
    "conflict": "`supervisorctl ps -a` shows each container's state",
    "unknown_method": "supervisord is older than this supervisorctl; upgrade it",
    "no_space": "free disk space under the root, then try again",
    "unavailable": "the container's shim cannot be reached; `supervisorctl inspect ID` shows why",
}


def remote_message(command: str, exc: Any) -> str:
    """An error reply of the daemon, as a sentence with a hint when we have one."""
    hint = None if "supervisorctl" in exc.message else _HINTS.get(exc.code)
    text = f"{command}: {exc.message} ({exc.code})"
    return f"{text}\n  hint: {hint}" if hint else text


def dispatch(t: Target, args: argparse.Namespace) -> int:
    """Run one parsed command; every expected failure becomes a :class:`CtlError`."""
    from events import wire
    from supervisor.ctl_commands import COMMANDS, PASSES_STATUS

    command = args.cmd
    try:
        try:
            return COMMANDS[command](t, args)
        except wire.RemoteError as exc:
            raise CtlError(remote_message(command, exc)) from None
        except TimeoutError:
            raise CtlError(
                f"{command}: no answer from supervisord at {t.path} within {CALL_TIMEOUT:g} s — "
                "is it overloaded or stuck? (`supervisorctl status`)") from None
        except ConnectionError as exc:
            raise CtlError(
                f"{command}: supervisord closed the connection before answering ({exc}) — did "
                f"it stop or crash? Containers keep running; restart it ({t._start_hint()}) "
                "and try again") from None
        except wire.ProtocolError as exc:
            raise CtlError(f"{command}: supervisord sent something unexpected: {exc}") from None
    except CtlError as exc:
        if command in PASSES_STATUS and exc.code == EXIT_FAILED:
            exc.code = EXIT_NO_STATUS
        raise


def _quiet_broken_pipe() -> int:
    """``supervisorctl ps | head -1``: the reader left; exit without a traceback (and without
    the interpreter's own complaint when it flushes stdout at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return EXIT_BROKEN_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    from supervisor.ctl_grammar import ParserExit, parse

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = parse(argv)
            target = Target(args.root, args.socket)
            if args.cmd is None:
                from supervisor.ctl_shell import Shell

                return Shell(target).run()
            code = dispatch(target, args)
            flush(sys.stdout, sys.stderr)
            return code
        except ParserExit as exc:
            flush()
            return exc.status
        except CtlError as exc:
            message = str(exc)
            if exc.code != EXIT_USAGE and not message.startswith("supervisorctl"):
                message = f"supervisorctl {message}" if _starts_with_command(message) else \
                    f"supervisorctl: {message}"
            warn(message)
            return exc.code
        except KeyboardInterrupt:
            warn("")
            return EXIT_INTERRUPTED
    except (OutputClosed, BrokenPipeError):
        return _quiet_broken_pipe()


def _starts_with_command(message: str) -> bool:
    from supervisor.ctl_grammar import GRAMMAR

    head = message.split(":", 1)[0].split(" ", 1)[0]
    return head in GRAMMAR


def entry() -> None:
    """The ``supervisorctl`` process: :func:`main`, then its exit status, at once.

    ``os._exit``, not ``sys.exit``: the interpreter's finalization (tearing every module down,
    a last collection) costs a one-shot command about as much as its round trip, and nothing
    of ours needs it: no atexit hook, and the connection and any file close with the process.
    What was written is flushed first (a reader gone by then is ``| head``: exit 141)."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = _quiet_broken_pipe()
    os._exit(code)


if __name__ == "__main__":
    # `python -m supervisor.ctl`: run the module proper, not this __main__ copy of it, so that
    # the other ctl modules and this one raise and catch the same exception classes
    from supervisor import ctl

    ctl.entry()
