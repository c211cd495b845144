"""A container's task operations, shared by the API's commands and the daemon's supervision.

Each method expects its caller to hold the container's lock (:meth:`Core.lock`), and records
before it acts where a crash could otherwise double or lose something:

* :meth:`Lifecycle.stop` appends ``container.stop`` *before* it asks the shim to stop, so no
  policy restart can follow a stop by hand, even when the daemon dies in the middle (recovery
  sends the stop again);
* :meth:`Lifecycle.new_task` starts a shim, then records ``task.create`` (with whatever
  decision led to it, in the same append); a shim the daemon started but did not record is
  ended at the next start-up, since no one was told of it;
* :meth:`Lifecycle.start` replies once ``task.start`` is durable;
* :meth:`Lifecycle.new_container` (``create``, ``run``) starts a new container's shim and
  records ``container.create`` and ``task.create`` in one append; for ``run`` the shim starts
  the task too before it reports ready (one request: no ``start`` call, and runc's ``run``
  instead of ``create`` + ``start``) and ``task.start`` goes in the same append. Such a task
  runs before its record is durable, so the shim says so (``started_by_run`` in ``state``)
  until the daemon says the record is durable: ``run`` writes the shim's instance into its
  directory (``recorded``) once that record is durable and before it replies. A daemon that
  dies in between finds at start-up a live shim the log does not know whose run no one was
  told of, and ends it (:func:`supervisor.adopt.recorded_once`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio

from events import shim_api
from events.domain import DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT, ContainerState, ErrorCode
from supervisor.core import Core, Item
from supervisor.decide import decision, stopped_for_good
from supervisor.errors import ApiError
from supervisor.links import stop_lost_task
from supervisor.projection import Container, State
from supervisor.shims import Ready, exit_data, new_instance, shim_dir

if TYPE_CHECKING:
    from supervisor.spec import Spec

__all__ = ["RECORD_GRACE", "Lifecycle", "task_create_data", "task_start_data"]

log = structlog.get_logger("supervisord.lifecycle")

CREATED = ContainerState.CREATED
RUNNING = ContainerState.RUNNING
STOPPED = ContainerState.STOPPED

#: How long ``stop`` waits for the exit to be recorded once its shim replied, and past the
#: grace time when the shim is gone and the exit comes from the pid's end: the record's
#: append (an fdatasync) and the link's wake-up, with room for a loaded machine.
RECORD_GRACE = 10.0


def task_create_data(ready: Ready, instance: str, boot_id: str) -> dict[str, Any]:
    """``task.create`` from the shim's ready line (``created_at``: the shim's clock)."""
    data: dict[str, Any] = {"pid": ready.get("task_pid"), "shim_pid": ready.get("pid"),
                            "address": ready.get("address"), "instance": instance,
                            "boot_id": boot_id}
    if isinstance(ready.get("created_at"), int):
        data["created_at"] = ready["created_at"]
    return data


def task_start_data(ready: Ready, instance: str) -> dict[str, Any] | None:
    """``task.start`` from the ready map of a shim asked to start its task too; None when
    the program could not be executed (``exec_error``: its exit comes through the link)."""
    if "exec_error" in ready:
        return None
    data: dict[str, Any] = {"pid": ready.get("task_pid"), "instance": instance}
    if isinstance(ready.get("started_at"), int):  # the shim's clock
        data["started_at"] = ready["started_at"]
    return data


class Lifecycle:
    """Stop, create, start and retire tasks (see the module's docstring)."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def container(self, cid: str) -> Container:
        c = self.core.container(cid)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no container {cid!r}; see "
                           "`supervisorctl ps -a`")
        return c

    # -- waiting -------------------------------------------------------------------------------

    async def wait_stopped(self, cid: str, instance: str | None,
                           timeout: float | None = None, *, for_good: bool = False
                           ) -> Container | None:
        """Until the projection shows this task stopped (``for_good``: and no restart will
        follow); None if the container was removed meanwhile."""
        def done(state: State) -> tuple[Container | None] | None:
            c = state.containers.get(cid)
            if c is None:
                return (None,)
            if c.state != STOPPED or (instance is not None and c.instance != instance):
                return None
            if for_good and not stopped_for_good(c):
                return None
            return (c,)

        if timeout is None:
            return (await self.core.wait_until(done))[0]
        with trio.move_on_after(timeout):
            return (await self.core.wait_until(done))[0]
        raise ApiError(ErrorCode.UNAVAILABLE, f"container {cid}: no exit was recorded in "
                       f"{timeout:g}s")

    async def _stopped(self, cid: str, instance: str | None, timeout: float) -> Container:
        c = await self.wait_stopped(cid, instance, timeout)
        if c is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"container {cid} was removed meanwhile")
        return c

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self, cid: str, timeout: float | None, reason: str) -> Container:
        """Stop by hand, durably (``reason``: ``stop``, ``rm``, ``restart``); the container
        once its exit is recorded. A back-off in progress is cancelled."""
        c = self.container(cid)
        if c.state == STOPPED and (c.stopped_by_user or stopped_for_good(c)):
            return c  # nothing runs, nothing will: no event to record
        if not c.stopped_by_user:
            data: dict[str, Any] = {"reason": reason}
            if timeout is not None:  # sent again after a crash, it is the same stop
                data["timeout"] = timeout
            await self.core.append([("container.stop", cid, data)])
            c = self.container(cid)
        instance = c.instance
        if timeout is None:
            timeout = float(c.spec.get("stop_timeout", DEFAULT_STOP_TIMEOUT))
        stop_signal = int(c.spec.get("stop_signal") or DEFAULT_STOP_SIGNAL)
        try:
            record = await self.core.shims.call(cid, "stop", timeout=timeout,
                                                signal=stop_signal)
        except ApiError as exc:
            if exc.code != ErrorCode.UNAVAILABLE:
                raise
            if c.state == STOPPED:
                return c  # no shim, and nothing runs: the stop is recorded, that is all
            # the shim is gone: its task, provably still it, is stopped as the shim would
            # have (docker's stop: the signal, then SIGKILL), and its link records the exit
            # (exit file, or the pid's end)
            if c.lost:
                await stop_lost_task(c.pid, c.lost_starttime, stop_signal, timeout)
            return await self._stopped(cid, instance, timeout + RECORD_GRACE)
        if isinstance(record, dict) and record.get("instance") == instance:
            # the same record the link is delivering (deduplicated by shim_seq): whichever
            # comes first is appended, so the reply never waits on the link
            await self.core.append_shim_event(cid, "task.exit", exit_data(record))
        return await self._stopped(cid, instance, RECORD_GRACE)

    # -- new tasks -----------------------------------------------------------------------------

    async def retire(self, cid: str) -> None:
        """Before a new task: ask the stopped task's shim to go (if it has not already), and
        record ``task.delete``."""
        c = self.container(cid)
        await self.core.shims.retire(cid, task_pid=c.pid, ended_at=c.finished)
        c = self.container(cid)
        await self.core.append([("task.delete", cid, {"exit_status": c.exit_status,
                                                      "instance": c.instance})])

    async def new_task(self, cid: str, before: Sequence[Item] = (), *,
                       autostart: bool = False, attempt: int = 0) -> str:
        """Start a new shim (a new instance) for ``cid`` and record its ``task.create``,
        behind ``before`` in the same append; the new instance. ``autostart``: the task is
        to be started (a restart), which recovery finishes if the daemon dies before
        :meth:`start` did. ``attempt``: the restarts in a row so far (a policy restart
        carries a crash loop's count on to the new shim; a start by command begins anew)."""
        c = self.container(cid)
        instance = new_instance()
        ready = await self.core.shims.spawn(cid, instance, c.spec, attempt)
        data = task_create_data(ready, instance, self.core.boot_id)
        if autostart:
            data["start"] = True
        await self.record_new_shim(cid, instance, [*before, ("task.create", cid, data)],
                                   remove=False)
        return instance

    async def new_container(self, cid: str, spec: Spec, *, start: bool) -> tuple[str, Ready]:
        """A new container ``cid`` (the caller checked that the id is free and cleared the
        way) and its shim, its task created, and with ``start`` started too: ``(instance,
        the shim's ready map)`` once ``container.create``, ``task.create`` (and
        ``task.start``, unless the program could not be executed) are durable."""
        instance = new_instance()
        ready = await self.core.shims.spawn(cid, instance, spec, start=start)
        items: list[Item] = [
            ("container.create", cid, {"spec": {**spec, "name": cid}}),
            ("task.create", cid, task_create_data(ready, instance, self.core.boot_id))]
        started = task_start_data(ready, instance) if start else None
        if started is not None:
            items.append(("task.start", cid, started))
        # not durable: the container does not exist, so neither may its shim
        await self.record_new_shim(cid, instance, items, remove=True, link=not start)
        if start:
            try:
                await self._mark_recorded(cid, instance)
            finally:
                self.core.shims.link(cid, instance)
        return instance, ready

    async def _mark_recorded(self, cid: str, instance: str) -> None:
        """Say to a shim that started its task itself that its record is durable, before
        anyone is told of the run: from then on a start-up whose log lost the record adopts
        the shim rather than ending it (:func:`supervisor.adopt.recorded_once`).

        The word is a file in its directory naming its instance (``recorded``, which its
        ``state`` reports), not an ``ack`` over its socket: a few system calls here instead
        of a connection and a round trip through the shim before every ``run``'s reply. Its
        link acknowledges the events too, once it has them. Written here, not in a thread: the
        append that just returned has shown the disk answers. If it cannot be written (a full
        disk), the ``ack`` says the same; a shim that cannot be reached either is its link's
        to account for (the record is durable either way)."""
        try:
            shim_api.write_recorded(shim_dir(self.core.root, cid), instance)
            return
        except OSError as exc:
            log.warning("could not mark a new shim's run recorded; acknowledging it instead",
                        id=cid, error=str(exc))
        try:
            await self.core.shims.call(cid, "ack", seq=shim_api.FIRST_SEQ)
        except ApiError as exc:
            log.warning("could not acknowledge a new shim's record", id=cid, error=exc.message)

    async def record_new_shim(self, cid: str, instance: str, items: Sequence[Item], *,
                              remove: bool, link: bool = True) -> None:
        """Append ``items`` (holding the new shim's ``task.create``), then (``link``) link the
        shim. Not durable: no one may be told of its task, so the shim is ended (``remove``:
        with its directory, for a container whose ``container.create`` was in ``items``)."""
        try:
            await self.core.append(list(items))
        except BaseException:
            with trio.CancelScope(shield=True):
                shims = self.core.shims
                what = await (shims.end(cid) if remove else shims.end_task(cid))
                log.warning("task not recorded; shim ended", id=cid, action=what)
            raise
        if link:
            self.core.shims.link(cid, instance)

    async def start(self, cid: str, *, by_user: bool = True) -> dict[str, Any]:
        """Start a created task; ``{"id", "pid"}`` once ``task.start`` is durable.

        When the command cannot be executed the caller gets ``exec_failed`` once the exit
        (127) is durable. Asked by a user (``start``, ``run``, ``restart``), that settles the
        container, as docker does (a typo is not a crash loop): the shim does not restart it,
        and the daemon records that as ``container.giveup``. A restart the daemon carries out
        (``by_user`` false) leaves the exit to the policy instead."""
        c = self.container(cid)
        if c.state != CREATED:
            raise ApiError(ErrorCode.CONFLICT, f"container {cid} is {c.state}, not created")
        instance = c.instance
        try:
            result = await self.core.shims.call(cid, "start")
        except ApiError as exc:
            if exc.code == ErrorCode.EXEC_FAILED:
                await self.start_failed(cid, instance, exc.message, by_user=by_user)
            raise
        pid = result.get("pid")

        def still_created(state: State) -> bool:
            c2 = state.containers.get(cid)
            return c2 is not None and c2.instance == instance and c2.state == CREATED

        data: dict[str, Any] = {"pid": pid, "instance": instance}
        if isinstance(result.get("started_at"), int):  # the shim's clock, when it started it
            data["started_at"] = result["started_at"]
        try:
            await self.core.guarded_append(cid, [("task.start", cid, data)], still_created)
        except ApiError as exc:
            if exc.code != ErrorCode.NO_SPACE:
                raise
            # The task runs: undoing it would need an exit record, which cannot be written
            # either. Tell the truth: its shim keeps the start (and any exit) in its outbox
            # and delivers them once the log can be written again.
            raise ApiError(ErrorCode.NO_SPACE, _started_unrecorded(cid, pid, exc.message)
                           ) from None
        return {"id": cid, "pid": pid}

    async def start_failed(self, cid: str, instance: str | None, why: str, *,
                           by_user: bool = True) -> None:
        """The task's command could not be executed (its shim recorded the exit, 127, and
        the link delivers it): return once that exit is durable. Asked by a user, the
        container is settled as docker does (see :meth:`start`)."""
        with trio.move_on_after(5):
            await self.wait_stopped(cid, instance)
        if by_user:
            await self._unstartable(cid, instance, why)

    async def _unstartable(self, cid: str, instance: str | None, why: str) -> None:
        c = self.core.container(cid)
        if (c is None or c.state != STOPPED or c.instance != instance or c.gave_up
                or c.stopped_by_user or not decision(c).restart):
            return  # nothing the policy would have restarted
        await self.core.append([("container.giveup", cid, {
            "attempts": c.attempt, "exit_status": c.exit_status, "by": "daemon",
            "reason": f"the command could not be executed ({why}): no restart, the caller "
                      "has the error"})])


def _started_unrecorded(cid: str, pid: object, why: str) -> str:
    """``start``'s ``no_space`` when the task did start: what happened, and what comes next."""
    reason = why.split(";", 1)[0]  # the log's own "nothing was changed" is not true here
    return (f"container {cid} started (pid {pid}) but {reason}: its start is not recorded "
            "yet (`supervisorctl ps` shows it created); its shim keeps the start and any exit "
            "and they are recorded once disk space is freed under the root")
