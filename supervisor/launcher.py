"""supervisord's fork server for shims: one child process that starts shims in a few
milliseconds (it has imported everything a shim needs and frozen its heap, so a forked shim
shares most of its memory) instead of a fresh interpreter's tens.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import structlog
import trio

from events import wire
from events.domain import ErrorCode
from supervisor.channel import Channel, Closed
from supervisor.shims import LauncherLost, Ready, start_failed

__all__ = ["READY_TIMEOUT", "ShimLauncher"]

log = structlog.get_logger("supervisord.launcher")

#: supervisord's bound on a launcher's reply (the shim's own ready timeout is 30 s).
READY_TIMEOUT = 30.0


class ShimLauncher:
    """supervisord's fork server for shims (:mod:`shim.launcher`), one child process.

    :meth:`run` (a task of the daemon's nursery) starts ``python -I -m shim launcher`` on a
    socketpair, serves the replies of :meth:`start`, and starts it again if it dies (after a
    back-off from 0.1 s doubling to 5 s, reset once it lived 10 s). Until its hello arrives,
    and whenever it is gone, :func:`supervisor.shims.spawn_shim` uses ``shim start`` in a fresh
    interpreter: the launcher is an optimisation, never a dependency. When the daemon stops,
    closing the channel makes the launcher exit; when the daemon is SIGKILLed, EOF and its
    ``PR_SET_PDEATHSIG`` do. Shims it started are not its children and keep running.

    The process is spawned by ``subprocess.Popen`` on the trio thread, not by
    ``trio.run_process``: that forks in a worker thread, and ``PR_SET_PDEATHSIG`` fires when
    the *thread* that forked exits (trio retires idle workers), which would kill the launcher.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid: int | None = None
        self.chan: Channel | None = None
        self.ready = False
        self.launches = 0  # processes started (1 + restarts)
        self._next_rid = 1
        self._waiting: dict[int, tuple[trio.Event, list[dict[str, Any]]]] = {}

    def argv(self, fd: int) -> list[str]:
        # the padding leaves room in the argv area for each shim's own command line
        return [sys.executable, "-I", "-m", "shim", "launcher", "--root", str(self.root),
                "--fd", str(fd), "--title-space", "_" * 72]

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        delay = 0.1
        while True:
            began = trio.current_time()
            try:
                await self._run_once()
            except Exception as exc:  # never take the daemon down: fall back, retry
                log.exception("shim launcher failed", error=repr(exc))
            if trio.current_time() - began > 10:
                delay = 0.1
            log.warning("shim launcher gone; shims start in a fresh interpreter until it "
                        "is back", retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _run_once(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # its own process group: a Ctrl-C or a `kill -- -PGID` meant for the daemon must
            # not end the launcher under it (the daemon ends it, by closing the channel)
            proc = subprocess.Popen(self.argv(theirs.fileno()), pass_fds=(theirs.fileno(),),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    process_group=0)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.launches += 1
        self.pid = proc.pid
        pidfd = os.pidfd_open(proc.pid)
        chan = Channel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        began = time.perf_counter()
        try:
            async with trio.open_nursery() as nursery:
                async def watch_exit() -> None:
                    await trio.lowlevel.wait_readable(pidfd)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch_exit)
                # Closed is caught in here, not around the nursery: the nursery would wrap it
                # in an ExceptionGroup that the except clause does not match
                try:
                    await self._serve_replies(chan, proc.pid, began)
                except (Closed, wire.ProtocolError) as exc:
                    log.warning("shim launcher channel closed", pid=proc.pid, error=str(exc))
                    nursery.cancel_scope.cancel()
        finally:
            self.ready = False
            self.chan = None
            for event, _ in self._waiting.values():
                event.set()  # no message: LauncherLost
            with trio.CancelScope(shield=True):
                await chan.aclose()  # EOF: the launcher leaves
                with trio.move_on_after(1):
                    await trio.lowlevel.wait_readable(pidfd)
                if proc.poll() is None:
                    proc.kill()
                code = proc.wait()
                os.close(pidfd)
                self.pid = None
                log.info("shim launcher exited", pid=proc.pid, returncode=code)

    async def _serve_replies(self, chan: Channel, pid: int, began: float) -> None:
        hello = await chan.recv()
        if not isinstance(hello.get("hello"), dict):
            raise wire.ProtocolError(f"the launcher said {hello!r}, not hello")
        self.chan = chan
        self.ready = True
        log.info("shim launcher ready", pid=pid, ms=round((time.perf_counter() - began) * 1e3, 1))
        while True:
            message = await chan.recv()
            rid = message.get("id")
            waiter = self._waiting.get(rid) if isinstance(rid, int) else None
            if waiter is not None:
                waiter[1].append(message)
                waiter[0].set()

    async def start(self, cid: str, start: bool = False) -> Ready | None:
        """Start the shim of *cid* (with *start*, its task too: the map has ``started_at``
        or ``exec_error``): its ready map; None if the launcher cannot (fall back);
        :class:`~supervisor.errors.ApiError` if the shim could not start the container (as
        ``shim start``); :class:`~supervisor.shims.LauncherLost` if the launcher went away
        meanwhile.

        Shielded from cancellation: a start takes milliseconds, and a caller that left must
        not leave behind a shim that nobody recorded.
        """
        chan = self.chan
        if chan is None:
            return None
        rid = self._next_rid
        self._next_rid += 1
        event, box = trio.Event(), list[dict[str, Any]]()
        self._waiting[rid] = (event, box)
        try:
            with trio.CancelScope(shield=True):
                try:
                    await chan.send(wire.request(rid, "start", {"id": cid, "start": start}))
                except Closed as exc:
                    raise LauncherLost(str(exc)) from None
                with trio.move_on_after(READY_TIMEOUT + 5):
                    await event.wait()
        finally:
            del self._waiting[rid]
        if not box:
            raise LauncherLost("no reply")
        message = box[0]
        result = message.get("result")
        if isinstance(result, dict):
            return cast(Ready, result)  # the shim's ready map, checked where it is used
        error = message.get("error") or {}
        if error.get("code") == ErrorCode.START_FAILED:
            raise start_failed(str(error.get("message")))
        log.warning("the shim launcher could not start a shim", id=cid, error=error)
        return None
