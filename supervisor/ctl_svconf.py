"""Supervisor's ``supervisorctl -c FILE`` and ``-s URL``: which Tether root they name.

Scripts and tools written for Supervisor (ansible's ``supervisorctl`` module among them) say
where the daemon is the way Supervisor's ``supervisorctl`` understands it: a configuration file
whose ``[supervisorctl] serverurl`` (or ``[unix_http_server] file``) names the socket, or the
URL itself. Tether serves Supervisor's interface at ``ROOT/supervisor.sock`` and its own API
beside it at ``ROOT/supervisord.sock``, so a ``unix://`` URL names the root: the socket's
directory. ``http://`` URLs are for Supervisor's own client (``--http-listen``); ours talks to
the unix socket. ``-u``/``-p`` are accepted and unused: on the unix socket the peer's
credentials decide (docs/design.md section 9).

Only a command line that uses these options imports this module (and ``configparser``).
"""

from __future__ import annotations

import os

from supervisor.ctl import EXIT_USAGE, CtlError

__all__ = ["root_from_config", "root_from_url"]


def _usage(text: str) -> CtlError:
    return CtlError(f"supervisorctl: {text}", EXIT_USAGE)


def root_from_url(url: str, where: str = "-s") -> str:
    """``unix:///ROOT/supervisor.sock`` -> ``ROOT``."""
    if not url.startswith("unix://"):
        raise _usage(f"{where} {url}: Tether's supervisorctl talks to supervisord's unix socket: "
                     "give unix://ROOT/supervisor.sock, or --root ROOT (an http:// URL is for "
                     "Supervisor's own supervisorctl, with supervisord --http-listen)")
    path = url[len("unix://"):]
    if not path.startswith("/"):
        raise _usage(f"{where} {url}: the socket's path must be absolute")
    return os.path.dirname(path) or "/"


def root_from_config(path: str) -> str:
    """The root a Supervisor configuration file names: ``[supervisorctl] serverurl``, else
    ``[unix_http_server] file`` (``%(here)s`` is the file's directory, as Supervisor's)."""
    import configparser

    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as exc:
        raise _usage(f"-c {path}: {exc.strerror or exc}") from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _usage(f"-c {path}: not a configuration file Supervisor can read: {first}") from None
    here = os.path.dirname(os.path.abspath(path))

    def get(section: str, key: str) -> str | None:
        if not parser.has_option(section, key):
            return None
        return parser.get(section, key).replace("%(here)s", here).strip() or None

    url = get("supervisorctl", "serverurl")
    if url is not None:
        return root_from_url(url, f"-c {path}: [supervisorctl] serverurl =")
    sock = get("unix_http_server", "file")
    if sock is not None:
        return os.path.dirname(os.path.join(here, sock))
    raise _usage(f"-c {path}: names no socket: give [supervisorctl] serverurl = "
                 "unix://ROOT/supervisor.sock (or [unix_http_server] file)")
