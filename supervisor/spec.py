"""A container's spec as the API takes it: its shape (:class:`Spec`) and its validation.

:func:`validate_spec` is the edge: whatever a client sends either becomes a complete, checked
spec (every field present, defaults filled in) or an ``invalid`` error naming the field, before
anything is created or touched on disk.
"""

from __future__ import annotations

from typing import Any, TypedDict, cast

from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, ErrorCode
from events.ids import InvalidId, validate_id
from events.signals import InvalidSignal, parse_signal
from supervisor import protocol
from supervisor.errors import ApiError

__all__ = ["Spec", "check_id", "signal_number", "timeout_param", "validate_spec"]


class Spec(TypedDict, total=False):
    """A container's spec: :data:`supervisor.protocol.SPEC_PARAMS`, validated and complete
    (``namespaces`` and ``rlimits`` only when given)."""

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
    user: Any
    stop_signal: int
    stop_timeout: float
    labels: dict[str, str]
    log_max_size: int | None
    log_keep: int | None
    restart: dict[str, Any] | None
    namespaces: list[str]
    rlimits: dict[str, list[int]]


def check_id(value: object) -> str:
    """A container id, or ``invalid`` (before it touches a path)."""
    try:
        return validate_id(value)
    except InvalidId as exc:
        raise ApiError(ErrorCode.INVALID, str(exc)) from None


def signal_number(value: object) -> int:
    try:
        return parse_signal(value)
    except InvalidSignal as exc:
        raise ApiError(ErrorCode.INVALID, str(exc)) from None


def timeout_param(params: dict[str, Any]) -> float | None:
    """``params["timeout"]``: seconds >= 0, or None when absent."""
    t = params.get("timeout")
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, int | float) or t < 0:
        raise ApiError(ErrorCode.INVALID, f"timeout must be a number of seconds >= 0, got {t!r}")
    return float(t)


def _is_argv(command: object) -> bool:
    return (isinstance(command, list) and bool(command)
            and all(isinstance(a, str) and "\0" not in a for a in command))


def _is_env(env: object) -> bool:
    return isinstance(env, dict) and all(isinstance(k, str) and k and "=" not in k
                                         and isinstance(v, str) for k, v in env.items())


def validate_spec(spec: object) -> Spec:
    if not isinstance(spec, dict):
        raise ApiError(ErrorCode.INVALID, "params.spec must be a map (see "
                       "supervisor.protocol.SPEC_PARAMS)")
    unknown = set(spec) - set(protocol.SPEC_PARAMS) - {"namespaces", "rlimits"}
    if unknown:
        raise ApiError(ErrorCode.INVALID, f"unknown spec fields {sorted(unknown)}; known: "
                       f"{sorted(protocol.SPEC_PARAMS)}")
    if not _is_argv(spec.get("command")):
        raise ApiError(ErrorCode.INVALID, "spec.command must be a non-empty list of strings "
                       "(argv)")
    if not _is_env(spec.get("env") or {}):
        raise ApiError(ErrorCode.INVALID, "spec.env must map names (without '=') to strings")
    for key in ("cwd", "rootfs", "bundle"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise ApiError(ErrorCode.INVALID, f"spec.{key} must be a path string")
    runtime = spec.get("runtime") or "process"
    if not isinstance(runtime, str):
        raise ApiError(ErrorCode.INVALID, "spec.runtime must be a string")
    for key in ("memory", "pids_limit", "cpus"):
        v = spec.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v <= 0
                              or (key != "cpus" and not isinstance(v, int))):
            kind = "a number" if key == "cpus" else "a whole number"
            raise ApiError(ErrorCode.INVALID, f"spec.{key} must be {kind} above 0, got {v!r}")
    st = spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT)
    if isinstance(st, bool) or not isinstance(st, int | float) or st < 0:
        raise ApiError(ErrorCode.INVALID, "spec.stop_timeout must be a number >= 0")
    out: dict[str, Any] = dict(protocol.SPEC_PARAMS)
    out.update(spec)
    out["stop_signal"] = signal_number(spec.get("stop_signal") or DEFAULT_STOP_SIGNAL)
    if spec.get("restart") is not None:
        from events.policy import restart_spec

        try:
            out["restart"] = dict(restart_spec(spec["restart"], "spec.restart"))
        except ValueError as exc:
            raise ApiError(ErrorCode.INVALID, str(exc)) from None
    return cast(Spec, out)  # every key was checked above
