"""Tether's version: the one home of the string (pyproject.toml reads it from here).

Dependency-free on purpose: ``supervisorctl --version``, ``supervisord --version``, the
daemon's hello and its ``supervisor.start`` event all show it, and the CLI must not pay for
importing anything else to print it.
"""

__all__ = ["VERSION", "version_line"]

VERSION = "0.1.0"


def version_line(program: str) -> str:
    """``supervisorctl (Tether) 0.1.0``: names the project, since Supervisor ships commands of
    the same names (``supervisorctl version`` of Supervisor prints a bare ``4.2.5``)."""
    return f"{program} (Tether) {VERSION}"
