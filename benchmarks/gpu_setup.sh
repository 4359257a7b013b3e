# Sourced by gpu.sh and gpu_quick.sh (from the repository root): says which machine this is
# and makes tierlab importable with $PY (pip install -e . when it can, else PYTHONPATH=src).
PY=${PYTHON:-python3}
export TIERLAB_CACHE=${TIERLAB_CACHE:-/tmp/tierlab-cache}
export PYTHONUNBUFFERED=1

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"

echo "== install"
if ! "$PY" -c "import tierlab" 2>/dev/null; then
  if "$PY" -c "import torch, numpy, tokenizers, safetensors, tqdm, matplotlib" 2>/dev/null; then
    # Everything tierlab needs is there (a GPU image): install just tierlab, offline.
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>/dev/null || true
  else
    PIP_DEFAULT_TIMEOUT=15 timeout 600 "$PY" -m pip install -q -e . || true
  fi
  if ! "$PY" -c "import tierlab" 2>/dev/null; then
    echo "could not pip install tierlab: using PYTHONPATH=src"
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
"$PY" -c "import tierlab, tokenizers, safetensors, tqdm, matplotlib; print('tierlab', tierlab.__version__)" || exit 1
