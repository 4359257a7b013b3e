"""The training loop: loss scaling and skipped steps, precisions, host syncs, accumulation."""

import math

import pytest
import torch

import tierlab
from helpers import TINY_MODEL, SpikeAt, fast_config
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train import loop as loop_mod

CPU = torch.device("cpu")


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyGPT(vocab_size=256, **TINY_MODEL)


def test_fp16_overflow_skips_the_step_halves_the_scale_and_keeps_the_schedule(tmp_path):
    steps, spike = 12, 5
    cfg = fast_config(tmp_path, precision="fp16", max_steps=steps, log_every=1, eval_every=0, warmup_steps=3)
    spiked = tierlab.train(SpikeAt(_model(), at=spike), config=cfg.replace(name="spiked"))
    clean = tierlab.train(SpikeAt(_model(), at=None), config=cfg.replace(name="clean"))

    records = spiked.metrics("train")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert [r["skipped_steps"] for r in records] == [0] * (spike - 1) + [1] * (steps - spike + 1)
    assert [r["loss_scale"] for r in records] == [2.0**16] * (spike - 1) + [2.0**15] * (steps - spike + 1)
    assert [(e["step"], e["skipped_steps"]) for e in spiked.events("step_skipped")] == [(spike, 1)]
    changes = spiked.events("loss_scale_change")
    assert [(e["step"], e["from"], e["to"]) for e in changes] == [(spike, 2.0**16, 2.0**15)]
    assert [e["step"] for e in spiked.events("nonfinite_loss")] == [spike]
    assert spiked.summary["skipped_steps"] == 1 and spiked.summary["final_loss_scale"] == 2.0**15

    # The learning rates of the steps that happened are exactly those of a run without the skip.
    lrs_spiked = [r["lr"] for r in records]
    real_lrs = lrs_spiked[: spike - 1] + lrs_spiked[spike:]
    lrs_clean = [r["lr"] for r in clean.metrics("train")]
    assert real_lrs == lrs_clean[: steps - 1]
    assert lrs_spiked[spike - 1] == lrs_spiked[spike]  # the skipped step's lr is retried
    assert clean.summary["skipped_steps"] == 0 and not clean.events("loss_scale_change")


def test_nonfinite_loss_in_fp32_drops_the_update(tmp_path):
    cfg = fast_config(tmp_path, max_steps=6, log_every=1, eval_every=0)
    model = SpikeAt(_model(), at=3, factor=float("nan"))
    weights = {}

    original = loop_mod.Trainer.train_step

    def record_weights(self):  # observe, do not alter: weights after each step
        original(self)
        weights[len(weights) + 1] = self.model.inner.head.weight.detach().clone()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod.Trainer, "train_step", record_weights)
        run = tierlab.train(model, config=cfg)
    assert torch.equal(weights[2], weights[3])  # the NaN step changed nothing
    assert not torch.equal(weights[3], weights[4])  # and training went on
    assert [e["step"] for e in run.events("step_skipped")] == [3]
    assert [e["step"] for e in run.events("nonfinite_loss")] == [3]
    records = run.metrics("train")
    assert records[2]["loss"] is None and run.events("nonfinite_loss")[0]["loss"] == "nan"
    assert math.isfinite(records[-1]["loss"]) and run.summary["skipped_steps"] == 1
    assert records[2]["loss_scale"] is None  # no scaler in fp32


@pytest.fixture(scope="module")
def precision_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("precisions")
    runs = {}
    for precision in ("fp32", "bf16", "fp16"):
        cfg = fast_config(out, precision=precision, name=precision, max_steps=60, eval_every=60, eval_batches=4)
        runs[precision] = tierlab.train(config=cfg)
    return runs


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_learns_the_demo_task(precision_runs, precision):
    run = precision_runs[precision]
    first, last = run.metrics("train")[0]["loss"], run.summary["final_val_loss"]
    assert first > 4.0  # starts near ln(256) = 5.55
    assert last < 3.0
    assert run.summary["precision"] == precision


# Stated tolerance: after 60 steps, low-precision val loss within 0.05 nats of fp32.
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_stays_close_to_fp32(precision_runs, precision):
    fp32 = precision_runs["fp32"].summary["final_val_loss"]
    assert abs(precision_runs[precision].summary["final_val_loss"] - fp32) < 0.05


SYNC_METHODS = ["item", "__float__", "__int__", "__bool__", "tolist"]


def syncs_inside_train_step(train):
    """Run ``train()`` and return the host-sync calls made inside ``Trainer.train_step``.

    Counts every Tensor.item/float/int/bool/tolist and GradScaler.get_scale: the calls that
    make the host wait for the device. Log steps (``flush``) run outside train_step.
    """
    calls, in_step = [], [False]

    def spy(name, original):
        def wrapper(*args, **kwargs):
            if in_step[0]:
                calls.append(name)
            return original(*args, **kwargs)
        return wrapper

    original_step = loop_mod.Trainer.train_step

    def marked_step(self):
        in_step[0] = True
        try:
            original_step(self)
        finally:
            in_step[0] = False

    with pytest.MonkeyPatch.context() as mp:
        for name in SYNC_METHODS:
            mp.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
        mp.setattr(torch.amp.GradScaler, "get_scale", spy("get_scale", torch.amp.GradScaler.get_scale))
        mp.setattr(loop_mod.Trainer, "train_step", marked_step)
        result = train()
    return calls, result


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_no_host_sync_between_log_steps(tmp_path, precision):
    """The run includes an overflow (a skipped step, a scale change), so the skip path is covered."""
    cfg = fast_config(tmp_path, precision=precision, max_steps=8, log_every=4, eval_every=4, grad_accum=2)
    model = SpikeAt(_model(), at=3, factor=1e6 if precision == "fp16" else float("inf"))
    calls, run = syncs_inside_train_step(lambda: tierlab.train(model, config=cfg))
    assert run.summary["skipped_steps"] == 1  # the overflow happened, inside the watched steps
    assert calls == []


@pytest.mark.parametrize("options", [{"objective": "mlm"}, {"causal_mask": True}], ids=["mlm", "causal-mask"])
def test_no_host_sync_with_masking_or_hooked_attention(tmp_path, options):
    """--objective mlm masks every micro-batch and --causal-mask hooks every attention call: still no sync."""
    from pathlib import Path

    graph = Path(__file__).parent.parent / "assets" / "builder" / "graph"
    cfg = fast_config(tmp_path, model=str(graph), model_args={}, max_steps=6, log_every=3, eval_every=3,
                      grad_accum=2, **options)
    calls, run = syncs_inside_train_step(lambda: tierlab.train(config=cfg))
    assert run.summary["steps"] == 6 and calls == []


def test_sync_detector_catches_a_sync_in_the_step(tmp_path):
    """The detector above is not vacuous: a model that calls .item() in forward is caught."""
    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _model()

        def forward(self, x):
            logits = self.inner(x)
            logits.mean().item()
            return logits

    calls, _ = syncs_inside_train_step(
        lambda: tierlab.train(Syncing(), config=fast_config(tmp_path, max_steps=2, eval_every=0)))
    assert calls == ["item", "item"]


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """grad_accum=2 x batch 4 takes the same first step as grad_accum=1 x batch 8."""
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 100, (8,), generator=g)
    g = torch.Generator().manual_seed(1)
    assert torch.equal(a, torch.cat([torch.randint(0, 100, (4,), generator=g) for _ in range(2)]))

    weights, losses = [], []
    for accum, batch in ((2, 4), (1, 8)):
        model = _model(seed=7)
        cfg = fast_config(tmp_path, name=f"acc{accum}", max_steps=1, eval_every=0, grad_accum=accum,
                          batch_size=batch, clip_grad=0.0, warmup_steps=0)
        run = tierlab.train(model, config=cfg)
        weights.append(model.head.weight.detach().clone())
        losses.append(run.metrics("train")[0]["loss"])
    assert torch.allclose(weights[0], weights[1], atol=1e-6)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # the logged loss is the step's mean, not a sum


class _WithIdleHead(torch.nn.Module):
    """A model with a parameter that gets no gradient on every other step (a conditional branch)."""

    def __init__(self):
        super().__init__()
        self.inner = _model()
        self.extra = torch.nn.Linear(256, 256)
        self.calls = 0

    def forward(self, input_ids):
        logits = self.inner(input_ids)
        self.calls += 1
        return self.extra(logits) if self.training and self.calls % 2 else logits


def test_parameters_without_a_gradient_count_as_zero_and_train_on(tmp_path):
    model = _WithIdleHead()
    before = model.extra.weight.detach().clone()
    run = tierlab.train(model, config=fast_config(tmp_path, max_steps=8, log_every=1, eval_every=0))
    records = run.metrics("train")
    assert run.summary["status"] == "completed" and run.summary["skipped_steps"] == 0
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in records)
    assert not torch.equal(before, model.extra.weight)  # trained on the steps that used it
