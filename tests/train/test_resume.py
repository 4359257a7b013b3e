"""Kill-and-resume with real subprocesses: the resumed run is indistinguishable from an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    as_written_by_earlier_tierlab,
    assert_same_run,
    TINY_MODEL,
    assert_user_error,
    checkpoint_pause_env,
    fast_config,
    last_step,
    run_cli,
    train_records,
    wait_for,
    write_corpus,
    write_model,
)

import tierlab
from tierlab.errors import ConfigError
from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint

ARGS = ["--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
        "--model-arg", "max_seq_len=64", "--seq-len", "32", "--batch-size", "8", "--eval-batches", "2",
        "--lr", "0.01", "--max-steps", "60", "--log-every", "5", "--eval-every", "10", "--ckpt-every", "10",
        "--quiet"]
# fp16 with an over-large initial scale and fast growth: overflows, skipped steps and scale
# changes happen all through the run, so the exactness covers the GradScaler's state too.
FP16 = ["--precision", "fp16", "--loss-scale-init", "1048576", "--loss-scale-growth-interval", "4"]


def start(cwd: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "tierlab", "train", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# fp16 runs in the default suite: it is the superset (the same loop plus the scaler's state, its
# skips and scale changes). The fp32 case (~60 s) is kept for `-m slow`.
@pytest.mark.parametrize("precision", [pytest.param("fp32", marks=pytest.mark.slow), "fp16"])
def test_sigkill_and_resume_is_exact(tmp_path, precision):
    extra = FP16 if precision == "fp16" else ["--precision", "fp32"]
    full = run_cli("train", *ARGS, *extra, "--name", "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    full_dir, part_dir = tmp_path / "runs" / "full", tmp_path / "runs" / "part"
    if precision == "fp16":
        records = [r for r in train_records(full_dir) if r["kind"] == "train"]
        assert records[-1]["skipped_steps"] >= 3  # the scale really moved during the run
        assert len({r["loss_scale"] for r in records}) >= 3

    # 1) SIGKILL between checkpoints (after the step-15 record, before the step-20 checkpoint).
    proc = start(tmp_path, *ARGS, *extra, "--name", "part")
    wait_for(lambda: last_step(part_dir) >= 15)
    proc.kill()
    proc.wait()
    assert not (part_dir / "summary.json").exists()  # it really died mid-run

    # 2) Resume, and SIGKILL again while the step-30 checkpoint is being written.
    proc = start(tmp_path, "--resume", "runs/part", env_extra=checkpoint_pause_env(30))
    ckpt_dir = part_dir / "checkpoints"
    wait_for(lambda: any(p.name.startswith(".step-00000030") for p in ckpt_dir.iterdir()))
    proc.kill()
    proc.wait()
    assert not (ckpt_dir / "step-00000030.pt").exists()
    assert (ckpt_dir / "latest").read_text() == "step-00000020.pt"  # the previous one is still the latest
    stale = [p for p in ckpt_dir.iterdir() if ".tmp" in p.name]
    assert stale  # the half-written file the kill left...

    # 3) Resume again, stop with SIGTERM (graceful: checkpoint, exit 130), and resume to the end.
    proc = start(tmp_path, "--resume", "runs/part")
    wait_for(lambda: last_step(part_dir) >= 35)
    assert not any(p.exists() for p in stale)  # ...is removed by the next start
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert json.loads((part_dir / "summary.json").read_text())["status"] == "interrupted"

    final = run_cli("train", "--resume", "runs/part", cwd=tmp_path)
    assert final.returncode == 0, final.stderr
    assert_same_run(full_dir, part_dir)
    events = [json.loads(line)["event"] for line in (part_dir / "events.jsonl").read_text().splitlines()]
    assert events.count("resume") == 3 and events.count("run_start") == 1
    assert events.count("interrupted") == 0  # cut back with everything after the checkpoint it resumed


def test_resume_refuses_a_different_run(tmp_path):
    first = run_cli("train", *ARGS, "--max-steps", "10", "--name", "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "runs" / "a" / "metrics.jsonl").read_text()
    other_model = run_cli("train", "--resume", "runs/a", "--model-arg", "d_model=64", cwd=tmp_path)
    assert_user_error(other_model, "different model_args", "'d_model': 32", "'d_model': 64")
    other_data = run_cli("train", "--resume", "runs/a", "--data", str(tmp_path / "runs" / "a" / "config.json"),
                         cwd=tmp_path)
    assert_user_error(other_data, "different data")
    longer = run_cli("train", "--resume", "runs/a", "--max-steps", "20", cwd=tmp_path)
    assert_user_error(longer, "changed options (max_steps: 10 -> 20)", "--allow-config-change")
    assert (tmp_path / "runs" / "a" / "metrics.jsonl").read_text() == before
    allowed = run_cli("train", "--resume", "runs/a", "--max-steps", "20", "--allow-config-change", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    summary = json.loads((tmp_path / "runs" / "a" / "summary.json").read_text())
    assert summary["steps"] == 20
    assert json.loads((tmp_path / "runs" / "a" / "config.json").read_text())["max_steps"] == 20


def test_a_run_started_with_relative_paths_resumes_from_another_directory(tmp_path, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    write_corpus(project / "data" / "c.txt", sentences=600)
    write_model(project, """
        from tierlab.models.tiny_gpt import TinyGPT

        def build_model(vocab_size):
            return TinyGPT(vocab_size=vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=64)
    """)
    elsewhere.mkdir()
    common = [a for a in ARGS if not a.startswith(("--model-arg", "n_layer", "d_model", "n_head", "max_seq_len"))]
    first = run_cli("train", *common, "--model", "my_model.py", "--data", "data/c.txt", "--max-steps", "10",
                    "--out", tmp_path / "runs", "--name", "moved", cwd=project)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "moved"
    config = json.loads((run_dir / "config.json").read_text())
    # Recorded absolute: the files are found from any directory (a scheduler's restart, --config elsewhere).
    assert config["data"] == str(project / "data" / "c.txt") and config["model"] == str(project / "my_model.py")
    again = run_cli("train", "--resume", run_dir, "--max-steps", "15", "--allow-config-change", cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 15
    assert "step 15/15" in again.stdout  # the first session's --quiet is not part of the run
    # A checkpoint of earlier tierlab recorded the path as typed (relative): naming the same file
    # another way resumes (its content is what is checked); another corpus does not.
    ckpt = latest_checkpoint(run_dir)
    state = load_checkpoint(ckpt)
    state["config"]["data"] = "data/c.txt"
    torch.save(state, ckpt)
    as_written_by_earlier_tierlab(run_dir)
    monkeypatch.chdir(elsewhere)
    older = tierlab.resume(run_dir, {"data": str(project / "data" / "c.txt"), "max_steps": 20,
                                     "allow_config_change": True})
    assert older.summary["steps"] == 20
    write_corpus(elsewhere / "other.txt", sentences=600, seed=1)
    with pytest.raises(ConfigError, match="the corpus changed since the checkpoint"):
        tierlab.resume(run_dir, {"data": "other.txt"})


def test_resume_auto_starts_fresh_then_continues(tmp_path):
    fresh = run_cli("train", *ARGS, "--max-steps", "10", "--name", "auto", "--resume", "auto", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    again = run_cli("train", *ARGS, "--max-steps", "20", "--allow-config-change", "--name", "auto",
                    "--resume", "auto", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    events = [json.loads(x)["event"] for x in (tmp_path / "runs" / "auto" / "events.jsonl").read_text().splitlines()]
    assert events.count("run_start") == 1 and events.count("resume") == 1
    # A run directory without a checkpoint is set aside, not deleted.
    (tmp_path / "runs" / "crashed").mkdir()
    (tmp_path / "runs" / "crashed" / "metrics.jsonl").write_text("{}\n")
    third = run_cli("train", *ARGS, "--max-steps", "5", "--name", "crashed", "--resume", "auto", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    kept = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("crashed.incomplete-")]
    assert len(kept) == 1 and (kept[0] / "metrics.jsonl").read_text() == "{}\n"


@pytest.mark.parametrize("args, fragment", [
    (["--resume", "runs/nothing"], "no run or checkpoint at 'runs/nothing'"),
    (["--resume", "auto"], "--resume auto needs --name"),
])
def test_resume_mistakes(tmp_path, args, fragment):
    assert_user_error(run_cli("train", *args, cwd=tmp_path), fragment)


def test_unwritable_run_directory_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    result = run_cli("train", *ARGS, "--out", "file/runs", cwd=tmp_path)
    assert_user_error(result, "Cannot write the run directory", "--out")


def test_a_data_pattern_is_recorded_absolute(tmp_path, monkeypatch):
    from tierlab.train.resume import absolute_paths

    monkeypatch.chdir(tmp_path)
    assert absolute_paths(tierlab.TrainConfig(data="shards/train-*.parquet")).data == \
        str(tmp_path / "shards" / "train-*.parquet")
    assert absolute_paths(tierlab.TrainConfig(data="demo")).data == "demo"


def test_a_resume_with_a_new_lr_ends_at_its_own_lr_over_10(tmp_path):
    """min_lr was frozen at lr/10 of the first session; a resume with --lr now decays to the new lr/10."""
    import tierlab
    from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint

    run = tierlab.train(config=fast_config(tmp_path, max_steps=10, eval_every=0, warmup_steps=2))
    tierlab.resume(run.dir, {"max_steps": 20, "lr": 1e-3, "allow_config_change": True})
    schedule = load_checkpoint(latest_checkpoint(run.dir))["schedule"]
    assert schedule["lr"] == 1e-3 and schedule["min_lr"] == pytest.approx(1e-4)
    assert run.metrics("train")[-1]["lr"] == pytest.approx(1e-4, rel=0.1)  # near the end of the new decay


def test_a_resume_redoes_the_same_steps_with_dropout(tmp_path):
    """Dropout draws from torch's random stream: a resume must restore it, or the redone steps differ."""
    import tierlab
    from safetensors.torch import load_file

    cfg = fast_config(tmp_path, max_steps=20, ckpt_every=10, warmup_steps=2,
                      model_args={**TINY_MODEL, "dropout": 0.2})
    run = tierlab.train(config=cfg)
    before, weights = train_records(run.dir), load_file(str(run.dir / "model.safetensors"))
    tierlab.resume(run.dir / "checkpoints" / "step-00000010.pt")
    assert train_records(run.dir) == before
    again = load_file(str(run.dir / "model.safetensors"))
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_tokens_are_carried_across_a_resume_that_changes_the_batch(tmp_path):
    """Issue 19.13: the count goes on from where it was, at the new batch's rate (it used to be step x new rate)."""
    cfg = fast_config(tmp_path, max_steps=20, ckpt_every=10, batch_size=8, no_plots=True)
    first = tierlab.train(config=cfg)
    assert first.summary["tokens"] == 20 * 8 * 32
    again = tierlab.resume(first.dir, {"max_steps": 30, "batch_size": 4, "allow_config_change": True})
    assert again.summary["tokens"] == 20 * 8 * 32 + 10 * 4 * 32
    tokens = [r["tokens"] for r in train_records(first.dir)]
    assert tokens == sorted(tokens) and tokens[-1] == again.summary["tokens"]  # the chart never doubles back


@pytest.mark.parametrize("damage, fragment", [
    (lambda p: p.write_bytes(p.read_bytes()[:500]), "is shorter than when the checkpoint was written"),
    (lambda p: p.unlink(), "was deleted"),
    (lambda p: p.write_bytes(b"#" + p.read_bytes()), "that byte is not the end of a record"),  # edited before
])
def test_records_that_lost_history_are_refused_not_glued_onto(tmp_path, damage, fragment):
    """Issue 19.5: a torn, deleted or edited metrics.jsonl / events.jsonl is refused; nothing is appended to it."""
    run = tierlab.train(config=fast_config(tmp_path, max_steps=40, ckpt_every=40, no_plots=True))
    for name in ("metrics.jsonl", "events.jsonl"):
        path = run.dir / name
        backup = path.read_bytes()
        damage(path)
        before = path.read_bytes() if path.exists() else None
        with pytest.raises(tierlab.UserError, match=fragment):
            tierlab.resume(run.dir, {"max_steps": 50, "allow_config_change": True})
        assert (path.read_bytes() if path.exists() else None) == before  # refused before anything was written
        path.write_bytes(backup)
