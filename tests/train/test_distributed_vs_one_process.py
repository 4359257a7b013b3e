"""Two processes under the real torchrun (DDP, and FSDP2 with --fsdp) against one process with the same global batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torchrun_job import COMMON, MODEL, finish, job_env, needs_gloo, torchrun

import tierlab
from helpers import assert_same_run, run_cli, train_records
from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def fp32_runs(tmp_path_factory) -> Path:
    """fp32, global batch 8: two ranks with DDP, two ranks with FSDP2 (--fsdp), one process of batch 8."""
    cwd = tmp_path_factory.mktemp("fp32")
    fp32 = [*MODEL, *COMMON, "--precision", "fp32", "--max-steps", "10", "--ckpt-every", "5"]  # later options win
    for name, extra in (("ddp", []), ("fsdp", ["--fsdp"])):
        code, err = finish(torchrun(cwd, *fp32, "--batch-size", "4", "--name", name, *extra))
        assert code == 0, err
    single = subprocess.run([sys.executable, "-m", "tierlab", "train", *fp32, "--batch-size", "8", "--name", "one"],
                            cwd=cwd, env=job_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr
    return cwd / "runs"


@pytest.mark.parametrize("name", ["ddp", "fsdp"])
def test_matches_a_single_process_run_with_the_same_global_batch(fp32_runs, name):
    ddp, one = train_records(fp32_runs / name), train_records(fp32_runs / "one")
    assert [(r["kind"], r["step"], r["tokens"]) for r in ddp] == [(r["kind"], r["step"], r["tokens"]) for r in one]
    assert len(ddp) == 3  # train records at steps 5 and 10, an evaluation at 10
    for a, b in zip(ddp, one, strict=True):  # the same blocks, split over two ranks: equal up to summation order
        for key in ("loss", "val_loss", "val_acc", "grad_norm", "lr"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4), (a["step"], key, a[key], b[key])
    start = json.loads((fp32_runs / name / "events.jsonl").read_text().splitlines()[0])
    assert (start["world_size"], start["global_batch_size"], start["tokens_per_step"]) == (2, 8, 8 * 32)
    summary = json.loads((fp32_runs / name / "summary.json").read_text())
    assert (summary["status"], summary["world_size"], summary["global_batch_size"]) == ("completed", 2, 8)
    # The final weights are whole (FSDP2's shards gathered) and load like any run's.
    mine, reference = tierlab.load(fp32_runs / name)[0].state_dict(), tierlab.load(fp32_runs / "one")[0].state_dict()
    assert mine.keys() == reference.keys()
    assert max(float((mine[k] - reference[k]).abs().max()) for k in reference) < 1e-4  # Adam: 1e-5 seen
    state = load_checkpoint(latest_checkpoint(fp32_runs / name))
    assert state["sharding"] == ("fsdp" if name == "fsdp" else None)


def test_fsdp_resume_continues_exactly(fp32_runs, tmp_path):
    copy = tmp_path / "runs" / "fsdp"
    shutil.copytree(fp32_runs / "fsdp", copy)
    code, err = finish(torchrun(tmp_path, "--resume", str(copy / "checkpoints" / "step-00000005.pt")))
    assert code == 0, err
    assert_same_run(fp32_runs / "fsdp", copy)
    # A sharded checkpoint is resumed the way it was written, or refused plainly.
    refused = run_cli("train", "--resume", str(copy), "--max-steps", "12", "--allow-config-change", cwd=tmp_path)
    assert refused.returncode == 2 and "was written with --fsdp" in refused.stderr, refused.stderr


def test_fsdp_with_compile_compiles_each_block_matches_eager_and_resumes_exactly(fp32_runs, tmp_path):
    cwd = tmp_path
    fp32 = [*MODEL, *COMMON, "--precision", "fp32", "--max-steps", "10", "--ckpt-every", "5", "--batch-size", "4"]
    env = {"TIERLAB_COMPILE_BACKEND": "aot_eager"}  # the same tracing as inductor, without generating C++
    code, err = finish(torchrun(cwd, *fp32, "--fsdp", "--compile", "--name", "compiled", env_extra=env))
    assert code == 0, err
    compiled = cwd / "runs" / "compiled"
    events = [json.loads(line) for line in (compiled / "events.jsonl").read_text().splitlines()]
    (event,) = [e for e in events if e["event"] == "compiled"]
    assert event["seconds"] > 0
    for a, b in zip(train_records(compiled), train_records(fp32_runs / "fsdp"), strict=True):
        for key in ("loss", "val_loss", "grad_norm"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    copy = tmp_path / "copy" / "compiled"
    shutil.copytree(compiled, copy)
    code, err = finish(torchrun(tmp_path, "--resume", str(copy / "checkpoints" / "step-00000005.pt"), env_extra=env))
    assert code == 0, err
    assert_same_run(compiled, copy)
