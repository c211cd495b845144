"""The daemon's client limits as settings: a ``supervisord`` flag, a key of the ``--config`` file,
or (the fallback of before) an environment variable; each checked once, at start.

=========================  ==========================  ===============================
flag                       environment (fallback)      ``--config`` key
=========================  ==========================  ===============================
``--max-connections N``    ``TETHER_MAX_CONNECTIONS``  ``max_connections``
``--frame-timeout S``      ``TETHER_FRAME_TIMEOUT``    ``frame_timeout``
``--http-request-timeout`` ``TETHER_HTTP_REQUEST_``    ``http_request_timeout``
                           ``TIMEOUT``
=========================  ==========================  ===============================

The keys go in the file's daemon section: ``[supervisord]`` of a supervisord.conf, as
``tether_max_connections`` ... (Supervisor has no such settings; the prefix says they are
Tether's, as ``tether_shared_shim``), and the ``[supervisord]`` table of a TOML file, as
``max_connections`` .... A flag wins over the file, the file over the environment, and the
environment over the default (docs/design.md section 5, "Limits"). A bad value refuses the start
with a sentence naming where it came from (the flag, the file and line and key, or the
variable): nothing is bound or opened before. The file's settings are read at start only: a
``reread``/``update`` leaves them as they were.

No trio, no structlog, no dataclass (named tuples: ~20 times cheaper to make, and made before
the daemon's first answer): the daemon resolves them before it binds its sockets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import NamedTuple

from supervisor.conncap import default_max_connections

__all__ = ["FILE_KEYS", "SETTINGS", "Limits", "Setting", "check", "resolve"]


class Setting(NamedTuple):
    """One limit: its flag, environment variable, file key (without the supervisord.conf
    prefix), what a good value is, and its reader (raises ValueError)."""

    flag: str
    metavar: str
    env: str
    key: str
    rule: str
    parse: Callable[[str], float]


def _whole(text: str) -> float:
    value = int(text.strip())
    if value < 2:
        raise ValueError
    return value


def _seconds(text: str) -> float:
    value = float(text.strip())
    if not (value > 0 and math.isfinite(value)):
        raise ValueError
    return value


SETTINGS = (
    Setting("--max-connections", "N", "TETHER_MAX_CONNECTIONS", "max_connections",
            "a whole number >= 2 (open connections per server; the last is root's)", _whole),
    Setting("--frame-timeout", "SECONDS", "TETHER_FRAME_TIMEOUT", "frame_timeout",
            "seconds > 0 (from a frame's first byte to its last)", _seconds),
    Setting("--http-request-timeout", "SECONDS", "TETHER_HTTP_REQUEST_TIMEOUT",
            "http_request_timeout", "seconds > 0 (to send a whole HTTP request)", _seconds),
)
#: A supervisord.conf's ``[supervisord]`` key of each setting (TOML: the bare key).
FILE_KEYS = {f"tether_{s.key}": s for s in SETTINGS}
#: The defaults of the timeouts (the connection cap's depends on the descriptor limit).
DEFAULT_FRAME_TIMEOUT = 30.0
DEFAULT_HTTP_REQUEST_TIMEOUT = 30.0


class Limits(NamedTuple):
    max_connections: int
    frame_timeout: float
    http_request_timeout: float


def check(setting: Setting, value: object) -> float:
    """``value`` (a string, or a TOML number) read by ``setting``'s rule; ValueError with
    the rule otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be {setting.rule}")
    try:
        return setting.parse(str(value))
    except (ValueError, OverflowError):
        raise ValueError(f"must be {setting.rule}, not {value!r}") from None


def resolve(flags: Mapping[str, str | None], file: Mapping[str, tuple[float, str]],
            environ: Mapping[str, str] | None = None) -> Limits:
    """The limits: ``flags`` by setting key (the flag's text or None), ``file`` by setting
    key (the value, checked, and where it was: ``PATH:LINE: key``), then the environment.
    ``SystemExit`` with one sentence for a bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, float] = {}
    for s in SETTINGS:
        given = flags.get(s.key)
        if given is not None:
            try:
                values[s.key] = check(s, given)
            except ValueError as exc:
                raise SystemExit(f"supervisord: {s.flag}: {exc}") from None
        elif s.key in file:
            values[s.key] = file[s.key][0]
        elif env.get(s.env):
            try:
                values[s.key] = check(s, env[s.env])
            except ValueError as exc:
                raise SystemExit(f"supervisord: {s.env} (environment): {exc}; or use "
                                 f"{s.flag}") from None
    return Limits(
        max_connections=int(values.get("max_connections") or default_max_connections()),
        frame_timeout=values.get("frame_timeout", DEFAULT_FRAME_TIMEOUT),
        http_request_timeout=values.get("http_request_timeout", DEFAULT_HTTP_REQUEST_TIMEOUT))
