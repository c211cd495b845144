"""The API socket's file: claimed (a stale one replaced, a live one refused), bound with its
final mode, and removed only while it is still the one we bound. No trio and no structlog: the
daemon binds it before it loads either (:mod:`supervisor.early`)."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import sys

__all__ = ["bind_api_socket", "claim_socket_path", "socket_identity", "unlink_if_ours"]


def claim_socket_path(path: str) -> None:
    """Make *path* free to bind, refusing (``SystemExit``) when a process answers on it.

    The event log's flock proves that no other daemon owns this *root*, not this socket: a
    second daemon given ``--socket`` of a live one would otherwise unlink it and take its
    clients, and the first would be left running, unreachable. Only a socket nobody accepts on
    (a SIGKILLed daemon's leftover: ``ECONNREFUSED``) is removed; anything else is left alone.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SystemExit(f"supervisord: {path} exists and is not a socket; remove it or choose "
                         "another --socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: a stale leftover
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SystemExit(f"supervisord: cannot tell whether {path} is in use ({exc.strerror}); "
                         "remove it if no daemon owns it, or choose another --socket") from None
    else:
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        pid = int.from_bytes(creds[:4], sys.byteorder)
        raise SystemExit(f"supervisord: {path} is in use: a process answers on it (pid {pid}: "
                         f"{_cmdline(pid)}); stop it first (supervisorctl --socket {path} "
                         "shutdown) or choose another --socket")
    finally:
        probe.close()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def socket_identity(path: os.PathLike[str] | str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def unlink_if_ours(path: os.PathLike[str] | str, identity: tuple[int, int] | None) -> None:
    """Remove the socket at *path* only if it is still the file we bound (*identity*): never
    a socket another process put there since."""
    if identity is not None and socket_identity(path) == identity:
        with contextlib.suppress(OSError):
            os.unlink(path)


def bind_api_socket(path: os.PathLike[str] | str, group: str | None) -> tuple[socket.socket,
                                                                              int | None]:
    """Bind the API socket with its final mode from the start (umask), after
    :func:`claim_socket_path` (a stale socket is replaced; a live one is refused)."""
    path = os.fspath(path)
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SystemExit(f"supervisord: no such group {group!r} (--group)") from None
    claim_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117 if gid is not None else 0o177)
    try:
        sock.bind(path)
        if gid is not None:
            os.chown(path, -1, gid)
            os.chmod(path, 0o660)
        else:
            os.chmod(path, 0o600)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock, gid
