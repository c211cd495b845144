"""Who is on the other end of the API socket (SO_PEERCRED), and may they talk to us?

The socket's file mode is the first gate; this is the second, so a socket that ends up with a
wrong mode (a umask, a copied directory) still does not hand control to anyone else.
Allowed: root, the daemon's own uid, and members of ``--group`` (primary or supplementary).
"""

from __future__ import annotations

import socket
import struct

__all__ = ["Creds", "allowed", "peer_creds"]

_UCRED = struct.Struct("3i")

Creds = tuple[int, int, int]  # pid, uid, gid


def peer_creds(sock: socket.socket) -> Creds:
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


def _groups_of(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


def allowed(creds: Creds, my_uid: int, group_gid: int | None) -> bool:
    pid, uid, gid = creds
    if uid in (0, my_uid):
        return True
    if group_gid is None:
        return False
    return gid == group_gid or group_gid in _groups_of(pid)
