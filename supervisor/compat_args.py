"""supervisord's Supervisor-compatibility flags (``--config``, ``--http-*``): declared here,
without trio, so the daemon parses its command line before it loads the rest;
:func:`supervisor.compat.options` checks them."""

from __future__ import annotations

import argparse

__all__ = ["SOCKET_NAME", "add_arguments", "given"]

#: Supervisor's XML-RPC socket, ``ROOT/supervisor.sock`` (bound by the daemon before the early
#: server starts: :mod:`supervisor.early` answers its read-only methods).
SOCKET_NAME = "supervisor.sock"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="a supervisord.conf or Tether TOML program file, applied at every start "
                   "(after recovery); `supervisorctl reread`/`update` read it again")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="also serve Supervisor's XML-RPC and /metrics on TCP (needs "
                   "--http-user/--http-password unless HOST is loopback)")
    p.add_argument("--http-user", metavar="NAME", help="basic auth user of --http-listen")
    p.add_argument("--http-password", metavar="SECRET",
                   help="basic auth password of --http-listen")


def given(args: argparse.Namespace) -> bool:
    """Whether any of these flags was given (then the daemon checks them before it starts)."""
    return any(getattr(args, name, None) is not None
               for name in ("config", "http_listen", "http_user", "http_password"))
