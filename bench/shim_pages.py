"""Where a launcher-forked shim's private memory goes: its unshared pages, by module.

    sudo .venv/bin/python bench/shim_pages.py [--shims 20] [--top 25] [--runtime runc]

A shim forked from the launcher starts with every page shared with it (copy-on-write); what it
costs on its own (most of its PSS) is the pages it has written since: new allocations, and
objects of the launcher's heap whose reference counts it changed (CPython 3.11 writes to every
object it touches, ``gc.freeze()`` or not). This tool shows which:

1. it starts an instrumented launcher (the real ``shim.launcher``, on a socketpair it serves as
   supervisord would) which, after its preload, records the address and size of every object
   reachable from each module (each object counted once, for the first module that reaches it:
   ``shim.*`` and ``events.*`` first);
2. it starts N real shims (``sleep``; process runtime, or ``--runtime runc``/``crun`` with a
   busybox rootfs) through it, and lets them settle;
3. it reads ``/proc/PID/pagemap`` of the launcher and of each shim (root: the page frame numbers)
   and counts, in the heap and anonymous mappings, the pages present in the shim whose frame
   differs from the launcher's (private: written by the shim), then charges each such page to
   the module owning most of the recorded bytes in it; ``(no recorded object)`` is new
   allocations and allocator bookkeeping. libpython's own writable data (static types, small
   ints, singletons) is counted apart. Code objects are also charged by function (which code
   a shim ran: its reference count, warm-up counter or quickened bytecode was written).

Everything it starts ends at exit (the launcher leaves when its channel closes; the shims are
deleted through their sockets and their processes killed by pid).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from events import shim_api, wire  # noqa: E402
from events.rpc import BlockingConnection  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")

#: Run inside the launcher's interpreter: preload, record who owns what, then serve.
LAUNCHER_CODE = r"""
import builtins, gc, sys
from shim import launcher
launcher.preload()
out, root, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
mods = sorted(((n, m) for n, m in sys.modules.items() if n != "__main__"), key=lambda kv: (
    not kv[0].startswith(("shim.", "events.")), kv[0]))
mods.append(("builtins", builtins))  # last: every module's __builtins__ leads there
seen = {id(builtins.__dict__), id(sys.modules)}
rows = []
for name, mod in mods:
    if mod is None:
        continue
    stack = [mod]
    while stack:
        obj = stack.pop()
        i = id(obj)
        if i in seen:
            continue
        seen.add(i)
        kind = type(obj).__name__
        if kind == "code":  # by function: which code a shim runs (its page is written)
            kind = "code " + obj.co_filename.rsplit("/", 2)[-1] + ":" + obj.co_qualname
        rows.append((i, sys.getsizeof(obj), name, kind))
        if isinstance(obj, type(sys)) and obj is not mod:
            continue  # another module: it is walked from its own root
        if obj is mod and name == "builtins":
            stack.extend(gc.get_referents(builtins.__dict__))
        stack.extend(gc.get_referents(obj))
with open(out, "w") as f:
    for r in rows:
        f.write("%d %d %s %s\n" % r)
del rows, seen, mods, stack
sys.exit(launcher.main(root, fd))
"""


def vmas(pid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, name) of each mapping."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[1], parts[5] if len(parts) > 5 else ""))
    return out


def frames(pid: int, lo: int, hi: int) -> list[int]:
    """PFN of each page in [lo, hi) (0: not present)."""
    n = (hi - lo) // PAGE
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek(lo // PAGE * 8)
        data = f.read(n * 8)
    result = []
    for (entry,) in struct.iter_unpack("<Q", data):
        result.append(entry & ((1 << 55) - 1) if entry >> 63 else 0)
    return result


def private_pages(shim: int, launcher: int) -> tuple[list[int], list[int], int, int]:
    """Addresses of the shim's anon/heap pages not shared with the launcher, and of its private
    pages in libpython's writable data (its ``.data`` and the anonymous ``.bss`` right after
    it); also its shared anon page count and libpython's load address."""
    lvmas = {(lo, hi): name for lo, hi, _, name in vmas(launcher)}
    private: list[int] = []
    libpython: list[int] = []
    shared = 0
    base = 0
    after_libpython = False
    for lo, hi, perms, name in vmas(shim):
        if "libpython" in name and not base:
            base = lo
        bss = after_libpython and name == ""
        after_libpython = "libpython" in name and "w" in perms
        if "w" not in perms:
            continue
        anon = name in ("", "[heap]") and not bss
        if not anon and not bss and "libpython" not in name:
            continue
        mine = frames(shim, lo, hi)
        theirs = frames(launcher, lo, hi) if (lo, hi) in lvmas or anon or bss \
            else [0] * len(mine)
        if len(theirs) != len(mine):
            theirs = [0] * len(mine)
        for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if not a:
                continue
            if a == b:
                shared += anon
            elif anon:
                private.append(lo + k * PAGE)
            else:
                libpython.append(lo + k * PAGE - base)
    return private, libpython, shared, base


def libpython_symbols() -> tuple[list[int], list[int], list[str]]:
    """(start, end, name) of libpython's data and bss symbols, from ``nm`` (empty without it)."""
    path = next((name for _, _, _, name in vmas(os.getpid()) if "libpython" in name), None)
    if path is None or shutil.which("nm") is None:
        return [], [], []
    out = subprocess.run(["nm", "-S", path], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "dDbB":
            rows.append((int(parts[0], 16), int(parts[0], 16) + int(parts[1], 16), parts[3]))
    rows.sort()
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def symbol_kind(name: str) -> str:
    """A libpython data symbol's kind, for the table: what writes to it in a shim."""
    if "_toplevel" in name:  # e.g. os_toplevel_consts_85_consts_0: a code object of os
        return "deep-frozen module " + name.split("_toplevel")[0]
    if name == "_PyRuntime":
        return "_PyRuntime (interpreter state, small ints, static strings)"
    if name.endswith("_Type") or name.endswith("Type"):
        return "static types"
    if name in ("arena_map_root", "usedpools", "arenas"):
        return f"pymalloc ({name})"
    return "other: " + name


def charge(page: int, starts: list[int], ends: list[int], owners: list[str]) -> str:
    """The owner of most recorded bytes in [page, page + PAGE), or a placeholder."""
    k = max(bisect.bisect_left(starts, page) - 1, 0)
    weight: collections.Counter[str] = collections.Counter()
    while k < len(starts) and starts[k] < page + PAGE:
        overlap = min(ends[k], page + PAGE) - max(starts[k], page)
        if overlap > 0:
            weight[owners[k]] += overlap
        k += 1
    return weight.most_common(1)[0][0] if weight else "(no recorded object)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shims", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--runtime", default="process",
                    help="process, or runc/crun (a busybox rootfs, tests/oci_helpers.py)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: /proc/PID/pagemap shows page frames only to root")
    base = Path(tempfile.mkdtemp(prefix="tpg-", dir="/tmp"))
    root = base / "r"
    (root / "shims").mkdir(parents=True)
    runtime: dict[str, object] = {}
    if args.runtime != "process":
        sys.path.insert(0, str(REPO / "tests"))
        from oci_helpers import build_busybox_rootfs

        runtime = {"runtime": args.runtime,
                   "rootfs": str(build_busybox_rootfs(base / "rootfs"))}
    ours, theirs = socket.socketpair()
    dump = base / "objects.txt"
    launcher = subprocess.Popen([sys.executable, "-I", "-c", LAUNCHER_CODE, str(dump), str(root),
                                 str(theirs.fileno())], pass_fds=[theirs.fileno()], cwd=REPO)
    theirs.close()
    shims: list[dict[str, object]] = []
    try:
        decoder = wire.FrameDecoder()
        pending: list[dict[str, object]] = []

        def receive() -> dict[str, object]:
            while not pending:
                data = ours.recv(65536)
                if not data:
                    raise SystemExit("the launcher exited; see its stderr")
                pending.extend(decoder.feed(data))
            return pending.pop(0)

        receive()  # its hello: preloaded and recorded
        for i in range(args.shims):
            cid = f"pg{i}"
            directory = shim_api.shim_dir(root, cid)
            directory.mkdir()
            shim_api.write_spec(directory, {"id": cid, "instance": f"{cid}-1",
                                            "command": ["sleep", "100000"],
                                            "env": {"PATH": "/usr/bin:/bin"}, **runtime})
            ours.sendall(wire.encode({"id": i + 1, "method": "start",
                                         "params": {"id": cid, "start": True}}))
            reply = receive()
            if "result" not in reply:
                raise SystemExit(f"start failed: {reply}")
            shims.append(reply["result"])  # type: ignore[arg-type]
        time.sleep(1.0)  # let them settle (events sent, first log flush)
        report(dump, launcher.pid, [int(s["pid"]) for s in shims], args.top)  # type: ignore[call-overload]
    finally:
        for s in shims:
            with contextlib.suppress(OSError), BlockingConnection(
                    str(s["address"]), role="supervisor", timeout=5) as c:
                c.call("kill", signal=9)
                c.call("wait")
                c.call("delete")
        for s in shims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(s["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
        ours.close()
        launcher.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    return 0


def report(dump: Path, launcher: int, shims: list[int], top: int) -> None:
    starts, ends, owners, kinds = [], [], [], []
    for line in dump.read_text().splitlines():
        address, size, module, kind = line.split(" ", 3)
        starts.append(int(address))
        ends.append(int(address) + int(size))
        owners.append(module)
        kinds.append(kind)
    order = sorted(range(len(starts)), key=starts.__getitem__)
    starts = [starts[i] for i in order]
    ends = [ends[i] for i in order]
    owners = [owners[i] for i in order]
    kinds = [kinds[i] for i in order]
    by_module: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    by_symbol: collections.Counter[str] = collections.Counter()
    symbols = libpython_symbols()
    libpython_pages = shared_pages = 0
    total_private = 0
    for pid in shims:
        pages, libpython, shared, _ = private_pages(pid, launcher)
        libpython_pages += len(libpython)
        shared_pages += shared
        total_private += len(pages)
        for page in libpython:
            by_symbol[symbol_kind(charge(page, *symbols))] += 1
        for page in pages:
            by_module[charge(page, starts, ends, owners)] += 1
            by_kind[charge(page, starts, ends, kinds).replace("no recorded object", "none")] += 1
    n = len(shims)
    kb = PAGE / 1024
    print(f"\nprivate pages of a launcher-forked shim (mean of {n}; 1 page = {kb:.0f} kB)\n")
    print(f"heap + anonymous, private: {total_private / n * kb:8.0f} kB   "
          f"(still shared with the launcher: {shared_pages / n * kb:.0f} kB)")
    print(f"libpython writable data (.data, .bss), private: {libpython_pages / n * kb:5.0f} kB")
    for what, count in by_symbol.most_common():
        print(f"  {what:62s} {count / n * kb:7.0f}")
    print()
    print(f"{'module owning most of the page':44s} {'kB':>7}")
    for module, count in by_module.most_common(top):
        print(f"{module:44s} {count / n * kb:7.0f}")
    print(f"\n{'object type owning most of the page':44s} {'kB':>7}")
    kinds_total: collections.Counter[str] = collections.Counter()
    for kind, count in by_kind.items():
        kinds_total["code" if kind.startswith("code ") else kind] += count
    for kind, count in kinds_total.most_common(12):
        print(f"{kind:44s} {count / n * kb:7.0f}")
    print(f"\n{'code object owning most of the page (function)':60s} {'kB':>7}")
    code = [(k, c) for k, c in by_kind.most_common() if k.startswith("code ")]
    for kind, count in code[:top]:
        print(f"{kind[5:]:60s} {count / n * kb:7.0f}")
    print(json.dumps({"private_kb": total_private / n * kb,
                      "libpython_private_kb": libpython_pages / n * kb}))


if __name__ == "__main__":
    sys.exit(main())
