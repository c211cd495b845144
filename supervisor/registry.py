"""The daemon's shims: one registry owns the link to each, the launcher, and their retirement.

Everything that starts, links or retires a shim goes through :class:`ShimRegistry`, so the
answer to "which shim does the daemon talk to for this container" lives in one place: the link
of the container (at most one; a new link replaces the old one), started in the daemon's
nursery, removed from the registry when its task ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

from supervisor.errors import ApiError
from supervisor.launcher import ShimLauncher
from supervisor.links import LinkHost, ShimLink, end_leftovers
from supervisor.shims import Ready, call_shim, end_shim, shim_alive, shim_dir, spawn_shim

if TYPE_CHECKING:
    from supervisor.spec import Spec

__all__ = ["ShimRegistry"]

log = structlog.get_logger("supervisord.shims")


class ShimRegistry:
    """The links to live shims and the launcher that starts new ones (one per daemon)."""

    def __init__(self, root: Path, host: LinkHost, *, use_launcher: bool = True) -> None:
        self.root = root
        self._host = host
        self._links: dict[str, ShimLink] = {}
        self.launcher = ShimLauncher(root) if use_launcher else None
        self._nursery: trio.Nursery | None = None
        self._launch = trio.Event()  # :meth:`want_launcher`

    def __len__(self) -> int:
        return len(self._links)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The registry's life (a task of the daemon): links run in a nursery it opens here,
        beside the launcher; cancelling this task ends them all (never the shims)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.launcher is not None:
                nursery.start_soon(self._run_launcher, self.launcher)
            task_status.started()
            await trio.sleep_forever()

    def want_launcher(self) -> None:
        """Start the launcher now: the daemon calls this once it has reconciled, and the first
        spawn does (so a start never waits for the end of reconciliation). Not before: forking
        it and its interpreter's preload would share this machine's CPU with the daemon's
        start-up, which is what a client waiting for ``ps`` waits for."""
        self._launch.set()

    async def _run_launcher(self, launcher: ShimLauncher) -> None:
        await self._launch.wait()
        await launcher.run()

    # -- starting -------------------------------------------------------------------------------

    async def spawn(self, cid: str, instance: str, spec: Spec, attempt: int = 0,
                    start: bool = False) -> Ready:
        """Start a shim for ``cid`` (its ready map; with ``start``, its task started too); see
        :func:`supervisor.shims.spawn_shim`."""
        self.want_launcher()  # this start goes through a fresh interpreter if it is not ready
        return await spawn_shim(self.root, cid, instance, spec, self.launcher, attempt, start)

    def link(self, cid: str, instance: str) -> ShimLink:
        """Start the link to ``cid``'s shim ``instance``; it replaces any previous link."""
        assert self._nursery is not None, "the registry is not running"
        old = self._links.get(cid)
        if old is not None:
            old.close()
        link = ShimLink(self._host, cid, instance)
        self._links[cid] = link
        self._nursery.start_soon(link.run)
        return link

    def link_ended(self, link: ShimLink) -> None:
        if self._links.get(link.cid) is link:
            del self._links[link.cid]

    def link_of(self, cid: str) -> ShimLink | None:
        return self._links.get(cid)

    # -- talking and ending ---------------------------------------------------------------------

    async def call(self, cid: str, method: str, **params: Any) -> Any:
        """One request to ``cid``'s shim (:func:`supervisor.shims.call_shim`)."""
        return await call_shim(self.root, cid, method, **params)

    def expect_end(self, cid: str) -> ShimLink | None:
        """The daemon is about to end ``cid``'s shim: its link must not call that a loss.
        Returns the link, for :meth:`forget` once the shim is gone."""
        link = self._links.get(cid)
        if link is not None:
            link.closing = True
        return link

    @staticmethod
    def forget(link: ShimLink | None) -> None:
        """Stop a link :meth:`expect_end` returned (its shim is gone, or going)."""
        if link is not None:
            link.cancel_scope.cancel()

    async def retire(self, cid: str, *, force: bool = False, task_pid: int | None = None,
                     ended_at: int | None = None) -> Any:
        """Ask ``cid``'s shim to go (``delete``, its task having ended) and stop its link;
        the shim's last exit record, or None when it could not be reached. ``force``: even
        if it runs a task (one it started after a stop it had not yet heard of: ``rm``).
        A shim that cannot be reached died before it could end what its last task
        (``task_pid``, ended at ``ended_at``) left in its group (a live one does, before it
        replies): ended here (:func:`supervisor.links.end_leftovers`)."""
        link = self.expect_end(cid)
        try:
            return await call_shim(self.root, cid, "delete", force=force)
        except ApiError as exc:
            log.debug("shim delete", id=cid, error=exc.message)
            if task_pid:
                await trio.to_thread.run_sync(end_leftovers, task_pid, ended_at)
            return None
        finally:
            self.forget(link)

    async def end(self, cid: str) -> str:
        """End whatever runs in ``cid``'s shim directory and remove the directory
        (:func:`supervisor.shims.end_shim`): for shims the log does not know."""
        return await end_shim(self.root, cid)

    async def end_task(self, cid: str) -> str:
        """End the shim in ``cid``'s directory (and its task), keeping the directory: a shim
        the log does not know, in the directory of a container it does (the logs stay)."""
        link = self.expect_end(cid)
        try:
            return await end_shim(self.root, cid, remove=False)
        finally:
            self.forget(link)

    def alive(self, cid: str) -> bool:
        """Does a shim run in ``cid``'s directory (whichever instance)?"""
        return shim_alive(shim_dir(self.root, cid))
