"""The daemon's link to one shim: what the shim reports becomes durable events.

One :class:`ShimLink` task per live shim holds a single connection with an ``events`` stream:
each event the shim reports is appended (deduplicated by ``(instance, shim_seq)``) and only
then acknowledged on the same connection, so a crash anywhere in between re-delivers it and the
projection's memory of shim seqs makes the second delivery a no-op.

When the connection ends without our asking, the shim either exited by itself (its container
stopped for good and every event acknowledged: normal) or was lost (SIGKILLed, or crashed).
The shim's exit file decides what is known: if it holds this instance's exit, that exit is
appended; otherwise, for a task that may still run, the daemon appends ``shim.lost`` and
watches the container's pid through a pidfd so that its end is still recorded (as
``task.exit`` with ``exit_status`` None and a ``reason``). Then the daemon is told the shim is
gone: where no shim exists, the daemon is the one that applies the restart policy.

A link knows the daemon only through :class:`LinkHost`: the container's record, the append of
a shim's event, and the news that the link ended or its shim is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog
import trio

from events import wire
from events.domain import ContainerState
from events.procfs import group_members, is_running, starttime, ticks_at
from supervisor import adopt
from supervisor.channel import Channel, Closed, connect
from supervisor.shims import exit_data, exit_of_task, read_address, read_exit_record

if TYPE_CHECKING:
    from supervisor.projection import Container

__all__ = ["LinkHost", "ShimLink", "end_leftovers", "stop_lost_task", "watch_lost_task"]

log = structlog.get_logger("supervisord.links")

#: A bug met by a link: how long it waits before it tries again.
RETRY_AFTER_BUG = 1.0


class LinkHost(Protocol):
    """What a link needs of the daemon."""

    @property
    def root(self) -> Path: ...

    def container(self, cid: str) -> Container | None:
        """The container's current record (None once it was removed)."""

    async def record_shim_event(self, cid: str, etype: str, data: dict[str, Any]) -> object:
        """Append a shim's event exactly once (waiting out a full disk)."""

    def link_ended(self, link: ShimLink) -> None:
        """The link's task is over."""

    def shim_gone(self, cid: str, instance: str) -> None:
        """The shim ``instance`` is gone and what is known of its task's end is recorded
        (the host acts in its own tasks: this link is about to end)."""

    @property
    def history_may_be_lost(self) -> bool:
        """Whether a shim the log does not know may be one whose record was lost."""

    async def adopt_shim(self, cid: str, state: dict[str, Any], reason: str) -> bool:
        """Record the shim whose ``state`` this is as the container's (``container.adopt``)."""


class ShimLink:
    """The daemon's connection to one shim (one task in the daemon's nursery).

    ``caught_up`` is set once everything the shim had not had acknowledged when we connected
    is durable (or once the shim turned out to be dead and that is recorded): recovery shows a
    container as ``unknown`` until then. ``closing`` says the daemon asked the shim to go
    (``delete``): the end of its connection is then expected, not a loss.
    """

    def __init__(self, host: LinkHost, cid: str, instance: str) -> None:
        self.host = host
        self.cid = cid
        self.instance = instance
        self.closing = False
        self.caught_up = trio.Event()
        self.cancel_scope = trio.CancelScope()
        self.gone = trio.Event()
        #: the shim that answered is another instance than this link's (see _consume)
        self.stranger = False
        #: the shim's ``state`` reply when this link connected (reconciliation compares it
        #: with the record once the backlog is replayed: :func:`adopt.adopt_if_history_lost`)
        self.first_state: dict[str, Any] | None = None
        #: every event up to ``first_state``'s seq came from the shim and went through the
        #: record: only then does that answer say anything about the log (``caught_up`` is
        #: also set when the shim died half-way, its answer stale, its last events unsent)
        self.replayed = False

    def close(self) -> None:
        """Stop consuming: the daemon retires this shim (its end is expected)."""
        self.closing = True
        self.cancel_scope.cancel()

    def _current(self) -> Container | None:
        """The container, while this link's shim still runs its task (else None)."""
        c = self.host.container(self.cid)
        return c if c is not None and c.instance == self.instance else None

    async def run(self) -> None:
        """Consume the shim's events until it goes away; then record what is known.

        A bug met on the way is logged and the link retried a second later: it must neither
        take the daemon down nor leave the shim's events unconsumed.
        """
        try:
            with self.cancel_scope:
                while True:
                    try:
                        await self._run_once()
                        return
                    except Exception as exc:
                        log.exception("shim link failed; retrying", id=self.cid,
                                      error=repr(exc))
                        await trio.sleep(RETRY_AFTER_BUG)
                        if self.closing or self._current() is None:
                            return
        finally:
            self.host.link_ended(self)
            self.caught_up.set()
            self.gone.set()

    async def _run_once(self) -> None:
        chan: Channel | None = None
        address = read_address(self.host.root, self.cid)
        try:
            if address is None:
                raise OSError("no address file")
            # ``state`` first: its seq/acked tell how much backlog ``events`` replays
            chan = await connect(address, "supervisor", then=[
                ("state", {}, False), ("events", {}, True)])
        except (OSError, Closed, trio.TooSlowError, wire.ProtocolError) as exc:
            log.info("shim unreachable", id=self.cid, error=str(exc))
        if chan is not None:
            try:
                await self._consume(chan)
            finally:
                await chan.aclose()
        if not self.closing:
            await self._shim_gone()

    async def _consume(self, chan: Channel) -> None:
        """Requests 1 (``state``) and 2 (``events``) were sent with the hello."""
        target: int | None = None
        acking = True  # until an ack cannot be sent: the shim died (what it sent is still read)
        try:
            while True:
                message = await chan.recv()
                rid = message.get("id")
                if rid == 1:
                    result = message.get("result") or {}
                    self.first_state = result if isinstance(result, dict) else None
                    if (result.get("instance", self.instance) != self.instance
                            and not await self._adopt_stranger(result)):
                        return
                    seq, acked = result.get("seq", 0), result.get("acked", 0)
                    target = seq if isinstance(seq, int) and seq > (acked or 0) else 0
                    if target == 0:
                        self.replayed = True
                        self.caught_up.set()
                    continue
                if rid != 2:
                    continue  # replies to our acks
                if "error" in message or message.get("end"):
                    return
                item = message.get("item")
                if not isinstance(item, dict):
                    continue
                seq = item.get("seq")
                etype = item.get("type")
                if not isinstance(seq, int) or not isinstance(etype, str):
                    log.warning("malformed shim event", id=self.cid, item=item)
                    continue
                data = dict(item.get("data") or {})
                data["shim_seq"] = seq
                data["instance"] = self.instance
                await self.host.record_shim_event(self.cid, etype, data)
                if acking:
                    try:
                        await chan.send_bytes(chan.conv.request("ack", {"seq": seq}))
                    except Closed:
                        # the shim died: the events it sent before are still ours to record
                        # (read to the end of the stream); unacknowledged, they died with it
                        acking = False
                if target is not None and seq >= target:
                    self.replayed = True
                    self.caught_up.set()
        except (Closed, wire.ProtocolError):
            return

    async def _adopt_stranger(self, state: dict[str, Any]) -> bool:
        """Another shim than ours answers in the container's directory. One no record ever
        named is a start the daemon died in before recording it: not ours, and ours is gone
        (False: the link ends and the stranger is ended). One that was recorded once
        (:func:`supervisor.adopt.recorded_once`), so the log lost that: it is adopted, and
        this link goes on as its link."""
        log.warning("another shim answers in the container's directory", id=self.cid,
                    instance=state.get("instance"), expected=self.instance)
        if adopt.should_adopt(state, self.host.history_may_be_lost) and \
                await self.host.adopt_shim(self.cid, state, "another shim than the log's "
                                           "runs the container: the log lost its record"):
            self.instance = state["instance"]
            return True
        self.stranger = True
        return False

    async def _shim_gone(self) -> None:
        """The connection ended (or never came) without a delete: record what is known of
        the task's end (exit file, or shim.lost and the pid's end), then tell the host."""
        host = self.host
        cid = self.cid
        if self._current() is None:
            return
        c = self._current()
        # only the exit of the task the log knows: a later task (restarted with its events
        # undelivered) is found by supervision
        record = exit_of_task(host.root, cid, self.instance, c.pid) if c is not None else None
        if record:
            await host.record_shim_event(cid, "task.exit", exit_data(record))
        c = self._current()
        if c is None:
            return
        if c.state == ContainerState.STOPPED:  # nothing runs (and the shim may have exited
            self.caught_up.set()               # by itself: stopped for good, all acked)
            if c.pid:  # or died before it ended what the task left in its group
                await trio.to_thread.run_sync(end_leftovers, c.pid, c.finished,
                                              c.lost_starttime)
            host.shim_gone(cid, self.instance)
            return
        if c.state == ContainerState.RESTARTING:  # lost during its back-off: no task runs
            if not c.lost:
                log.warning("shim lost during a back-off", id=cid)
                await host.record_shim_event(cid, "shim.lost", {
                    "reason": "the shim's connection closed during its back-off",
                    "instance": self.instance, "pid": None, "task_alive": False,
                    "task_starttime": None, "state": c.state})
            self.caught_up.set()
            host.shim_gone(cid, self.instance)
            return
        pid = c.pid
        started = c.lost_starttime
        seen_alive = None
        if not c.lost:
            alive = is_running(pid)
            started = starttime(pid) if alive else None
            seen_alive = time.time_ns() if alive else None
            log.warning("shim lost", id=cid, pid=pid, task_alive=alive)
            await host.record_shim_event(cid, "shim.lost", {
                "reason": "the shim's connection closed and it left no exit file",
                "instance": self.instance, "pid": pid, "task_alive": alive,
                "task_starttime": started, "state": c.state})
        self.caught_up.set()
        await watch_lost_task(host, cid, self.instance, pid, started, seen_alive)
        host.shim_gone(cid, self.instance)


async def watch_lost_task(host: LinkHost, cid: str, instance: str, pid: int | None,
                          started: int | None = None, seen_alive: int | None = None) -> None:
    """The shim is gone but its container may not be: record the container's end when it
    comes, via a pidfd (no polling, no race with pid reuse once the pidfd is open).

    ``started`` (the task's start time when the loss was recorded) guards against a pid that
    was reused while the daemon was down: another process with that pid is not our task.
    ``seen_alive`` (wall-clock ns) is when the task was last seen running, if this daemon saw
    it: a task that ended before the watch began ended after that, which is what
    :func:`end_leftovers` needs to end what it left in its group.
    """
    fd: int | None = None
    if pid and is_running(pid):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
        if fd is not None and started is not None and starttime(pid) != started:
            log.info("the pid of a lost task was reused: the task is gone", id=cid, pid=pid)
            os.close(fd)
            fd = None
    ended: int | None = None  # when it ended, if seen: what of its group started before is its
    try:
        if fd is not None:
            log.info("watching the task of a lost shim", id=cid, pid=pid)
            await trio.lowlevel.wait_readable(fd)
            ended = time.time_ns()
    finally:
        if fd is not None:
            os.close(fd)
    if fd is None and ended is None:  # gone before the watch: it ended after it was seen
        ended = seen_alive
    if pid:  # what a shim does at its task's end: nothing the run left behind lives on
        await trio.to_thread.run_sync(end_leftovers, pid, ended, started)
    # the exit file may have appeared meanwhile (the shim died after writing it): prefer it,
    # when it is this task's (a shim that ran several tasks keeps the latest exit: an earlier
    # task's would be a duplicate, and this one's end would go unrecorded)
    record = read_exit_record(host.root, cid)
    if record and record.get("instance") == instance and record.get("pid") == pid:
        await host.record_shim_event(cid, "task.exit", exit_data(record))
        return
    await host.record_shim_event(cid, "task.exit", {
        "pid": pid, "exit_status": None, "signal": None, "exited_at": time.time_ns(),
        "instance": instance, "reason": "shim lost: the task ended, its status is unknown"})


def end_leftovers(pid: int, ended_at: int | None, task_started: int | None = None
                  ) -> list[int]:
    """SIGKILL what an ended task left in its process group (the process runtime makes the
    task its group's leader); returns the members killed. Only when it is provably the task's
    group: the leader is no live process, and a member started before the task ended
    (``ended_at``, wall-clock ns). While that member lives the kernel gives the group's id to no
    new process, so every member is the task's own; a group whose members all started later
    may belong to a process that was given the task's pid since (pids are reused).

    Or the task itself is still there unreaped (a zombie its new parent, a subreaper, has not
    reaped yet: the start time, *task_started*, proves it is the task): its pid is still
    taken, so the group is the task's whenever its members started, within the tick of its
    end included, which the time bound cannot prove."""
    if is_running(pid):
        return []
    members = group_members(pid)
    if not members:
        return []
    leader = starttime(pid)
    if task_started is None or leader != task_started:
        if not ended_at:
            return []
        before = ticks_at(ended_at) - 1  # a tick's margin: /proc/uptime has that precision
        if not any(started < before for _, started in members):
            return []
    log.info("ending what a task left behind its shim", pgid=pid,
             pids=[member for member, _ in members])
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return [member for member, _ in members]


async def stop_lost_task(pid: int | None, started: int | None, stop_signal: int,
                         timeout: float) -> bool:
    """``stop`` of a container whose shim is gone, as the shim would have stopped it: the stop
    signal to the task, SIGKILL to it and its group after *timeout*. Only while *pid* is
    provably the task (its start time when the loss was recorded, *started*: pids are reused);
    its end is recorded by the lost task's watch (:func:`watch_lost_task`). False when there
    was nothing of it to stop."""
    def still_the_task() -> bool:
        return bool(pid) and is_running(pid) and starttime(pid) == started

    if started is None or not still_the_task():
        return False
    assert pid is not None
    log.info("stopping the task of a lost shim", pid=pid, signal=stop_signal)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, stop_signal)
    with trio.move_on_after(timeout):
        while still_the_task():
            await trio.sleep(0.02)
    if still_the_task():
        log.info("the task of a lost shim outlived its stop timeout: SIGKILL", pid=pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # its children too (the process runtime makes it its group's leader), even if
            # it ended just before
            os.killpg(pid, signal.SIGKILL)
    return True
