"""--causal-mask: PyTorch's attention modules, called without a mask, made causal by hooks; proved by the leak test."""

import pytest
import torch
from torch import nn

from helpers import assert_user_error, run_cli, write_model
from tierlab.errors import ModelError
from tierlab.models import extract_logits, future_leak
from tierlab.models.causal_mask import add_causal_mask

VOCAB = 40


class Encoder(nn.Module):
    """An encoder stack, batch-first or not, called without a mask (what Builder exports do)."""

    def __init__(self, batch_first: bool = True, decoder: bool = False, vocab: int = VOCAB):
        super().__init__()
        self.batch_first, self.decoder = batch_first, decoder
        self.emb = nn.Embedding(vocab, 16)
        if decoder:
            self.stack = nn.TransformerDecoder(nn.TransformerDecoderLayer(16, 2, 32, 0.0, batch_first=batch_first), 2)
        else:
            self.stack = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=batch_first), 2,
                                               enable_nested_tensor=False)
        self.out = nn.Linear(16, vocab)

    def forward(self, ids):
        x = self.emb(ids)
        x = x if self.batch_first else x.transpose(0, 1)
        y = self.stack(x, torch.zeros_like(x)) if self.decoder else self.stack(x)  # (a zero memory: no leak there)
        return self.out(y if self.batch_first else y.transpose(0, 1))


class Attention(nn.Module):
    """A bare nn.MultiheadAttention, optionally with a padding mask of its own kind."""

    def __init__(self, float_padding: bool = False):
        super().__init__()
        self.float_padding = float_padding
        self.emb, self.attn, self.out = nn.Embedding(VOCAB, 16), nn.MultiheadAttention(16, 2, batch_first=True), \
            nn.Linear(16, VOCAB)

    def forward(self, ids):
        x = self.emb(ids)
        padding = torch.zeros(ids.shape, dtype=torch.float32) if self.float_padding else None
        y, _ = self.attn(x, x, x, key_padding_mask=padding)
        return self.out(x + y)


class OwnMask(Attention):
    """Passes its own (bidirectional) mask: the hook must leave it alone."""

    def forward(self, ids):
        x = self.emb(ids)
        y, _ = self.attn(x, x, x, attn_mask=torch.zeros(ids.size(1), ids.size(1), dtype=torch.bool))
        return self.out(x + y)


def leak(model: nn.Module, length: int = 12) -> float | None:
    ids = torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        return max((future_leak(lambda x: extract_logits(model(x)), ids, p, VOCAB) or 0.0) for p in range(1, length)) \
            or None


@pytest.mark.parametrize("make", [lambda: Encoder(True), lambda: Encoder(False), lambda: Encoder(decoder=True),
                                  lambda: Attention(), lambda: Attention(float_padding=True)],
                         ids=["encoder", "encoder-seq-first", "decoder", "attention", "attention-float-padding"])
def test_every_reachable_attention_becomes_causal(make):
    torch.manual_seed(0)
    model = make()
    assert leak(model) is not None  # bidirectional as written
    assert add_causal_mask(model) >= 1
    assert leak(model) is None
    assert leak(model, length=5) is None  # a new length, a new mask
    model.train()
    model(torch.zeros(2, 7, dtype=torch.long)).sum().backward()  # trains, gradients flow through the hooks


def test_a_mask_the_model_passes_itself_is_left_alone():
    model = OwnMask()
    add_causal_mask(model)
    assert leak(model) is not None  # its own (bidirectional) mask stands: the leak check will say so


def test_a_model_without_reachable_attention_is_refused_with_the_reason():
    class Hand(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(VOCAB, 8), nn.Linear(8, VOCAB)

        def forward(self, ids):
            x = self.emb(ids)
            return self.out(torch.softmax(x @ x.transpose(1, 2), -1) @ x)

    with pytest.raises(ModelError, match="found no attention module it can reach in Hand"):
        add_causal_mask(Hand())


def test_bert_is_refused_plainly_with_and_without_causal_mask(tmp_path):
    pytest.importorskip("transformers")
    write_model(tmp_path, """
        from transformers import BertConfig, BertForMaskedLM

        def build_model(vocab_size):
            return BertForMaskedLM(BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    """, name="bert.py")
    args = ("--model", "bert.py", "--data", "demo", "--seq-len", "32", "--batch-size", "2", "--max-steps", "2",
            "--precision", "fp32", "--no-plots")
    plain = run_cli("train", *args, cwd=tmp_path)
    assert_user_error(plain, "The model sees the future", "--causal-mask")
    masked = run_cli("train", *args, "--causal-mask", cwd=tmp_path)
    assert_user_error(masked, "--causal-mask found no attention module it can reach in BertForMaskedLM",
                      "nn.MultiheadAttention")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_another_hook_on_the_attention_still_works_analyze_on_a_masked_decoder():
    """analyze asks each nn.MultiheadAttention for its weights (need_weights=True) with a hook of its own."""
    import tierlab

    torch.manual_seed(0)
    report = tierlab.analyze(Encoder(decoder=True, vocab=256), data="demo", batch_size=2, seq_len=16, batches=1,
                             causal_mask=True)
    assert report.attention.observable and report.attention.heads  # (it used to fail: the mask hook moved need_weights into the positional args)
