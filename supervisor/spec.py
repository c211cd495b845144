"""A container's spec as the API takes it: its shape (:class:`Spec`) and its validation.

:func:`validate_spec` is the edge: whatever a client sends either becomes a complete, checked
spec (every field present, defaults filled in, ``restart`` and ``health`` normalised by
:mod:`events.policy`) or an ``invalid`` error naming the field, before anything is created or
touched on disk. Every number is checked to be finite and within a bound, so no ``inf``,
``nan`` or ``1e308`` ever reaches a timer, a cgroup file or a shim.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypedDict, cast

from events import policy
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, ErrorCode, RestartPolicy
from events.ids import InvalidId, validate_id
from events.signals import InvalidSignal, parse_signal
from supervisor import protocol
from supervisor.errors import ApiError

if TYPE_CHECKING:
    from events.domain import HealthSpec, RestartSpec

__all__ = ["Spec", "check_id", "count_param", "seconds_param", "signal_number", "validate_spec"]

#: Bounds of the limits: far above any real use, below anything that overflows the kernel's or
#: msgpack's integers (memory: 4 EiB; pids: the kernel's PID_MAX_LIMIT; CPUs: a large host).
MAX_MEMORY = 2**62
MAX_PIDS = 4_194_304
MAX_CPUS = 4096.0
#: A log file's size (1 TiB) and how many rotated files are kept.
MAX_LOG_SIZE = 2**40
MAX_LOG_KEEP = 1000
#: The namespaces the process runtime can unshare (shim/runtime_process.py's NAMESPACES).
NAMESPACES = frozenset({"mount", "uts", "ipc", "net", "pid"})
#: Spec fields stored only when given (a spec without them reads as it always did).
OPTIONAL_FIELDS = frozenset({"namespaces", "rlimits", "shim_group"})
#: A uid or gid: 32 bits, without (uid_t)-1, which means "no change" to the kernel.
MAX_ID = 2**32 - 2


class Spec(TypedDict, total=False):
    """A container's spec: :data:`supervisor.protocol.SPEC_PARAMS`, validated and complete
    (``namespaces``, ``rlimits`` and ``shim_group`` only when given)."""

    name: str | None
    command: list[str]
    env: dict[str, str]
    cwd: str | None
    runtime: str
    rootfs: str | None
    bundle: str | None
    init: bool
    memory: int | None
    cpus: float | None
    pids_limit: int | None
    user: dict[str, int] | None
    stop_signal: int
    stop_timeout: float
    labels: dict[str, str]
    log_max_size: int | None
    log_keep: int | None
    restart: RestartSpec | None
    health: HealthSpec | None
    auto_remove: bool
    namespaces: list[str]
    rlimits: dict[str, list[int]]
    shim_group: str


def invalid(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID, message)


def check_id(value: object) -> str:
    """A container id, or ``invalid`` (before it touches a path)."""
    try:
        return validate_id(value)
    except InvalidId as exc:
        raise invalid(str(exc)) from None


def signal_number(value: object) -> int:
    try:
        return parse_signal(value)
    except InvalidSignal as exc:
        raise invalid(str(exc)) from None


def seconds_param(params: dict[str, Any], key: str = "timeout") -> float | None:
    """``params[key]``: finite seconds from 0 to :data:`events.policy.MAX_SECONDS`, or None
    when absent."""
    value = params.get(key)
    if value is None:
        return None
    try:
        return policy.seconds(value, key)
    except ValueError as exc:
        raise invalid(str(exc)) from None


def count_param(params: dict[str, Any], key: str, *, maximum: int = 2**63 - 1
                ) -> int | None:
    """``params[key]``: a whole number from 0 to ``maximum``, or None when absent."""
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise invalid(f"{key} must be a whole number from 0 to {maximum}, got {value!r}")
    return value


def _whole(spec: dict[str, Any], key: str, lowest: int, highest: int) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
        raise invalid(f"spec.{key} must be a whole number from {lowest} to {highest}, got "
                      f"{value!r}")
    return value


def _argv(command: object) -> list[str]:
    if not isinstance(command, list) or not command:
        raise invalid(f"spec.command must be a non-empty list of strings (argv), got "
                      f"{command!r}")
    for i, arg in enumerate(command):
        if not isinstance(arg, str) or "\0" in arg:
            raise invalid(f"spec.command[{i}] must be a string without NUL, got {arg!r}")
    return command


def _str_map(value: object, field: str, keys_are_names: bool = False) -> dict[str, str]:
    """A map of strings; with ``keys_are_names`` an environment: names without ``=`` (execve
    would split there) and nothing with NUL (it would cut the string, or fail at start)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"spec.{field} must map strings to strings, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or "\0" in key or (keys_are_names and (not key
                                                                           or "=" in key)):
            what = "names without '=' or NUL" if keys_are_names else "strings without NUL"
            raise invalid(f"spec.{field}: keys must be {what}, got {key!r}")
        if not isinstance(item, str) or "\0" in item:
            raise invalid(f"spec.{field}[{key!r}] must be a string without NUL, got {item!r}")
    return value


def _user(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"uid", "gid"} or "uid" not in value:
        raise invalid(f"spec.user must be {{'uid': n}} or {{'uid': n, 'gid': n}}, got {value!r}")
    out: dict[str, int] = {}
    for key, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_ID:
            raise invalid(f"spec.user.{key} must be a whole number from 0 to {MAX_ID}, got "
                          f"{number!r}")
        out[key] = number
    return out


def _rlimits(value: object) -> dict[str, list[int]]:
    if not isinstance(value, dict):
        raise invalid(f"spec.rlimits must map names (nofile, nproc, ...) to [soft, hard], got "
                      f"{value!r}")
    out: dict[str, list[int]] = {}
    for name, pair in value.items():
        if (not isinstance(name, str) or not name.isalpha() or not isinstance(pair, list)
                or len(pair) != 2 or not all(isinstance(n, int) and not isinstance(n, bool)
                                             and 0 <= n < 2**63 for n in pair)
                or pair[0] > pair[1]):
            raise invalid(f"spec.rlimits.{name}: must be [soft, hard], whole numbers with "
                          f"soft <= hard, got {pair!r}")
        out[name] = list(pair)
    return out


def _namespaces(value: object) -> list[str]:
    if (not isinstance(value, list)
            or not all(isinstance(n, str) and n in NAMESPACES for n in value)):
        raise invalid(f"spec.namespaces must be a list of {sorted(NAMESPACES)}, got {value!r}")
    return list(value)


def _shim_group(value: object, runtime: str, namespaces: list[str]) -> str:
    """The opt-in shared shim (docs/design.md, section 7): a name like an id. The process
    runtime only: an OCI runtime's synchronous commands (``runc create``, ``runc delete``)
    would stall every other member of the group for their duration; and no ``pid``
    namespace, which the process runtime makes by unsharing in the shim itself (every later
    child of a shared shim would land in it)."""
    try:
        name = validate_id(value)
    except InvalidId:
        raise invalid("spec.shim_group must be a name of 1-64 characters from [A-Za-z0-9_.-], "
                      f"starting with a letter or digit; got {value!r}") from None
    if runtime != "process":
        raise invalid(f"spec.shim_group needs the process runtime, not {runtime!r}: an OCI "
                      "runtime's synchronous commands would stall every other program of the "
                      "group; drop --shim-group, or run it with --runtime process")
    if "pid" in namespaces:
        raise invalid("spec.shim_group cannot be combined with a pid namespace (the shim "
                      "itself unshares it, so every other program of the group would land in "
                      "it); drop one of them")
    return name


def _supervision(spec: dict[str, Any]) -> tuple[RestartSpec, HealthSpec | None]:
    try:
        restart = policy.restart_spec(spec.get("restart"), "spec.restart")
        health = policy.health_spec(spec.get("health"), "spec.health")
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if health is not None and health["restart"] and restart["policy"] == RestartPolicy.NO:
        raise invalid("spec.health.restart (--health-restart) restarts through the restart "
                      "policy: give one other than 'no' (e.g. restart: on-failure)")
    return restart, health


def validate_spec(spec: object) -> Spec:
    """The complete, checked spec of ``spec`` (a client's map), or ``invalid`` naming the
    first bad field."""
    if not isinstance(spec, dict):
        raise invalid("params.spec must be a map (see supervisor.protocol.SPEC_PARAMS)")
    unknown = set(spec) - set(protocol.SPEC_PARAMS) - OPTIONAL_FIELDS
    if unknown:
        raise invalid(f"unknown spec fields {sorted(unknown)}; known: "
                      f"{sorted(protocol.SPEC_PARAMS)}")
    if spec.get("name") is not None:
        try:
            validate_id(spec["name"])
        except InvalidId as exc:
            raise invalid(f"spec.name: {exc}") from None
    _argv(spec.get("command"))
    _str_map(spec.get("env"), "env", keys_are_names=True)
    _str_map(spec.get("labels"), "labels")
    for key in ("cwd", "rootfs", "bundle"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, str) or "\0" in value):
            raise invalid(f"spec.{key} must be a path (a string without NUL), got {value!r}")
    runtime = spec.get("runtime") or "process"
    if not isinstance(runtime, str) or "\0" in runtime:
        raise invalid(f"spec.runtime must be process, runc, crun or a path, got {runtime!r}")
    if spec.get("init") is not None and not isinstance(spec.get("init"), bool):
        raise invalid(f"spec.init must be true or false, got {spec.get('init')!r}")
    if runtime == "process" and (spec.get("rootfs") or spec.get("bundle")):
        # the process runtime would run the command on the host, ignoring the rootfs
        raise invalid("spec.rootfs/bundle need an OCI runtime (runtime runc, crun or the path "
                      "of one); the process runtime runs on the host")
    auto_remove = spec.get("auto_remove", False)
    if not isinstance(auto_remove, bool):
        raise invalid(f"spec.auto_remove must be true or false, got {auto_remove!r}")
    out: dict[str, Any] = dict(protocol.SPEC_PARAMS)
    out.update(spec)
    out["memory"] = _whole(spec, "memory", 1, MAX_MEMORY)
    out["pids_limit"] = _whole(spec, "pids_limit", 1, MAX_PIDS)
    out["log_max_size"] = _whole(spec, "log_max_size", 1, MAX_LOG_SIZE)
    out["log_keep"] = _whole(spec, "log_keep", 0, MAX_LOG_KEEP)
    cpus = spec.get("cpus")
    if cpus is not None:
        if (isinstance(cpus, bool) or not isinstance(cpus, int | float)
                or not math.isfinite(cpus) or not 0 < cpus <= MAX_CPUS):
            raise invalid(f"spec.cpus must be a number of CPUs above 0 and at most "
                          f"{MAX_CPUS:g}, got {cpus!r}")
        out["cpus"] = float(cpus)
    try:
        out["stop_timeout"] = policy.seconds(spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT),
                                             "spec.stop_timeout")
    except ValueError as exc:
        raise invalid(str(exc)) from None
    out["stop_signal"] = signal_number(spec.get("stop_signal") or DEFAULT_STOP_SIGNAL)
    out["user"] = _user(spec.get("user"))
    if "rlimits" in spec:
        out["rlimits"] = _rlimits(spec["rlimits"])
    if "namespaces" in spec:
        out["namespaces"] = _namespaces(spec["namespaces"])
    if spec.get("shim_group") is not None:
        out["shim_group"] = _shim_group(spec["shim_group"], runtime,
                                        out.get("namespaces") or [])
    else:
        out.pop("shim_group", None)
    restart, out["health"] = _supervision(spec)
    # normalised, and the default (policy no) stored as null: a spec shows what was asked
    out["restart"] = None if restart == policy.DEFAULT_RESTART else restart
    if auto_remove and restart["policy"] != RestartPolicy.NO:
        raise invalid("spec.auto_remove cannot be combined with a restart policy (as docker's "
                      "--rm and --restart)")
    return cast(Spec, out)  # every key was checked above
