import pytest
import torch
from torch import nn

from tierlab.errors import ModelError, PrecisionError
from tierlab.train import precision as precision_mod
from tierlab.train.optim import build_optimizer
from tierlab.train.precision import PrecisionPolicy, decide_precision, low_precision_weights
from helpers import fast_config

CPU = torch.device("cpu")


def test_auto_on_cpu_without_native_bf16_is_fp32_without_measuring(monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "0")

    def never(flag):
        raise AssertionError("auto measured on a CPU without native bf16")

    d = decide_precision("auto", CPU, measure=never)
    assert d.used == "fp32" and "no native bf16" in d.reason and not d.fallback and d.measured is None


def test_auto_on_cpu_with_native_bf16_asks_the_measurement(monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    asked = []
    d = decide_precision("auto", CPU, measure=lambda flag: asked.append(flag) or decide_precision("bf16", CPU))
    assert asked == ["TIERLAB_CPU_NATIVE_BF16=1"] and d.used == "bf16"
    # Without a way to measure, the flag alone no longer decides: fp32, saying why.
    d = decide_precision("auto", CPU)
    assert d.used == "fp32" and "nothing was measured" in d.reason


@pytest.mark.parametrize("requested", ["fp16", "bf16"])
def test_explicit_low_precision_on_cpu_is_honoured_with_a_warning(monkeypatch, requested):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "0")
    d = decide_precision(requested, CPU)
    assert d.used == requested and "slower than fp32" in d.warning


def test_unrunnable_precision_falls_back_or_fails_when_strict(monkeypatch):
    monkeypatch.setattr(precision_mod, "_cannot_run", lambda p, dev: "no kernel for this dtype")
    d = decide_precision("bf16", CPU)
    assert d.used == "fp32" and d.fallback and "no kernel" in d.reason
    with pytest.raises(PrecisionError, match="cannot run here"):
        decide_precision("bf16", CPU, strict=True)


def test_fp16_parameters_under_a_grad_scaler_are_refused():
    policy = PrecisionPolicy(decide_precision("fp16", CPU), CPU)
    with pytest.raises(ModelError, match="Attempting to unscale FP16 gradients"):
        policy.check_model(nn.Linear(4, 4).half())
    policy.check_model(nn.Linear(4, 4))  # fp32 master weights are fine


def test_weights_stored_in_16_bits_are_warned_about_in_the_log_and_the_events(tmp_path, caplog):
    from tierlab.models.tiny_gpt import TinyGPT
    import tierlab
    from helpers import TINY_MODEL

    assert low_precision_weights(nn.Linear(4, 4)) is None
    frozen = nn.Linear(4, 4).half().requires_grad_(False)  # not trained: nothing is updated in fp16
    assert low_precision_weights(frozen) is None
    model = TinyGPT(vocab_size=256, **TINY_MODEL).to(torch.bfloat16)
    with caplog.at_level("WARNING", logger="tierlab"):
        run = tierlab.train(model, config=fast_config(tmp_path, max_steps=2, eval_every=0))
    said = [r.getMessage() for r in caplog.records if "stored in bfloat16" in r.getMessage()]
    assert len(said) == 1 and "Fix: keep the weights in float32" in said[0] and "--precision bf16" in said[0]
    (event,) = run.events("precision")
    assert event["weights_warning"] == said[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_non_finite_gradients_skip_the_step_on_the_device(tmp_path, precision):
    model = nn.Linear(4, 4)
    cfg = fast_config(tmp_path)
    optimizer, _ = build_optimizer(model, cfg, CPU)
    policy = PrecisionPolicy(decide_precision(precision, CPU), CPU)
    before = [p.detach().clone() for p in model.parameters()]
    with policy.autocast():
        loss = model(torch.ones(2, 4)).float().sum() * float("inf")
    policy.backward(loss)
    policy.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    skipped = policy.step(optimizer, norm)
    assert bool(skipped)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    if precision == "fp16":
        assert float(policy.loss_scale) == 2.0**15  # backed off from 2**16
    # A finite step afterwards does update.
    optimizer.zero_grad()
    with policy.autocast():
        loss = model(torch.full((2, 4), 0.01)).float().mean()
    policy.backward(loss)
    policy.unscale_(optimizer)
    skipped = policy.step(optimizer, torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
    assert not bool(skipped)
    assert not torch.equal(before[0], model.weight)


def test_tf32_is_a_cuda_mode_and_says_so_on_a_cpu():
    d = decide_precision("tf32", CPU)
    assert d.used == "fp32" and d.fallback and "tensor cores" in d.reason
    with pytest.raises(PrecisionError, match="does not exist on a CPU"):
        decide_precision("tf32", CPU, strict=True)


@pytest.mark.parametrize("name, inside", [("fp32", "highest"), ("bf16", "medium")])
def test_activate_sets_and_restores_the_matmul_precision(name, inside):
    policy = PrecisionPolicy(decide_precision(name, CPU), CPU)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        with policy.activate():
            assert torch.get_float32_matmul_precision() == inside  # strict fp32 is strict; others untouched
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
