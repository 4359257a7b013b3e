"""--chunked-loss: the output layer and cross-entropy by chunks of rows -- the same loss and gradients as the full logits."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_MODEL, assert_user_error, fast_config, run_cli, write_model
from torch import nn

import tierlab
from tierlab.errors import ConfigError
from tierlab.models import extract_logits
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.chunked_loss import bypass, check_head_bypass, chunk_rows, linear_cross_entropy
from tierlab.train.compile import BACKEND_ENV
from tierlab.train.loss import make_loss_fn
from tierlab.train.precision import PrecisionPolicy, decide_precision


BUILDER_GRAPH = Path(__file__).parent.parent / "assets" / "builder" / "graph"  # a bidirectional Builder export


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [64, 100, 700, 4096])  # several chunks, a ragged last chunk, one chunk
def test_loss_and_gradients_equal_the_full_logits_in_fp32(bias, rows):
    torch.manual_seed(0)
    head, hidden = nn.Linear(48, 500, bias=bias), torch.randn(700, 48, requires_grad=True)
    targets = torch.randint(0, 500, (700,))
    targets[::9] = -100  # ignored positions (masked LM labels) count in neither the sum nor the mean
    params = (hidden, head.weight, *([head.bias] if bias else []))
    full = F.cross_entropy(head(hidden), targets)
    chunked = linear_cross_entropy(hidden, head, targets, rows_per_chunk=rows)
    assert chunked.item() == pytest.approx(full.item(), abs=1e-5)
    for a, b in zip(_grads(3.5 * chunked, *params), _grads(3.5 * full, *params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # (the incoming gradient is honoured)


def test_under_bf16_autocast_the_matmuls_run_in_bf16_like_the_head_would():
    torch.manual_seed(1)
    head, hidden, targets = nn.Linear(64, 300, bias=False), torch.randn(256, 64), torch.randint(0, 300, (256,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = F.cross_entropy(head(hidden).float(), targets)
        chunked = linear_cross_entropy(hidden, head, targets, rows_per_chunk=128)
    assert chunked.dtype == torch.float32
    assert chunked.item() == pytest.approx(full.item(), abs=1e-4)


def test_chunk_rows_keep_a_chunks_logits_near_256_mib():
    assert chunk_rows(50257, 16 * 1024) == 1280  # 1280 x 50257 x 4 bytes = 245 MiB
    assert chunk_rows(256, 1000) == 1000  # small: one chunk


def _policy():
    return PrecisionPolicy(decide_precision("fp32", torch.device("cpu")), torch.device("cpu"))


def test_a_tied_head_gets_the_same_gradients_eager_and_compiled(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV, "aot_eager")
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=97, **TINY_MODEL)  # head.weight is tok_emb.weight
    x, y = torch.randint(0, 97, (4, 16)), torch.randint(0, 97, (4, 16))
    full = make_loss_fn(model, _policy())(x, y)
    want = _grads(full, *model.parameters())
    for compiler in (None, lambda fn: torch.compile(fn, backend="aot_eager")):
        loss = make_loss_fn(model, _policy(), head=model.head, compiler=compiler)(x, y)
        assert loss.item() == pytest.approx(full.item(), abs=1e-5)
        for a, b in zip(_grads(loss, *model.parameters()), want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert "forward" not in vars(model.head) and model(x).shape == (4, 16, 97)  # the head is itself again


def test_a_hugging_face_causal_lm_is_gone_around_through_its_lm_head():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=120, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    model = transformers.GPT2LMHeadModel(cfg)
    x = torch.randint(0, 120, (2, 16))
    head = check_head_bypass(model, x, extract_logits)
    assert head is model.lm_head
    with bypass(head):
        hidden = extract_logits(model(x))
    assert hidden.shape == (2, 16, 32)


class _Scaled(nn.Module):
    """Logits soft-capped after the head (Gemma-2 style): going around the head would train another loss."""

    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(50, 16), nn.Linear(16, 50)

    def forward(self, x):
        return 30 * torch.tanh(self.head(self.emb(x)) / 30)


def test_a_model_that_changes_its_logits_after_the_head_is_refused():
    with pytest.raises(ConfigError, match="not its head 'head' applied"):
        check_head_bypass(_Scaled(), torch.randint(0, 50, (2, 8)), extract_logits)


def test_a_model_without_one_vocabulary_sized_linear_is_refused():
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)

        def forward(self, x):
            h = self.emb(x)
            return h @ self.emb.weight.t()

    with pytest.raises(ConfigError, match="one nn.Linear with 50 outputs .* has none"):
        check_head_bypass(NoHead(), torch.randint(0, 50, (2, 8)), extract_logits)


def test_training_with_it_matches_training_without_and_is_recorded(tmp_path):
    cfg = fast_config(tmp_path, max_steps=10)
    plain = tierlab.train(config=cfg.replace(name="plain"))
    chunked = tierlab.train(config=cfg.replace(name="chunked", chunked_loss=True))
    for a, b in zip(plain.metrics(), chunked.metrics(), strict=True):
        key = "loss" if a["kind"] == "train" else "val_loss"
        assert b[key] == pytest.approx(a[key], rel=1e-5)
    (event,) = chunked.events("speedups")
    assert event["chunked_loss"] is True and event["attention_ran"] == "not observed"  # (torch's order on a CPU)
    assert not plain.events("speedups")  # a default run's records are as they were


def test_a_masked_lm_trains_with_it(tmp_path):
    cfg = fast_config(tmp_path, model=str(BUILDER_GRAPH), model_args={}, objective="mlm", max_steps=6, eval_every=6)
    plain = tierlab.train(config=cfg.replace(name="plain"))
    chunked = tierlab.train(config=cfg.replace(name="chunked", chunked_loss=True))
    assert chunked.summary["final_loss"] == pytest.approx(plain.summary["final_loss"], rel=1e-5)


def test_cli_refuses_a_soft_capped_model_and_writes_nothing_and_classify_is_refused(tmp_path):
    model = write_model(tmp_path, '''
        import torch
        from torch import nn

        class Capped(nn.Module):
            def __init__(self, vocab_size=256):
                super().__init__()
                self.emb, self.head = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size)

            def forward(self, x):
                return 30 * torch.tanh(self.head(self.emb(x)) / 30)

        def build_model(vocab_size):
            return Capped(vocab_size)
    ''')
    capped = run_cli("train", "--model", model, "--chunked-loss", "--max-steps", "2", "--name", "c", cwd=tmp_path)
    assert_user_error(capped, "--chunked-loss", "drop --chunked-loss")
    assert not (tmp_path / "runs" / "c").exists()
    with pytest.raises(ConfigError, match="--chunked-loss was given with --objective classify"):
        fast_config(tmp_path, objective="classify", chunked_loss=True)
