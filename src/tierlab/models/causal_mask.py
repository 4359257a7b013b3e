"""``--causal-mask``: make a model built from PyTorch's attention modules causal without editing its code.

Transformer Builder exports (and many hand-written models) call ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder`` without a mask: every position
sees the whole sequence, which is right for a masked language model and wrong for next-token
prediction.  :func:`add_causal_mask` gives each such module a forward pre-hook that passes a
causal mask where the caller passed none (a mask the model gives itself is left alone), so
the module, its parameter names and checkpoints are unchanged.  Whether that made the model
causal is not assumed: the caller's future-leak check proves it (attention written by hand,
``F.scaled_dot_product_attention`` in the model's own code, cannot be reached by a hook).
"""

from __future__ import annotations

import inspect
import logging
import torch
from torch import nn

from ..errors import ModelError

log = logging.getLogger(__name__)

# Each module kind: the forward argument that carries the self-attention mask, and its "this mask is causal" flag.
MASKED = {
    nn.MultiheadAttention: ("attn_mask", None),
    nn.TransformerEncoderLayer: ("src_mask", "is_causal"),
    nn.TransformerEncoder: ("mask", "is_causal"),
    nn.TransformerDecoderLayer: ("tgt_mask", "tgt_is_causal"),
    nn.TransformerDecoder: ("tgt_mask", "tgt_is_causal"),
}
REACHABLE = ", ".join(f"nn.{kind.__name__}" for kind in MASKED)


def add_causal_mask(model: nn.Module) -> int:
    """Hook every attention module of ``model`` to get a causal mask; returns how many were hooked."""
    if getattr(model, "_tierlab_causal_mask", None):
        return len(model._tierlab_causal_mask)
    hooked = [(name, module) for name, module in model.named_modules() if type(module) in MASKED]
    if not hooked:
        raise ModelError(f"--causal-mask found no attention module it can reach in {type(model).__name__}: it adds a "
                         f"mask to {REACHABLE}, and the model uses none of them (its attention is its own code).",
                         "apply a causal mask inside the model's attention (is_causal=True, or mask scores where "
                         "key > query), then train without --causal-mask.")
    handles = [module.register_forward_pre_hook(_CausalHook(module), with_kwargs=True) for _, module in hooked]
    model._tierlab_causal_mask = handles  # remove() each to give the model back its own attention
    log.info("--causal-mask: a causal mask for %d attention module(s) of %s (%s)", len(hooked), type(model).__name__,
             ", ".join(sorted({type(m).__name__ for _, m in hooked})))
    return len(hooked)


class _CausalHook:
    """Fills in a module's mask argument with an upper-triangular "may not attend" mask when it is missing."""

    def __init__(self, module: nn.Module):
        self.mask_name, self.flag_name = MASKED[type(module)]
        self.signature = inspect.signature(module.forward)
        self.positions = {name: i for i, name in enumerate(self.signature.parameters)}  # (bound methods: no self)
        self.batch_first = _batch_first(module)
        self._cache: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        bound = self.signature.bind(*args, **kwargs)
        if bound.arguments.get(self.mask_name) is not None:
            return None  # the model masks this call itself
        first = next(iter(bound.arguments.values()))
        if isinstance(module, nn.MultiheadAttention):
            key = bound.arguments.get("key")
            if key is not None and key.shape != first.shape:
                return None  # cross-attention to another sequence: nothing to keep causal
        length = first.shape[0] if first.dim() == 2 or not self.batch_first else first.shape[1]
        padding = next((v for k, v in bound.arguments.items() if k.endswith("key_padding_mask") and v is not None),
                       None)
        # The mask's kind follows a padding mask's (PyTorch warns on a bool and a float mask together).
        dtype = padding.dtype if padding is not None and padding.is_floating_point() else torch.bool
        # The call keeps its own layout (only the mask, and the "is causal" flag, filled in): another hook on the
        # module (analyze's, asking for the attention weights) may add keywords of its own.
        args, kwargs = list(args), dict(kwargs)
        for name, value in ((self.mask_name, self._mask(length, first.device, dtype)), (self.flag_name, True)):
            if name is None:
                continue
            index = self.positions[name]
            if index < len(args):
                args[index] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def _mask(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if _tracing():  # built in the graph from the input's length: a cached one would be a constant of one shape
            return _causal(length, device, dtype)
        key = (length, device, dtype)
        if key not in self._cache:
            self._cache[key] = _causal(length, device, dtype)
        return self._cache[key]


def _causal(length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    above = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    if dtype == torch.bool:
        return above
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(above, float("-inf"))


def _tracing() -> bool:
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def _batch_first(module: nn.Module) -> bool:
    """Whether the module's inputs are [B, T, E] (its own attention's batch_first)."""
    if isinstance(module, nn.MultiheadAttention):
        return module.batch_first
    for inner in module.modules():
        if isinstance(inner, nn.MultiheadAttention):
            return inner.batch_first
    return False


def refuse_unreached(model: nn.Module, leak: float) -> ModelError:
    """The error for a model that still sees the future with --causal-mask on."""
    return ModelError(f"--causal-mask did not make {type(model).__name__} causal: its logits at earlier positions "
                      f"still change when a later token changes (max diff {leak:.3g}). The mask reaches only "
                      f"{REACHABLE}; some attention in the model is its own code, or attends to the input through "
                      "another path (a decoder's memory, a pooled summary).",
                      "apply a causal mask in that part of the model, then train without --causal-mask.")

