"""Tether beside Supervisor on the same supervisord.conf, and print a table (not a test).

    .venv/bin/python bench/supervisor_compat.py [--programs 20] [--rounds 15]

Needs Debian's ``supervisor`` package (``.ci/setup`` installs it). On one generated config of N
``sleep`` programs, measured side by side, round by round:

* ``supervisorctl status``, whole process: Tether's own, and Debian's against Tether's
  ``supervisor.sock``, beside Debian's against Debian's supervisord;
* one ``getAllProcessInfo`` over XML-RPC (a blocking HTTP client in this process);
* ``supervisorctl reload`` (``supervisor.restart``): time until every program is RUNNING again
  and how many of the programs' pids survived (Supervisor's restart kills them all).

Both daemons run on private sockets and directories under /tmp; every process started here is
ended by pid at the end (Supervisor's shutdown ends its programs; Tether's are removed).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DEBIAN_CTL = "/usr/bin/supervisorctl"
DEBIAN_SUPERVISORD = "/usr/bin/supervisord"


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def xmlrpc_call(path: str, method: str) -> object:
    conn = UnixHTTP(path)
    body = xmlrpc.client.dumps((), method).encode()
    conn.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    data = conn.getresponse().read()
    conn.close()
    return xmlrpc.client.loads(data)[0][0]


def debian_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    began = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   cwd="/", check=False)
    return (time.perf_counter() - began) * 1e3


def wait_running(path: str, n: int, timeout: float = 60) -> float:
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            infos = xmlrpc_call(path, "supervisor.getAllProcessInfo")
            if isinstance(infos, list) and len(infos) == n and all(
                    i["statename"] == "RUNNING" for i in infos):
                return (time.perf_counter() - began) * 1e3
        except (OSError, xmlrpc.client.Error, http.client.HTTPException):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{path}: {n} programs not RUNNING in {timeout}s")


def pids(path: str) -> set[int]:
    return {int(i["pid"]) for i in xmlrpc_call(path, "supervisor.getAllProcessInfo")}


def med(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ms"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    if not os.path.exists(DEBIAN_SUPERVISORD):
        print("needs Debian's supervisor package (bash .ci/setup as root)")
        return 1
    n = args.programs
    work = Path(tempfile.mkdtemp(prefix="tsvc-", dir="/tmp"))
    programs = "".join(f"[program:p{i}]\ncommand=sleep 100{i}\nstartsecs=0\n\n"
                       for i in range(n))
    conf = work / "programs.conf"
    conf.write_text(programs)
    sv_sock = str(work / "sv.sock")
    (work / "supervisord.conf").write_text(
        f"[unix_http_server]\nfile={sv_sock}\n\n[supervisord]\nnodaemon=true\n"
        f"logfile={work}/sv.log\npidfile={work}/sv.pid\nchildlogdir={work}\n\n"
        "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
        "supervisor.rpcinterface:make_main_rpcinterface\n\n"
        f"[supervisorctl]\nserverurl=unix://{sv_sock}\n\n{programs}")
    root = work / "root"
    t_sock = str(root / "supervisor.sock")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tether = subprocess.Popen([sys.executable, "-m", "supervisor.daemon", "--root", str(root),
                               "--config", str(conf), "--log-format", "json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              cwd=REPO)
    supervisor = subprocess.Popen([DEBIAN_SUPERVISORD, "-c", str(work / "supervisord.conf")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env=debian_env(), cwd="/")
    try:
        for path in (t_sock, sv_sock):
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            wait_running(path, n)
        ours = [str(VENV_BIN / "supervisorctl"), "--root", str(root), "status"]
        deb_t = [DEBIAN_CTL, "-s", f"unix://{t_sock}", "status"]
        deb_s = [DEBIAN_CTL, "-c", str(work / "supervisord.conf"), "status"]
        rows: dict[str, list[float]] = {k: [] for k in ("ours", "deb_t", "deb_s", "rpc_t",
                                                        "rpc_s")}
        for _ in range(args.rounds):
            rows["ours"].append(timed(ours))
            rows["deb_t"].append(timed(deb_t, debian_env()))
            rows["deb_s"].append(timed(deb_s, debian_env()))
            for key, path in (("rpc_t", t_sock), ("rpc_s", sv_sock)):
                began = time.perf_counter()
                xmlrpc_call(path, "supervisor.getAllProcessInfo")
                rows[key].append((time.perf_counter() - began) * 1e3)
        reload: dict[str, tuple[float, int]] = {}
        for key, path in (("tether", t_sock), ("supervisor", sv_sock)):
            before = pids(path)
            began = time.perf_counter()
            xmlrpc_call(path, "supervisor.restart")
            time.sleep(0.05)
            wait_running(path, n)
            reload[key] = ((time.perf_counter() - began) * 1e3, len(before & pids(path)))
        s = statistics.median
        print(f"\n{n} programs, {args.rounds} rounds, medians (ratio = Tether / Supervisor)\n")
        print("| what | Tether | Supervisor 4.2.5 | ratio |\n| --- | --- | --- | --- |")
        print(f"| `supervisorctl status`, whole process (Tether's own CLI) | {med(rows['ours'])} "
              f"| {med(rows['deb_s'])} | {s(rows['ours']) / s(rows['deb_s']):.2f} |")
        print(f"| Debian's `supervisorctl status` against each daemon | {med(rows['deb_t'])} | "
              f"{med(rows['deb_s'])} | {s(rows['deb_t']) / s(rows['deb_s']):.2f} |")
        print(f"| `getAllProcessInfo` over XML-RPC, in-process | {med(rows['rpc_t'])} | "
              f"{med(rows['rpc_s'])} | {s(rows['rpc_t']) / s(rows['rpc_s']):.2f} |")
        t, sv = reload["tether"], reload["supervisor"]
        print(f"| `reload` (supervisor.restart) -> all RUNNING again | {t[0]:.0f} ms | "
              f"{sv[0]:.0f} ms | {t[0] / sv[0]:.2f} |")
        print(f"| programs whose pid survived the reload | {t[1]}/{n} | {sv[1]}/{n} | - |")
        return 0
    finally:
        with_root = [str(VENV_BIN / "supervisorctl"), "--root", str(root)]
        for i in range(n):
            subprocess.run([*with_root, "rm", "-f", f"p{i}"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        subprocess.run([*with_root, "shutdown"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        for proc in (tether, supervisor):
            if proc.poll() is None:
                proc.terminate()  # Supervisor's SIGTERM ends its programs, then itself
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
