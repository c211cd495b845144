"""The ``supervisorctl`` command file itself (``bin/supervisorctl``, installed by pip into the
venv's ``bin``): it starts the venv's ``python -IS`` on itself, from wherever it is called, and
outside a venv the Python that ``supervisord``'s script names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "bin" / "supervisorctl"
VENV_BIN = Path(sys.executable).parent
INSTALLED = VENV_BIN / "supervisorctl"

pytestmark = pytest.mark.skipif(not INSTALLED.exists(), reason="no console script: pip install")


def version(argv0: str | Path, cwd: Path | str = "/", env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(argv0), "--version"], capture_output=True, text=True, timeout=30,
                          cwd=cwd, env=env)


def traced_exec(script: Path, cwd: Path | str = "/") -> str:
    """The ``exec`` line the shell part of the script ran (``sh -x``)."""
    proc = subprocess.run(["sh", "-x", str(script), "--version"], capture_output=True, text=True,
                          timeout=30, cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    execs = [line for line in proc.stderr.splitlines() if line.startswith("+ exec ")]
    assert len(execs) == 1, proc.stderr
    return execs[0]


def test_pip_installed_this_file() -> None:
    assert INSTALLED.read_bytes() == SOURCE.read_bytes()
    assert os.access(INSTALLED, os.X_OK)


def test_it_runs_the_venvs_python_without_site() -> None:
    assert traced_exec(INSTALLED) == f"+ exec {VENV_BIN}/python -IS {INSTALLED} --version"
    proc = version(INSTALLED)
    assert proc.stdout.startswith("supervisorctl (Tether) "), proc.stderr


def test_found_on_path_it_is_the_same_command(tmp_path: Path) -> None:
    """`source .venv/bin/activate; supervisorctl`: the shell finds it on PATH (this PATH is
    the test's own, never the machine's)."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(["sh", "-c", "supervisorctl --version"], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path, env=env)
    assert proc.stdout.startswith("supervisorctl (Tether) "), proc.stderr
    module = subprocess.run([sys.executable, "-m", "supervisor.ctl", "--version"],
                            capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert module.stdout == proc.stdout


def test_it_runs_from_a_relative_path_and_through_a_symlink(tmp_path: Path) -> None:
    """As `cd .venv && bin/supervisorctl`, and as a symlink on PATH to the venv's (pipx)."""
    assert version("bin/supervisorctl", cwd=VENV_BIN.parent).stdout.startswith("supervisorctl")
    link = tmp_path / "supervisorctl"
    link.symlink_to(INSTALLED)
    assert traced_exec(link).startswith(f"+ exec {VENV_BIN.resolve()}/python -IS {link} ")
    assert version(link).stdout.startswith("supervisorctl (Tether) ")


def test_the_environment_cannot_swap_its_modules(tmp_path: Path) -> None:
    """Isolated: a `supervisor` package on PYTHONPATH (Debian's Supervisor has one) is not
    imported in place of Tether's."""
    fake = tmp_path / "supervisor"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise SystemExit('the wrong supervisor package')\n")
    (fake / "ctl.py").write_text("raise SystemExit('the wrong supervisor package')\n")
    proc = version(INSTALLED, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.startswith("supervisorctl (Tether) "), proc.stderr


def test_outside_a_venv_it_runs_the_python_supervisord_names(tmp_path: Path) -> None:
    """pip installed both scripts into one directory (a system or --user install): the other's
    first line names the Python, which then runs with its `site` as usual."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy2(SOURCE, bin_dir / "supervisorctl")
    (bin_dir / "supervisord").write_text(f"#!{sys.executable}\nimport sys\n")
    assert traced_exec(bin_dir / "supervisorctl") == \
        f"+ exec {sys.executable} {bin_dir}/supervisorctl --version"
    assert version(bin_dir / "supervisorctl").stdout.startswith("supervisorctl (Tether) ")


def test_without_any_python_beside_it_says_what_to_do(tmp_path: Path) -> None:
    shutil.copy2(SOURCE, tmp_path / "supervisorctl")
    proc = version(tmp_path / "supervisorctl")
    assert proc.returncode == 127
    assert proc.stderr == (f"supervisorctl: no Python beside {tmp_path}/supervisorctl (run: "
                           "python3 -m supervisor.ctl)\n")
