"""``--chunked-loss``: the output layer and the cross-entropy in one pass that never holds the full logits.

For a GPT-2-sized vocabulary the [B·T, V] logits are the largest tensor of a training
step (16 × 1024 × 50,257 fp32 values are 3.3 GB, and autograd keeps a copy for the
backward pass).  :class:`LinearCrossEntropy` walks the rows in chunks: for each chunk it
computes the logits, their log-sum-exp and -- when gradients are wanted -- the gradient
of the mean loss with respect to the chunk's hidden states and to the head's weight,
then drops the chunk's logits.  What is kept between forward and backward is the
gradient itself ([B·T, d] and [V, d]), not [B·T, V]; the backward pass only scales it
by the incoming gradient (the GradScaler's scale, the 1/accumulation factor).  That is
three matrix multiplies per chunk, as many as the unchunked layer takes.

How it reaches the hidden states of a model that returns logits: :func:`bypass` makes the
model's output head (an ``nn.Linear`` found by :func:`find_output_head`) hand its input
through for the length of one forward call; :func:`check_head_bypass` first proves on a
real batch that head(bypassed output) equals the model's logits, so a model that does
anything after its head (a scale, a soft cap, a bias of its own) is refused rather than
trained on another loss.

Precision follows autocast: under bf16/fp16 autocast the matrix multiplies run in that
dtype (as the head's own ``nn.Linear`` would), the log-softmax in fp32.  In fp32 the loss
equals ``F.cross_entropy(head(h), y)`` to rounding (tested to 1e-5).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

log = logging.getLogger(__name__)

# Rows per chunk are chosen so that one chunk's fp32 logits stay near this size: large
# enough for the matrix multiplies to run at full speed, small next to the activations.
CHUNK_BYTES = 256 << 20
IGNORE_INDEX = -100  # F.cross_entropy's default: targets with this id add nothing to the loss


def chunk_rows(vocab: int, rows: int) -> int:
    """Rows per chunk for a [rows, vocab] logits matrix: about CHUNK_BYTES of fp32, a multiple of 128."""
    per_chunk = max(128, (CHUNK_BYTES // (4 * max(vocab, 1))) // 128 * 128)
    return min(rows, per_chunk)


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype the head's matrix multiplies run in: autocast's when it is on, the tensors' otherwise."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class LinearCrossEntropy(torch.autograd.Function):
    """mean over non-ignored rows of cross_entropy(hidden @ weight.T + bias, targets), chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, rows_per_chunk: int) -> torch.Tensor:
        dtype = _compute_dtype(hidden.device.type, hidden.dtype)
        with torch.autocast(hidden.device.type, enabled=False):  # the casts below are autocast's, made explicit
            w = weight.to(dtype)
            b = bias.to(dtype) if bias is not None else None
            want_grads = any(ctx.needs_input_grad[:3])
            counted = (targets != IGNORE_INDEX)
            count = counted.sum().clamp(min=1).to(torch.float32)
            total = hidden.new_zeros((), dtype=torch.float32)
            grad_hidden = torch.empty_like(hidden) if want_grads else None
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_grads else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if want_grads and bias is not None else None
            for start in range(0, hidden.size(0), rows_per_chunk):
                h = hidden[start:start + rows_per_chunk].to(dtype)
                y = targets[start:start + rows_per_chunk]
                keep = counted[start:start + rows_per_chunk]
                logits = F.linear(h, w, b).float()  # [chunk, V], the only logits alive
                lse = torch.logsumexp(logits, dim=-1)
                safe_y = torch.where(keep, y, torch.zeros_like(y))
                picked = logits.gather(1, safe_y.unsqueeze(1)).squeeze(1)
                total = total + torch.where(keep, lse - picked, torch.zeros_like(lse)).sum()
                if want_grads:
                    # d(mean loss)/d(logits) = (softmax - one_hot) / count, on counted rows only
                    grad = torch.exp(logits - lse.unsqueeze(1))
                    grad.scatter_add_(1, safe_y.unsqueeze(1), -torch.ones_like(picked).unsqueeze(1))
                    grad = grad * (keep.to(grad.dtype) / count).unsqueeze(1)
                    del logits
                    g = grad.to(dtype)
                    grad_hidden[start:start + rows_per_chunk] = (g @ w).to(hidden.dtype)
                    grad_weight += (g.t() @ h).float()
                    if grad_bias is not None:
                        grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_output.to(torch.float32)
        return ((grad_hidden * scale.to(grad_hidden.dtype)) if ctx.needs_input_grad[0] else None,
                (grad_weight * scale).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None,
                (grad_bias * scale).to(ctx.weight_dtype) if grad_bias is not None and ctx.needs_input_grad[2]
                else None,
                None, None)


def linear_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                         rows_per_chunk: int | None = None) -> torch.Tensor:
    """``F.cross_entropy(head(hidden), targets)`` without the full logits; ``hidden`` [..., d], ``targets`` [...]."""
    flat = hidden.reshape(-1, hidden.size(-1))
    rows = rows_per_chunk or chunk_rows(head.out_features, flat.size(0))
    return LinearCrossEntropy.apply(flat, head.weight, head.bias, targets.reshape(-1), rows)


def find_output_head(model: nn.Module, vocab: int) -> tuple[str, nn.Linear] | None:
    """(name, module) of the model's one ``nn.Linear`` with ``vocab`` outputs, or None when there is not exactly one."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == vocab]
    return found[0] if len(found) == 1 else None


def _pass_through(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


@contextlib.contextmanager
def bypass(head: nn.Linear) -> Iterator[None]:
    """For one forward call, ``head`` returns its input (the hidden states) instead of the logits.

    An instance attribute ``forward`` shadows the class's: nn.Module.__call__ reads
    ``self.forward``, so hooks (DDP's, FSDP's) still run around it.
    """
    head.forward = _pass_through  # type: ignore[method-assign]
    try:
        yield
    finally:
        del head.forward


def check_head_bypass(model: nn.Module, inputs: torch.Tensor, extract) -> nn.Linear:
    """The output head ``--chunked-loss`` can go around, proven on ``inputs``; a plain error where there is none.

    ``extract``: the model output -> logits function the loss uses.  In eval mode (no
    dropout) the model's logits must equal head(output with the head bypassed).
    """
    fix = ("drop --chunked-loss (the loss is then computed from the model's full logits), or make the model's "
           "last step one nn.Linear with the vocabulary as its outputs, whose result it returns as it is")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = extract(model(inputs)).float()
            vocab = logits.size(-1)
            found = find_output_head(model, vocab)
            if found is None:
                raise ConfigError(f"--chunked-loss needs the model's output head: one nn.Linear with {vocab} outputs "
                                  f"(its logits' last size), and this model has {_count_heads(model, vocab)}.",
                                  fix + ".")
            name, head = found
            with bypass(head):
                hidden = extract(model(inputs))
            if hidden.shape[:-1] != logits.shape[:-1] or hidden.size(-1) != head.in_features:
                raise ConfigError(f"--chunked-loss: with its output head {name!r} passed through, the model returned "
                                  f"shape {tuple(hidden.shape)}, not the head's input [..., {head.in_features}]: it "
                                  "does something to the logits after the head.", fix + ".")
            again = head(hidden.to(head.weight.dtype)).float()
            if not torch.allclose(again, logits, rtol=1e-3, atol=1e-4):
                worst = (again - logits).abs().max().item()
                raise ConfigError(f"--chunked-loss: the model's logits are not its head {name!r} applied to the hidden "
                                  f"states (they differ by up to {worst:.3g}): it changes the logits after the head "
                                  "(a scale, a cap, a bias of its own).", fix + ".")
    finally:
        model.train(was_training)
    log.info("chunked loss: the output head %r (%d -> %d) and the cross-entropy run in chunks of %d rows", name,
             head.in_features, head.out_features, chunk_rows(head.out_features, inputs.numel()))
    return head


def _count_heads(model: nn.Module, vocab: int) -> str:
    n = sum(1 for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == vocab)
    return "none" if n == 0 else f"{n} of them"
