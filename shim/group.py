"""The shared shim: the containers of one group (``shim_group`` in the spec) in one process.

For hundreds of small programs a shim each is most of their memory. The members of a group
share one process, one loop and one subreaper, and keep everything else of their own, so the
contract stays per container and the daemon cannot tell a member from a shim of its own:

* each member keeps its directory ``ROOT/shims/ID`` (spec, ``exit``, ``task``, logs), its
  ``shim.lock`` (held by this process while the member lives), its own socket, bound in its
  directory and named by its ``address`` (``shim.pid`` names this process), and its own
  :class:`shim.server.Shim`: task and state machine, restart policy, health checks, outbox with
  its instance and ``shim_seq``, container log and ``shim.log``;
* the loop's connections carry the member whose socket they came in on
  (:attr:`shim.loop.Conn.owner`), so each request reaches its member's handlers;
* one ``waitpid(-1)`` loop reaps for all and routes each pid to the member whose init, exec or
  health check it is (an orphan is counted); a member's "kill everything" takes only its own
  session (:meth:`shim.runtime_process.ProcessRuntime.kill`), and its "reap what is left" waits
  only for its own processes;
* a member ends alone (``delete``, ``shutdown``, settled and acknowledged): its streams end, its
  socket closes, its lock is released; the process ends with its last member.

The group's own files are in ``ROOT/groups/NAME/``: ``group.lock`` (one live group process per
name), ``address`` (its control socket), ``shim.pid``, ``shim.log``. The control socket has one
method beside the hello: ``add {id, start}`` makes the container ``ID`` (its spec written, as for
any shim) a member and answers the ready map a shim's start prints (``pid`` is this process's),
or an error whose message is what ``shim start`` would print. A starter (the launcher, or
``shim start`` in a fresh interpreter) asks the live group (:func:`ask`); when there is none,
it starts one with the container as its first member (:func:`serve`, through
:func:`shim.launch.detach`); of two started at once, the one that takes ``group.lock`` is the
group and the other adds its member to it and leaves. A group that ends first closes its
control socket and releases its lock, so an ``add`` either reaches a group that takes the
member or finds none and starts one.

The cost, stated where users opt in: one process's death (SIGKILL, OOM) loses the exit status
of every member whose task ends before the daemon notices (each gets ``shim.lost``), and the
members share one process's CPU. The process runtime only (the daemon refuses an OCI runtime
and a pid namespace in a group: runc's synchronous commands would stall every member, and the
pid namespace is unshared by the shim itself).

(Over 500 lines: the group's process and its starter's side, :func:`ask` and
:func:`serve`, share the control socket's conversation and the directory's lock protocol.)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from events import procfs, shim_api, wire
from events.ids import validate_id
from shim import launch, osutil
from shim.loop import Loop, ShimError
from shim.server import Shim, make_runtime

if TYPE_CHECKING:
    from shim.loop import Conn

GROUPS_DIR = "groups"
GROUP_LOCK = "group.lock"
#: How long a starter waits for a live group's answer to ``add``: a create takes milliseconds;
#: this bounds a wedged group (the start then fails; the daemon retries or reports it).
ADD_TIMEOUT = 10.0


def group_path(root: str, name: str) -> str:
    """``ROOT/groups/NAME``, the name validated as an id (it never escapes ``ROOT/groups``)."""
    return os.path.join(root, GROUPS_DIR, validate_id(name))


class Group:
    """One group's process: its loop (the control socket and every member's), its members."""

    def __init__(self, root: str, name: str, listener: socket.socket, address: str,
                 diag: osutil.Diag) -> None:
        self.root = root
        self.name = name
        self.dir = group_path(root, name)
        self.address = address  # the control socket's path
        self.diag = diag
        self.members: dict[str, Shim] = {}
        self.locks: dict[str, tuple[int, int]] = {}  # member id -> (lock fd, shim.log fd)
        self.orphans_reaped = 0
        self.ended = False
        self.lock_fd = -1  # group.lock, held while an add may reach us
        #: the open-files limit the process started with, when it raised its own (each member
        #: holds ~8 fds: the 1024 of a usual soft limit would end a group at ~120 members);
        #: the members' programs get the one they would have had in a shim of their own
        self.nofile: tuple[int, int] | None = None
        self.loop = Loop(listener, diag.log, self._on_message, self._on_close,
                         self._on_drained, self._reap)

    # -- members ------------------------------------------------------------------------------

    def add(self, container_id: str, start_task: bool,
            created: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Make *container_id* a member and create (with *start_task*, start) its first task:
        the ready map. On failure nothing of it is left (its files removed, its lock freed).
        *created* is told the started task's pid before it is let run, as a shim's starter is
        (:func:`shim.launch.tell_task`)."""
        if container_id in self.members:
            raise ShimError("conflict", f"{container_id} is already a member of group "
                            f"{self.name}")
        directory = shim_api.shim_path(self.root, container_id)
        osutil.refuse_symlinks(os.path.join(self.root, "shims"), directory)
        log_fd = osutil.open_nofollow(os.path.join(directory, shim_api.SHIM_LOG),
                                      os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        diag = osutil.Diag(log_fd, os.path.join(directory, shim_api.SHIM_LOG))
        lock_fd = -1
        files: list[str] = []
        member: Shim | None = None
        try:
            lock_fd = osutil.take_lock(directory)
            spec = osutil.read_own_spec(directory, container_id)
            if spec.get("shim_group") != self.name:
                raise ValueError(f"{directory}/{shim_api.SPEC_FILE}: shim_group "
                                 f"{spec.get('shim_group')!r} is not {self.name!r}")
            if (spec.get("runtime") or "process") != "process" \
                    or "pid" in (spec.get("namespaces") or []):
                raise ValueError("a shared shim runs the process runtime without a pid "
                                 "namespace only (docs/design.md, section 7)")
            address = osutil.socket_path(directory)
            listener = osutil.bind_unix(address)
            files.append(address)
            files += osutil.write_reach_files(directory, address)
            for name in (shim_api.EXIT_FILE, shim_api.CONTAINER_LOG):
                osutil.refuse_symlinks(os.path.join(directory, name), missing_ok=True)
            rlimits = spec.get("rlimits") or {}
            if self.nofile is not None and "nofile" not in rlimits:
                spec = {**spec, "rlimits": {**rlimits, "nofile": list(self.nofile)}}
            runtime: Any = make_runtime(spec, directory)
            member = Shim(directory, spec, listener, address, runtime, diag, loop=self.loop)
            member.task.reap_all = self._reaper_of(member)
            runtime.others = self._others_of(member)
            ready = member.create(start_task, created)
        except BaseException as exc:
            if member is not None:
                self.loop.close_owner(member)
                with contextlib.suppress(Exception):
                    member.abort()
                member.close_dir()
            for path in files:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            diag.log("error", "start_failed", group=self.name, error=osutil.failure_reason(exc))
            for fd in (lock_fd, log_fd):
                if fd >= 0:
                    os.close(fd)
            raise
        self.members[container_id] = member
        self.locks[container_id] = (lock_fd, log_fd)
        diag.log("info", "ready", address=member.address, instance=spec["instance"],
                 group=self.name, **ready)
        self.diag.log("info", "member_added", id=container_id, members=len(self.members))
        return {"pid": os.getpid(), "address": member.address, **ready}

    def _reaper_of(self, member: Shim) -> Callable[[float], None]:
        def reap_all(timeout: float) -> None:
            self._reap_member(member, timeout)

        return reap_all

    def _others_of(self, member: Shim) -> Callable[[], set[int]]:
        def others() -> set[int]:
            return self._sessions(but=member)

        return others

    def _sessions(self, but: Shim) -> set[int]:
        """The sessions of the other members' live inits (see ProcessRuntime._tree)."""
        out = set()
        for member in self.members.values():
            runtime: Any = member.runtime
            if member is not but and runtime.pid:
                out.add(runtime.session)
        return out

    def _sweep(self) -> bool:
        """After each batch of the loop: let every member that is done leave; True once the
        last has (the process ends)."""
        for cid, member in list(self.members.items()):
            if member.done or member.task.deleting:
                self._leave(cid, member)  # (still a member while it ends: its exits route)
                del self.members[cid]
        if not self.members and not self.ended:
            self._end()
        return self.ended

    def _leave(self, cid: str, member: Shim) -> None:
        try:
            member.leave()
        except Exception as exc:  # one member's bug must not end the others
            self.loop._bug(exc)
        lock_fd, log_fd = self.locks.pop(cid)
        os.close(lock_fd)  # the daemon sees its shim gone (shim_alive) only now
        os.close(log_fd)
        self.diag.log("info", "member_left", id=cid, members=len(self.members) - 1)

    def _end(self) -> None:
        """The last member left: no ``add`` may reach us any more (a starter that finds no
        group starts a new one), the group's directory goes, then the loop ends."""
        self.ended = True
        self.diag.log("info", "group_exit", orphans_reaped=self.orphans_reaped)
        for name in (shim_api.ADDRESS_FILE, shim_api.PID_FILE):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.dir, name))
        self.loop.close_all()
        if self.lock_fd >= 0:
            remove_group_dir(self.dir, self.address, self.lock_fd)
            self.lock_fd = -1


    def run(self) -> None:
        self.loop.run(self._sweep)

    # -- the loop's callbacks -----------------------------------------------------------------

    def _on_message(self, conn: Conn, message: dict[str, Any]) -> None:
        if conn.owner is not None:
            conn.owner.handlers.on_message(conn, message)
        else:
            self._control(conn, message)

    def _on_close(self, conn: Conn) -> None:
        if conn.owner is not None:
            conn.owner._on_close(conn)

    def _on_drained(self, conn: Conn) -> None:
        if conn.owner is not None:
            conn.owner._on_drained(conn)

    def _reap(self) -> None:
        osutil.reap_each(self._reaped)

    def _reaped(self, pid: int, status: int) -> None:
        for member in list(self.members.values()):
            if member.execs.exited(pid, status):
                return
            if member.task.is_init(pid):
                member.task.reaped(pid, status)
                return
        self.orphans_reaped += 1

    def _reap_member(self, member: Shim, timeout: float) -> None:
        """A member's "reap every child left": reap (for all) until none of its processes is
        left, at most *timeout*; the other members' processes run on."""
        runtime: Any = member.runtime
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            if not runtime._tree() or time.monotonic() >= deadline:
                return
            time.sleep(0.002)

    # -- the control socket -------------------------------------------------------------------

    def _control(self, conn: Conn, message: dict[str, Any]) -> None:
        loop = self.loop
        req = loop.request_of(conn, message, {"launcher", "supervisor", "client"},
                              lambda: {"group": self.name, "pid": os.getpid()})
        if req is None:
            return
        if req.method == "state":
            loop.send(conn, wire.reply(req.rid, {
                "group": self.name, "pid": os.getpid(), "members": sorted(self.members),
                "orphans_reaped": self.orphans_reaped}))
            return
        cid, start_task = req.params.get("id"), req.params.get("start", False)
        if req.method != "add" or not isinstance(cid, str) or not isinstance(start_task, bool):
            loop.send(conn, wire.error(req.rid, "invalid", "expected add {id, start} or state"))
            return
        def created(pid: int) -> None:
            """Tell the starter which process the task is before it runs (a starter whose
            group dies before the reply ends it: :func:`ask`); a starter gone already aborts
            the start, as a closed ready pipe does."""
            loop.send(conn, wire.item(req.rid, {"task": pid,
                                                "starttime": procfs.starttime(pid) or 0}))
            if not conn.open:
                raise OSError(f"the starter of {cid} went away")

        try:
            validate_id(cid)
            result = self.add(cid, start_task, created)
        except ShimError as exc:
            loop.send(conn, wire.error(req.rid, exc.code, str(exc)))
            return
        except Exception as exc:  # the container cannot start: what `shim start` says
            loop.send(conn, wire.error(req.rid, "start_failed",
                                       f"shim start {cid}: {osutil.failure_reason(exc)}"))
            return
        loop.send(conn, wire.reply(req.rid, result))


# -- the starter's side -----------------------------------------------------------------------


def ask(root: str, name: str, container_id: str, start_task: bool,
        timeout: float = ADD_TIMEOUT) -> dict[str, Any] | str | None:
    """``add`` the container to the live group *name*: the ready map (as decoded from the
    group's reply: the launcher passes it on as it is), the line ``shim start`` would print
    when the container cannot start, or None when no group answers (none runs, or it is
    ending: start one). Blocking, bounded by *timeout*. A group that named the member's
    started task (an item ``{task, starttime}`` before its reply) and died before the reply
    leaves that task to no one: it is ended here (:func:`shim.launch.end_task`) before None
    is returned."""
    try:
        with open(os.path.join(group_path(root, name), shim_api.ADDRESS_FILE)) as f:
            address = f.read().strip()
    except (OSError, ValueError):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(address)
            sock.sendall(wire.encode(wire.hello("launcher"))
                         + wire.encode(wire.request(1, "add", {"id": container_id,
                                                               "start": start_task})))
        except OSError:
            return None  # gone, or ending: nobody took the request
        decoder = wire.FrameDecoder()
        told: list[tuple[str, str]] = []  # ("task", "PID STARTTIME"), as a ready pipe says it
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return (f"shim start {container_id}: group {name} did not answer within "
                        f"{timeout:g} s")
            except OSError:
                data = b""
            if not data:  # closed before the reply: it was ending, or it died
                launch.end_task(told)
                return None
            for message in decoder.feed(data):
                if message.get("id") != 1:
                    continue
                item = message.get("item")
                if isinstance(item, dict) and "task" in item:
                    told.append(("task", f"{item.get('task')} {item.get('starttime')}"))
                    continue
                if isinstance(message.get("result"), dict):
                    result: dict[str, Any] = message["result"]
                    return result
                error = message.get("error") or {}
                return str(error.get("message") or error)
    finally:
        sock.close()


def remove_group_dir(directory: str, address: str, lock_fd: int) -> None:
    """An ending group's files go, ``group.lock`` last but one, while this process still holds
    it: everything but the lock first (a process that takes the lock after us finds them gone,
    a new one's are made after it took it), then the lock file (a starter that opened it
    before finds, once it has the lock, that the path names another file or none, and starts
    again: :func:`_try_group_lock`), the directory when it is empty (a new group's files keep
    it), and only then is the lock released. Killed at any step, what is left is a directory a
    new group takes: a lock nobody holds, or no lock file, or a stale ``address`` no socket
    answers (the starter's :func:`ask` says None)."""
    for path in (address, os.path.join(directory, shim_api.SHIM_LOG),
                 os.path.join(directory, GROUP_LOCK)):
        with contextlib.suppress(OSError):
            os.unlink(path)
    with contextlib.suppress(OSError):  # not empty: a new group's files are there already
        os.rmdir(directory)
    os.close(lock_fd)  # a new process of the group may start at once


def _same_file(path: str, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _try_group_lock(directory: str) -> int | None:
    """``group.lock`` taken (its fd), or None: another process of the group holds it.

    An ending group removes its files, the lock file included, while it holds the lock
    (:func:`remove_group_dir`). A lock taken on a file it unlinked meanwhile is no group's
    lock (the path names another file, or none): the directory is made again and the lock
    taken again, so only a lock on the file the path names decides who is the group."""
    import fcntl

    path = os.path.join(directory, GROUP_LOCK)
    for _ in range(100):  # each turn means a group ended meanwhile
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            osutil.refuse_symlinks(os.path.dirname(directory), directory)
            fd = osutil.open_nofollow(path, os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:  # the directory went between the calls
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same_file(path, fd):
            return fd
        os.close(fd)
    raise OSError(f"{path}: removed under us 100 times in a row")


def _own_log(directory: str) -> None:
    """Once this process holds the group's lock: make sure fd 2 (the group's diagnostics) is
    the ``shim.log`` its directory names, not one an ending group removed after we opened it."""
    path = os.path.join(directory, shim_api.SHIM_LOG)
    if not _same_file(path, 2):
        fd = osutil.open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 2)
        os.close(fd)


def _join_instead(root: str, name: str, container_id: str, ready_w: int, start_task: bool
                  ) -> int | None:
    """Two starters that found no group at once (the launcher's queue cannot see a ``shim
    start`` in a fresh interpreter) both start a process: the one that takes the lock is the
    group; the other asks it to add the member, passes its answer on as its own ready report,
    and leaves. Returns the lock's fd when this process is to be the group, else None (the
    answer was reported). Bounded by :data:`ADD_TIMEOUT`: a holder that never answers fails
    the start."""
    directory = group_path(root, name)
    deadline = time.monotonic() + ADD_TIMEOUT
    while (fd := _try_group_lock(directory)) is None:
        answer = ask(root, name, container_id, start_task)
        if isinstance(answer, dict):
            os.write(ready_w, b"ready " + json.dumps(answer).encode() + b"\n")
            return None
        if answer is not None:
            prefix = f"shim start {container_id}: "
            text = answer[len(prefix):] if answer.startswith(prefix) else answer
            os.write(ready_w, b"error " + text.encode() + b"\n")
            return None
        if time.monotonic() > deadline:
            raise OSError(f"{directory}/{GROUP_LOCK}: another process of group {name} holds it "
                          "but does not "
                          f"answer on its socket within {ADD_TIMEOUT:g} s")
        time.sleep(0.005)
    return fd


def _raise_nofile() -> tuple[int, int] | None:
    """Raise our soft open-files limit to the hard one; the limit before, if it changed."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= hard:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return None
    return soft, hard


def serve(root: str, name: str, container_id: str, ready_w: int, start_task: bool) -> None:
    """A new group's process (forked by :func:`shim.launch.detach`): detach from everything
    inherited, take the group's lock, bind its control socket, add its first member, report on
    *ready_w* as a shim does, loop until the last member leaves."""
    group: Group | None = None
    files: list[str] = []
    lock_fd: int | None = None
    directory = ""
    try:
        directory = group_path(root, name)
        groups = os.path.join(root, GROUPS_DIR)
        osutil.refuse_symlinks(groups, directory, missing_ok=True)
        for attempt in range(100):  # an ending group may remove the directory meanwhile
            os.makedirs(directory, mode=0o700, exist_ok=True)
            try:
                osutil.refuse_symlinks(groups, directory)
                diag = osutil.become_shim(directory, ready_w)  # as a shim
                break
            except FileNotFoundError:
                if attempt == 99:
                    raise
        lock_fd = _join_instead(root, name, container_id, ready_w, start_task)
        if lock_fd is None:
            return
        _own_log(directory)
        address = osutil.socket_path(directory)
        listener = osutil.bind_unix(address)
        files.append(address)
        group = Group(root, name, listener, address, diag)
        group.lock_fd = lock_fd
        group.nofile = _raise_nofile()
        ready = group.add(container_id, start_task,
                          created=lambda pid: launch.tell_task(ready_w, pid))
        files += osutil.write_reach_files(directory, address)
        diag.log("info", "group_ready", address=address, first=container_id)
        os.write(ready_w, b"ready " + json.dumps(ready).encode() + b"\n")
    except BaseException as exc:
        if group is not None:
            for member in list(group.members.values()):
                with contextlib.suppress(Exception):
                    member.abort()
                    member._remove_pid_files()
                    with contextlib.suppress(OSError):
                        os.unlink(member.address)
        osutil.report_start_failure(ready_w, exc, files)
        if lock_fd is not None:  # a group that never had a member leaves no directory
            remove_group_dir(directory, files[0] if files else "", lock_fd)
        return
    finally:
        os.close(ready_w)
    try:
        group.run()
    except BaseException:
        import traceback

        traceback.print_exc()  # fd 2 is the group's shim.log
        raise
