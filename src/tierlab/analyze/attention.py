"""Attention patterns, observed from outside the model: per layer and head, what each query row attends to.

Three ways in, used together in one forward pass (eval mode, no gradients), recorded in
call order so that the i-th map is the i-th attention layer:

* ``F.scaled_dot_product_attention``: intercepted with a ``TorchFunctionMode`` (so it is
  seen however the model imported it); the weights ``softmax(q k^T * scale + mask)`` are
  computed from the same ``q``, ``k``, mask and causal flag, then the real call runs;
* ``nn.MultiheadAttention``: asked for its per-head weights (``need_weights=True,
  average_attn_weights=False``) by a forward pre-hook, read by a forward hook;
* Hugging Face models: ``output_attentions=True`` (after switching the model to its
  "eager" attention, the one that can return weights).

A model whose attention goes through none of these (hand-written ``softmax(q @ k.T)``
without ``nn.MultiheadAttention``, a fused kernel of its own) is reported as not
observable, with that reason, rather than guessed at.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..models import eval_mode

# A row "has collapsed" when its entropy is below this (nats): at least ~98% of its weight
# on one key.  A head is collapsed when that holds for most rows (COLLAPSE_SHARE of them).
NEAR_ZERO_ENTROPY = 0.1
COLLAPSE_SHARE = 0.9


@dataclass
class HeadStats:
    layer: int
    head: int
    entropy: float  # mean over query rows 1..T-1 (nats)
    normalized_entropy: float  # entropy / log(keys the row may see): 1 = uniform
    previous_token: float  # mean weight on key t-1
    first_token: float  # mean weight on key 0 (an "attention sink")
    diagonal: float  # mean weight on key t (itself)
    near_zero_rows: float  # share of rows with entropy < NEAR_ZERO_ENTROPY
    collapsed: bool
    pattern: str  # previous-token, first-token, diagonal, uniform or mixed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AttentionReport:
    observable: bool
    source: str  # how the maps were observed, or why they were not
    heads: list[HeadStats]
    causal: bool | None = None
    maps: list[torch.Tensor] | None = None  # per layer [H, T, T], averaged over the batch (for heatmaps)

    @property
    def collapsed(self) -> list[HeadStats]:
        return [h for h in self.heads if h.collapsed]

    def to_dict(self) -> dict[str, Any]:
        return {"observable": self.observable, "source": self.source, "causal": self.causal,
                "layers": len(self.maps or []), "heads": [h.to_dict() for h in self.heads],
                "collapsed": [f"L{h.layer}H{h.head}" for h in self.collapsed]}


def observe_attention(model: nn.Module, ids: torch.Tensor, queries: torch.Tensor | None = None) -> AttentionReport:
    """Run ``model`` on ``ids`` [B, T] and describe every attention head it has.

    ``queries`` [B, T] (bool) limits the statistics to those query rows: a classifier's text
    positions, so that what padding attends to does not count.
    """
    maps, sources = _capture(model, ids)
    if not maps:
        return AttentionReport(False, "no attention weights could be observed: the model uses neither "
                                      "F.scaled_dot_product_attention, nn.MultiheadAttention nor Hugging Face's "
                                      "output_attentions (attention computed by hand cannot be seen from outside; a "
                                      "model without attention, such as a state-space model, has none to show)",
                               [])
    t = ids.size(1)
    maps = [m for m in maps if m.shape[-2:] == (t, t)]  # self-attention over the input only
    causal = all(float(torch.triu(m, 1).sum()) <= 1e-4 * m.numel() for m in maps)
    heads = [head_stats(layer, h, m[:, h], causal, queries) for layer, m in enumerate(maps) for h in range(m.size(1))]
    return AttentionReport(True, " + ".join(sorted(sources)), heads, causal, [m.mean(0) for m in maps])


def head_stats(layer: int, head: int, weights: torch.Tensor, causal: bool,
               queries: torch.Tensor | None = None) -> HeadStats:
    """Statistics of one head's weights [B, T, T] (rows: queries, columns: keys), over ``queries`` rows if given.

    Row 0 is left out: under a causal mask it can only see itself, so its entropy is 0 by
    construction and would make every causal head look collapsed.
    """
    w = weights.double().clamp_min(0)
    t = w.size(-1)
    rows = w[:, 1:, :]  # [B, T-1, T]
    counted = (torch.ones(w.shape[:2], dtype=torch.float64) if queries is None
               else queries.to(device="cpu", dtype=torch.float64))[:, 1:]  # [B, T-1]: 1 where a row counts
    if not float(counted.sum()):  # every row one token long: nothing but row 0, so count it
        counted = torch.ones_like(counted)

    def mean(values: torch.Tensor) -> torch.Tensor:
        return (values * counted).sum() / counted.sum()

    entropy = -(rows * rows.clamp_min(1e-30).log()).sum(-1)  # [B, T-1]
    visible = torch.arange(2, t + 1, dtype=torch.float64) if causal else torch.full((t - 1,), float(t))
    normalized = entropy / visible.log()
    index = torch.arange(1, t)
    previous = mean(w[:, index, index - 1])
    first = mean(w[:, 1:, 0])
    diagonal = mean(w[:, index, index])
    near_zero = mean((entropy < NEAR_ZERO_ENTROPY).double())
    shares = {"previous-token": float(previous), "first-token": float(first), "diagonal": float(diagonal)}
    best = max(shares, key=shares.get)
    if shares[best] > 0.5:
        pattern = best
    elif float(mean(normalized)) > 0.9:
        pattern = "uniform"
    else:
        pattern = "mixed"
    return HeadStats(layer, head, float(mean(entropy)), float(mean(normalized)), float(previous), float(first),
                     float(diagonal), float(near_zero), bool(near_zero >= COLLAPSE_SHARE), pattern)


# ----------------------------------------------------------------------------- capture
def _capture(model: nn.Module, ids: torch.Tensor) -> tuple[list[torch.Tensor], set[str]]:
    maps: list[torch.Tensor] = []
    sources: set[str] = set()
    with eval_mode(model), torch.no_grad(), _eager_attention(model), _mha_weights(model, maps, sources), \
            _SdpaRecorder(maps, sources):
        if _accepts(model, "output_attentions"):
            output = model(ids, output_attentions=True)
            found = getattr(output, "attentions", None)
            if found and not maps and all(isinstance(a, torch.Tensor) for a in found):
                maps.extend(a.detach().float().cpu() for a in found)
                sources.add("output_attentions")
        else:
            model(ids)
    return maps, sources


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


@contextlib.contextmanager
def _eager_attention(model: nn.Module) -> Iterator[None]:
    """Hugging Face models return attention weights only from their "eager" implementation."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = getattr(model, "set_attn_implementation", None)
    changed = False
    if config is not None and before not in (None, "eager"):
        try:
            if callable(switch):
                switch("eager")
            else:
                config._attn_implementation = "eager"
            changed = True
        except Exception:  # noqa: BLE001 - a model that cannot switch is observed as it is
            changed = False
    try:
        yield
    finally:
        if changed:
            if callable(switch):
                switch(before)
            else:
                config._attn_implementation = before


@contextlib.contextmanager
def _mha_weights(model: nn.Module, maps: list, sources: set) -> Iterator[None]:
    def ask(module, args, kwargs):
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def read(module, args, kwargs, output):
        if isinstance(output, tuple) and len(output) > 1 and isinstance(output[1], torch.Tensor):
            weights = output[1].detach().float().cpu()
            maps.append(weights if weights.dim() == 4 else weights.unsqueeze(1))  # [B, H, T, S]
            sources.add("nn.MultiheadAttention")

    handles = []
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
            handles.append(module.register_forward_hook(read, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class _SdpaRecorder(TorchFunctionMode):
    """Records the weights of every F.scaled_dot_product_attention call, then makes the call."""

    def __init__(self, maps: list, sources: set):
        super().__init__()
        self.maps, self.sources = maps, sources

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.maps.append(_sdpa_weights(*args, **kwargs))
            self.sources.add("F.scaled_dot_product_attention")
        return func(*args, **kwargs)


def _sdpa_weights(query, key, value=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                  enable_gqa=False) -> torch.Tensor:
    """The weights scaled_dot_product_attention applies: [B, H, L, S] (float32, on the CPU)."""
    q, k = query.float(), key.float()
    if q.dim() == 3:  # [B, L, E] without a head dimension
        q, k = q.unsqueeze(1), k.unsqueeze(1)
    if k.size(-3) != q.size(-3):  # grouped-query attention: each key head serves several query heads
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
    length, source = scores.shape[-2:]
    if is_causal:
        scores = scores.masked_fill(torch.ones(length, source, dtype=torch.bool, device=scores.device)
                                    .tril().logical_not(), float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(attn_mask.logical_not(), float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask.float())
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights.detach().cpu()
