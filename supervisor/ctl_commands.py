"""The one-shot commands of supervisorctl: one request (or one per id), one answer shown.

Each is ``cmd_NAME(target, args) -> exit code``; :data:`COMMANDS` maps the names of
:data:`supervisor.ctl_grammar.GRAMMAR` to them (those of :mod:`supervisor.ctl_follow`, which
outlive a connection, are imported only when they run).
"""

from __future__ import annotations

from supervisor.ctl import (
    CALL_TIMEOUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CtlError,
    Target,
    flush,
    out,
    remote_message,
    warn,
)
from supervisor.ctl_grammar import (
    GRAMMAR,
    SHELL_ONLY,
    build_parser,
    command_parser,
    usage_error,
)
from supervisor.ctl_svgrammar import VERBS

TYPE_CHECKING = False  # not typing's: every one-shot command would pay ~3 ms to import typing
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

    from events.rpc import BlockingConnection

__all__ = ["COMMANDS", "OFFLINE", "PASSES_STATUS"]

def _spec(args: argparse.Namespace) -> dict[str, Any]:
    if args.runtime == "process" and (args.rootfs or args.bundle):
        raise usage_error(args, f"--{'rootfs' if args.rootfs else 'bundle'} needs an OCI "
                          "runtime (--runtime runc or crun): the process runtime would run the "
                          "command on the host")
    env: dict[str, str] = {}
    user: dict[str, int] | None = None
    if args.env_file or args.user:
        from supervisor import ctl_values

        try:
            for path in args.env_file:
                env.update(ctl_values.read_env_file(path))
            if args.user:
                user = ctl_values.resolve_user(args.user, args.runtime, args.rootfs, args.bundle)
        except ValueError as exc:
            raise usage_error(args, str(exc)) from None
    env.update(args.env)
    spec: dict[str, Any] = {"command": list(args.command), "runtime": args.runtime, "env": env}
    for key in ("name", "cwd", "rootfs", "bundle", "memory", "cpus", "pids_limit",
                "stop_signal", "stop_timeout", "shim_group"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    if user is not None:
        spec["user"] = user
    if args.label:
        spec["labels"] = dict(args.label)
    if args.init:
        spec["init"] = True
    if args.rm:
        spec["auto_remove"] = True
    spec.update(_supervision_spec(args))
    return spec


#: The supervision flags of run/create and the spec fields they set (design, section 8).
_RESTART_FLAGS = {"restart_delay": "delay", "restart_max_delay": "max_delay",
                  "restart_reset": "reset"}
_HEALTH_FLAGS = {"health_interval": "interval", "health_timeout": "timeout",
                 "health_retries": "retries", "health_start_period": "start_period"}


def _supervision_spec(args: argparse.Namespace) -> dict[str, Any]:
    """``restart``/``health`` of the spec from the flags; a usage error names the flag."""
    if (args.restart is None and args.health_cmd is None and not args.health_restart
            and all(getattr(args, flag) is None for flag in (*_RESTART_FLAGS, *_HEALTH_FLAGS))):
        return {}  # (and `run` without them does not import events.policy)
    from events import policy

    out: dict[str, Any] = {}
    restart: dict[str, Any] = {}
    if args.restart is not None:
        restart["policy"], restart["max_retries"] = args.restart
    restart.update({key: getattr(args, flag) for flag, key in _RESTART_FLAGS.items()
                    if getattr(args, flag) is not None})
    given = [flag for flag in (*_HEALTH_FLAGS, "health_restart")
             if getattr(args, flag) not in (None, False)]
    if given and args.health_cmd is None:
        raise usage_error(args, f"--{given[0].replace('_', '-')} needs --health-cmd")
    health: dict[str, Any] = {key: getattr(args, flag) for flag, key in _HEALTH_FLAGS.items()
                              if getattr(args, flag) is not None}
    if args.health_restart:
        health["restart"] = True
    if args.health_cmd is not None:
        health["cmd"] = args.health_cmd
    names = {f"restart.{key}": f"--{flag.replace('_', '-')}"
             for flag, key in _RESTART_FLAGS.items()}
    names.update({f"health.{key}": f"--{flag.replace('_', '-')}"
                  for flag, key in _HEALTH_FLAGS.items()})
    names.update({"health.cmd": "--health-cmd", "restart.max_retries": "--restart"})
    try:
        checked = policy.restart_spec(restart or None)
        policy.health_spec(health or None)
    except ValueError as exc:
        message = str(exc)
        for field, flag in sorted(names.items(), key=lambda kv: -len(kv[0])):
            message = message.replace(field, flag)
        raise usage_error(args, message) from None
    if health.get("restart") and checked["policy"] == "no":
        raise usage_error(args, "--health-restart restarts through the restart policy: give "
                          "one with --restart (e.g. --restart on-failure)")
    if args.rm and checked["policy"] != "no":
        raise usage_error(args, "--rm cannot be combined with --restart (as docker's)")
    if restart:
        out["restart"] = restart
    if health:
        out["health"] = health
    return out


def cmd_run(t: Target, args: argparse.Namespace) -> int:
    result = t.call(args.cmd, spec=_spec(args))
    out(f"{result['id']}\n")
    return EXIT_OK


def _each(ids: Sequence[str], what: str, action: Callable[[str], Any]) -> int:
    """Apply ``action`` to every id like docker: report each failure, go on, exit 1 if any."""
    from events import wire

    status = EXIT_OK
    for cid in ids:
        try:
            action(cid)
        except wire.RemoteError as exc:
            warn(f"supervisorctl {remote_message(f'{what} {cid}', exc)}")
            status = EXIT_FAILED
        else:
            out(f"{cid}\n")
            flush()
    return status


def _ids(c: BlockingConnection, args: argparse.Namespace,
         chosen: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The ids named, or with ``--all`` those of every container ``chosen`` (a ps row) keeps."""
    if not args.all:
        return list(args.ids)
    return [r["id"] for r in c.call("ps", all=True) or [] if chosen(r)]


def _check_ids_or_all(args: argparse.Namespace) -> None:
    if args.all and args.ids:
        raise usage_error(args, "give IDs or --all, not both")
    if not args.all and not args.ids:
        raise usage_error(args, "the following arguments are required: ID (or --all)")


def cmd_kill(t: Target, args: argparse.Namespace) -> int:
    with t.connect() as c:
        return _each(args.ids, "kill", lambda cid: c.call("kill", id=cid, signal=args.signal))


def cmd_rm(t: Target, args: argparse.Namespace) -> int:
    _check_ids_or_all(args)
    with t.connect(call_timeout=None if args.force else CALL_TIMEOUT) as c:
        ids = _ids(c, args, lambda row: args.force or row.get("state") == "stopped")
        return _each(ids, "rm", lambda cid: c.call("rm", id=cid, force=args.force))


def cmd_ps(t: Target, args: argparse.Namespace) -> int:
    import time

    from supervisor import ctl_render

    keep = None
    show_all = args.all
    if args.filter:
        from supervisor import ctl_values

        try:
            keep, states = ctl_values.ps_filter(args.filter)
        except ValueError as exc:
            raise usage_error(args, str(exc)) from None
        show_all = show_all or states
    rows = t.call("ps", all=show_all)
    rows = [r for r in rows or [] if keep is None or keep(r)]
    if args.quiet:
        out("".join(f"{r['id']}\n" for r in rows))
    elif args.json:
        out(ctl_render.ps_json_lines(rows))
    else:
        out(ctl_render.ps_table(rows, time.time_ns(), trunc=not args.no_trunc))
    return EXIT_OK


def cmd_inspect(t: Target, args: argparse.Namespace) -> int:
    from supervisor import ctl_render

    with t.connect() as c:
        obj = c.call("inspect", id=args.id)
    out(ctl_render.inspect_json(obj) + "\n")
    return EXIT_OK


def _print_map(obj: Any, as_json: bool) -> None:
    from supervisor import ctl_render

    if as_json or not isinstance(obj, dict):
        out(ctl_render.dumps(obj) + "\n")
        return
    width = max((len(str(k)) for k in obj), default=0)
    for key, value in obj.items():
        if isinstance(value, dict | list):
            shown = ctl_render.dumps(value)
        elif isinstance(value, float):
            shown = f"{value:.3f}"
        else:
            shown = value
        out(f"{str(key) + ':':<{width + 1}} {shown}\n")


#: Seconds ``shutdown`` waits for the daemon's process to be gone before it says so.
SHUTDOWN_WAIT = 15.0


def cmd_shutdown(t: Target, args: argparse.Namespace) -> int:
    """Ask the daemon to stop, then wait until it has: scripts may restart it right after."""
    import time

    from events import procfs

    with t.connect() as c:
        pid = c.peer.get("pid")
        c.call("shutdown")
        deadline = time.monotonic() + SHUTDOWN_WAIT
        c.settimeout(SHUTDOWN_WAIT)
        try:  # the daemon closes our connection as it exits
            while time.monotonic() < deadline:
                c.recv()
        except (OSError, ValueError):
            pass
    while isinstance(pid, int) and time.monotonic() < deadline:
        if not procfs.is_running(pid):
            break
        time.sleep(0.02)
    else:
        if isinstance(pid, int):
            warn(f"supervisorctl shutdown: supervisord (pid {pid}) is still running after "
                 f"{SHUTDOWN_WAIT:g} s")
            return EXIT_FAILED
    out(f"supervisord{f' (pid {pid})' if pid else ''} stopped; containers keep running\n")
    return EXIT_OK


def cmd_help(t: Target | None, args: argparse.Namespace, shell: bool = False) -> int:
    """``help [COMMAND]``, in the shell and outside it."""
    topic = getattr(args, "topic", None)
    if topic in GRAMMAR and not (shell and topic == "completion"):
        command_parser(topic, shell).print_help()
    elif shell and topic in SHELL_ONLY:
        out(f"{topic}: {SHELL_ONLY[topic]}\n")
    elif topic:
        raise CtlError(f"help: no command {topic!r}; `{'' if shell else 'supervisorctl '}help` "
                       "lists them", EXIT_USAGE)
    else:
        build_parser(prog="" if shell else "supervisorctl", shell=shell).print_help()
    return EXIT_OK


def cmd_completion(t: Target | None, args: argparse.Namespace) -> int:
    from supervisor.ctl_completion import bash_script

    out(bash_script())
    return EXIT_OK


def _follow(name: str) -> Callable[[Target, argparse.Namespace], int]:
    """A command of :mod:`supervisor.ctl_follow`, imported only when it runs."""

    def run(t: Target, args: argparse.Namespace) -> int:
        from supervisor import ctl_follow

        return int(getattr(ctl_follow, name)(t, args))

    return run


COMMANDS: dict[str, Callable[[Target, argparse.Namespace], int]] = {
    "run": cmd_run, "create": cmd_run, "ps": cmd_ps, "inspect": cmd_inspect,
    "kill": cmd_kill, "rm": cmd_rm,
    "wait": _follow("cmd_wait"), "logs": _follow("cmd_logs"), "exec": _follow("cmd_exec"),
    "events": _follow("cmd_events"), "shutdown": cmd_shutdown, "help": cmd_help,
    "completion": cmd_completion,
}


def _supervisor_verb(name: str) -> Callable[[Target, argparse.Namespace], int]:
    """A verb of :mod:`supervisor.ctl_supervisor`, imported only when one runs."""

    def run(t: Target, args: argparse.Namespace) -> int:
        from supervisor import ctl_supervisor

        return ctl_supervisor.COMMANDS[name](t, args)

    return run


# Supervisor's verbs (status, start, stop, restart, ...): where a verb exists in both,
# Supervisor's meaning wins (DESIGN.md).
COMMANDS.update({verb: _supervisor_verb(verb) for verb in VERBS})

#: Commands that need no daemon.
OFFLINE = {"help", "completion"}
#: Commands that pass a process's status on as their own: our failures exit 125, not 1.
PASSES_STATUS = {"wait", "exec"}
