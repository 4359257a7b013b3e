"""Model FLOPs per token and device peaks, for MFU (model FLOPs utilisation)."""

from __future__ import annotations

import torch
from torch import nn

# Dense peak TFLOP/s by (device-name fragment, precision), from the vendors' data sheets.
_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("T4", {"fp16": 65.0, "fp32": 8.1}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
]


def _first_int(owner: object, names: tuple[str, ...]) -> int | None:
    for holder in (owner, getattr(owner, "config", None)):
        for name in names:
            value = getattr(holder, name, None) if holder is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token = 6·N + 12·L·H·Q·T.

    N counts non-embedding parameters (matrix multiplies: 2 FLOPs forward, 4 backward per
    parameter); the second term is attention's score and value products, with L layers,
    H heads, Q head dimension and T sequence length.  It is left out where the model does
    not publish L, H and the width.
    """
    embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    n = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    layers = _first_int(model, ("n_layer", "num_hidden_layers", "n_layers", "num_layers"))
    heads = _first_int(model, ("n_head", "num_attention_heads", "n_heads", "num_heads"))
    width = _first_int(model, ("d_model", "n_embd", "hidden_size", "dim"))
    attention = 12 * layers * heads * (width // heads) * seq_len if layers and heads and width else 0
    return 6.0 * n + attention


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device`` in ``precision``, or None where unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    key = "tf32" if precision == "fp32" and torch.backends.cuda.matmul.allow_tf32 else precision
    for fragment, table in _PEAKS_TFLOPS:
        if fragment in name and key in table:
            return table[key] * 1e12
    return None
