"""``--compile``: torch.compile the training step's forward and loss, paying the compile time up front.

What is compiled is :func:`~tierlab.train.loss.make_loss_fn` (the model's forward under
autocast plus the cross-entropy), so the logits' fp32 upcast fuses into the loss.
Evaluation runs the eager model: a compiled eval-mode graph would cost a second compile
for a small share of the run's time.  Compilation happens lazily at the first call.  Left there it would
land inside the first timed window of training (or of a benchmark) and make the first
tokens/s figure meaningless, so :func:`compile_model` runs one forward and backward pass on
a real training-shaped batch right away, times it, and throws the gradients away.  That
pass runs under ``torch.random.fork_rng``: a run with ``--compile`` draws the same random
numbers (dropout, sampling) as one without, and a resumed run the same as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time

import torch
from torch import nn

from ..errors import ModelError
from .device import synchronize
from .attention import AttentionPolicy
from .loss import LossFn, make_loss_fn
from .memory import is_out_of_memory
from .objective import Classification, split_block
from .precision import PrecisionPolicy

log = logging.getLogger(__name__)

# torch.compile backend; "inductor" (the default) generates fused kernels.  "aot_eager"
# exercises the same tracing without code generation (useful to tell a tracing problem
# from a code-generation one, and what the test suite uses to stay fast).
BACKEND_ENV = "TIERLAB_COMPILE_BACKEND"


def compile_model(model: nn.Module, batch: torch.Tensor, policy: PrecisionPolicy,
                  device: torch.device, mode: str = "default",
                  classify: Classification | None = None, head: nn.Linear | None = None,
                  attention: AttentionPolicy | None = None, whole: bool = True) -> tuple[LossFn, float]:
    """(compiled loss function, seconds it took to compile) for ``model`` on ``batch`` [B, T + 1].

    ``mode``: torch.compile's mode ("default" passes none); "max-autotune-no-cudagraphs"
    times candidate matrix-multiply kernels for each shape at compile time and keeps the
    fastest, which pays off on big GPU models.  ``head``, ``attention``: as for
    :func:`~tierlab.train.loss.make_loss_fn` (``--chunked-loss``, ``--attention-backend``).
    ``whole=False`` (``--fsdp``): the blocks were compiled one by one (:func:`block_compiler`)
    before they were sharded; the step around them stays eager, and this pass pays their
    compile time up front, as for a whole-step compile.
    """
    backend = os.environ.get(BACKEND_ENV, "inductor")
    block = batch.to(device)  # sliced on the device, as the prefetcher does: the same strides, no recompile
    x, y = split_block(block, classify)
    devices = [device] if device.type == "cuda" else []
    synchronize(device)
    started = time.perf_counter()
    try:
        compiler = (lambda fn: torch.compile(fn, backend=backend, mode=None if mode == "default" else mode)) if whole \
            else None
        compiled = make_loss_fn(model, policy, classify, head, attention=attention, compiler=compiler)
        with torch.random.fork_rng(devices=devices, device_type=device.type), policy.activate():
            compiled(x, y).backward()
        synchronize(device)
    except Exception as exc:  # torch.compile's failures are many and long; say it in one line
        if is_out_of_memory(exc):
            raise  # not a compile problem: the caller says what did not fit
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        how = backend if mode == "default" else f"{backend}, {mode}"
        raise ModelError(f"torch.compile ({how}) could not compile the model: {type(exc).__name__}: {first}",
                         "train without --compile (same results, eager speed); on a CPU inductor also needs a "
                         "working C++ compiler.") from None
    finally:
        model.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    log.info("torch.compile (%s, mode %s%s): compiled in %.1f s", backend, mode, "" if whole else ", per block",
             seconds)
    return compiled, seconds


def block_compiler(mode: str = "default"):
    """``--fsdp --compile``: a function that compiles one block in place (its state-dict names unchanged)."""
    backend = os.environ.get(BACKEND_ENV, "inductor")

    def compile_block(block: nn.Module) -> None:
        block.compile(backend=backend, mode=None if mode == "default" else mode)

    return compile_block
