"""Carrying out a program file: ``apply``, and Supervisor's reread, update, add and remove.

The whole file is checked before anything changes (all or nothing): every process's spec is
validated as ``create`` would, and an id the file wants that a container made by ``run``
already has refuses the whole apply. Then, one apply at a time (a lock), in Supervisor's
order: removals (``--prune``) in reverse priority order, replacements (stop, remove, create),
creations, and finally the starts of ``autostart`` processes in priority order.

Every change goes through the daemon's own commands (``create``, ``start``, ``stop``, ``rm``),
so the desired state is durable the way every container is (``container.create`` carries the
program's labels and digest) and a second apply of the same file, finding every digest equal,
calls nothing and appends nothing. An apply cut short (the daemon SIGKILLed) is finished by
applying again: what was created is kept, what was not is created, and an ``autostart``
process that was created but never started is started.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events.domain import ErrorCode
from supervisor import program_files
from supervisor import programs as P
from supervisor import sv_processes as S
from supervisor.errors import ApiError
from supervisor.spec import validate_spec
from supervisor.sv_xmlrpc import Fault

if TYPE_CHECKING:
    from supervisor.compat import Compat

__all__ = ["Applier"]

log = structlog.get_logger("supervisord.apply")


def _never_started(c: Mapping[str, Any]) -> bool:
    return c.get("state") == "created" and not c.get("restarts") and c.get("started") is None


def process_of(c: Mapping[str, Any]) -> P.Process:
    """A program container's :class:`~supervisor.programs.Process` back from its labels."""
    def number(key: str, default: int) -> int:
        try:
            return int(P.label(c, key) or default)
        except ValueError:
            return default

    labels = dict(c["spec"].get("labels") or {})
    user_labels = {k: v for k, v in labels.items() if not k.startswith(P.LABEL_PREFIX)}
    spec = {k: v for k, v in c["spec"].items() if k not in ("name", "labels")}
    if user_labels:
        spec["labels"] = user_labels
    return P.Process(
        name=c["id"], program=P.label(c, P.PROGRAM) or c["id"],
        group=P.label(c, P.GROUP) or c["id"], spec=spec,
        process_num=number(P.PROCESS_NUM, 0), numprocs=number(P.NUMPROCS, 1),
        priority=number(P.PRIORITY, P.DEFAULT_PRIORITY),
        group_priority=number(P.GROUP_PRIORITY, P.DEFAULT_PRIORITY),
        autostart=P.label(c, P.AUTOSTART, "true") == "true", startsecs=S.startsecs(c),
        redirect_stderr=P.label(c, P.REDIRECT_STDERR) == "true",
        stop_as_group=P.label(c, P.STOP_AS_GROUP) == "true",
        kill_as_group=P.label(c, P.KILL_AS_GROUP) == "true")


class Applier:
    def __init__(self, compat: Compat) -> None:
        self.compat = compat
        self.lock = trio.Lock()
        #: the configuration file as last read (``--config`` at start, ``reloadConfig``)
        self.loaded: P.Desired | None = None

    @property
    def _containers(self) -> dict[str, Mapping[str, Any]]:
        return dict(self.compat.core.state.containers)

    async def _call(self, method: str, **params: Any) -> Any:
        return await self.compat.commands.calls[method](params)

    # -- the API methods ---------------------------------------------------------------------

    async def api_apply(self, params: dict[str, Any]) -> dict[str, Any]:
        """``apply {programs, source, prune, dry_run}``: programs as parsed by the client."""
        raw = params.get("programs")
        if not isinstance(raw, list):
            raise ApiError(ErrorCode.INVALID, "programs must be a list (see supervisor.programs)")
        processes = []
        for item in raw:
            try:
                processes.append(P.from_wire(item))
            except ValueError as exc:
                raise ApiError(ErrorCode.INVALID, str(exc)) from None
        source = params.get("source")
        if not isinstance(source, str) or not source:
            raise ApiError(ErrorCode.INVALID, "source must be the path of the applied file")
        return await self.apply(processes, source, prune=bool(params.get("prune")),
                                dry_run=bool(params.get("dry_run")))

    async def api_update(self, params: dict[str, Any]) -> dict[str, Any]:
        """``update {dry_run}``: read the daemon's ``--config`` again and apply it, pruning
        (Supervisor's ``update``); with ``dry_run`` it is Supervisor's ``reread``."""
        desired = await self.read_config()
        result = await self.apply(desired.processes, desired.source, prune=True,
                                  dry_run=bool(params.get("dry_run")))
        result["notes"] = desired.notes
        return result

    async def api_sources(self, params: dict[str, Any]) -> dict[str, Any]:
        sources = sorted({P.label(c, P.SOURCE) for c in self._containers.values()
                          if P.is_program(c)} - {""})
        config = self.compat.config_path
        return {"config": config, "sources": sources}

    # -- reading the configuration -----------------------------------------------------------

    async def read_config(self) -> P.Desired:
        path = self.compat.config_path
        if path is None:
            raise ApiError(ErrorCode.NOT_FOUND, "supervisord was started without --config FILE: "
                           "apply a file with `supervisorctl apply -f FILE`")
        try:
            desired = await trio.to_thread.run_sync(program_files.load, path)
        except P.ConfigError as exc:
            raise ApiError(ErrorCode.INVALID, str(exc)) from None
        self.loaded = desired
        return desired

    async def reread(self) -> tuple[list[str], list[str], list[str]]:
        """Supervisor's ``reloadConfig``: read the file again (keep it for ``add``), compare."""
        desired = await self.read_config()
        containers = self._containers
        plan = P.plan(desired.processes, containers, prune=True)
        return plan.groups(containers, desired.processes)

    async def config_info(self) -> list[dict[str, Any]]:
        containers = self._containers
        infos: dict[str, dict[str, Any]] = {}
        if self.loaded is not None:
            for p in self.loaded.processes:
                infos[p.name] = S.config_info(p, p.name in containers)
        for cid, c in containers.items():
            if cid not in infos:
                p = process_of(c) if P.is_program(c) else P.Process(
                    name=cid, program=cid, group=cid, spec={
                        k: v for k, v in c["spec"].items() if k not in ("name", "labels")},
                    startsecs=0.0)
                infos[cid] = S.config_info(p, True)
        return sorted(infos.values(), key=lambda i: i["name"])

    async def add_group(self, name: object) -> None:
        """Supervisor's ``addProcessGroup``: create (and autostart) a group of the file."""
        loaded = self.loaded
        members = [p for p in (loaded.processes if loaded else []) if p.group == name]
        if not members or loaded is None:
            raise Fault("BAD_NAME", str(name))
        containers = self._containers
        if any(p.name in containers for p in members):
            raise Fault("ALREADY_ADDED", str(name))
        async with self.lock:
            failed = await self._create_and_start(members, loaded.source)
        if failed:
            log.warning("addProcessGroup: some processes did not start", group=name,
                        failed=failed)

    async def remove(self, ids: Sequence[str]) -> None:
        async with self.lock:
            for cid in ids:
                await self._remove(cid)

    # -- apply -------------------------------------------------------------------------------

    def _check(self, processes: Sequence[P.Process], plan: P.Plan, source: str) -> None:
        errors = [f"{cid}: a container made by `run` has this id; remove it "
                  "(`supervisorctl rm`) or rename the program" for cid in plan.conflicts]
        for p in processes:
            try:
                validate_spec(p.container_spec(source))
            except ApiError as exc:
                where = f"{p.where}: " if p.where else ""
                errors.append(f"{where}program {p.program} ({p.name}): {exc.message}")
        if errors:
            raise ApiError(ErrorCode.INVALID, "nothing was changed:\n  " + "\n  ".join(errors))

    async def apply(self, processes: Sequence[P.Process], source: str, *, prune: bool,
                    dry_run: bool) -> dict[str, Any]:
        async with self.lock:
            containers = self._containers

            def normalise(spec: dict[str, Any]) -> dict[str, Any]:
                try:
                    return dict(validate_spec(spec))
                except ApiError:
                    return spec

            plan = P.plan(processes, containers, prune, normalise)
            self._check(processes, plan, source)
            wanted = {p.name: p for p in processes}
            pending = [wanted[cid] for cid in plan.keep
                       if wanted[cid].autostart and _never_started(containers[cid])]
            result = plan.to_wire()
            result["lines"] += [f"{p.name}: start (created, never started)" for p in pending]
            result["start"] = [p.name for p in pending]
            result["groups"] = list(plan.groups(containers, processes))
            result["failed"] = []
            if dry_run:
                return result
            for cid in plan.remove:
                await self._remove(cid)
            for p, _ in plan.replace:
                await self._remove(p.name)
            fresh = [p for p, _ in plan.replace] + plan.create
            result["failed"] = await self._create_and_start(fresh, source, also=pending)
            log.info("applied", source=source, created=len(plan.create),
                     replaced=len(plan.replace), removed=len(plan.remove),
                     failed=len(result["failed"]))
            return result

    async def _create_and_start(self, fresh: Sequence[P.Process], source: str,
                                also: Sequence[P.Process] = ()) -> list[dict[str, str]]:
        failed: list[dict[str, str]] = []
        created: list[P.Process] = []
        for p in fresh:
            try:
                await self._call("create", spec=p.container_spec(source))
            except ApiError as exc:
                failed.append({"id": p.name, "error": exc.message})
            else:
                created.append(p)
        order = sorted([*created, *also], key=lambda p: (p.group_priority, p.priority, p.name))
        for p in order:
            if not p.autostart:
                continue
            try:
                await self._call("start", id=p.name)
            except ApiError as exc:
                failed.append({"id": p.name, "error": exc.message})
        return failed

    async def _remove(self, cid: str) -> None:
        c = self.compat.core.state.containers.get(cid)
        if c is None:
            return
        if c["state"] != "stopped":
            self.compat.stopped_by_hand.add(cid)
            try:
                await self._call("stop", id=cid)
            except ApiError as exc:
                log.warning("stop before removal failed; removing by force", id=cid,
                            error=exc.message)
        await self._call("rm", id=cid, force=True)
        self.compat.stopped_by_hand.discard(cid)
