"""Timestamps at each hop of an exit, for ``bench/exitpath.py --trace`` only.

Loaded by a ``.pth`` line that ``bench/exitpath.py`` puts in a venv's site-packages for the
length of a run (and removes after), and only in processes whose environment names a trace
directory (``TETHER_EXITTRACE``): the daemon, the shim launcher and the shims it forks. It wraps
the functions an exit goes through and appends ``label ns`` lines (``CLOCK_REALTIME``, the
same clock in every process) to ``DIR/trace.PID``; the bench cuts them into exits by time.
What the wrappers cost (a ``time_ns`` and a ``write`` each, a few us) is in every hop alike.

Nothing of the project imports this; a wrapper records only what concerns a ``task.exit``.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

_fd = -1
_pid = 0


def mark(label: str) -> None:
    global _fd, _pid
    now = time.time_ns()
    if _pid != os.getpid():  # a forked shim: a file of its own
        _pid = os.getpid()
        _fd = os.open(os.path.join(os.environ["TETHER_EXITTRACE"], f"trace.{_pid}"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    os.write(_fd, f"{label} {now}\n".encode())


def _wrap(owner: Any, name: str, before: Any = None, after: Any = None) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = inner(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def _awrap(owner: Any, name: str, before: Any = None, after: Any = None) -> None:
    inner = getattr(owner, name)

    @functools.wraps(inner)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = await inner(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(owner, name, wrapper)


def _is_exit(items: Any) -> bool:
    return any((i[0] if isinstance(i, tuple) else getattr(i, "type", None)) == "task.exit"
               for i in items)


def install_shim() -> None:
    from events import shim_api
    from shim import execs, loop, outbox, task

    _wrap(loop.Loop, "_signalled", before=lambda *a: mark("s.wake"))
    _wrap(task.Task, "reaped", before=lambda *a: mark("s.reaped"))
    _wrap(execs.InitOutput, "drain", after=lambda *a: mark("s.drained"))
    _wrap(task.Task, "_on_oom", after=lambda *a: mark("s.oom"))
    _wrap(outbox.Outbox, "publish",
          before=lambda self, etype, *a, **k: etype == "task.exit" and mark("s.publish"),
          after=lambda r, self, etype, *a, **k: etype == "task.exit" and mark("s.sent"))
    _wrap(shim_api, "write_exit_file", after=lambda *a: mark("s.file"))


def install_daemon() -> None:
    from events import fileio, log
    from supervisor import channel, core, logwriter, streams, subscribers

    def record(self: Any, cid: str, etype: str, data: Any) -> None:
        if etype == "task.exit":
            mark("d.recv")

    _awrap(channel.Channel, "_receive", after=lambda *a: mark("d.bytes"))
    _awrap(core.Core, "record_shim_event", before=record)
    _awrap(logwriter.LogWriter, "append",
           before=lambda self, items: _is_exit(items) and mark("d.queued"))
    state = {"on": False}

    def log_before(self: Any, items: Any, *a: Any) -> None:
        state["on"] = _is_exit(items)
        if state["on"]:
            mark("d.thread")

    def log_after(result: Any, self: Any, items: Any, *a: Any) -> None:
        if state["on"]:
            mark("d.written")
        state["on"] = False

    _wrap(log.EventLog, "append", before=log_before, after=log_after)
    _wrap(fileio.FileIO, "fdatasync", before=lambda *a: state["on"] and mark("d.sync0"))
    _wrap(logwriter.LogWriter, "_apply" if hasattr(logwriter.LogWriter, "_apply") else "_complete",
          before=lambda self, batch, *a: _is_exit(batch.items) and mark("d.complete"))
    if hasattr(logwriter.LogWriter, "_write_here"):
        _wrap(logwriter.LogWriter, "_write_here",
              before=lambda self, batch: _is_exit(batch.items) and mark("d.inline"))
    _wrap(subscribers.Hub, "publish",
          before=lambda self, events: _is_exit(events) and mark("d.publish"))
    if hasattr(channel, "ItemSender"):
        _wrap(channel.ItemSender, "now",
              after=lambda r, self, values: r and any(v.get("type") == "task.exit"
                                                      for v in values) and mark("d.direct"))
    _awrap(subscribers.Subscriber, "next_batch",
           after=lambda r, *a: _is_exit(r) and mark("d.woken"))
    if hasattr(channel, "ItemSender"):  # the sender itself: a wrapper would lose its .now
        _awrap(channel.ItemSender, "__call__",
               after=lambda r, self, value: isinstance(value, dict)
               and value.get("type") == "task.exit" and mark("d.sent"))
        return
    inner = streams.Streams.events

    async def events(self: Any, params: Any, send: Any, *a: Any, **k: Any) -> None:
        async def traced(record: Any) -> None:
            await send(record)
            if record.get("type") == "task.exit":
                mark("d.sent")

        await inner(self, params, traced, *a, **k)

    streams.Streams.events = events  # type: ignore[method-assign]


def install() -> None:
    if getattr(sys, "_tether_exittrace", False):  # site-packages seen twice (lib64 -> lib)
        return
    sys._tether_exittrace = True  # type: ignore[attr-defined]
    argv = " ".join(sys.orig_argv)
    if "-m shim" in argv:
        install_shim()
    elif "supervisord" in argv:
        install_daemon()
