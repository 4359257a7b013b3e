"""Real TensorBoard event files and real offline W&B runs hold the same numbers as metrics.jsonl."""

import pytest

import tierlab
from helpers import SilentServer, assert_user_error, fast_config, run_cli, silent_wandb_env, wandb_history_and_config

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sinks")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("WANDB_MODE", "offline")  # honoured: no --wandb-mode given
    # fp16 with an over-large initial scale: the run has skipped steps and scale changes to show.
    cfg = fast_config(out, precision="fp16", max_steps=20, log_every=5, eval_every=10, tensorboard=True,
                      wandb="tierlab-tests", loss_scale_init=2.0**20)
    run = tierlab.train(config=cfg)
    mp.undo()
    return run


def test_tensorboard_event_files_match_metrics(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tracked_run.dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/loss_scale", "train/skipped_steps", "train/lr", "train/grad_norm",
            "eval/val_loss", "eval/val_acc"} <= tags
    for record in tracked_run.metrics():
        for key, value in record.items():
            if key in ("kind", "step") or value is None:
                continue
            (point,) = [e for e in acc.Scalars(f"{record['kind']}/{key}") if e.step == record["step"]]
            assert point.value == pytest.approx(value, rel=1e-6)
    assert any(t.startswith("events/step_skipped") for t in acc.Tags()["tensors"])


def test_wandb_offline_run_holds_the_series_and_the_config(tracked_run):
    history, config = wandb_history_and_config(tracked_run.dir)
    train = tracked_run.metrics("train")
    by_step = {h["_step"]: h for h in history}
    assert sorted(by_step) == [5, 10, 15, 20]
    for record in train:
        logged = by_step[record["step"]]
        for key in ("loss", "loss_scale", "skipped_steps", "lr", "grad_norm"):
            assert logged[key] == pytest.approx(record[key], rel=1e-6)
    assert train[-1]["skipped_steps"] > 0 and by_step[20]["skipped_steps"] == train[-1]["skipped_steps"]
    assert by_step[20]["val_loss"] == pytest.approx(tracked_run.metrics("eval")[-1]["val_loss"])
    assert config["precision"] == "fp16" and config["max_steps"] == 20 and config["model_args"]["d_model"] == 32
    assert not tracked_run.events("tracker_failed")


def test_missing_tracker_package_is_a_user_error_with_the_pip_command(tmp_path):
    from tierlab.errors import ConfigError
    from tierlab.track.sinks import require

    with pytest.raises(ConfigError, match=r"pip install 'tierlab\[nope\]'"):
        require("no_such_package_xyz", "nope")
    result = run_cli("train", "--wandb-mode", "sometimes", cwd=tmp_path)
    assert result.returncode == 2 and "--wandb-mode 'sometimes'" in result.stderr


TINY_ARGS = ("--data", "demo", "--precision", "fp32", "--model-arg", "n_layer=1", "--model-arg", "d_model=32",
             "--model-arg", "n_head=2", "--batch-size", "4", "--seq-len", "32", "--no-plots")


def test_a_wandb_server_that_never_answers_is_given_up_on_and_the_run_completes(tmp_path, monkeypatch):
    with SilentServer() as port:
        for key, value in silent_wandb_env(port).items():
            monkeypatch.setenv(key, value)
        # W&B's own bounds are 90 s to start and no limit to finish: past the subprocess timeout (a hang fails there).
        result = run_cli("train", *TINY_ARGS, "--max-steps", "10", "--wandb", "p", "--tracker-timeout", "3",
                         "--name", "x", cwd=tmp_path, timeout=75)
        assert result.returncode == 0, result.stderr
        run = tierlab.Run.load(tmp_path / "runs" / "x")
        assert run.summary["status"] == "completed" and run.summary["steps"] == 10
        failed = run.events("tracker_failed")
        assert [(e["sink"], e["call"]) for e in failed] == [("wandb", "start")]
        assert [e["reason"] for e in run.events("tracker_disabled")] == ["it failed to start"]
        assert "tracker wandb failed in start" in result.stdout + result.stderr

        synced = run_cli("sync", run.dir, "--to", "wandb", "--timeout", "3", cwd=tmp_path, timeout=75)
    assert_user_error(synced, f"Could not sync {run.dir} to wandb:", "the run's records and weights are unchanged")


def test_tracker_timeouts_must_be_positive(tmp_path):
    assert_user_error(run_cli("train", *TINY_ARGS, "--tracker-timeout", "0", cwd=tmp_path),
                      "--tracker-timeout must be a positive number of seconds")
    assert_user_error(run_cli("sync", tmp_path, "--to", "wandb", "--timeout", "nan", cwd=tmp_path),
                      "--timeout must be a positive number of seconds")


def test_ctrl_c_while_wandb_waits_for_a_silent_server_stops_the_run_with_a_checkpoint(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    def default_sigint():  # (a test worker may run with SIGINT ignored or blocked, which a child inherits)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    with SilentServer() as port:
        for key, value in silent_wandb_env(port).items():
            monkeypatch.setenv(key, value)
        proc = subprocess.Popen([sys.executable, "-m", "tierlab", "train", *TINY_ARGS, "--max-steps", "5000",
                                 "--wandb", "p", "--tracker-timeout", "5", "--name", "x"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        events = tmp_path / "runs" / "x" / "events.jsonl"
        deadline = time.monotonic() + 120
        while not events.exists():  # created just before the trackers start: W&B is waiting now
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)  # not swallowed by W&B's start: the run stops, it does not go on
    run = tierlab.Run.load(tmp_path / "runs" / "x")
    assert run.summary["status"] == "interrupted" and run.summary["steps"] < 5000
    assert (run.dir / "checkpoints" / "latest").is_file()  # resumable
