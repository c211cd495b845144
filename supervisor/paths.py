"""Where supervisord keeps things under its root, and the default root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from supervisor.defaults import default_root

__all__ = ["MAX_SOCKET_PATH", "Paths", "default_root"]

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


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
