"""FLOPs per token and MFU against a hand computation."""

import torch
from torch import nn

from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train.flops import flops_per_token, matmul_params, peak_flops


def test_flops_per_token_of_a_known_configuration():
    V, L, H, C, T = 256, 2, 4, 64, 128
    model = TinyGPT(vocab_size=V, n_layer=L, n_head=H, d_model=C, max_seq_len=T)
    per_block = (2 * C              # ln1
                 + C * 3 * C + 3 * C  # qkv
                 + C * C + C          # attention output projection
                 + 2 * C              # ln2
                 + C * 4 * C + 4 * C  # mlp up
                 + 4 * C * C + C)     # mlp down
    n = L * per_block + 2 * C + V * C  # final LayerNorm; the tied head is a [C, V] matmul
    assert matmul_params(model) == n
    assert flops_per_token(model, T) == 6 * n + 12 * L * H * (C // H) * T


def test_an_untied_embedding_is_not_a_matmul():
    class Untied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 16)
            self.head = nn.Linear(16, 100, bias=False)

    model = Untied()
    assert matmul_params(model) == 16 * 100  # the head only
    assert flops_per_token(model, 32) == 6 * 1600  # no L/H/width published: no attention term


def test_mfu_needs_a_known_peak():
    assert peak_flops(torch.device("cpu"), "fp32") is None
