"""The values of supervisorctl that take more than a split: ``--env-file``, ``--user``,
``logs --since``, ``ps --filter``. Pure functions of their arguments and of the files they name
(``now`` is a parameter), each raising :class:`ValueError` with a sentence that names the flag.

Imported only by the commands that use them (the one-shot CLI's import budget); docker's
meanings throughout, since that is the habit users bring.
"""

from __future__ import annotations

import math
import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

__all__ = ["parse_since", "ps_filter", "read_env_file", "resolve_user"]

_NS = 1_000_000_000


def read_env_file(path: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """docker's ``--env-file``: ``KEY=VALUE`` lines taken literally (no quotes removed), a bare
    ``KEY`` taken from our environment (skipped when unset), blank and ``#`` lines ignored."""
    environ = os.environ if environ is None else environ
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise ValueError(f"--env-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--env-file {path}: not UTF-8 text") from None
    env: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        text = line.lstrip()
        if not text or text.startswith("#"):
            continue
        key, sep, value = text.partition("=")
        if not key or key != key.strip() or "\0" in line:
            raise ValueError(f"--env-file {path}, line {number}: {line!r} is not KEY=VALUE")
        if sep:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return env


def _passwd_entries(path: str) -> Iterable[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 4 and not line.startswith("#"):
                    yield fields
    except FileNotFoundError:
        return


def resolve_user(text: str, runtime: str, rootfs: str | None,
                 bundle: str | None) -> dict[str, int]:
    """``--user NAME|UID[:GROUP|GID]`` -> ``{"uid", "gid"}``, as docker resolves it: names in
    the container's ``/etc/passwd`` and ``/etc/group`` (the host's for the process runtime),
    a missing group is the user's primary group (0 for a uid with no entry)."""
    name, _, group = text.partition(":")
    if not name or (":" in text and not group):
        raise ValueError(f"--user {text!r}: use NAME, UID, NAME:GROUP or UID:GID")
    if bundle is not None and not (name.isdigit() and (not group or group.isdigit())):
        raise ValueError(f"--user {text!r} with --bundle: give numbers (UID[:GID]), or set "
                         "process.user in the bundle's config.json")
    where = os.path.join(rootfs, "etc") if rootfs else "/etc"
    passwd = [] if bundle else list(_passwd_entries(os.path.join(where, "passwd")))
    if name.isdigit():
        uid = int(name)
        primary = next((int(f[3]) for f in passwd if f[2] == name and f[3].isdigit()), 0)
    else:
        entry = next((f for f in passwd if f[0] == name), None)
        if entry is None or not entry[2].isdigit() or not entry[3].isdigit():
            raise ValueError(f"--user {text!r}: no user {name!r} in {where}/passwd")
        uid, primary = int(entry[2]), int(entry[3])
    if not group:
        gid = primary
    elif group.isdigit():
        gid = int(group)
    else:
        entry = next((f for f in _passwd_entries(os.path.join(where, "group"))
                      if f[0] == group), None)
        if entry is None or not entry[2].isdigit():
            raise ValueError(f"--user {text!r}: no group {group!r} in {where}/group")
        gid = int(entry[2])
    if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
        raise ValueError(f"--user {text!r}: ids go up to 4294967294")
    return {"uid": uid, "gid": gid}


#: The unix seconds a signed 64-bit count of nanoseconds holds (years 1677 to 2262).
_MAX_UNIX_S = 9.2e9
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def _duration(text: str) -> float | None:
    """Go's durations, as docker's ``--since 1h30m``: seconds, or None if it is not one."""
    total, number, i = 0.0, "", 0
    if not text:
        return None
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i:i + 2] if text[i:i + 2] in _UNITS else text[i]
        if unit not in _UNITS or not number:
            return None
        try:
            total += float(number) * _UNITS[unit]
        except ValueError:
            return None
        number = ""
        i += len(unit)
    return None if number else total


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_since(text: str, now_ns: int | None = None) -> int:
    """``logs --since``: RFC 3339 (``2026-11-28T02:10:00Z``), unix seconds (``1795000000.5``),
    or a duration ago (``10m``, ``1h30m``) -> unix nanoseconds."""
    from events.timefmt import parse_rfc3339

    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    ago = _duration(text)
    seconds = now_ns / _NS - ago if ago is not None else _float_or_none(text)
    if seconds is not None:
        # finite and within the wire's 64-bit nanoseconds: inf, nan or 1e400 are a usage error
        if not math.isfinite(seconds) or not -_MAX_UNIX_S <= seconds <= _MAX_UNIX_S:
            raise ValueError(f"--since {text!r}: out of range (a time after 1677 and before "
                             "2262, or a duration ago within that)")
        return now_ns - int(ago * _NS) if ago is not None else int(seconds * _NS)
    stamp = parse_rfc3339(text if "T" in text else text + "T00:00:00Z")
    if stamp is None:
        raise ValueError(f"--since {text!r}: use RFC 3339 (2026-11-28T02:10:00Z), unix "
                         "seconds, or a duration ago (10m, 1h30m)")
    return stamp


#: docker's container states, as ps --filter status= names them, -> ours.
_DOCKER_STATES = {"exited": "stopped", "dead": "stopped", "removing": "stopped"}
_FILTER_KEYS = ("state", "status", "label", "id", "name", "exited")


def ps_filter(filters: Sequence[str]) -> tuple[Callable[[Mapping[str, Any]], bool], bool]:
    """``ps --filter KEY=VALUE`` (docker's): a predicate on ps rows, and whether a state was
    asked for (then stopped containers are listed without ``-a``, as docker does).

    Different keys must all match; the values of a repeated key are alternatives.
    """
    wanted: dict[str, list[str]] = {}
    for text in filters:
        key, sep, value = text.partition("=")
        key = key.strip().lower()
        if not sep or key not in _FILTER_KEYS:
            raise ValueError(f"--filter {text!r}: use KEY=VALUE with KEY one of "
                             f"{', '.join(_FILTER_KEYS)}")
        if key == "status":
            key = "state"
        if key == "state":
            value = _DOCKER_STATES.get(value, value)
        if key == "exited" and not value.lstrip("-").isdigit():
            raise ValueError(f"--filter {text!r}: exited= takes an exit status (a number)")
        wanted.setdefault(key, []).append(value)

    def label_ok(labels: Mapping[str, Any], spec: str) -> bool:
        k, eq, v = spec.partition("=")
        return k in labels and (not eq or str(labels[k]) == v)

    tests: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
        "state": lambda r, v: str(r.get("state", "")).split(" ")[0] == v,
        "label": lambda r, v: label_ok(r.get("labels") or {}, v),
        "id": lambda r, v: str(r.get("id", "")).startswith(v),
        "name": lambda r, v: v in str(r.get("id", "")),
        "exited": lambda r, v: r.get("state") == "stopped" and r.get("exit_status") == int(v),
    }

    def keep(row: Mapping[str, Any]) -> bool:
        return all(any(tests[k](row, v) for v in values) for k, values in wanted.items())

    return keep, "state" in wanted or "exited" in wanted
