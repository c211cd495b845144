"""``python -I -m shim start --root ROOT --id ID [--run]`` (see :mod:`events.shim_api`;
``--run``: its first task started too), ``python -I -m shim launcher --root ROOT --fd FD
[--title-space PAD]`` (see :mod:`shim.launcher`), and ``python -I -m shim cleanup --root ROOT
--id ID --runtime RUNTIME`` (the runtime container of a lost shim, see
:func:`shim.runtime_oci.delete_lost`). ``--run`` is a trailing switch, not a verb
of its own, so that every shim's command line begins ``... -m shim start --root ROOT --id ID``
(``ps``, and whoever looks for shims by their command line, see one kind).

No argparse: it costs import time and memory in every shim.
"""

from __future__ import annotations

import os
import sys

USAGE = ("usage: python -I -m shim start --root ROOT --id ID [--run]\n"
         "       python -I -m shim launcher --root ROOT --fd FD [--title-space PAD]\n"
         "       python -I -m shim cleanup --root ROOT --id ID --runtime RUNTIME\n")
#: per command: required options, optional ones (each with a value), switches (none)
FLAGS = {"start": ({"--root", "--id"}, set(), {"--run"}),
         "launcher": ({"--root", "--fd"}, {"--title-space"}, set()),
         "cleanup": ({"--root", "--id", "--runtime"}, set(), set())}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in FLAGS:
        sys.stderr.write(USAGE)
        return 2
    command = argv[0]
    required, optional, switches = FLAGS[command]
    opts: dict[str, str] = {}
    args = argv[1:]
    while args:
        flag = args.pop(0)
        if flag in switches:
            opts[flag] = ""
            continue
        name, eq, value = flag.partition("=")
        if name not in required | optional or (not eq and not args):
            sys.stderr.write(f"shim: unexpected argument {flag!r}\n{USAGE}")
            return 2
        opts[name] = value if eq else args.pop(0)
    if not required <= set(opts):
        sys.stderr.write(USAGE)
        return 2
    if command == "launcher":
        if not opts["--fd"].isdigit():
            sys.stderr.write(f"shim: --fd needs a file descriptor number\n{USAGE}")
            return 2
        from shim import launcher

        return launcher.main(opts["--root"], int(opts["--fd"]))
    if command == "cleanup":
        from shim.runtime_oci import delete_lost

        return delete_lost(opts["--root"], opts["--id"], opts["--runtime"])
    from shim.launch import start

    return start(opts["--root"], opts["--id"], start_task="--run" in opts)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (~5 ms): the caller waits for our exit
