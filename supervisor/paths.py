"""Where supervisord keeps things under its root, and the default root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MAX_SOCKET_PATH", "Paths", "default_root"]

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def default_root() -> Path:
    """``/var/lib/tether`` as root; ``$XDG_STATE_HOME/tether`` (or ``~/.local/state/tether``)
    otherwise, so an unprivileged user never needs write access to /var."""
    if os.geteuid() == 0:
        return Path("/var/lib/tether")
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "tether"


@dataclass(frozen=True)
class Paths:
    root: Path
    socket: Path

    @classmethod
    def under(cls, root: str | os.PathLike[str], socket: str | None = None) -> Paths:
        root = Path(root).absolute()
        return cls(root=root, socket=Path(socket) if socket else root / "supervisord.sock")

    @property
    def events(self) -> Path:
        return self.root / "events"

    @property
    def shims(self) -> Path:
        return self.root / "shims"

    def check_socket(self) -> None:
        """Refuse (clearly) a socket path the kernel cannot bind."""
        if len(os.fsencode(self.socket)) > MAX_SOCKET_PATH:
            raise SystemExit(
                f"supervisord: socket path {self.socket} is longer than {MAX_SOCKET_PATH} bytes "
                "(the unix socket limit); use a shorter --root or pass --socket PATH")
