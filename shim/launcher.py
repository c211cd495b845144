"""``python -I -m shim launcher --root ROOT --fd FD --title-space PAD``: a fork server for shims.

A fresh ``python -I -m shim start`` spends ~50 ms and ~8 MB on an interpreter that imports the
same modules every time. The launcher imports them once, calls ``gc.freeze()`` (so the
collector never writes to, and un-shares, the pages its children inherit), and forks a shim per
request: ready in a few milliseconds, most of its memory shared.

It is supervisord's child and serves only supervisord, on a socketpair end passed as ``--fd``
(frames of :mod:`events.wire`):

* launcher -> daemon, first: ``{"hello": {"proto": 1, "role": "launcher", "pid": N}}``, once
  everything is preloaded (the daemon uses the launcher only after it);
* daemon -> launcher: ``{"id": n, "method": "start", "params": {"id": CID, "start": B}}``
  (``start`` true: the first task is started too, as ``shim start --run`` does);
* reply: ``{"pid", "address", "task_pid", "created_at"}`` (what ``shim start`` prints; with
  ``start``, ``started_at`` or ``exec_error`` too), or the error
  ``start_failed`` whose message is the line ``shim start`` would print on stderr (the
  container cannot start: do not retry), or ``internal`` (the launcher could not fork: the
  daemon falls back to ``shim start``).

Each shim is started by :func:`shim.launch.detach`, the code of ``shim start`` itself: an
intermediate child ``setsid``s, forks the shim and exits (reaped here), so the shim is never a
child of the launcher nor of supervisord. The shim then rewrites its command line to
``... -m shim start --root ROOT --id CID`` (:func:`shim.osutil.set_title`, in the room the
``--title-space`` argument keeps), so ``ps``, operators and cleanup tools see what it is.

Requests are served concurrently: the ready pipes of starts in flight are multiplexed.

Once idle for :data:`SPARE_IDLE` (no start in flight), the launcher forks a *spare*
(:func:`shim.launch.prefork`): a shim forked the same way, titled ``... -m shim spare --root
ROOT``, that waits for a container id on a pipe. The next start is handed to it (it retitles
itself as above and serves as any shim), so the two forks are off that start's path; a start
that finds none (a burst, or a spare that died) forks as before. The spare leaves at EOF of its
pipe: when the launcher exits, however it ends.

The launcher exits when supervisord goes away: EOF on its channel, or ``PR_SET_PDEATHSIG``
(SIGKILL) if supervisord was killed. Shims already started are not affected: they are not its
children and share nothing with it but copy-on-write pages. A shim whose start is in flight
when the launcher dies finds its ready pipe closed and aborts (it leaves nothing running).

Standard library, msgpack and the shim's own modules only (never trio): it must stay small,
every shim inherits its heap.
"""

from __future__ import annotations

import gc
import json
import os
import selectors
import signal
import socket
import sys
import time

from events import shim_api, wire
from shim import launch, osutil

PROTO = 1
PR_SET_PDEATHSIG = 1
#: How long the launcher is idle (no start in flight) before it forks a spare shim.
SPARE_IDLE = 0.02
#: The ``--title-space`` argument: enough room in the argv area for a shim's title (a container
#: id is at most 64 characters; "start" and "--id" are shorter than what they replace).
TITLE_SPACE = "_" * 72


def preload() -> None:
    """Import everything a shim runs, fill the allocators' holes, then freeze the heap:
    children share it untouched and allocate their own objects on fresh pages."""
    import ctypes  # noqa: F401  (osutil.libc, set_title)

    import msgpack  # type: ignore[import-untyped]  # noqa: F401

    import shim.health
    import shim.logs
    import shim.runtime
    import shim.runtime_process
    import shim.server
    from events import shim_api  # noqa: F401

    try:  # the OCI runtimes and cgroups: shared pages for the shims that use them
        import shim.cgroups
        import shim.runtime_oci  # noqa: F401
    except ImportError:  # pragma: no cover - an optional piece being reworked
        pass
    osutil.libc()
    _warm()
    gc.collect()
    _fill_pools()
    _fill_malloc()
    gc.freeze()


def _fill_malloc() -> None:
    """The same for glibc's malloc (objects over 512 bytes: code, big dicts and lists): take
    every free chunk of its main heap (``malloc_info``) and drain its per-size thread cache, so
    that a shim's larger allocations come from the top of the heap instead of the holes between
    the launcher's objects. The chunks are never freed (a few hundred kB, shared by every
    shim). A libc without ``malloc_info`` (not glibc) is left as it is."""
    import ctypes

    libc = osutil.libc()
    try:
        libc.fdopen.restype = ctypes.c_void_p
        libc.malloc.restype = ctypes.c_void_p
        info = libc.malloc_info
    except AttributeError:
        return
    fd = os.memfd_create("mallocinfo")
    try:
        stream = libc.fdopen(os.dup(fd), b"w")
        if not stream:
            return
        failed = info(0, ctypes.c_void_p(stream))
        libc.fclose(ctypes.c_void_p(stream))
        if failed:
            return
        os.lseek(fd, 0, os.SEEK_SET)
        text = osutil.read_to_eof(fd)
    finally:
        os.close(fd)
    heap = text.split(b"</heap>", 1)[0]  # the main arena (a shim has no other thread)
    for line in heap.splitlines():
        fields = line.split(b'"')  # <size from="A" to="A" total="T" count="C"/>
        if not line.lstrip().startswith((b"<size ", b"<unsorted ")) or len(fields) < 8:
            continue
        size, count = int(fields[1]) & ~15, int(fields[7])
        _BALLAST.extend(libc.malloc(size - 8) for _ in range(count))
    for size in range(32, 1040, 16):  # the thread cache: up to 7 freed chunks of each size
        _BALLAST.extend(libc.malloc(size - 8) for _ in range(7))


#: What :func:`_fill_pools` and :func:`_fill_malloc` took: kept for the launcher's life.
_BALLAST: list[object] = []


def _fill_pools() -> None:
    """Fill every free block of pymalloc's partly used pools, so that a shim's own small
    allocations go to fresh pools, packed, instead of into holes scattered through the
    launcher's pages (each hole a shim fills copies a page of the launcher's heap). The sizes
    come from ``sys._debugmallocstats`` (written on fd 2, borrowed for the call); blocks of
    16 bytes are ``object()``, of 32 floats, the rest ``bytes`` of the class's size."""
    fd = os.memfd_create("mallocstats")
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = osutil.read_to_eof(fd)
    finally:
        os.close(fd)
    for line in text.decode("ascii", "replace").splitlines():
        fields = line.split()  # class, size, pools, blocks in use, available blocks
        if len(fields) != 5 or not all(f.isdigit() for f in fields):
            continue
        size, avail = int(fields[1]), int(fields[4])
        if size == 16:
            _BALLAST.extend(object() for _ in range(avail))
        elif size == 32:
            _BALLAST.extend(float(i) + 0.5 for i in range(avail))
        else:
            _BALLAST.extend(bytes(size - 33) for _ in range(avail))


def _warm(rounds: int = 12) -> None:
    """Run the pure code every shim runs (the wire codec, JSON, the restart rules) a few times
    before the freeze. CPython 3.11 specialises a function's bytecode after a few calls and
    stamps version numbers on the dicts and types it looks things up in: done here, once,
    those writes land in the launcher's pages, not in every shim's copy of them (bench/shim.py
    at 50 shims: ~0.08 MB less PSS per shim). What is called is ordinary use of the shim's own
    API with made-up values: no file, socket or process is touched."""
    from events import policy, shim_api

    spec = {**shim_api.SPEC_FIELDS, "id": "warm", "instance": "warm-1",
            "command": ["sleep", "1"], "env": {"PATH": "/usr/bin:/bin"}}
    for rid in range(1, rounds + 1):
        decoder = wire.FrameDecoder(1 << 20)
        frame = wire.encode(wire.request(rid, "stop", {"timeout": 1.5, "signal": 15}))
        for message in decoder.feed(frame):
            request = wire.parse_request(message)
            wire.encode(wire.reply(request.rid, {"pid": rid, "started_at": rid}))
            wire.encode(wire.error(request.rid, "conflict", "cannot start a running task"))
        wire.parse_hello(wire.hello("supervisor", id="warm"))
        wire.encode(wire.item(rid, {"seq": rid, "type": "task.exit", "data": {"pid": rid}}))
        loaded = json.loads(json.dumps(spec))
        json.dumps({"level": "info", "event": "warm", "pid": rid, "command": loaded["command"]})
        restart = policy.restart_spec("on-failure:3")
        policy.health_spec(None)
        policy.seconds(1.5, "stop_timeout")
        policy.decide(restart, exit_status=1, streak=1, ran_for=0.5, stopped_by_user=False,
                      unhealthy=False, jitter=1.0)
        shim_api.shim_path("/", "warm")


class _Start:
    __slots__ = ("cid", "data", "deadline", "fd", "group", "rid", "title")

    def __init__(self, rid: int, cid: str, fd: int, title: list[str],
                 group: str | None = None) -> None:
        self.rid = rid
        self.cid = cid
        self.fd = fd
        self.title = title
        self.group = group  # a new shared shim's first member
        self.data = b""
        self.deadline = time.monotonic() + launch.READY_TIMEOUT


class Launcher:
    def __init__(self, root: str, sock: socket.socket) -> None:
        self.root = root
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.decoder = wire.FrameDecoder()
        self.starts: dict[int, _Start] = {}
        self.middles = 0  # intermediates not yet reaped
        #: groups whose process is being started -> the members that wait for it to be ready
        #: (one process per group: they are added to it, not given one each)
        self.forming: dict[str, list[tuple[int, str, bool]]] = {}
        #: a shim forked while we were idle, waiting for its id (:class:`shim.launch.Spare`)
        self.spare: launch.Spare | None = None
        self.spare_failed = 0.0  # when forking one last failed (monotonic): not again at once

    def send(self, message: dict[str, object]) -> None:
        self.sock.sendall(wire.encode(message))

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.spare is not None:  # nothing of ours outlives us
                self.spare.close()

    def _run(self) -> int:
        self.send(wire.hello("launcher", pid=os.getpid()))
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        while True:
            timeout = None
            if self.starts:
                timeout = max(0.0, min(s.deadline for s in self.starts.values())
                              - time.monotonic())
            if self.middles:  # an intermediate about to exit: come back to reap it
                timeout = 0.01 if timeout is None else min(timeout, 0.01)
            wants_spare = self.spare is None and not self.starts and not self.forming
            if wants_spare:  # fork one once idle for SPARE_IDLE: never during a burst
                timeout = SPARE_IDLE if timeout is None else min(timeout, SPARE_IDLE)
            ready = self.sel.select(timeout)
            if not ready and wants_spare:
                self.prefork()
            for key, _ in ready:
                if key.data is None:
                    try:
                        data = self.sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return 0  # supervisord went away
                    try:
                        messages = self.decoder.feed(data)
                    except wire.ProtocolError as exc:
                        self.send(wire.error(None, exc.code, str(exc)))
                        return 1
                    for message in messages:
                        self.handle(message)
                else:
                    self.on_ready_pipe(key.data)
            self.reap()
            now = time.monotonic()
            for start in [s for s in self.starts.values() if s.deadline <= now]:
                self.finish(start)

    def reap(self) -> None:
        """Reap the intermediates (each exits right after forking its shim; the shims are
        not our children, so nothing else comes back here)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.middles = 0
                return
            if pid == 0:
                return
            self.middles -= 1

    def handle(self, message: dict[str, object]) -> None:
        if "hello" in message:
            return
        try:
            request = wire.parse_request(message)
        except wire.ProtocolError as exc:
            self.send(wire.error(exc.rid, exc.code, str(exc)))
            return
        cid = request.params.get("id")
        start_task = request.params.get("start", False)
        if request.method != "start" or not isinstance(cid, str) \
                or not isinstance(start_task, bool):
            self.send(wire.error(request.rid, "invalid", "expected start {id, start}"))
            return
        group = shim_api.read_group(shim_api.shim_path(self.root, cid))
        if group is not None:
            self.start_member(request.rid, cid, start_task, group)
            return
        title = launch.start_title(self.root, cid)
        spare, self.spare = self.spare, None
        if spare is not None and spare.hand(cid, start_task):
            start = _Start(request.rid, cid, spare.ready_r, title)
            start.data = b"pid %d\n" % spare.pid
            self.starts[spare.ready_r] = start
            self.sel.register(spare.ready_r, selectors.EVENT_READ, start)
            return
        try:
            fd, _ = launch.detach(self.root, cid, title, reap=False, start_task=start_task)
        except OSError as exc:  # fork or pipe failed: the daemon may try ``shim start``
            self.send(wire.error(request.rid, "internal", f"launcher: {exc}"))
            return
        self.middles += 1
        start = _Start(request.rid, cid, fd, title)
        self.starts[fd] = start
        self.sel.register(fd, selectors.EVENT_READ, start)

    def prefork(self) -> None:
        """Fork a spare shim (:func:`shim.launch.prefork`), unless that failed a moment ago."""
        if time.monotonic() - self.spare_failed < 1.0:
            return
        try:
            self.spare, _ = launch.prefork(self.root)
        except OSError:
            self.spare_failed = time.monotonic()
            return
        self.middles += 1

    def start_member(self, rid: int, cid: str, start_task: bool, group: str) -> None:
        """A member of a shared shim: added to its live group (a blocking request of a few
        milliseconds, bounded by :data:`shim.group.ADD_TIMEOUT`), or the group's process is
        started with it as its first member; members asked for meanwhile wait for it."""
        from shim import group as groups  # only for groups: not in every shim's heap

        if group in self.forming:
            self.forming[group].append((rid, cid, start_task))
            return
        answer = groups.ask(self.root, group, cid, start_task)
        if answer is not None:
            self.send(wire.reply(rid, answer) if isinstance(answer, dict)
                      else wire.error(rid, "start_failed", answer))
            return
        title = launch.group_title(self.root, group)
        try:
            fd, _ = launch.detach(self.root, cid, title, reap=False, start_task=start_task,
                                  group=group)
        except OSError as exc:
            self.send(wire.error(rid, "internal", f"launcher: {exc}"))
            return
        self.middles += 1
        self.forming[group] = []
        start = _Start(rid, cid, fd, title, group)
        self.starts[fd] = start
        self.sel.register(fd, selectors.EVENT_READ, start)

    def on_ready_pipe(self, start: _Start) -> None:
        try:
            chunk = os.read(start.fd, 65536)
        except OSError:
            chunk = b""
        start.data += chunk
        if not chunk or launch.is_complete(start.data):
            self.finish(start)

    def finish(self, start: _Start) -> None:
        del self.starts[start.fd]
        self.sel.unregister(start.fd)
        os.close(start.fd)
        title = b"\0".join(os.fsencode(arg) for arg in start.title) + b"\0"
        ok, text = launch.outcome(start.cid, launch.parse_lines(start.data),
                                  launch.READY_TIMEOUT, title)
        if ok:
            self.send(wire.reply(start.rid, json.loads(text)))
        else:
            self.send(wire.error(start.rid, "start_failed", text))
        if start.group is not None:
            for rid, cid, start_task in self.forming.pop(start.group, []):
                self.start_member(rid, cid, start_task, start.group)


def main(root: str, fd: int) -> int:
    """Run the launcher on channel *fd* until supervisord goes away."""
    osutil.libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # Ctrl-C on a foreground supervisord reaches its whole process group: the launcher leaves
    # when supervisord does (EOF), not on the signal. Caught, not SIG_IGN, so that nothing
    # ignored is inherited by the shims (each sets its own handlers).
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: None)
    sock = socket.socket(fileno=fd)
    try:  # a daemon that died before the prctl sent no signal: its end is closed already
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            return 0
    except BlockingIOError:
        pass
    sock.setblocking(True)
    preload()
    try:
        return Launcher(root, sock).run()
    except (BrokenPipeError, ConnectionResetError):
        return 0
