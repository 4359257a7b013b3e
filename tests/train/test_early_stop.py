"""--early-stop: the run stops once evaluations stop improving, keeps the best weights, and resumes exactly."""

import json

import pytest
import torch
from helpers import assert_same_run, assert_user_error, fast_config, run_cli
from safetensors.torch import load_file

import tierlab
from tierlab.errors import ConfigError
from tierlab.train.checkpoint import load_checkpoint

# A delta no evaluation can beat: the first evaluation sets the mark, the next two miss it, and the run
# stops at step 15 of 40 (patience 2, an evaluation every 5 steps, each a log step).
STOPS = dict(max_steps=40, log_every=5, eval_every=5, ckpt_every=5, keep_ckpts=10, early_stop=2,
             early_stop_delta=10.0)


def _events(run_dir, name):
    return [e for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines()) if e["event"] == name]


def test_a_run_stops_early_and_keeps_the_best_evaluations_weights(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, **STOPS))
    assert run.summary["status"] == "early_stopped" and run.summary["steps"] == 15
    evals = run.metrics("eval")
    assert [r["step"] for r in evals] == [5, 10, 15]
    best = min(evals, key=lambda r: r["val_loss"])
    assert run.summary["best_step"] == best["step"] and run.summary["best_val_loss"] == best["val_loss"]
    [stop] = _events(run.dir, "early_stop")
    assert stop["step"] == 15 and stop["patience"] == 2 and stop["best_step"] == best["step"]
    # best.safetensors holds exactly the weights the best evaluation scored (the checkpoint of that step)
    saved = load_file(str(run.dir / "best.safetensors"))
    at_best = load_checkpoint(run.dir / "checkpoints" / f"step-{best['step']:08d}.pt")["model"]
    assert all(torch.equal(saved[name], at_best[name]) for name in saved)
    best_model, _ = tierlab.load(run.dir, checkpoint=run.dir / "best.safetensors")  # as sample --checkpoint takes it
    assert all(torch.equal(best_model.state_dict()[name], saved[name]) for name in saved)
    assert (run.dir / "model.safetensors").is_file() and (run.dir / "checkpoints" / "step-00000015.pt").is_file()

    # Resumed as it is: patience has run out, so nothing more is trained.
    again = tierlab.resume(run.dir)
    assert again.summary["status"] == "early_stopped" and again.summary["steps"] == 15


def test_more_patience_on_resume_trains_on(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, **STOPS))
    more = run_cli("train", "--resume", run.dir, "--early-stop", "4", "--allow-config-change", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    summary = json.loads((run.dir / "summary.json").read_text())
    assert summary["status"] == "early_stopped" and summary["steps"] == 25  # two more evaluations: 20, 25
    assert [e["step"] for e in _events(run.dir, "early_stop")] == [15, 25]


def test_an_early_stopping_run_resumes_exactly(tmp_path):
    cfg = fast_config(tmp_path, **STOPS)
    tierlab.train(config=cfg.replace(name="full"))
    part = tierlab.train(config=cfg.replace(name="part")).dir
    # Back to the step-10 checkpoint, one evaluation short of the stop, as if the process had died there.
    tierlab.resume(part / "checkpoints" / "step-00000010.pt")
    assert_same_run(tmp_path / "runs" / "full", part)
    full_best = load_file(str(tmp_path / "runs" / "full" / "best.safetensors"))
    part_best = load_file(str(part / "best.safetensors"))
    assert all(torch.equal(full_best[n], part_best[n]) for n in full_best)


def test_a_resume_between_the_last_evaluation_and_the_stop_stops_where_the_run_did(tmp_path):
    # Evaluations at 3, 6, 9 (patience out), log steps every 5: the run stops at 10; a checkpoint at 9 is
    # past the evaluation that ran out of patience but before the stop.
    cfg = fast_config(tmp_path, **{**STOPS, "eval_every": 3, "ckpt_every": 1, "keep_ckpts": 20})
    full = tierlab.train(config=cfg.replace(name="full"))
    assert full.summary["steps"] == 10 and full.summary["status"] == "early_stopped"
    part = tierlab.train(config=cfg.replace(name="part")).dir
    tierlab.resume(part / "checkpoints" / "step-00000009.pt")
    assert_same_run(full.dir, part)


def test_a_run_that_keeps_improving_completes(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, max_steps=20, eval_every=5, early_stop=3))
    assert run.summary["status"] == "completed" and run.summary["steps"] == 20
    assert not _events(run.dir, "early_stop") and (run.dir / "best.safetensors").is_file()


@pytest.mark.parametrize("changes, fragment", [
    (dict(early_stop=0), "--early-stop must be a number of evaluations, 1 or more"),
    (dict(early_stop=3, eval_every=0), "--early-stop counts evaluations, and --eval-every 0 turns them off"),
    (dict(early_stop=3, early_stop_delta=-0.1), "--early-stop-delta must be a finite number, 0 or more"),
    (dict(early_stop_delta=0.1), "--early-stop-delta 0.1 is given without --early-stop"),
])
def test_bad_early_stop_options_are_plain_errors(tmp_path, changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        fast_config(tmp_path, **changes)


def test_the_cli_exits_0_and_says_it_stopped_early(tmp_path):
    result = run_cli("train", "--max-steps", "40", "--log-every", "5", "--eval-every", "5", "--early-stop", "2",
                     "--early-stop-delta", "10", "--seq-len", "32", "--batch-size", "8", "--eval-batches", "2",
                     "--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
                     "--name", "es", "--no-plots", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "early stop at step 15" in result.stdout + result.stderr
    assert_user_error(run_cli("train", "--early-stop", "2", "--eval-every", "0", cwd=tmp_path),
                      "--early-stop counts evaluations")
