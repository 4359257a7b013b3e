"""CUDA-only checks, skipped without a GPU: no host syncs in the hot path, bf16 by default, MFU, exact resume.

Run on a GPU machine with ``python -m pytest tests/train/test_cuda.py`` (benchmarks/gpu.sh does).
"""

import json

import pytest
import torch
from helpers import TINY_MODEL, fast_config

import tierlab
from tierlab.data import prepare_data
from tierlab.models import load_model
from tierlab.track import EventLog, JsonlWriter
from tierlab.train.loop import Trainer
from tierlab.train.precision import PrecisionPolicy, decide_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _trainer(tmp_path, precision, **changes):
    cfg = fast_config(tmp_path, precision=precision, device="cuda", warmup_steps=2, **changes)
    tokens = prepare_data("demo", "byte", 0.1)
    torch.manual_seed(0)
    model = load_model("tiny-gpt", dict(TINY_MODEL), 256).to(CUDA)
    policy = PrecisionPolicy(decide_precision(precision, CUDA, strict=True), CUDA, cfg.loss_scale_init,
                             cfg.loss_scale_growth_interval)
    run_dir = tmp_path / precision
    run_dir.mkdir()
    return Trainer(model, tokens, cfg, policy, CUDA, run_dir, JsonlWriter(run_dir / "m.jsonl"),
                   EventLog(run_dir / "e.jsonl"), cfg.max_steps, identity={})


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_train_steps_never_sync_the_host(tmp_path, precision):
    """torch.cuda.set_sync_debug_mode("error") turns any host sync into an exception."""
    # grad-accum 2 and, in fp16, a start scale that overflows: the skip path runs under the check too.
    trainer = _trainer(tmp_path, precision, grad_accum=2, log_every=8, loss_scale_init=2.0**40)
    with trainer.policy.activate():
        trainer.train_step()  # first step outside the check: lazy initialisation (cuBLAS handles, scaler)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(6):
                trainer.train_step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    rows = trainer.take_rows()
    assert rows.shape[0] == 7 and torch.isfinite(rows[:, 0]).all()
    if precision == "fp16":
        assert rows[:, 4].sum() > 0  # the overflow skips really happened inside the checked steps


def test_auto_picks_bf16_and_reports_mfu(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, precision="auto", device="auto", max_steps=6, log_every=3,
                                           eval_every=6))
    assert run.summary["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    records = run.metrics("train")
    if any(k in torch.cuda.get_device_name() for k in ("H100", "H200", "A100")):
        assert all(r["mfu"] is not None and 0 < r["mfu"] < 1 for r in records)
    assert all(r["mem_peak_mb"] > 0 for r in records)


def test_resume_on_cuda_continues_the_same_run(tmp_path):
    """CUDA RNG, optimizer state and the prefetcher's position survive a resume.

    Two CUDA runs are not bit-identical (atomics in embedding and attention backward), so
    the comparison has a tolerance far below what different batches would cause.
    """
    cfg = fast_config(tmp_path, precision="fp32", device="cuda", max_steps=12, log_every=3, eval_every=6,
                      ckpt_every=6)
    whole = tierlab.train(config=cfg.replace(name="whole"))
    half = tierlab.train(config=cfg.replace(name="half"))
    resumed = tierlab.resume(half.dir / "checkpoints" / "step-00000006.pt", {"max_steps": 12})
    a, b = whole.metrics(), resumed.metrics()
    assert [(r["kind"], r["step"]) for r in a] == [(r["kind"], r["step"]) for r in b]
    for ra, rb in zip(a, b, strict=True):
        key = "loss" if ra["kind"] == "train" else "val_loss"
        assert rb[key] == pytest.approx(ra[key], rel=1e-4)
    assert [e["event"] for e in resumed.events()].count("resume") == 1
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key].cpu(), value.cpu(), rtol=1e-3, atol=1e-4)


def test_compiled_training_on_cuda_matches_eager(tmp_path):
    cfg = fast_config(tmp_path, precision="bf16", device="cuda", max_steps=10, log_every=5, eval_every=10)
    eager = tierlab.train(config=cfg.replace(name="eager"))
    compiled = tierlab.train(config=cfg.replace(name="compiled", compile=True))
    assert compiled.summary["compile_seconds"] > 0
    assert compiled.summary["final_val_loss"] == pytest.approx(eager.summary["final_val_loss"], rel=0.02)


def test_bench_precision_on_cuda(tmp_path):
    from tierlab.bench import bench_precision

    result = bench_precision(fast_config(tmp_path, device="cuda"), steps=4, warmup_steps=2, chunk=2)
    rows = {r.precision: r for r in result.rows}
    assert [r.status for r in result.rows] == ["ok"] * 4, [(r.precision, r.reason) for r in result.rows]
    assert all(r.peak_mem_mb and r.peak_mem_mb > 0 for r in result.rows)
    if any(k in result.device_name for k in ("H100", "H200", "A100")):
        assert all(r.mfu is not None for r in result.rows)
    json.dumps(result.to_dict())
    assert rows["fp32"].speedup_vs_fp32 == 1.0


def test_validate_reports_cuda_peak_memory():
    report = tierlab.validate("tiny-gpt", model_args=dict(TINY_MODEL), device="cuda", doctor=False)
    memory = next(c for c in report.checks if c.name == "memory")
    assert memory.figures["cuda_peak_step_bytes"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP with NCCL needs two GPUs")
def test_two_gpus_under_torchrun_match_one_gpu(tmp_path):
    """NCCL: 2 GPUs x batch 4 give the losses of 1 GPU x batch 8 (bf16, so to 2e-2)."""
    import subprocess
    import sys

    from helpers import train_records

    args = ["--model-arg", "n_layer=2", "--model-arg", "d_model=64", "--model-arg", "n_head=2", "--seq-len", "64",
            "--max-steps", "20", "--log-every", "5", "--eval-every", "10", "--eval-batches", "2", "--precision",
            "bf16", "--quiet", "--no-plots"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "tierlab", "train", *args, "--batch-size", "4", "--name", "ddp"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr
    one = subprocess.run([sys.executable, "-m", "tierlab", "train", *args, "--batch-size", "8", "--name", "one"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    a, b = train_records(tmp_path / "runs" / "ddp"), train_records(tmp_path / "runs" / "one")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):
        key = "loss" if x["kind"] == "train" else "val_loss"
        assert x[key] == pytest.approx(y[key], rel=2e-2)
    assert json.loads((tmp_path / "runs" / "ddp" / "summary.json").read_text())["world_size"] == 2
