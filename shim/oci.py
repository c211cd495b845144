"""OCI runtimes (runc, crun) for the shim: a config.json from a Tether spec, a bundle, and a
driver that runs the runtime's commands the way containerd's runc shim does.

Standard library only (plus :mod:`events` and :mod:`shim.cgroups`): this runs inside every shim.

The life of a container, as the shim drives it (the shim is a child subreaper)::

    rt = OciCli("runc", root=state_root(ROOT, "runc"), log_path=f"{shim_dir}/runtime.log")
    bundle = prepare_bundle(spec, f"{shim_dir}/bundle")
    pid = rt.create(id, bundle, f"{shim_dir}/init.pid", stdout=out_w, stderr=err_w)
    # `runc create` has exited; its init (pid) is now the shim's child, stopped before the
    # user's program. Close out_w/err_w in the shim now (the container holds its own copies).
    oom = Cgroup.from_pid(pid).oom_watch()      # shim.cgroups; register oom.fileno()
    rt.start(id)
    ... waitpid(pid) -> the container's exit status (137 after SIGKILL, the code otherwise)
    oom.read() -> OOM kills not yet reported (call it on readable, and once after the exit)
    oom.close(); rt.delete(id)   # after the init is reaped: no --force needed, 10 ms not 100

Stop: ``os.kill(pid, SIGTERM)`` (the init is the shim's unreaped child, so the pid is safe;
``rt.kill`` costs one more runtime process) or ``rt.kill(id, sig, all=True)`` for every process;
wait; SIGKILL after the grace time. A SIGTERM that reaches a pid 1 with no handler is dropped
by the kernel: ``sleep`` as pid 1 never stops on SIGTERM, and with tini a SIGTERM sent right
after ``start`` returned was lost (measured: before the init has its handlers in place), so the
escalation to SIGKILL is what guarantees the stop.

Why each choice:

* ``--root ROOT/runc``: the runtime's state lives under Tether's root, so two Tether roots (and
  every test) never see each other's containers, and ``runc --root R list`` is per root.
* ``--log FILE --log-format json``: runc writes its errors there as JSON lines (and also to its
  stderr, which during ``create`` is the *container's* stderr pipe, so it cannot be read back).
  :class:`RuntimeFailed` carries the last ``error`` message word for word.
* The shim's pipe ends are ``create``'s stdin/stdout/stderr: with no terminal the runtime hands
  its own stdio to the container init, exactly as containerd does.
* A failed ``create`` runs ``delete --force`` and removes the pid file: nothing is left behind.

(Longer than our usual module: the bundle it writes and the driver that hands it to the runtime
change together, and a second module would be a second import for every OCI shim.)
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import json
import os
import signal as _signal
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from events.shim_api import write_atomic
from shim.cgroups import Layout, detect_layout
from shim.command import DEVNULL, PIPE, Completed, PreexecFailed, TimedOut, run_command

__all__ = [
    "DEFAULT_PATH",
    "INIT_PATH",
    "OCI_VERSION",
    "BundleError",
    "OCIError",
    "OciCli",
    "RuntimeFailed",
    "RuntimeNotFound",
    "default_cgroups_path",
    "find_init",
    "generate_config",
    "hide_unified_cgroup",
    "load_config",
    "make_process",
    "needs_private_cgroup_view",
    "prepare_bundle",
    "resolve_runtime",
    "state_root",
    "write_json",
]

OCI_VERSION = "1.0.2"
#: Added when the spec's env has no PATH: the runtime looks ``command[0]`` up in the
#: container's PATH, and an empty one would make ``sh`` unfindable (runc spec's default).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the init is bind-mounted in the container. Under /dev (a fresh tmpfs in every
#: container) so that nothing is ever written into the user's rootfs, which may be shared
#: between containers or read-only.
INIT_PATH = "/dev/tether-init"
#: Static tinis, in order of preference: a dynamic one cannot run in a rootfs without libc.
INIT_CANDIDATES = ("/usr/bin/tini-static", "/usr/local/bin/tini-static", "/sbin/tini-static",
                   "/usr/bin/docker-init", "/usr/libexec/docker/docker-init")
#: Where ``runc``/``crun`` are looked for when they are not on PATH (a detached shim may run
#: with a minimal PATH without the sbin directories).
RUNTIME_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin")
KNOWN_RUNTIMES = ("runc", "crun")

# runc spec (1.1.5) defaults, kept verbatim so that a Tether container is confined exactly like
# a container started from `runc spec`.
DEFAULT_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEFAULT_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
]
#: Tether namespace names -> OCI names. pid, ipc, uts and mount are always new; network only
#: when asked for ("net"), so that by default a container keeps the host's network like a
#: process-runtime container does.
NAMESPACES = {"pid": "pid", "ipc": "ipc", "uts": "uts", "mount": "mount", "net": "network"}
ALWAYS_NAMESPACES = ("pid", "ipc", "uts", "mount")
RLIMITS = {"nofile": "RLIMIT_NOFILE", "nproc": "RLIMIT_NPROC", "core": "RLIMIT_CORE",
           "memlock": "RLIMIT_MEMLOCK", "stack": "RLIMIT_STACK", "as": "RLIMIT_AS",
           "fsize": "RLIMIT_FSIZE", "cpu": "RLIMIT_CPU"}
CPU_PERIOD_US = 100_000


class OCIError(Exception):
    """Base of every error of this module; the message says what failed and where."""


class RuntimeNotFound(OCIError):
    """The runtime binary does not exist."""


class BundleError(OCIError):
    """The spec cannot become a bundle (no rootfs, a bad config.json, ...)."""


class RuntimeFailed(OCIError):
    """A runtime command failed. ``str(exc)`` holds the runtime's own error message word for
    word (from its JSON log, else its stderr), prefixed by the command when the runtime did
    not name it itself."""

    def __init__(self, message: str, *, command: Sequence[str], returncode: int | None,
                 words: str, missing: bool = False) -> None:
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        #: exactly what the runtime said
        self.words = words
        self._missing = missing

    @property
    def not_found(self) -> bool:
        """The container does not exist: its state directory (``ROOT/ID``, the same for runc
        and crun) was absent when the command failed; the runtimes' wordings differ too much
        (runc "container does not exist", crun "cannot open directory ...", "error opening
        file .../status") to rely on them alone."""
        return self._missing or "does not exist" in self.words


# -- resolving things on this machine -------------------------------------------------------


def resolve_runtime(name: str) -> str:
    """``"runc"``/``"crun"`` -> an absolute path (PATH, then the usual sbin/bin directories);
    an absolute path is used as is, if it is an executable file."""
    if os.path.isabs(name):
        if os.path.isfile(name) and os.access(name, os.X_OK):
            return name
        raise RuntimeNotFound(f"runtime {name!r} not found or not executable: install it or "
                              "pass the path of a runc-compatible binary")
    if name not in KNOWN_RUNTIMES:
        raise RuntimeNotFound(f"unknown runtime {name!r}: use 'runc', 'crun' or the absolute "
                              "path of a runc-compatible binary")
    # PATH then RUNTIME_DIRS, by hand: ``shutil.which`` would import shutil, 2 ms of every OCI
    # shim's start (measured through the launcher, which does not preload it)
    path_dirs = os.environ.get("PATH", os.defpath).split(os.pathsep)
    for directory in (*path_dirs, *RUNTIME_DIRS):
        path = os.path.join(directory or os.curdir, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return os.path.abspath(path)
    raise RuntimeNotFound(f"runtime {name!r} not found: install {name} or pass a path "
                          f"(looked in PATH and {', '.join(RUNTIME_DIRS)})")


def find_init() -> str:
    """A *static* tini to bind-mount as the container's pid 1 (``spec["init"]``)."""
    for path in INIT_CANDIDATES:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BundleError("init requested but no static tini found (looked for "
                      f"{', '.join(INIT_CANDIDATES)}): install tini (Debian's package ships "
                      "/usr/bin/tini-static), or run without --init")


def state_root(tether_root: str | os.PathLike[str], binary: str) -> str:
    """``ROOT/runc`` or ``ROOT/crun``: one state directory per runtime kind (their state
    formats differ), under Tether's root so that roots never share containers."""
    return os.path.join(os.fspath(tether_root), _kind(binary))


def _kind(binary: str) -> str:
    base = os.path.basename(binary)
    return "crun" if "crun" in base else "runc" if "runc" in base else base


# -- config.json ----------------------------------------------------------------------------


def generate_config(spec: Mapping[str, Any], rootfs: str, *, cgroups_path: str | None = None,
                    init_path: str | None = None) -> dict[str, Any]:
    """An OCI runtime config (``runc spec``'s defaults, no terminal) for a Tether spec.

    * ``root.path`` is *rootfs* made absolute, writable (``readonly: false``), since a
      Tether rootfs is a plain directory the user handed us.
    * ``linux.cgroupsPath`` is ``/tether/ID-INSTANCE`` (``/tether/ID`` without an instance)
      unless *cgroups_path* is given, so the shim knows where the container's cgroup is (OOM
      watch) without asking the runtime. The instance makes it unique per task: runc *joins*
      an existing cgroup without a word, so two containers with one path (the same id under
      two Tether roots, or a restart racing the old task's delete) would share limits, OOM
      counts and each other's ``delete`` (measured: runc then fails to rmdir, EBUSY).
    * ``spec["init"]``: a static tini (*init_path* or :func:`find_init`) is bind-mounted
      read-only at :data:`INIT_PATH` and runs as pid 1: ``[INIT_PATH, "--", *command]``. As
      pid 1 it reaps every orphan and forwards signals; its exit status is the command's
      (128 + signal when the command was killed).
    """
    command = spec.get("command") or []
    if (not isinstance(command, list | tuple) or not command
            or not all(isinstance(a, str) for a in command)):
        raise BundleError(f"spec command must be a non-empty list of strings: {command!r}")
    container_id = spec.get("id") or "tether"
    process = make_process(command, spec.get("env") or {}, spec.get("cwd"), spec.get("user"),
                           spec.get("rlimits") or {})
    mounts = copy.deepcopy(DEFAULT_MOUNTS)
    if spec.get("init"):
        init = init_path or find_init()
        mounts.append({"destination": INIT_PATH, "type": "bind", "source": init,
                       "options": ["bind", "ro", "nosuid", "nodev"]})
        process["args"] = [INIT_PATH, "--", *command]
    wanted = list(spec.get("namespaces") or [])
    unknown = [n for n in wanted if n not in NAMESPACES]
    if unknown:
        raise BundleError(f"unknown namespaces {unknown}; known: {sorted(NAMESPACES)}")
    namespaces = [{"type": NAMESPACES[n]} for n in ALWAYS_NAMESPACES]
    if "net" in wanted:
        namespaces.append({"type": "network"})
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": os.path.abspath(rootfs), "readonly": False},
        "hostname": container_id,
        "mounts": mounts,
        "linux": {
            "resources": _resources(spec.get("limits") or {}),
            "cgroupsPath": cgroups_path or default_cgroups_path(spec),
            "namespaces": namespaces,
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def default_cgroups_path(spec: Mapping[str, Any]) -> str:
    """``/tether/ID-INSTANCE`` (see :func:`generate_config`)."""
    container_id = spec.get("id") or "tether"
    instance = spec.get("instance")
    return f"/tether/{container_id}-{instance}" if instance else f"/tether/{container_id}"


def make_process(command: Sequence[str], env: Mapping[str, str] | None = None,
                 cwd: str | None = None, user: Mapping[str, Any] | None = None,
                 rlimits: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """An OCI ``process`` object: for config.json, and for ``exec --process`` on its own."""
    env = dict(env or {})
    env.setdefault("PATH", DEFAULT_PATH)
    cwd = cwd or "/"
    if not os.path.isabs(cwd):
        raise BundleError(f"cwd must be an absolute path inside the container: {cwd!r}")
    user = user or {}
    oci_user: dict[str, Any] = {"uid": int(user.get("uid", 0)), "gid": int(user.get("gid", 0))}
    if user.get("additional_gids"):
        oci_user["additionalGids"] = [int(g) for g in user["additional_gids"]]
    limits = {"nofile": (1024, 1024), **dict(rlimits or {})}
    oci_rlimits = []
    for name, value in limits.items():
        if name not in RLIMITS:
            raise BundleError(f"unknown rlimit {name!r}; known: {sorted(RLIMITS)}")
        soft, hard = value
        oci_rlimits.append({"type": RLIMITS[name], "soft": int(soft), "hard": int(hard)})
    return {
        "terminal": False,
        "user": oci_user,
        "args": list(command),
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {k: list(DEFAULT_CAPABILITIES)
                         for k in ("bounding", "effective", "permitted", "ambient")},
        "rlimits": oci_rlimits,
        "noNewPrivileges": True,
    }


def _resources(limits: Mapping[str, Any]) -> dict[str, Any]:
    resources: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.get("memory") is not None:
        resources["memory"] = {"limit": int(limits["memory"])}
    if limits.get("cpus") is not None:
        quota = max(1000, int(float(limits["cpus"]) * CPU_PERIOD_US))
        resources["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if limits.get("pids") is not None:
        resources["pids"] = {"limit": int(limits["pids"])}
    return resources


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomically (temp + rename): a runtime never reads half a config. Not fsynced: the shim
    regenerates config.json on every start and removes an exec's process.json once used, so
    neither is read after a power loss (which takes the container and its shim down too)."""
    write_atomic(path, json.dumps(obj, indent=1).encode(), mode=0o600, durable=False)


def load_config(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """A bundle's config.json, or :class:`BundleError` naming the file and the problem."""
    path = os.path.join(os.fspath(bundle), "config.json")
    try:
        with open(path, "rb") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise BundleError(f"bundle {bundle}: no config.json ({path} does not exist)") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle {bundle}: cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("process"), dict):
        raise BundleError(f"bundle {bundle}: {path} is not an OCI config (no 'process' object)")
    return config


def prepare_bundle(spec: Mapping[str, Any], bundle_dir: str | os.PathLike[str],
                   **config_options: Any) -> str:
    """The bundle directory the runtime should use, as an absolute path.

    * ``spec["bundle"]``: the user's own bundle, used as is after checking that its
      config.json exists and parses (limits and init of the spec do not apply to it).
    * ``spec["rootfs"]``: a config.json generated by :func:`generate_config` is written
      atomically into *bundle_dir* (the shim's own, e.g. ``ROOT/shims/ID/bundle``), pointing at
      the rootfs by absolute path; *config_options* go to :func:`generate_config`.
    """
    bundle, rootfs = spec.get("bundle"), spec.get("rootfs")
    if bundle and rootfs:
        raise BundleError("spec has both 'bundle' and 'rootfs': pass one")
    if bundle:
        path = os.path.abspath(str(bundle))
        load_config(path)
        return path
    if not rootfs:
        raise BundleError(f"runtime {spec.get('runtime')!r} needs a rootfs or a bundle")
    rootfs = os.path.abspath(rootfs)
    if not os.path.isdir(rootfs):
        raise BundleError(f"rootfs {rootfs} is not a directory")
    config = generate_config(spec, rootfs, **config_options)
    bundle_dir = os.path.abspath(bundle_dir)
    os.makedirs(bundle_dir, mode=0o700, exist_ok=True)
    write_json(os.path.join(bundle_dir, "config.json"), config)
    return bundle_dir


# -- crun on a hybrid cgroup layout ---------------------------------------------------------

_CLONE_NEWNS = 0x00020000
_MS_REC = 0x4000
_MS_SLAVE = 1 << 19
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8


def needs_private_cgroup_view(binary: str, layout: Layout | None = None) -> bool:
    """crun (1.8) refuses a hybrid layout ("cgroups in hybrid mode not supported, drop all
    controllers from cgroupv2"): v1 controllers plus a cgroup2 at /sys/fs/cgroup/unified.
    It is happy with plain v1, which is what it sees once that mount is hidden."""
    if _kind(binary) != "crun":
        return False
    layout = layout or detect_layout()
    return layout.version == 1 and layout.hybrid


def hide_unified_cgroup(mountpoint: str = "/sys/fs/cgroup/unified") -> None:
    """Make the calling process see plain cgroup v1: a private mount namespace in which a small
    private tmpfs covers the cgroup2 mount. The host's mounts are untouched (the namespace is
    made a slave first, so nothing propagates back).

    A tmpfs, not a plain umount: crun in v1 mode still treats the ``0::`` line of
    /proc/self/cgroup as a hierarchy at /sys/fs/cgroup/unified and mkdirs there and writes a
    ``cgroup.procs``; after a umount those land in the host's /sys/fs/cgroup tmpfs, hidden
    under the real mount, and leak forever (measured). In a private tmpfs they vanish with
    the namespace.

    Used as the ``preexec_fn`` of every crun command (a child, single-threaded, between fork
    and exec); a shim that runs only crun can call it once on itself instead (cheaper per
    command, see bench/oci.py). The containers' cgroups are the same kernel objects either
    way: only crun's view changes.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rslave /")
    if libc.mount(b"tmpfs", os.fsencode(mountpoint), b"tmpfs", _MS_NOSUID | _MS_NODEV
                  | _MS_NOEXEC, b"mode=755,size=1m") != 0:
        raise OSError(ctypes.get_errno(), f"mount tmpfs on {mountpoint}")


# -- the driver -----------------------------------------------------------------------------


StdioFd = int | None


class OciCli:
    """The runtime's command line, run synchronously, the way containerd's runc shim runs it.

    *binary*: ``"runc"``, ``"crun"`` or a path (see :func:`resolve_runtime`). *root*: the state
    directory (``--root``; :func:`state_root` gives Tether's), None for the runtime's global
    default. *log_path*: the runtime's JSON log (``--log``), where its errors are read from.
    *hide_unified*: run every command in a private mount namespace without the cgroup2 mount
    (None: when :func:`needs_private_cgroup_view` says so).
    """

    def __init__(self, binary: str, root: str | os.PathLike[str] | None,
                 log_path: str | os.PathLike[str], *, hide_unified: bool | None = None,
                 timeout: float = 60.0) -> None:
        self.binary = resolve_runtime(binary)
        self.kind = _kind(self.binary)
        self.root = os.fspath(root) if root is not None else None
        self.log_path = os.path.abspath(os.fspath(log_path))
        self.timeout = timeout
        if hide_unified is None:  # reads the mount table for crun only
            hide_unified = needs_private_cgroup_view(self.binary)
        self._preexec: Callable[[], None] | None = None
        if hide_unified:
            layout = detect_layout()
            if os.geteuid() != 0:
                raise OCIError(f"{self.kind} cannot run on this hybrid cgroup layout, and hiding "
                               f"{layout.unified.mountpoint if layout.unified else 'cgroup2'} "
                               "needs root (a private mount namespace)")
            unified = layout.unified.mountpoint if layout.unified else "/sys/fs/cgroup/unified"
            self._preexec = lambda: hide_unified_cgroup(unified)
        self.hides_unified = bool(hide_unified)

    def __repr__(self) -> str:
        return f"OciCli({self.binary!r}, root={self.root!r})"

    # -- commands ---------------------------------------------------------------------------

    def create(self, container_id: str, bundle: str, pid_file: str, *, stdin: StdioFd = None,
               stdout: StdioFd = None, stderr: StdioFd = None) -> int:
        """``create --bundle B --pid-file P ID`` with the given fds as the container's stdio
        (None: /dev/null). Returns the container init's pid: once this returns, the init is a
        child of the calling subreaper, stopped before the user's program until :meth:`start`.

        On failure (the runtime's words in :class:`RuntimeFailed`) the container is deleted
        with ``--force`` and the pid file removed.
        """
        return self._launch(["create"], container_id, bundle, pid_file,
                            (stdin, stdout, stderr))

    def start(self, container_id: str) -> None:
        """``start ID``: the init execs the user's program."""
        self._run(["start", container_id], container_id)

    def run(self, container_id: str, bundle: str, pid_file: str, *, stdin: StdioFd = None,
            stdout: StdioFd = None, stderr: StdioFd = None) -> int:
        """``run --detach --bundle B --pid-file P ID``: :meth:`create` and :meth:`start` in one
        runtime process (one fork, exec and Go start-up less). Returns the init's pid, already
        running the user's program and reparented to the calling subreaper. On failure, as
        :meth:`create`: deleted with ``--force``, the pid file removed; an executable the
        runtime cannot find fails here too (runc looks it up before it starts anything)."""
        return self._launch(["run", "--detach"], container_id, bundle, pid_file,
                            (stdin, stdout, stderr))

    def _launch(self, verb: list[str], container_id: str, bundle: str, pid_file: str,
                stdio: tuple[StdioFd, StdioFd, StdioFd]) -> int:
        """``create`` or ``run --detach`` with the bundle and pid file: the init's pid; on
        failure the container deleted with ``--force`` and the pid file removed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
        args = [*verb, "--bundle", os.path.abspath(bundle), "--pid-file", pid_file,
                container_id]
        try:
            self._run(args, container_id, stdio=stdio)
            pid = _read_pid(pid_file)
        except BaseException:
            self._cleanup(container_id, pid_file)
            raise
        return pid

    def kill(self, container_id: str, sig: int = _signal.SIGTERM, all: bool = False) -> None:
        """``kill [--all] ID SIG``: *all* signals every process of the container (its cgroup)."""
        args = ["kill", *(["--all"] if all else []), container_id, str(int(sig))]
        self._run(args, container_id)

    def delete(self, container_id: str, force: bool = False, missing_ok: bool = False) -> None:
        """``delete [--force] ID``: after the init has been reaped (without *force*, the runtime
        refuses a running container). Removes the state and the cgroup. *missing_ok*: a
        container the runtime does not know is already deleted, so a retried delete (after a
        crash half-way) succeeds."""
        try:
            self._run(["delete", *(["--force"] if force else []), container_id], container_id)
        except RuntimeFailed as exc:
            if not (missing_ok and exc.not_found):
                raise

    def state(self, container_id: str) -> dict[str, Any]:
        """``state ID``: ``{"id", "pid", "status": created|running|stopped, "bundle", ...}``."""
        out = self._run(["state", container_id], container_id)
        return _parse_json(out, f"{self.kind} state {container_id}")

    def list(self) -> list[dict[str, Any]]:
        """``list --format json``: every container under this root."""
        out = self._run(["list", "--format", "json"], "")
        parsed = json.loads(out) if out.strip() else None
        return list(parsed or [])

    def exec(self, container_id: str, process_path: str, pid_file: str, *,
             stdin: StdioFd = None, stdout: StdioFd = None, stderr: StdioFd = None,
             detach: bool = True) -> int:
        """``exec --process P --pid-file F [--detach] ID``: another process in the container.

        With *detach* (what the shim uses) the runtime returns once the process runs, and the
        process's pid is returned: it is reparented to the subreaper, which waitpids it. Without
        *detach* the runtime waits for it, and its exit status is returned.
        """
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)
        args = ["exec", "--process", os.path.abspath(process_path), "--pid-file", pid_file,
                *(["--detach"] if detach else []), container_id]
        if detach:
            self._run(args, container_id, stdio=(stdin, stdout, stderr))
            return _read_pid(pid_file)
        return self._spawn(args, (stdin, stdout, stderr)).returncode

    # -- plumbing ---------------------------------------------------------------------------

    def command(self, args: Sequence[str]) -> builtins.list[str]:
        """The full command line for *args* (global options first)."""
        log = f"file:{self.log_path}" if self.kind == "crun" else self.log_path
        base = [self.binary]
        if self.root is not None:
            base += ["--root", self.root]
        return [*base, "--log", log, "--log-format", "json", *args]

    def _spawn(self, args: Sequence[str], stdio: tuple[StdioFd, StdioFd, StdioFd] | None
               ) -> Completed:
        """Run the runtime. *stdio* None: a control command, its stdout and stderr captured.
        Otherwise the fds the container's process gets (None: /dev/null) and nothing is
        captured: a pipe of ours handed to the container would never see EOF while the
        container runs, and waiting for it would hang."""
        cmd = self.command(args)
        if stdio is None:
            fds = [DEVNULL, PIPE, PIPE]
        else:
            fds = [DEVNULL if fd is None else fd for fd in stdio]
        try:
            return run_command(cmd, fds, self.timeout, self._preexec)
        except TimedOut:
            raise RuntimeFailed(f"{' '.join(cmd)}: no answer after {self.timeout} s (killed)",
                                command=cmd, returncode=None, words="timed out") from None
        except PreexecFailed as exc:  # only hide_unified_cgroup runs there
            raise RuntimeFailed(
                f"{' '.join(cmd)}: could not enter a private mount namespace without the "
                f"cgroup2 mount (unshare + umount): {exc}",
                command=cmd, returncode=None, words=str(exc)) from None
        except OSError as exc:
            raise RuntimeFailed(f"{' '.join(cmd)}: {exc.strerror}", command=cmd,
                                returncode=None, words=str(exc.strerror)) from None

    def _run(self, args: Sequence[str], container_id: str, *,
             stdio: tuple[StdioFd, StdioFd, StdioFd] | None = None) -> bytes:
        offset = _size(self.log_path)
        proc = self._spawn(args, stdio)
        if proc.returncode == 0:
            return proc.stdout or b""
        words = (_last_error(self.log_path, offset)
                 or (proc.stderr or b"").decode(errors="replace").strip()
                 or f"exited with status {proc.returncode}")
        what = f"{self.kind} {args[0]} {container_id}".rstrip()
        message = words if words.startswith(f"{self.kind} {args[0]}") else f"{what}: {words}"
        missing = bool(self.root and container_id and args[0] != "create"
                       and not os.path.isdir(os.path.join(self.root, container_id)))
        raise RuntimeFailed(message, command=proc.args, returncode=proc.returncode, words=words,
                            missing=missing)

    def _cleanup(self, container_id: str, pid_file: str) -> None:
        """After a failed create: whatever the runtime made goes (state, cgroup, init)."""
        with contextlib.suppress(RuntimeFailed):
            self.delete(container_id, force=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_file)


def _read_pid(pid_file: str) -> int:
    try:
        with open(pid_file) as f:
            return int(f.read().strip())
    except (OSError, ValueError) as exc:
        raise RuntimeFailed(f"pid file {pid_file}: {exc}", command=[], returncode=None,
                            words=str(exc)) from None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _last_error(log_path: str, offset: int) -> str:
    """The last error-level message the runtime logged after *offset* (runc and crun both log
    one JSON object per line: ``{"level": "error", "msg": "...", "time": ...}``)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return ""
    found = ""
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            found = str(entry.get("msg", ""))
    return found


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError as exc:
        raise RuntimeFailed(f"{what}: unreadable output {data[:200]!r}", command=[],
                            returncode=0, words=str(exc)) from None
    if not isinstance(parsed, dict):
        raise RuntimeFailed(f"{what}: expected a JSON object, got {data[:200]!r}", command=[],
                            returncode=0, words="")
    return parsed
