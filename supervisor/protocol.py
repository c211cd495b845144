"""The API of ``ROOT/supervisord.sock``: what supervisorctl, the client library and subscribers
may ask of supervisord. Framing and hello are :mod:`events.wire` (client role ``"client"``, the
daemon answers role ``"daemon"`` with ``version`` and ``pid``).

The methods, their params and results, and the error codes are documented in one place,
``docs/design.md`` section 6 (a compatibility promise, like the CLI: add optional params and
result fields freely; never change a meaning). This module holds what the code checks against:
:data:`METHODS` (the daemon's dispatch table is made from it), the ``ps`` fields, the states,
the exit result's fields and the spec's params with their defaults.

Times in results are unix nanoseconds (ints); supervisorctl renders them (RFC 3339 in ``--json``).
"""

from __future__ import annotations

#: ``ps`` row fields, in the order supervisorctl prints them (the ``--json`` promise of DESIGN.md).
PS_FIELDS = ("id", "state", "pid", "exit_status", "restarts", "runtime", "created", "started",
             "finished")

#: Container states shown to users. ``unknown`` until a recovered container is reconciled.
STATES = ("created", "running", "restarting", "stopped", "unknown")

#: Fields of an exit result.
EXIT_FIELDS = ("id", "pid", "exit_status", "signal", "exited_at")

def _spec_params() -> dict[str, object]:
    """``SPEC_PARAMS``: the params of a spec sent by ``create``/``run`` (all optional except
    ``command``) and their defaults. Made on first use (:func:`__getattr__`): its stop defaults
    are :mod:`events.domain`'s, whose enums a ``supervisorctl ps`` (which reads ``PS_FIELDS``
    here) need not import."""
    from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT

    return {
        "name": None,          # becomes the id; generated when absent
        "command": [],         # argv
        "env": {},             # added to a default PATH
        "cwd": None,
        "runtime": "process",  # process | runc | crun | /path/to/runtime
        "rootfs": None,
        "bundle": None,
        "init": False,
        "memory": None,        # bytes
        "cpus": None,
        "pids_limit": None,
        "user": None,
        "stop_signal": DEFAULT_STOP_SIGNAL,
        "stop_timeout": DEFAULT_STOP_TIMEOUT,
        "labels": {},
        "log_max_size": None,
        "log_keep": None,
        "restart": None,       # docker's string ("on-failure:3") or a map (events.policy); None: no
        "health": None,        # {"cmd", ...}: events.policy.health_spec
        "auto_remove": False,  # run --rm: removed once exited for good (supervisor.autoremove)
    }


def __getattr__(name: str) -> dict[str, object]:
    if name == "SPEC_PARAMS":
        value = globals()["SPEC_PARAMS"] = _spec_params()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Every method and how it answers: ``"call"`` (one result) or ``"stream"`` (items, then an
#: end). The daemon's dispatch table is made from this one (:class:`supervisor.commands.
#: Commands` has one handler of the same name per entry, and no other public method), so the
#: table above, the daemon and its tests cannot drift apart.
METHODS: dict[str, str] = {
    "create": "call", "start": "call", "run": "call", "stop": "call", "kill": "call",
    "restart": "call", "rm": "call", "ps": "call", "inspect": "call", "wait": "call",
    "status": "call", "info": "call", "shutdown": "call",
    "logs": "stream", "events": "stream", "exec": "stream",
    # Supervisor compatibility (supervisor.compat: docs/design.md, section 9)
    "apply": "call", "update": "call", "program_sources": "call", "xmlrpc": "call",
}
