"""Gradient norms and clipping between backward and the optimizer step (tierlab.train.gradients)."""

import pytest
import torch

from tierlab.train.distributed import SINGLE
from tierlab.train.gradients import clip_gradients


@pytest.mark.parametrize("clip, scale", [(1.0, 100.0), (1.0, 1e-3), (0.0, 100.0)])
def test_clipping_matches_torch_above_and_below_the_threshold(clip, scale):
    """Above --clip-grad the gradients shrink to it exactly as clip_grad_norm_ does; below (or with 0) they are untouched.

    Also: a coefficient allowed to exceed 1 (scaling small gradients *up*) fails here.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16))
    named = [(n, p) for n, p in model.named_parameters()]
    params = [p for _, p in named]
    torch.manual_seed(1)
    for p in params:
        p.grad = torch.randn_like(p) * scale
    expected = [p.grad.clone() for p in params]
    holders = [torch.nn.Parameter(torch.zeros_like(g)) for g in expected]
    for h, g in zip(holders, expected, strict=True):
        h.grad = g
    true_norm = torch.nn.utils.clip_grad_norm_(holders, clip if clip > 0 else float("inf"))
    total, per_param = torch.zeros(()), torch.zeros(len(params))
    clip_gradients(named, total, per_param, clip, SINGLE)
    assert total.item() == pytest.approx(true_norm.item(), rel=1e-5)  # the pre-clip norm is logged
    for p, h in zip(params, holders, strict=True):
        torch.testing.assert_close(p.grad, h.grad, rtol=1e-5, atol=0)
    after = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    if clip > 0 and true_norm > clip:
        assert after.item() == pytest.approx(clip, rel=1e-4)
    else:
        assert after.item() == pytest.approx(true_norm.item(), rel=1e-6)  # never scaled up


def test_a_parameter_without_a_gradient_counts_as_zero():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    a.grad = torch.full((3,), 2.0)  # b has none this step (an unused branch)
    total, per_param = torch.zeros(()), torch.zeros(2)
    clip_gradients([("a", a), ("b", b)], total, per_param, 0.0, SINGLE)
    assert per_param.tolist() == pytest.approx([12 ** 0.5, 0.0]) and total.item() == pytest.approx(12 ** 0.5)
