#!/usr/bin/env bash
# One entry point for the two quick-start commands:
#   bash dev.sh train [tierlab train options]   set up .venv, then train (built-in model and data by default)
#   bash dev.sh test  [pytest options]          set up .venv, then run the whole test suite
# Set-up is idempotent and quick when nothing changed: pip runs only when pyproject.toml (or the
# checkout's place) changed since the last install into this venv, when `test` needs the dev extras
# that `train` did not install, or when torch or tierlab cannot be found; a stamp in the venv records it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${TIERLAB_VENV:-.venv}
STAMP="$VENV/.tierlab-install-stamp"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_q() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

# stamp check EXTRA: exit 0 when the stamp says this pyproject.toml, in this place, was installed with
# EXTRA ("dev" also serves ""), and torch and tierlab can be found (without importing them: torch alone
# takes seconds to import). stamp write EXTRA: record a finished install.
stamp() {
  "$VENV/bin/python" - "$1" "$2" "$STAMP" <<'PY'
import hashlib, importlib.util, os, sys
action, extra, path = sys.argv[1:]
with open("pyproject.toml", "rb") as f:
    digest = hashlib.sha256(f.read() + b"\0" + os.getcwd().encode()).hexdigest()
if action == "write":
    with open(path, "w") as f:
        f.write(f"{digest} {extra or 'base'}\n")
    sys.exit(0)
try:
    with open(path) as f:
        have = f.read().split()
except OSError:
    sys.exit(1)
current = len(have) == 2 and have[0] == digest and have[1] in ((extra or "base"), "dev")
sys.exit(0 if current and all(importlib.util.find_spec(m) for m in ("torch", "tierlab")) else 1)
PY
}

# set_up EXTRA: torch first, then `pip install -e .` or ".[dev]", unless the stamp says it is done.
set_up() {
  local extra=$1
  if stamp check "$extra"; then
    return
  fi
  rm -f "$STAMP"
  # torch first: the pinned CPU build is small where it is available (CI); anywhere else pip
  # takes the newest build that satisfies the project's range (a CUDA build on GPU machines).
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    pip_q "torch==2.13.0" 2>/dev/null || pip_q "torch>=2.4"
  fi
  pip_q -e ".${extra:+[$extra]}"
  stamp write "$extra"
}

cmd=${1:-train}
shift || true
case "$cmd" in
  train)
    set_up ""
    exec "$VENV/bin/tierlab" train "$@"
    ;;
  test)
    set_up dev
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash dev.sh train|test [options]" >&2
    exit 2
    ;;
esac
