"""--compile: compiled up front with the time reported apart, same results as eager, clean failures.

The default run uses the "aot_eager" backend (the same tracing through TorchDynamo and
AOTAutograd, without generating C++): inductor's first compile costs ~30 s on 2 cores.
The inductor case is marked slow.
"""

import pytest
from helpers import assert_user_error, fast_config, run_cli

import tierlab
from tierlab.errors import ConfigError
from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint
from tierlab.train.compile import BACKEND_ENV
from tierlab.train.resume import check_same_run


def _compare(tmp_path):
    cfg = fast_config(tmp_path, max_steps=10, log_every=5, eval_every=10)
    eager = tierlab.train(config=cfg.replace(name="eager"))
    compiled = tierlab.train(config=cfg.replace(name="compiled", compile=True))
    return eager, compiled


def _assert_same_training(eager, compiled):
    assert compiled.summary["compile_seconds"] > 0 and eager.summary["compile_seconds"] is None
    (event,) = compiled.events("compiled")
    assert event["seconds"] == compiled.summary["compile_seconds"] and event["step"] == 0
    for a, b in zip(eager.metrics(), compiled.metrics(), strict=True):
        key = "loss" if a["kind"] == "train" else "val_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5)
    # The compile pass's gradients and random numbers are not part of training.
    state = load_checkpoint(latest_checkpoint(compiled.dir))
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # the plain module is what is saved


def test_compiled_training_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "aot_eager")
    _assert_same_training(*_compare(tmp_path))


@pytest.mark.slow
def test_inductor_compiled_training_matches_eager(tmp_path, monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    _assert_same_training(*_compare(tmp_path))


def test_a_compile_failure_is_a_user_error_before_the_run_directory_exists(tmp_path, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "no_such_backend")
    result = run_cli("train", "--compile", "--max-steps", "2", "--model-arg", "n_layer=1", "--out",
                     tmp_path / "runs", "--name", "r", cwd=tmp_path)
    assert_user_error(result, "torch.compile", "without --compile")
    assert not (tmp_path / "runs" / "r").exists()


def test_the_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "no_such_backend")  # fails at once, naming backend and mode
    result = run_cli("train", "--compile", "--compile-mode", "max-autotune-no-cudagraphs", "--max-steps", "2",
                     "--model-arg", "n_layer=1", "--out", tmp_path / "runs", "--name", "r", cwd=tmp_path)
    assert_user_error(result, "torch.compile (no_such_backend, max-autotune-no-cudagraphs)")


def test_compile_is_not_part_of_a_runs_identity(tmp_path):
    """Resuming with or without --compile needs no --allow-config-change: it changes speed, not the maths."""
    recorded = fast_config(tmp_path).to_dict()
    check_same_run(fast_config(tmp_path, compile=True), recorded, tmp_path / "step-00000010.pt")  # no error
    with pytest.raises(ConfigError, match="changed options"):
        check_same_run(fast_config(tmp_path, compile=True, lr=0.5), recorded, tmp_path / "step-00000010.pt")
