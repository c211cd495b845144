"""The API of ``ROOT/supervisord.sock``: what supervisorctl, the client library and subscribers
may ask of supervisord. Framing and hello are :mod:`events.wire` (client role ``"client"``, the
daemon answers role ``"daemon"`` with ``version`` and ``pid``).

This table is a compatibility promise, like the CLI: add optional params and result fields
freely; never change a meaning.

=============  ==========================================  =========================================
method         params                                      result
=============  ==========================================  =========================================
``create``     ``spec`` (:data:`SPEC_PARAMS`)              ``{"id"}`` once ``container.create`` and
                                                           ``task.create`` are durable
``start``      ``id``                                      ``{"id", "pid"}`` once ``task.start`` is
                                                           durable; ``exec_failed`` error if the
                                                           command cannot run (status 127 recorded)
``run``        ``spec``                                    create + start: ``{"id", "pid"}``;
                                                           ``exec_failed`` names the container
                                                           (removed first if ``auto_remove``)
``stop``       ``id``, ``timeout`` (s, default the spec's)  :data:`EXIT_FIELDS` once ``task.exit``
                                                           is durable (immediately if not running)
``kill``       ``id``, ``signal`` (int or name), ``all``   ``None``
``restart``    ``id``, ``timeout``                         ``{"id", "pid"}``: stop, new task
``rm``         ``id``, ``force``                           ``None`` once ``container.delete`` is
                                                           durable; ``conflict`` while running
                                                           unless ``force``
``ps``         ``all`` (include stopped)                   list of :data:`PS_FIELDS` maps, plus
                                                           ``command``, ``labels``, ``oom`` (this
                                                           task was OOM-killed), ``exit_reason``
``inspect``    ``id``                                      ``{... PS_FIELDS, "spec", "history":
                                                           [event records of this container]}``
``wait``       ``id``                                      :data:`EXIT_FIELDS` once the task exits
``logs``       ``id``, ``tail`` (n or None), ``follow``,   stream of ``{"time", "stream", "partial",
               ``since`` (unix ns: lines from then on),    "line", "cursor"}``: ``line`` is bytes
               ``after`` (a ``cursor``: resume there)      (split on \\n only), ``cursor`` is
                                                           ``[inode, offset]`` after the line;
                                                           follows across rotation
``events``     ``since`` (seq, exclusive), ``types``       stream of event records ``{seq, time,
               (known types or prefixes of them, else      type, id, data}``: history, then live
               ``invalid``), ``ids``, ``follow``           with ``follow``, no gap, no duplicate.
                                                           A subscriber too slow for its bounded
                                                           buffer gets error ``too_slow`` naming
                                                           the last seq it was sent.
``status``     -                                           ``{"ok", "pid", "uptime", "last_seq",
                                                           "reconciling"}``
``info``       -                                           ``{"version", "pid", "root", "socket",
                                                           "last_seq", "containers": {state: n},
                                                           "shims", "snapshot_seq"}``
``shutdown``   -                                           ``None``; the daemon flushes and exits,
                                                           containers keep running
``exec``       ``id``, ``command``, ``env`` (added to the   stream of ``{"stream": "stdout"|
               container's), ``cwd``                       "stderr", "data": bytes}`` items as
                                                           output comes, then ``{"exit_status",
                                                           "signal"}``; ``conflict`` unless
                                                           running
=============  ==========================================  =========================================

Error codes: ``invalid`` (bad params, bad id), ``not_found``, ``conflict`` (wrong state, id in
use), ``unknown_method``, ``protocol``, ``exec_failed``, ``no_space`` (the log cannot be written:
nothing was changed), ``unavailable`` (the shim cannot be reached), ``internal``,
``unsupported`` (a known method this daemon cannot do yet), ``permission_denied``
(connection-level, id None: the peer's uid is neither root, the daemon's, nor in ``--group``).

Optional additions (supervisord, daemon issue):
* ``events`` takes ``buffer`` (n): a smaller per-subscriber buffer than the daemon's
  ``--subscriber-buffer`` (a small one also shrinks the socket's send buffer, so "behind"
  means behind); the ``too_slow`` message ends with ``resume with since=N``.
* exit results (``stop``, ``wait``) also carry ``reason``: None, or why the status is unknown
  (``exit_status`` None: the shim was lost and the task ended unseen).
* ``info`` also carries ``subscribers`` and ``skipped_events`` (events the projection skipped).
* ``info`` also carries ``log_id``: the durable identity of the root's log (``ROOT/log_id``,
  :mod:`supervisor.logid`); ``(log_id, seq)`` names one event for good (fleet issue).

Times in results are unix nanoseconds (ints); supervisorctl renders them (RFC 3339 in ``--json``).
"""

from __future__ import annotations

from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT

#: ``ps`` row fields, in the order supervisorctl prints them (the ``--json`` promise of DESIGN.md).
PS_FIELDS = ("id", "state", "pid", "exit_status", "restarts", "runtime", "created", "started",
             "finished")

#: Container states shown to users. ``unknown`` until a recovered container is reconciled.
STATES = ("created", "running", "stopped", "unknown")

#: Fields of an exit result.
EXIT_FIELDS = ("id", "pid", "exit_status", "signal", "exited_at")

#: Params of a spec sent by ``create``/``run`` (all optional except ``command``).
SPEC_PARAMS = {
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
    "restart": None,       # events.policy.restart_spec: docker's string or a map (normalised)
    "auto_remove": False,  # run --rm: removed once exited for good (supervisor.autoremove)
}

METHODS = frozenset({"create", "start", "run", "stop", "kill", "restart", "rm", "ps", "inspect",
                     "wait", "logs", "events", "status", "info", "shutdown", "exec"})
