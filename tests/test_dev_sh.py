"""dev.sh, the README's quick-start entry point: it installs the project only when that is needed.

dev.sh runs in a copy of the project whose venv's ``python`` is a small script: it runs the
real interpreter for everything except ``-m pip`` and ``-m pytest``, which it writes to a log
(so no test installs anything), and ``bin/tierlab`` logs its arguments.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-m" ] && {{ [ "$2" = "pip" ] || [ "$2" = "pytest" ]; }}; then
  echo "$*" >> "{log}"
  [ "$2" = "pip" ] && [ -n "${{FAKE_PIP_FAILS:-}}" ] && exit 1
  exit 0
fi
[ -n "${{FAKE_NO_PACKAGES:-}}" ] && exec "{python}" -S "$@"  # no site-packages: torch and tierlab are missing
exec "{python}" "$@"
"""


def _project(tmp_path: Path) -> tuple[Path, Path, Path]:
    project, venv, log = tmp_path / "project", tmp_path / "venv", tmp_path / "calls.log"
    project.mkdir()
    for name in ("dev.sh", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON.format(log=log, python=sys.executable)),
                       ("tierlab", f'#!/usr/bin/env bash\necho "tierlab $*" >> "{log}"\n')):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    log.write_text("")
    return project, venv, log


def _dev(project: Path, venv: Path, log: Path, *args: str, **env: str) -> list[str]:
    """Run ``bash dev.sh ARGS``; the pip, pytest and tierlab calls it made."""
    before = len(log.read_text().splitlines())
    result = subprocess.run(["bash", str(project / "dev.sh"), *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TIERLAB_VENV": str(venv), **env})
    calls = log.read_text().splitlines()[before:]
    if env.get("FAKE_PIP_FAILS"):
        assert result.returncode != 0
    else:
        assert result.returncode == 0, result.stderr
    return calls


PIP = "-m pip install --disable-pip-version-check -q"


def test_dev_sh_installs_only_when_the_project_changed(tmp_path):
    project, venv, log = _project(tmp_path)
    dev = lambda *args, **env: _dev(project, venv, log, *args, **env)  # noqa: E731
    assert dev("train", "--help") == [f"{PIP} -e .", "tierlab train --help"]  # no stamp yet
    assert dev("train", "--help") == ["tierlab train --help"]  # nothing changed: no pip at all
    assert dev("train") == ["tierlab train"]
    assert dev("test", "-x") == [f"{PIP} -e .[dev]", "-m pytest -x"]  # the test extras were not installed
    assert dev("test") == ["-m pytest"]
    assert dev("train") == ["tierlab train"]  # the dev install serves train too

    with open(project / "pyproject.toml", "a") as f:  # the metadata changed: install again
        f.write("\n# a new comment\n")
    assert dev("train") == [f"{PIP} -e .", "tierlab train"]
    assert dev("test") == [f"{PIP} -e .[dev]", "-m pytest"]
    assert dev("test") == ["-m pytest"]

    (venv / ".tierlab-install-stamp").unlink()  # the stamp is gone
    assert dev("test") == [f"{PIP} -e .[dev]", "-m pytest"]

    # torch and tierlab cannot be found (a venv emptied by hand): torch first, then the project.
    calls = dev("train", FAKE_NO_PACKAGES="1")
    assert calls == [f"{PIP} torch==2.13.0", f"{PIP} -e .", "tierlab train"]

    # A failed install leaves no stamp behind, so the next call tries again.
    with open(project / "pyproject.toml", "a") as f:
        f.write("# another\n")
    assert dev("train", FAKE_PIP_FAILS="1") == [f"{PIP} -e ."]
    assert not (venv / ".tierlab-install-stamp").exists()
    assert dev("train") == [f"{PIP} -e .", "tierlab train"]
    assert dev("train") == ["tierlab train"]


def test_dev_sh_installs_again_for_a_checkout_in_another_place(tmp_path):
    project, venv, log = _project(tmp_path)
    assert _dev(project, venv, log, "train") == [f"{PIP} -e .", "tierlab train"]
    moved = tmp_path / "elsewhere"
    project.rename(moved)  # the same pyproject.toml, but the editable install points at the old place
    assert _dev(moved, venv, log, "train") == [f"{PIP} -e .", "tierlab train"]


def test_dev_sh_unknown_command(tmp_path):
    project, venv, log = _project(tmp_path)
    result = subprocess.run(["bash", str(project / "dev.sh"), "tran"], capture_output=True, text=True,
                            env={**os.environ, "TIERLAB_VENV": str(venv)})
    assert result.returncode == 2 and "usage: bash dev.sh train|test" in result.stderr
