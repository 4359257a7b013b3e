"""--attention-backend: the SDPA kernels enabled, and what the model's attention really ran as."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, fast_config
from torch import nn

import tierlab
from tierlab.errors import ConfigError
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.attention import choose, observe

CPU = torch.device("cpu")


def test_on_a_cpu_auto_leaves_torch_its_order_and_the_cpu_flash_kernel_is_seen():
    policy = choose("auto", CPU)
    assert policy.order == ()
    said = observe(TinyGPT(vocab_size=64, **TINY_MODEL), torch.randint(0, 64, (2, 16)), policy,
                   contextlib.nullcontext)
    assert said == "flash (1 call)"  # one block, one SDPA call, the CPU's flash kernel


def test_math_is_math_and_the_results_agree():
    model = TinyGPT(vocab_size=64, **{**TINY_MODEL, "n_layer": 2}).eval()
    x = torch.randint(0, 64, (2, 16))
    math = choose("math", CPU)
    assert observe(model, x, math, contextlib.nullcontext) == "math (2 calls)"
    with torch.no_grad():
        flash = model(x)
        with math.context():
            slow = model(x)
    torch.testing.assert_close(flash, slow, rtol=1e-5, atol=1e-5)


def test_a_model_with_its_own_attention_maths_is_said_to_be_unchanged():
    class OwnMaths(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(64, 16), nn.Linear(16, 64)

        def forward(self, x):
            h = self.emb(x)
            weights = F.softmax(h @ h.transpose(1, 2) / 4, dim=-1)
            return self.head(weights @ h)

    said = observe(OwnMaths(), torch.randint(0, 64, (2, 8)), choose("flash", CPU), contextlib.nullcontext)
    assert said.startswith("the model does not call scaled_dot_product_attention")


def test_observing_draws_no_random_numbers_from_the_run():
    model = TinyGPT(vocab_size=64, **{**TINY_MODEL, "dropout": 0.5}).train()
    torch.manual_seed(3)
    observe(model, torch.randint(0, 64, (2, 16)), choose("auto", CPU), contextlib.nullcontext)
    after = torch.rand(1)
    torch.manual_seed(3)
    torch.randint(0, 64, (2, 16))
    assert torch.equal(after, torch.rand(1))


@pytest.mark.parametrize("kernel", ["cudnn", "efficient"])
def test_a_cuda_kernel_on_a_cpu_is_refused(kernel):
    with pytest.raises(ConfigError, match=f"--attention-backend {kernel} is a CUDA kernel"):
        choose(kernel, CPU)


def test_a_run_with_a_named_kernel_records_it_and_trains_the_same(tmp_path):
    cfg = fast_config(tmp_path, max_steps=5, eval_every=5)
    plain = tierlab.train(config=cfg.replace(name="plain"))
    math = tierlab.train(config=cfg.replace(name="math", attention_backend="math"))
    (event,) = math.events("speedups")
    assert event["attention_backend"] == "math" and event["attention_order"] == ["math"]
    assert event["attention_ran"] == "math (1 call)" and event["chunked_loss"] is False
    assert math.summary["final_loss"] == pytest.approx(plain.summary["final_loss"], rel=1e-4)


def test_a_cuda_kernel_asked_for_on_a_cpu_stops_the_run_before_it_is_written(tmp_path):
    with pytest.raises(ConfigError, match="--attention-backend cudnn is a CUDA kernel"):
        tierlab.train(config=fast_config(tmp_path, attention_backend="cudnn", device="cpu"))
    assert not (tmp_path / "runs" / "run").exists()
    with pytest.raises(ConfigError, match="--attention-backend 'fast' is not an attention kernel"):
        fast_config(tmp_path, attention_backend="fast")
