"""Two processes under the real torchrun, with gloo on the CPU: the DDP path end to end.

fp16 with an over-large initial loss scale and fast growth makes the GradScaler overflow,
skip steps and change its scale all through these runs, so "the ranks make the same skip
decisions" is exercised, not assumed (the loop raises when the ranks disagree).  The
comparisons with a single process (fp32, DDP and --fsdp) are in
test_distributed_vs_one_process.py.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torchrun_job import COMMON, MODEL, finish, kill_job, needs_gloo, torchrun

from helpers import assert_same_run, checkpoint_pause_env, last_step, run_cli, train_records, wait_for, write_model
from tierlab.errors import ConfigError
from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint
from tierlab.train.distributed import SINGLE, setup

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """An uninterrupted two-process run: 2 ranks x batch 4 = global batch 8, with TensorBoard on."""
    cwd = tmp_path_factory.mktemp("ddp")
    code, err = finish(torchrun(cwd, *MODEL, *COMMON, "--batch-size", "4", "--tensorboard", "--name", "full"))
    assert code == 0, err
    return cwd / "runs" / "full"


def test_fp16_skip_decisions_are_taken_together(full):
    # The loop gathers every rank's skip flags and loss scales at each log step and stops the
    # run if they differ; this run completed with the scaler busy all through.
    train = [r for r in train_records(full) if r["kind"] == "train"]
    assert json.loads((full / "summary.json").read_text())["status"] == "completed"
    assert train[-1]["skipped_steps"] >= 3 and len({r["loss_scale"] for r in train}) >= 3
    skips = [json.loads(line) for line in (full / "events.jsonl").read_text().splitlines()]
    assert len([e for e in skips if e["event"] == "step_skipped"]) == train[-1]["skipped_steps"]


def test_fsdp_fp16_skips_and_scales_like_ddp(full, tmp_path):
    # Sharded gradients: each rank's GradScaler sees only its shards; the global gradient norm
    # makes the overflow call for all, so the skips and scales are those of the DDP run.
    code, err = finish(torchrun(tmp_path, *MODEL, *COMMON, "--batch-size", "4", "--fsdp", "--name", "fsdp16"))
    assert code == 0, err
    sharded, replicated = train_records(tmp_path / "runs" / "fsdp16"), train_records(full)
    assert [(r["step"], r.get("skipped_steps"), r.get("loss_scale")) for r in sharded] == \
           [(r["step"], r.get("skipped_steps"), r.get("loss_scale")) for r in replicated]
    for a, b in zip(sharded, replicated, strict=True):
        key = "loss" if a["kind"] == "train" else "val_loss"
        assert a[key] == pytest.approx(b[key], rel=1e-4)


def test_only_rank_0_writes(full, tmp_path):
    cwd = full.parent.parent
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]
    assert sorted(p.name for p in full.parent.iterdir()) == ["full"]
    expected = {".lock", "checkpoints", "config.json", "dashboard.png", "events.jsonl", "metrics.jsonl",
                "model.safetensors", "run.json", "summary.json", "tensorboard"}
    assert {p.name for p in full.iterdir()} == expected
    assert len(list((full / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one writer, not two
    steps = [(r["kind"], r["step"]) for r in train_records(full)]
    assert len(steps) == len(set(steps))  # every record once
    events = [json.loads(line)["event"] for line in (full / "events.jsonl").read_text().splitlines()]
    assert events.count("run_start") == 1 and events.count("run_end") == 1
    assert events.count("checkpoint") == 4
    # The checkpoint carries each rank's own random streams and position.
    state = load_checkpoint(latest_checkpoint(full))
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    rank0, rank1 = state["ranks"]
    assert not torch.equal(rank0["rng"]["torch"], rank1["rng"]["torch"])  # dropout streams differ per rank
    assert torch.equal(rank0["sampler"]["generator"], rank1["sampler"]["generator"])  # one global batch stream


# ~50 s of torchrun jobs: `-m slow` (exact resume under torchrun stays in the default run through
# test_distributed_vs_one_process's DDP/FSDP resume tests, kill-and-resume through test_resume's).
@pytest.mark.slow
def test_kill_and_resume_continues_exactly(full, tmp_path):
    (tmp_path / "runs").mkdir()
    part = tmp_path / "runs" / "part"
    # 1) SIGKILL every process of the job (a machine lost) between the step-10 and step-20 checkpoints.
    proc = torchrun(tmp_path, *MODEL, *COMMON, "--batch-size", "4", "--tensorboard", "--name", "part",
                    env_extra=checkpoint_pause_env(2))
    wait_for(lambda: last_step(part) >= 15)
    kill_job(proc)
    assert not (part / "summary.json").exists()

    # 2) Resume; SIGTERM to torchrun alone (a scheduler preempting the job) while rank 0 writes
    #    the step-20 checkpoint: torchrun forwards it, the ranks agree to stop at the next log
    #    step, and rank 0 checkpoints that step for everyone.
    proc = torchrun(tmp_path, "--resume", "runs/part", env_extra=checkpoint_pause_env(2))
    wait_for(lambda: any(p.name.startswith(".step-00000020") for p in (part / "checkpoints").iterdir()))
    proc.send_signal(signal.SIGTERM)
    finish(proc)
    assert json.loads((part / "summary.json").read_text())["status"] == "interrupted"
    assert (part / "checkpoints" / "latest").read_text() == "step-00000025.pt"

    # 3) Resume to the end: the same records and the same final weights as the uninterrupted run.
    code, err = finish(torchrun(tmp_path, "--resume", "runs/part"))
    assert code == 0, err
    assert_same_run(full, part)
    events = [json.loads(line)["event"] for line in (part / "events.jsonl").read_text().splitlines()]
    assert events.count("resume") == 2 and events.count("run_start") == 1


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    write_model(tmp_path, """
        import os
        from torch import nn

        class FailsOnRank1(nn.Module):
            def __init__(self, vocab_size=256):
                super().__init__()
                self.emb, self.head, self.calls = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size), 0

            def forward(self, ids):
                if self.training:
                    self.calls += 1
                    if os.environ["RANK"] == "1" and self.calls > 5:
                        raise RuntimeError("rank 1 ran out of luck")
                return self.head(self.emb(ids))
    """)
    proc = torchrun(tmp_path, "--model", "my_model.py:FailsOnRank1", "--seq-len", "16", "--batch-size", "2",
                    "--max-steps", "1000", "--eval-every", "0", "--device", "cpu", "--precision", "fp32",
                    "--name", "bad")
    code, err = finish(proc, timeout=120)  # a hang would fail here instead of blocking the suite
    assert code != 0
    assert re.search(r"\[rank 1\] ERROR: rank 1 of 2 failed at step \d+: RuntimeError: rank 1 ran out of luck", err), err
    assert "rank      : 1 (local_rank: 1)" in err  # torchrun's own report names the first failure
    summary = tmp_path / "runs" / "bad" / "summary.json"
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "failed"


def test_a_user_error_is_one_plain_line_from_each_rank(tmp_path):
    code, err = finish(torchrun(tmp_path, "--data", "missing.txt", "--device", "cpu", "--name", "x"), timeout=120)
    assert code != 0 and "]: Traceback" not in err, err  # no worker traceback (torchrun prints its own report)
    assert "tierlab: error: Data path 'missing.txt' does not exist." in err
    if "tierlab (rank 1)" in err:  # unless torchrun stopped rank 1 first, it says where the problem is
        assert "tierlab (rank 1): error: Rank 0 stopped before training (DataError: Data path 'missing.txt'" in err
    assert "exitcode  : 2" in err  # torchrun's report: tierlab's user-error code
    assert not (tmp_path / "runs").exists()


def test_resuming_with_another_number_of_processes_warns(full, tmp_path):
    copy = tmp_path / "runs" / "full"
    shutil.copytree(full, copy)
    result = run_cli("train", "--resume", str(copy), "--max-steps", "45", "--allow-config-change", cwd=tmp_path)
    # (the warning "... written by 2 process(es) and is resumed by 1 ..." is logged; this run is --quiet)
    assert result.returncode == 0, result.stderr
    (event,) = [json.loads(line) for line in (copy / "events.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "resume"]
    assert (event["world_size_before"], event["world_size"]) == (2, 1)
    assert train_records(copy)[-1]["step"] == 45


def test_device_choices_under_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert setup("cpu", 60)[0] is SINGLE  # not launched by torchrun: one process, no process group
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup("cpu", 60)[0] is SINGLE  # a job of one process needs no DDP either
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="names one GPU"):
        setup("cuda:0", 60)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            setup("cuda", 60)


@pytest.mark.parametrize("command", [["bench", "precision"], ["search"]])
def test_single_process_tools_refuse_torchrun(command, monkeypatch, capsys):
    from tierlab.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(command) == 2
    assert f"tierlab {command[0]} runs in one process, not under torchrun" in capsys.readouterr().err
