"""Model FLOPs per token and device peaks, for MFU (model FLOPs utilisation)."""

from __future__ import annotations

import torch
from torch import nn

from ..precisions import PRECISIONS

# Dense peak TFLOP/s by (device-name fragment, precision), from the vendors' data sheets.
# "fp32" is strict IEEE fp32 on the CUDA cores; "tf32" is fp32 storage with TF32 tensor-core matmuls.
_PEAKS_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 495.0, "fp32": 67.0}),  # (fp8: 1,979; fp8 runs count at bf16's)
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


def matmul_params(model: nn.Module) -> int:
    """N: parameters that take part in matrix multiplies, i.e. all but embedding tables.

    An embedding is a lookup, not a matmul, so its table is left out -- unless the same
    tensor is also an output head (weight tying), where it *is* a [C, V] matmul every token.
    """
    counted: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        for p in module.parameters(recurse=False):
            counted[id(p)] = p.numel()
    return sum(counted.values())


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token = 6·N + 12·L·H·Q·T.

    N = matmul (non-embedding) parameters, see :func:`matmul_params`: each costs 2 FLOPs in
    the forward pass and 4 in the backward pass per token.  The second term is attention's
    score (QKᵀ) and value (AV) products -- 2·2·T·Q FLOPs per head and layer forward, times 3
    for forward plus backward -- with L layers, H heads, Q head dimension and T sequence
    length.  It is left out where the model does not publish L, H and the width (on the
    model or its ``config``), which undercounts, never overcounts.
    """
    n = matmul_params(model)
    layers = _first_int(model, ("n_layer", "num_hidden_layers", "n_layers", "num_layers"))
    heads = _first_int(model, ("n_head", "num_attention_heads", "n_heads", "num_heads"))
    width = _first_int(model, ("d_model", "n_embd", "hidden_size", "dim"))
    attention = 12 * layers * heads * (width // heads) * seq_len if layers and heads and width else 0
    return 6.0 * n + attention


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of ``device`` running ``precision``, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, table in _PEAKS_TFLOPS:
        if fragment in name:
            column = PRECISIONS[precision].peak_column
            return table[column] * 1e12 if column in table else None
    return None
