"""Defaults that supervisord, supervisorctl and the client library share (the CLI imports this
module on every call: only ``os``)."""

from __future__ import annotations

import os

__all__ = ["default_root"]


def default_root() -> str:
    """``/var/lib/tether`` as root; ``$XDG_STATE_HOME/tether`` (or ``~/.local/state/tether``)
    otherwise, so an unprivileged user never needs write access to /var."""
    if os.geteuid() == 0:
        return "/var/lib/tether"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "tether")
