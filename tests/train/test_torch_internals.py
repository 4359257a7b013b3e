"""The private torch interfaces of tierlab.train._torch_internals still behave as the loop assumes.

Run against the installed torch: a release that renames or changes one fails here, by name.
"""

import pytest
import torch
from torch import nn

from tierlab.train._torch_internals import (foreach_mul_, foreach_norm, fused_step_unless, scaler_found_inf,
                                            scaler_scale)


def _layer_with_grads(scale: float = 1.0) -> tuple[nn.Linear, torch.optim.AdamW]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    layer(torch.randn(2, 4)).sum().mul(scale).backward()
    return layer, torch.optim.AdamW(layer.parameters(), lr=torch.tensor(0.1), fused=True)


def test_the_scale_is_the_scalers_own_device_tensor():
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(torch.ones(()))  # the scale tensor exists once something was scaled
    scale = scaler_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.dim() in (0, 1) and float(scale) == scaler.get_scale() == 1024.0


@pytest.mark.parametrize("overflow", [False, True])
def test_the_overflow_flags_are_set_by_unscale_and_say_what_step_does(overflow):
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=torch.tensor(0.1), fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    scaler.scale(layer(torch.randn(2, 4)).sum()).backward()
    if overflow:
        layer.weight.grad[0, 0] = float("inf")
    scaler.unscale_(optimizer)
    flags = scaler_found_inf(scaler, optimizer)
    assert len(flags) == 1 and float(flags[0]) == float(overflow)
    before = layer.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(before, layer.weight) == overflow  # skipped exactly when flagged
    assert scaler.get_scale() == (1.0 if overflow else 2.0)


@pytest.mark.parametrize("found", [0.0, 1.0])
def test_a_fused_step_is_dropped_inside_the_kernel_where_found_inf_is_set(found):
    layer, optimizer = _layer_with_grads()
    before = layer.weight.detach().clone()
    fused_step_unless(optimizer, torch.tensor(found))
    assert torch.equal(before, layer.weight) == bool(found)
    assert not hasattr(optimizer, "found_inf") and not hasattr(optimizer, "grad_scale")  # handed back clean


def test_foreach_norm_and_mul_match_their_one_tensor_versions():
    tensors = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    norms = foreach_norm(tensors)
    assert all(torch.allclose(n, torch.linalg.vector_norm(t)) for n, t in zip(norms, tensors, strict=True))
    expected = [t * 0.5 for t in tensors]
    foreach_mul_(tensors, torch.tensor(0.5))
    assert all(torch.equal(a, b) for a, b in zip(tensors, expected, strict=True))
