"""Which reader a program file needs: Tether's TOML or a supervisord.conf."""

from __future__ import annotations

import os

from supervisor.programs import ConfigError, Desired

__all__ = ["ConfigError", "load"]


def load(path: str, environ: dict[str, str] | None = None) -> Desired:
    """``*.toml`` is Tether's format; anything else is read as a supervisord.conf (any file with
    ``[program:x]`` sections: ``supervisord.conf``, ``*.ini``, ``conf.d/*.conf``)."""
    if os.path.splitext(path)[1].lower() == ".toml":
        from supervisor import config_toml

        return config_toml.load(path)
    from supervisor import config_supervisor

    return config_supervisor.load(path, environ)
