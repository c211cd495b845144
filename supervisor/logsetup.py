"""structlog to stderr, console or JSON lines (``--log-format``), loaded only when needed.

``structlog`` imports ``asyncio`` (and its console renderer much more): together a large share
of what a start costs before the daemon can answer. The modules the daemon runs before that
(the early server, :mod:`supervisor.early`; the state's rebuild, :mod:`supervisor.restore`)
log through :func:`get_logger`, whose lines are kept, with the time they were written, until
:func:`activate` loads structlog (then they are written in order, with their own timestamps);
afterwards a line goes straight through. :func:`configure` with ``lazy`` only records the
format, so a process that never calls :func:`activate` never pays for structlog, and
:func:`flush` (on every way out of ``main``) makes sure no kept line is lost.
"""

from __future__ import annotations

import datetime
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any

__all__ = ["LazyLogger", "activate", "configure", "flush", "get_logger"]

_lock = threading.Lock()
_format = "console"
_level = logging.INFO
_active = False
#: lines written before structlog was loaded: (logger name, method, event, fields)
_kept: list[tuple[str, str, str, dict[str, Any]]] = []


def configure(fmt: str = "console", level: int = logging.INFO, *, lazy: bool = False) -> None:
    """Set the format and level. Without ``lazy``, structlog is configured now (for callers
    that log through structlog directly); with it, at :func:`activate`."""
    global _format, _level
    _format, _level = fmt, level
    if not lazy:
        activate()


def activate() -> None:
    """Load and configure structlog, then write the kept lines (idempotent)."""
    global _active
    with _lock:
        if _active:
            return
        _configure_structlog()
        _active = True
        kept, _kept[:] = list(_kept), []
    import structlog

    for name, method, event, fields in kept:
        getattr(structlog.get_logger(name), method)(event, **fields)


def flush() -> None:
    """Write the kept lines, if any (loading structlog only then)."""
    if _kept:
        activate()


def _stamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Timestamp a line unless it was kept from before :func:`activate` (it has its own)."""
    event_dict.setdefault("timestamp", _now())
    return event_dict


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _configure_structlog() -> None:
    import structlog

    renderer: structlog.typing.Processor
    if _format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            _stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class LazyLogger:
    """A structlog logger's ``debug``/``info``/``warning``/``error``/``exception``, kept until
    :func:`activate` when structlog is not loaded yet."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if not _active:
            with _lock:
                if not _active:
                    if method == "exception":
                        fields = {**fields, "exc_info": sys.exc_info()}
                        method = "error"
                    _kept.append((self.name, method, event, {"timestamp": _now(), **fields}))
                    return
        import structlog

        getattr(structlog.get_logger(self.name), method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        if _level <= logging.DEBUG:
            self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._log("exception", event, fields)


def get_logger(name: str) -> LazyLogger:
    return LazyLogger(name)
