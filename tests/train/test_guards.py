"""--on-nonfinite skip|raise|rollback and the stop rules, on models that go non-finite at known steps."""

import json

import pytest
import torch

import tierlab
from helpers import TINY_MODEL, SpikeAt, fast_config, run_cli, write_model
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train import Diverged
from tierlab.train.checkpoint import latest_checkpoint, load_checkpoint

NAN = float("nan")


def _model():
    torch.manual_seed(0)
    return TinyGPT(vocab_size=256, **TINY_MODEL)


def test_raise_stops_with_a_diagnosis_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = fast_config(tmp_path, on_nonfinite="raise", max_steps=20, log_every=1, ckpt_every=5, eval_every=0)
    with pytest.raises(Diverged) as err:
        tierlab.train(SpikeAt(_model(), at=7, factor=NAN), config=cfg)
    text = str(err.value)
    assert "stopped at step 7 (--on-nonfinite raise)" in text and "not finite at step 7" in text
    assert "the trouble began at step 7, where the loss itself was nan" in text
    assert "non-finite gradients at step 7: 16 of 16 parameters: all of them" in text and "what to do:" in text
    assert "lower the learning rate" in text
    run = tierlab.Run.load(tmp_path / "runs" / "run")
    assert text.endswith(f"last good checkpoint: {run.dir / 'checkpoints' / 'step-00000005.pt'}")
    assert load_checkpoint(latest_checkpoint(run.dir))["step"] == 5
    assert run.summary["status"] == "diverged"
    assert run.events("diverged")[0]["diagnosis"] == text


def test_skip_drops_the_update_and_goes_on(tmp_path):
    cfg = fast_config(tmp_path, max_steps=12, log_every=4, eval_every=0)
    run = tierlab.train(SpikeAt(_model(), at={3, 9}, factor=NAN), config=cfg)
    assert [e["step"] for e in run.events("step_skipped")] == [3, 9]
    assert run.summary["status"] == "completed" and run.summary["skipped_steps"] == 2
    first = run.events("step_skipped")[0]
    assert first["params_count"] == len(list(run.model.parameters()))  # NaN logits poison every gradient


def test_rollback_returns_to_the_checkpoint_with_a_lower_learning_rate(tmp_path):
    cfg = fast_config(tmp_path, on_nonfinite="rollback", max_steps=20, log_every=1, ckpt_every=5, eval_every=0)
    run = tierlab.train(SpikeAt(_model(), at=8, factor=NAN), config=cfg.replace(name="rolled"))
    clean = tierlab.train(SpikeAt(_model(), at=None), config=cfg.replace(name="clean"))
    (rollback,) = run.events("rollback")
    assert (rollback["step"], rollback["to_step"], rollback["lr_scale"], rollback["rollbacks"]) == (8, 5, 0.5, 1)
    records = run.metrics("train")
    assert [r["step"] for r in records] == list(range(1, 21))  # steps 6-8 were redone, not duplicated
    lr = {r["step"]: r["lr"] for r in records}
    lr_clean = {r["step"]: r["lr"] for r in clean.metrics("train")}
    assert all(lr[s] == lr_clean[s] for s in range(1, 6))
    assert all(lr[s] == pytest.approx(0.5 * lr_clean[s], rel=1e-6) for s in range(6, 21))
    assert run.summary["status"] == "completed" and run.summary["rollbacks"] == 1


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    cfg = fast_config(tmp_path, on_nonfinite="rollback", max_rollbacks=2, max_steps=30, log_every=1, ckpt_every=5,
                      eval_every=0)
    with pytest.raises(Diverged, match="after 2 rollback"):
        tierlab.train(SpikeAt(_model(), at=range(8, 10**9), factor=NAN), config=cfg)
    run = tierlab.Run.load(tmp_path / "runs" / "run")
    assert [e["rollbacks"] for e in run.events("rollback")] == [1, 2]


def test_consecutive_skips_stop_the_run(tmp_path):
    cfg = fast_config(tmp_path, max_steps=40, log_every=1, eval_every=0, max_consecutive_skips=5)
    with pytest.raises(Diverged) as err:
        tierlab.train(SpikeAt(_model(), at=range(4, 10**9), factor=NAN), config=cfg)
    assert "5 consecutive steps up to step 8 were skipped" in str(err.value)
    assert "the trouble began at step 4" in str(err.value)


class InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient for its input in backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class BackwardOverflow(torch.nn.Module):
    """A finite loss whose gradient overflows in one parameter only, from step ``at`` on."""

    def __init__(self, at):
        super().__init__()
        self.inner, self.at, self.calls = _model(), at, 0
        self.gate = torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids):
        if self.training:
            self.calls += 1
        gate = InfGrad.apply(self.gate) if self.training and self.calls >= self.at else self.gate
        return self.inner(input_ids) * gate


def test_diagnosis_names_the_parameters_whose_gradients_overflowed(tmp_path):
    cfg = fast_config(tmp_path, max_steps=30, log_every=2, eval_every=0, max_consecutive_skips=4)
    with pytest.raises(Diverged) as err:
        tierlab.train(BackwardOverflow(at=5), config=cfg)
    text = str(err.value)
    assert "the trouble began at step 5: the loss was finite but the gradients were not" in text
    assert "non-finite gradients at step 5: 1 of 17 parameters: gate" in text


def test_fp16_loss_scale_floor_stops_the_run(tmp_path):
    cfg = fast_config(tmp_path, precision="fp16", max_steps=60, log_every=1, eval_every=0,
                      max_consecutive_skips=100)
    with pytest.raises(Diverged) as err:
        tierlab.train(SpikeAt(_model(), at=range(3, 10**9), factor=1e6), config=cfg)
    text = str(err.value)
    assert "loss scale fell to 0.5, below --min-loss-scale 1" in text
    assert "loss scale history:" in text and "0.5 @ 19" in text
    assert "--precision" in text  # the advice names the precision to try


DIVERGING_MODEL = """
import torch
from tierlab.models.tiny_gpt import TinyGPT

class Model(TinyGPT):
    calls = 0

    def forward(self, input_ids):
        logits = super().forward(input_ids)
        if self.training:
            Model.calls += 1
            if Model.calls >= 6:
                logits = logits * float("nan")
        return logits

def build_model(vocab_size):
    return Model(vocab_size=vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
"""


def test_cli_exit_code_3_with_the_diagnosis(tmp_path):
    model = write_model(tmp_path, DIVERGING_MODEL)
    result = run_cli("train", "--model", model, "--seq-len", "32", "--batch-size", "8", "--max-steps", "30",
                     "--log-every", "2", "--ckpt-every", "4", "--eval-every", "0", "--on-nonfinite", "raise",
                     "--name", "div", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "tierlab: Training stopped at step 6 (--on-nonfinite raise)" in result.stderr
    assert "last good checkpoint: runs/div/checkpoints/step-00000004.pt" in result.stderr
    assert json.loads((tmp_path / "runs" / "div" / "summary.json").read_text())["status"] == "diverged"


def test_a_short_run_whose_every_step_was_skipped_is_not_completed(tmp_path):
    """Issue 19.9: under the 25-skip limit, a run that never updated its weights still ends diverged (exit 3)."""
    model = write_model(tmp_path, """
        import torch
        from tierlab.models.tiny_gpt import TinyGPT
        class AlwaysNaN(TinyGPT):
            def forward(self, ids):
                return super().forward(ids) * float("nan")
        def build(vocab_size=256):
            return AlwaysNaN(vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
    """)
    with pytest.raises(Diverged, match="without a single real optimizer step"):
        tierlab.train(config=fast_config(tmp_path, model=f"{model}:build", model_args={}, max_steps=10,
                                         no_plots=True))
    summary = json.loads((tmp_path / "runs" / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["skipped_steps"] == 10


def test_rollback_never_returns_to_a_checkpoint_holding_the_bad_steps(tmp_path):
    """Issue 19.8: NaN at steps 22-23, checkpoint every 25, records every 10: the step-25 checkpoint used to carry
    the unread NaN rows, so every rollback replayed them (three rollbacks 'to step 25', exit 3)."""
    cfg = fast_config(tmp_path, on_nonfinite="rollback", max_steps=40, log_every=10, ckpt_every=25, eval_every=0)
    run = tierlab.train(SpikeAt(_model(), at={22, 23}, factor=NAN), config=cfg)
    (rollback,) = run.events("rollback")
    assert rollback["step"] == 25 and rollback["to_step"] < 22  # a checkpoint from before the first bad step
    assert run.summary["status"] == "completed" and run.summary["rollbacks"] == 1
    steps = [r["step"] for r in run.metrics("train")]
    assert steps == sorted(set(steps)) and steps[-1] == 40
