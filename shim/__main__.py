"""``python -I -m shim start --root ROOT --id ID`` (see :mod:`events.shim_api`).

No argparse: it costs import time and memory in every shim, and there is one command.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: python -I -m shim start --root ROOT --id ID\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "start":
        sys.stderr.write(USAGE)
        return 2
    opts: dict[str, str] = {}
    args = argv[1:]
    while args:
        flag = args.pop(0)
        name, eq, value = flag.partition("=")
        if name not in ("--root", "--id") or (not eq and not args):
            sys.stderr.write(f"shim: unexpected argument {flag!r}\n{USAGE}")
            return 2
        opts[name] = value if eq else args.pop(0)
    if set(opts) != {"--root", "--id"}:
        sys.stderr.write(USAGE)
        return 2
    from shim.launch import start

    return start(opts["--root"], opts["--id"])


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown (~5 ms): the caller waits for our exit
