"""Golden records: fixed-seed runs whose metrics and events (timing fields aside) are stored in tests/assets.

A change that moves code must leave these runs as they were.  On the machine the records
were written on (its CPU is stored with them), ``TIERLAB_GOLDEN_EXACT=1`` compares every
value byte for byte -- the check to run before and after a refactor.  Elsewhere, floats
are compared within a small tolerance (another kind of CPU rounds fp32 / fp16 matmuls
differently) and everything else -- steps, skips, loss scales, event order -- exactly.
``TIERLAB_UPDATE_GOLDEN=1`` writes the records anew (say why in the commit).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from torchrun_job import MODEL, finish, needs_gloo, torchrun

import tierlab
from helpers import TINY_MODEL, SpikeAt, fast_config
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.device import cpu_name

GOLDEN = Path(__file__).parent.parent / "assets" / "golden"
# Measured or machine-specific: never part of a golden record.
VOLATILE = {"time", "tokens_per_s", "step_ms", "mem_peak_mb", "mfu", "wall_seconds", "seconds", "torch", "device",
            "checkpoint"}
TOLERANCE = {"fp16": 2e-2}  # relative, per scenario; others 2e-3


def _model(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(vocab_size=256, **TINY_MODEL)


def _records(run_dir: Path) -> dict:
    def clean(line: str) -> dict:
        return {k: v for k, v in json.loads(line).items() if k not in VOLATILE}

    return {name: [clean(line) for line in (run_dir / f"{name}.jsonl").read_text().splitlines()]
            for name in ("metrics", "events")}


def _fp32(tmp_path: Path) -> Path:
    return tierlab.train(_model(), config=fast_config(tmp_path, max_steps=20, warmup_steps=4)).dir


def _fp16_skips(tmp_path: Path) -> Path:
    cfg = fast_config(tmp_path, precision="fp16", max_steps=12, log_every=4, eval_every=6, warmup_steps=3)
    return tierlab.train(SpikeAt(_model(), at=(5, 9)), config=cfg).dir


def _accum2(tmp_path: Path) -> Path:
    cfg = fast_config(tmp_path, grad_accum=2, batch_size=4, max_steps=10, eval_every=5, warmup_steps=2)
    return tierlab.train(_model(), config=cfg).dir


def _resume(tmp_path: Path) -> Path:
    """A whole run, then the same run resumed from its step-10 checkpoint: the records after it are redone."""
    cfg = fast_config(tmp_path, max_steps=20, ckpt_every=10, warmup_steps=4)
    run = tierlab.train(_model(), config=cfg)
    tierlab.resume(run.dir / "checkpoints" / "step-00000010.pt", model=_model())
    return run.dir


def _ddp2(tmp_path: Path) -> Path:
    args = [*MODEL, "--seq-len", "32", "--eval-batches", "2", "--lr", "0.01", "--max-steps", "12", "--log-every", "4",
            "--eval-every", "6", "--device", "cpu", "--quiet", "--batch-size", "4", "--name", "ddp",
            "--warmup-steps", "2", "--no-plots"]
    code, err = finish(torchrun(tmp_path, *args))
    assert code == 0, err
    return tmp_path / "runs" / "ddp"


SCENARIOS = {"fp32": _fp32, "fp16": _fp16_skips, "accum2": _accum2, "resume": _resume,
             "ddp2": pytest.param(_ddp2, marks=needs_gloo)}


def _same(expected, actual, rel: float, where: str = "") -> None:
    if isinstance(expected, float) and isinstance(actual, (int, float)) and not isinstance(actual, bool):
        if math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert actual == pytest.approx(expected, rel=rel, abs=1e-7), where
    elif isinstance(expected, dict) and isinstance(actual, dict):
        assert expected.keys() == actual.keys(), (where, sorted(expected.keys() ^ actual.keys()))
        for k in expected:
            _same(expected[k], actual[k], rel, f"{where}.{k}")
    elif isinstance(expected, list) and isinstance(actual, list):
        assert len(expected) == len(actual), (where, len(expected), len(actual))
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            _same(e, a, rel, f"{where}[{i}]")
    else:
        assert expected == actual, (where, expected, actual)


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_fixed_seed_runs_match_their_golden_records(scenario, tmp_path, request):
    name = request.node.callspec.id
    records = _records(scenario(tmp_path))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("TIERLAB_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"cpu": cpu_name(), "torch": torch.__version__, **records}, indent=1) + "\n")
    golden = json.loads(path.read_text())
    if os.environ.get("TIERLAB_GOLDEN_EXACT") == "1":
        assert golden["cpu"] == cpu_name(), "exact comparison needs the machine the records were written on"
        assert json.dumps(records, sort_keys=True) == json.dumps({k: golden[k] for k in records}, sort_keys=True)
    else:
        _same({k: golden[k] for k in records}, records, TOLERANCE.get(name, 2e-3))
