"""Parameter counts, and the built-in baselines sized to a user's model.

The count that matters for "the same size" is the non-embedding one (as in the scaling-law
literature): token and position tables and the output head grow with the vocabulary, not
with what the architecture does, so a byte-level and a BPE run of one design would
otherwise be "different sizes".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

TOLERANCE = 0.10  # a baseline's non-embedding count within +-10% of the user's model's
BASELINES = {"gpt": "tiny-gpt", "llama": "llama"}  # --baseline NAME -> the built-in model it is
WIDTHS = [*range(16, 256, 8), *range(256, 4097, 32)]  # d_model values tried: fine steps where a step is a big share


@dataclass(frozen=True)
class Counts:
    total: int
    embedding: int  # token and position tables, and the output head (tied or not)

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding


def count_parameters(model: nn.Module, vocab_size: int) -> Counts:
    """Parameters of ``model``, each shared tensor once; embeddings are nn.Embedding tables and [vocab, d] heads."""
    seen: dict[int, torch.Tensor] = {}
    embedding_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            embedding_ids.add(id(module.weight))
        elif isinstance(module, nn.Linear) and module.out_features == vocab_size:
            embedding_ids.add(id(module.weight))  # the LM head: the vocabulary's other table
    for p in model.parameters():
        seen[id(p)] = p
    total = sum(p.numel() for p in seen.values())
    return Counts(total, sum(p.numel() for i, p in seen.items() if i in embedding_ids))


@dataclass(frozen=True)
class Sized:
    model: str  # the built-in model's name
    args: dict[str, Any]  # its --model-arg values
    counts: Counts  # of the model built with them (for the vocabulary it was sized for)
    target: int

    @property
    def non_embedding(self) -> int:
        return self.counts.non_embedding

    @property
    def off_by(self) -> float:
        return self.non_embedding / self.target - 1

    def describe(self) -> str:
        a = self.args
        return (f"{self.model} with n_layer={a['n_layer']}, d_model={a['d_model']}, n_head={a['n_head']}: "
                f"{self.non_embedding:,} non-embedding parameters ({self.off_by:+.1%} of {self.target:,})")


def size_baseline(baseline: str, target: int, vocab_size: int, max_seq_len: int,
                  depth: int | None = None) -> Sized:
    """The built-in ``baseline`` (gpt or llama) whose non-embedding count is closest to ``target``, within 10%.

    Among the sizes within the tolerance: the user's depth when known (``depth``), else the
    one whose width is nearest 64 per layer (the usual shape of small models).
    """
    name = BASELINES[baseline]
    shapes = [(layers, width, _formula(baseline, layers, width)) for layers in range(1, 49) for width in WIDTHS]
    candidates = [c for c in shapes if abs(c[2] / target - 1) <= TOLERANCE]
    if not candidates:
        closest = min(shapes, key=lambda c: abs(c[2] / target - 1))
        raise ConfigError(f"No {baseline} baseline has within {TOLERANCE:.0%} of the model's {target:,} non-embedding "
                          f"parameters (the closest: {closest[0]} layer(s) of width {closest[1]}, "
                          f"{closest[2]:,}).", "compare against a baseline model file of your own: --baseline "
                          "PATH.py (its --baseline-arg values set its size).")

    def preference(c: tuple[int, int, int]) -> tuple[float, float]:
        layers, width, count = c
        shape = abs(layers - depth) if depth else abs(math.log(width / (64 * layers)))
        return shape, abs(count / target - 1)

    layers, width, _ = min(candidates, key=preference)
    heads = max(2, width // 32)  # heads of 32 (or more, in small widths): each head size even, for rotary
    while width % heads or (width // heads) % 2:
        heads -= 1
    args = {"n_layer": layers, "d_model": width, "n_head": heads, "max_seq_len": max_seq_len}
    with torch.device("meta"):  # the count, exactly, without allocating the weights
        from ..models import load_model

        built = load_model(name, args, vocab_size)
    return Sized(name, args, count_parameters(built, vocab_size), target)


def _formula(baseline: str, layers: int, width: int) -> int:
    """Non-embedding parameters of the built-in model (checked against a real count in the tests)."""
    d = width
    if baseline == "gpt":  # qkv + proj (with biases), a 4x GELU MLP, two LayerNorms; the final LayerNorm
        return layers * (12 * d * d + 13 * d) + 2 * d
    from ..models.llama import swiglu_hidden

    h = swiglu_hidden(d)  # qkv + proj, a SwiGLU MLP (no biases), two RMSNorms; the final RMSNorm
    return layers * (4 * d * d + 3 * d * h + 2 * d) + d


def model_depth(model: nn.Module) -> int | None:
    """The number of layers a model says it has (n_layer, num_layers, ... or its config's), else None."""
    for owner in (model, getattr(model, "config", None)):
        for attr in ("n_layer", "num_layers", "n_layers", "num_hidden_layers", "depth"):
            value = getattr(owner, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    return None
