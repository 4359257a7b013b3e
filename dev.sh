#!/usr/bin/env bash
# One entry point for the two quick-start commands:
#   bash dev.sh train [tierlab train options]   set up .venv, then train (built-in model and data by default)
#   bash dev.sh test  [pytest options]          set up .venv, then run the whole test suite
# Set-up is idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${TIERLAB_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
pip_q() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }

# torch first: the pinned CPU build is small where it is available (CI); anywhere else pip
# takes the newest build that satisfies the project's range (a CUDA build on GPU machines).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  pip_q "torch==2.13.0" 2>/dev/null || pip_q "torch>=2.4"
fi

cmd=${1:-train}
shift || true
case "$cmd" in
  train)
    pip_q -e .
    exec "$VENV/bin/tierlab" train "$@"
    ;;
  test)
    pip_q -e ".[dev]"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash dev.sh train|test [options]" >&2
    exit 2
    ;;
esac
