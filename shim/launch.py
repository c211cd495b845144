"""``shim start``: double fork a detached shim and report once it is ready.

The starter (supervisord's child) forks an intermediate that calls ``setsid`` and forks the
shim, then exits: the shim is never a child of its starter, so the starter (and supervisord)
may die at any time. The shim reports over a *ready pipe*, the only fd it keeps from the
starter: ``pid N`` (from the intermediate), then ``ready {json}`` or ``error <reason>``. The
starter prints the JSON line and exits 0, or prints the reason and exits 1 after making sure the
shim is gone (a shim that failed kills its own container first). Because the shim closes every
other inherited fd, a caller that gave the starter pipes (``subprocess`` with ``stdout=PIPE``)
sees EOF as soon as the starter exits.

Before ``ready`` the shim also names its started task (``task PID STARTTIME``, before the task
is let run): with the shim dead no one else would end it. A starter whose shim went silent ends
it (:func:`end_task`) and, for runc or crun, deletes the container the shim may have been
making (:func:`end_container`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from events import procfs, shim_api
from shim import osutil

#: How long the starter waits for ready: creating a process takes milliseconds; this only
#: bounds a wedged start (a hung filesystem) so supervisord is never stuck on it.
READY_TIMEOUT = 30.0
#: How long a shim that reported an error may take to exit before the starter SIGKILLs it.
ERROR_EXIT_TIMEOUT = 2.0
#: How long a starter whose shim went silent waits for the runtime command that shim was
#: running (``runc run``/``create`` take tens of milliseconds) to end by itself before it
#: SIGKILLs it: killed mid-way, the runtime may leave half a container (a state directory
#: without its state, a cgroup) that ``delete --force`` cannot see. It bounds a wedged
#: runtime, which also holds up the launcher's other starts meanwhile.
RUNTIME_WAIT = 10.0


def start(root: str, container_id: str, ready_timeout: float = READY_TIMEOUT,
          start_task: bool = False) -> int:
    """The ``start`` command (with *start_task*, ``run``); returns the exit code. A member of
    a shared shim (``shim_group`` in its spec) joins its live group, or starts it."""
    group = shim_api.read_group(shim_api.shim_path(root, container_id))
    answer = None
    if group is not None:
        from shim import group as groups

        answer = groups.ask(root, group, container_id, start_task)
    if isinstance(answer, dict):  # the ready map, as the group's reply had it
        sys.stdout.write(json.dumps(answer) + "\n")
        return 0
    if answer is not None:
        sys.stderr.write(answer + "\n")
        return 1
    ready_r, _middle = detach(root, container_id, start_task=start_task, group=group)
    ok, text = outcome(container_id, read_lines(ready_r, time.monotonic() + ready_timeout),
                       ready_timeout, _cmdline(os.getpid()))
    os.close(ready_r)
    (sys.stdout if ok else sys.stderr).write(text + "\n")
    (sys.stdout if ok else sys.stderr).flush()
    return 0 if ok else 1


def detach(root: str, container_id: str, title: list[str] | None = None, reap: bool = True,
           start_task: bool = False, group: str | None = None) -> tuple[int, int]:
    """Fork the intermediate that ``setsid``s and forks the shim; returns ``(ready_r, middle)``.

    With *reap*, the intermediate has exited and been reaped when this returns: the shim is
    nobody's child here. Without, the caller reaps it (the launcher does, without waiting on
    each). Both ``shim start`` and the launcher (:mod:`shim.launcher`) come through here.
    With *title*, the shim's command line is rewritten to it (a launcher's child would
    otherwise carry the launcher's command line). With *start_task*, the first task is
    started too before the shim reports ready (the single create-and-start request).
    With *group*, the process is a new shared shim (:func:`shim.group.serve`) whose first
    member is *container_id*.
    """
    ready_r, ready_w = os.pipe()

    def shim() -> None:
        nonlocal title
        if group is not None and title is None:
            # not the first member's: a group outlives it, and the daemon looks for a
            # starting shim of an id by its title (shims.starting_shims)
            title = group_title(root, group)
        if title is not None:
            osutil.set_title(title, f"shim {group or container_id}")
        if group is not None:
            from shim import group as groups

            groups.serve(root, group, container_id, ready_w, start_task)
        else:
            serve(root, container_id, ready_w, start_task)

    middle = _double_fork(ready_w, (ready_r,), shim)
    os.close(ready_w)
    if reap:
        os.waitpid(middle, 0)
    return ready_r, middle


def _double_fork(ready_w: int, close: tuple[int, ...], body: Callable[[], None]) -> int:
    """Fork the intermediate, which closes *close*, ``setsid``s, forks the process that runs
    *body* (then exits), writes ``pid N`` of it on *ready_w* and exits: returns the
    intermediate's pid, for the caller to reap. The process is never the caller's child."""
    middle = os.fork()
    if middle == 0:
        try:
            for fd in close:
                os.close(fd)
            os.setsid()
            child = os.fork()
            if child == 0:
                try:
                    body()
                finally:
                    os._exit(0)
            os.write(ready_w, b"pid %d\n" % child)
        finally:
            os._exit(0)
    return middle


def start_title(root: str, container_id: str) -> list[str]:
    """A shim's command line, wherever it was forked: ``shim start`` naming its container
    (operators, the tests' leak guard and :func:`supervisor.shims.starting_shims` read it)."""
    return [sys.executable, "-I", "-m", "shim", "start", "--root", root, "--id", container_id]


class Spare:
    """A shim forked ahead of its request (:func:`prefork`), waiting for its container's id.

    The launcher keeps one while it is idle, so that a start does not wait for two forks of
    the launcher's heap (the intermediate and the shim), which are most of the time between
    the daemon's request and the shim's first step. ``ctl`` is the write end of its control
    pipe: the line ``ID run`` (or ``ID create``) hands it the start; closing it instead ends
    it unused. ``ready_r`` is its ready pipe, as :func:`detach` returns it, its first line
    (``pid N``) already read into ``pid``."""

    __slots__ = ("ctl", "pid", "ready_r")

    def __init__(self, pid: int, ctl: int, ready_r: int) -> None:
        self.pid = pid
        self.ctl = ctl
        self.ready_r = ready_r

    def hand(self, container_id: str, start_task: bool) -> bool:
        """Give it the start of *container_id*; False if it is gone (nothing was started: fork
        a shim as usual). Its fds are ours to close either way (``ready_r`` on success: read it
        as a :func:`detach`'s)."""
        line = f"{container_id} {'run' if start_task else 'create'}\n".encode()
        try:
            done = os.write(self.ctl, line) == len(line)
        except OSError:  # it died (EPIPE): never used
            done = False
        os.close(self.ctl)
        if not done:
            os.close(self.ready_r)
        return done

    def close(self, wait: float = 1.0) -> None:
        """End it unused: EOF on its control pipe, and wait (bounded) until it is gone, so that
        nothing of ours outlives the launcher."""
        os.close(self.ctl)
        os.close(self.ready_r)
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)
            try:
                select.select([pidfd], [], [], wait)
            finally:
                os.close(pidfd)


def prefork(root: str, timeout: float = 5.0) -> tuple[Spare, int]:
    """Fork a :class:`Spare` as :func:`detach` forks a shim (an intermediate that ``setsid``s,
    forks it and exits): ``(the spare, the intermediate's pid)``, which the caller reaps.
    :class:`OSError` if it could not be made (nothing is left)."""
    ready_r, ready_w = os.pipe()
    try:
        ctl_r, ctl_w = os.pipe()
    except OSError:
        os.close(ready_r)
        os.close(ready_w)
        raise
    middle = _double_fork(ready_w, (ready_r, ctl_w), lambda: _wait_as_spare(root, ctl_r, ready_w))
    os.close(ready_w)
    os.close(ctl_r)
    kind, value = (read_lines(ready_r, time.monotonic() + timeout, first=True) or
                   [("", "")])[0]
    if kind != "pid" or not value.isdigit():
        os.close(ctl_w)  # a spare that did start sees EOF and leaves
        os.close(ready_r)
        raise OSError(f"the spare shim's intermediate said {kind!r} {value!r}, not its pid")
    return Spare(int(value), ctl_w, ready_r), middle


def _wait_as_spare(root: str, ctl_r: int, ready_w: int) -> None:
    """The spare: nothing of the launcher's kept (its channel, other starts' pipes), a title
    of its own, then wait for a container id; serve it as a shim, or leave at EOF."""
    osutil.close_fds({ctl_r, ready_w})
    osutil.set_title([sys.executable, "-I", "-m", "shim", "spare", "--root", root],
                     "shim spare")
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(ctl_r, 256)
        if not chunk:
            return  # the launcher went away, or closed it unused
        data += chunk
    os.close(ctl_r)
    container_id, _, how = data.decode(errors="replace").strip().partition(" ")
    osutil.set_title(start_title(root, container_id), f"shim {container_id}")
    serve(root, container_id, ready_w, start_task=how == "run")


def group_title(root: str, group: str) -> list[str]:
    """A shared shim's command line: ``shim start`` naming its group, not the id of the member
    it began with (the daemon looks for a starting shim of an id by its title)."""
    return [sys.executable, "-I", "-m", "shim", "start", "--root", root, "--group", group]


def outcome(container_id: str, lines: list[tuple[str, str]], ready_timeout: float,
            own_cmdline: bytes | None) -> tuple[bool, str]:
    """``(True, ready JSON)`` or ``(False, the line `shim start` prints on stderr)``.

    A shim that neither reported ready nor an error (wedged, or killed) is SIGKILLed if its
    pid still runs *own_cmdline* (so it is still the shim, not a reused pid): a half-started
    shim is never left behind.
    """
    shim_pid = next((int(v) for k, v in lines if k == "pid"), 0)
    for kind, value in lines:
        if kind == "ready":
            return True, value
    reason = next((v for k, v in lines if k == "error"), None)
    if reason is not None and shim_pid:
        # it reported its failure and is exiting: "leaves nothing running" holds once it is
        # gone, not merely once it closed the pipe (a caller may look right away)
        _wait_gone(shim_pid, ERROR_EXIT_TIMEOUT)
    if reason is None:  # silent: wedged or killed. Never leave a half-started shim behind
        reason = f"{shim_api.NO_READY} within {ready_timeout:g} s or died"
        now = _cmdline(shim_pid) if shim_pid else None
        if now is not None and own_cmdline is not None and \
                now.rstrip(b"\0") == own_cmdline.rstrip(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim_pid, signal.SIGKILL)
            _wait_gone(shim_pid, ERROR_EXIT_TIMEOUT)  # it spawns no runtime command after
        end_task(lines)
        root = _root_of(own_cmdline)
        left = end_container(root, container_id) if root is not None else None
        if left:
            reason += f"; {left}"
    return False, f"shim start {container_id}: {reason}"


def _wait_gone(pid: int, timeout: float) -> None:
    """Until *pid* (not our child: polled in /proc) has exited, or is a zombie, or is another
    process (its start time changed); SIGKILLed if it still lives after *timeout*."""
    def started() -> int | None:
        stat = procfs.read_stat(pid)
        return stat.starttime if stat is not None and stat.alive else None

    first = started()
    deadline = time.monotonic() + timeout
    while first is not None and started() == first:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.0005)


def _cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return None


def read_lines(fd: int, deadline: float, first: bool = False) -> list[tuple[str, str]]:
    """Read the ready pipe until ``ready``, EOF or *deadline* (*first*: until its first whole
    line, byte by byte so that nothing after it is consumed); parsed by :func:`parse_lines`."""
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 1 if first else 65536)
        if not chunk:
            break
        data += chunk
        if is_complete(data) or (first and data.endswith(b"\n")):
            break
    return parse_lines(data)


def is_complete(data: bytes) -> bool:
    """The ready pipe said all it will say (``ready`` ends it; else EOF does)."""
    return b"\nready " in b"\n" + data and data.endswith(b"\n")


def tell_task(ready_w: int, pid: int) -> None:
    """Say on the ready pipe which process the task's init is (``task PID STARTTIME``), before
    it is let run: a starter whose shim dies before ``ready`` ends it (:func:`end_task`)."""
    os.write(ready_w, b"task %d %d\n" % (pid, procfs.starttime(pid) or 0))


def end_task(lines: list[tuple[str, str]]) -> None:
    """SIGKILL the process group of the task a silent shim started, if the ready pipe named one
    (``task PID STARTTIME``) and that process still runs: no one will be told of it, and with
    its shim gone nothing else would ever end it. The start time proves the pid is still the
    task's; the task leads its own process group (the process runtime's ``setsid``), which
    holds what it started."""
    for kind, value in lines:
        if kind != "task":
            continue
        pid, _, started = value.partition(" ")
        if not (pid.isdigit() and started.isdigit()) or int(pid) <= 1:
            continue
        if procfs.starttime(int(pid)) == int(started) != 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)


def _root_of(cmdline: bytes | None) -> str | None:
    """The root a ``shim start`` command line names (:func:`start_title`: the starter's own,
    or the title it gave the shim), or None."""
    argv = (cmdline or b"").split(b"\0")
    if b"--root" not in argv[:-1]:
        return None
    return os.fsdecode(argv[argv.index(b"--root") + 1]) or None


def end_container(root: str, container_id: str, wait: float = RUNTIME_WAIT) -> str | None:
    """Delete the runc/crun container a silent shim may have been making (its spec names an
    OCI runtime): with its shim gone no one would ever end it, nor tell anyone of it. None
    when nothing is left (deleted, or never made); else what is left and why, for the
    start's error.

    Called once the shim is gone, so it starts no runtime command any more; one it started
    may still run and make the container after this looked. So: first wait until no runtime
    command of this container runs any more (found by its command line, which is the shim's
    (:class:`shim.runtime_oci.OciRuntime`): the binary, the state root and log, the id last;
    a runtime process in our pid namespace, not a container's own process), SIGKILLed after
    *wait*; then ``delete --force``, which ends whatever the container runs and removes its
    state and cgroup (and, after a runtime that died half-way, the state directory it left
    without a state). A command the shim had spawned has exec'd the runtime by the time the
    ready pipe reads EOF: the spawned child holds a copy of the pipe's write end until its
    exec (close-on-exec). Nothing is said on the ready pipe before the runtime runs: a line
    there would wake the starter (the launcher) on every start's path."""
    directory = shim_api.shim_path(os.path.abspath(root), container_id)
    try:
        runtime = shim_api.read_spec(directory).get("runtime") or "process"
    except (OSError, ValueError):
        return None  # no spec, no shim made anything of it
    if runtime == "process":
        return None
    from shim import oci

    try:
        binary = oci.resolve_runtime(runtime)
        cli = oci.OciCli(binary, oci.state_root(os.path.abspath(root), binary),
                         os.path.join(directory, "runtime.log"))
    except oci.OCIError as exc:
        return f"its {runtime} container could not be deleted: {exc}"
    _wait_commands(cli.command([]), container_id, wait)
    try:
        cli.delete(container_id, force=True, missing_ok=True)
    except oci.RuntimeFailed as exc:
        return f"its {cli.kind} container could not be deleted: {exc}"
    return None


def _wait_commands(prefix: list[str], container_id: str, wait: float) -> None:
    """Until no process in our pid namespace runs ``PREFIX... CONTAINER_ID`` (a runtime
    command of that container); SIGKILLed after *wait*, then waited for a little more."""
    head = [os.fsencode(arg) for arg in prefix]
    last = os.fsencode(container_id)
    try:
        ours = os.readlink("/proc/self/ns/pid")
    except OSError:
        ours = None
    deadline = time.monotonic() + wait
    killed_at: float | None = None
    while True:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            argv = (_cmdline(int(entry)) or b"").split(b"\0")[:-1]
            if len(argv) <= len(head) or argv[:len(head)] != head or argv[-1] != last:
                continue
            try:
                theirs = os.readlink(f"/proc/{entry}/ns/pid")
            except OSError:  # gone meanwhile
                continue
            if ours is None or theirs == ours:  # else a container's process, not the runtime
                found.append(int(entry))
        now = time.monotonic()
        if not found or (killed_at is not None and now > killed_at + ERROR_EXIT_TIMEOUT):
            return
        if now > deadline and killed_at is None:
            killed_at = now
            for pid in found:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)


def parse_lines(data: bytes) -> list[tuple[str, str]]:
    lines = []
    for line in data.decode(errors="replace").splitlines():
        kind, _, value = line.partition(" ")
        lines.append((kind, value))
    return lines


def serve(root: str, container_id: str, ready_w: int, start_task: bool = False) -> None:
    """The shim process: detach from everything inherited, create the container (and, with
    *start_task*, start it), report, loop."""
    from shim.command import last_ran
    from shim.server import Shim, make_runtime

    shim: Shim | None = None
    files: list[str] = []
    forked = time.time_ns()
    try:
        directory = shim_api.shim_path(root, container_id)
        osutil.refuse_symlinks(os.path.join(root, "shims"), directory)
        diag = osutil.become_shim(directory, ready_w)
        osutil.take_lock(directory)  # held (fd open) until we exit
        spec = osutil.read_own_spec(directory, container_id)
        address = osutil.socket_path(directory)
        listener = osutil.bind_unix(address)
        files = [address]
        files += osutil.write_reach_files(directory, address)
        for name in (shim_api.EXIT_FILE, shim_api.CONTAINER_LOG):  # written into, or renamed over
            osutil.refuse_symlinks(os.path.join(directory, name), missing_ok=True)
        shim = Shim(directory, spec, listener, address, make_runtime(spec, directory), diag)
        set_up = time.time_ns()
        task = shim.create(start_task, created=lambda pid: tell_task(ready_w, pid),
                           watch_oom=False)
        # when each step ended (unix ns; bench/phases.py reads them): the shim began, was set
        # up (log, lock, spec, socket, runtime), the runtime returned; created_at, started_at
        # and this line's own time follow (the OOM watch is set up after the ready line).
        # The runtime's command (runc run): spawned, its end seen, its CPU time
        phases = {"forked": forked, "set_up": set_up, "runtime": shim.task.runtime_at}
        ran = last_ran()
        if ran is not None and ran.spawned_ns >= set_up:
            phases.update(command_spawned=ran.spawned_ns, command_exited=ran.exited_ns,
                          command_cpu_ns=ran.cpu_ns)
        diag.log("info", "ready", address=address, instance=spec["instance"], **task,
                 phases=phases)
        ready = {"pid": os.getpid(), "address": address, **task}
        os.write(ready_w, b"ready " + json.dumps(ready).encode() + b"\n")
        shim.task.watch_oom()  # off the start's path: before the loop, so before any exit
    except BaseException as exc:
        if shim is not None:
            shim.abort()
        osutil.report_start_failure(ready_w, exc, files)
        return
    finally:
        os.close(ready_w)
    try:
        shim.run()
    except BaseException:
        import traceback

        traceback.print_exc()  # fd 2 is shim.log
        raise
