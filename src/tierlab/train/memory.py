"""Memory figures: the process peak, what a model and its optimizer hold, what autograd saves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import torch

from ..config import TrainConfig
from ..errors import OutOfMemory
from .checkpoint import latest_checkpoint


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak allocated memory on CUDA; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS reports bytes, Linux KiB


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of distinct storages among ``tensors`` (tied weights counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


class SavedForBackward:
    """Counts the bytes autograd saves for backward inside the ``with`` block (activation memory).

    Works the same on every device, which makes it the activation figure on a CPU, where
    there is no allocator peak to read.
    """

    def __init__(self) -> None:
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())

    def __enter__(self) -> "SavedForBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or, for a huge tensor, the host) running out of memory."""
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def out_of_memory(exc: BaseException, cfg: TrainConfig, device: torch.device, when: str,
                  run_dir: Path | None = None) -> OutOfMemory:
    """The plain error for ``exc``, which :func:`is_out_of_memory` says is the device running out of memory.

    Names the shape that did not fit and the device's memory, and the usual fix: fewer
    sequences per micro-batch with more micro-batches, which keeps the global batch (and so
    the training) the same.
    """
    where = device.type
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where = f"{torch.cuda.get_device_name(device)} (peak {peak_memory_mb(device) / 1024:.1f} of {total:.1f} GiB)"
    if cfg.batch_size > 1:
        smaller = cfg.batch_size // 2
        same = "the same" if cfg.batch_size % 2 == 0 else "about the same"
        fix = (f"use --batch-size {smaller} --grad-accum {cfg.grad_accum * 2} ({same} global batch in smaller "
               "pieces), a shorter --seq-len, or --precision bf16 on a GPU that has it")
    else:
        fix = "use a shorter --seq-len, a smaller model, or --precision bf16 on a GPU that has it"
    if run_dir is not None:
        fix += (f"; continue this run with --resume {run_dir} and those options plus --allow-config-change"
                if latest_checkpoint(run_dir) is not None else f"; {run_dir} keeps the failed start, so pick "
                "another --name")
    return OutOfMemory(f"Out of memory {when} with batch {cfg.batch_size} x seq {cfg.seq_len}"
                       f"{f' x {cfg.grad_accum} micro-batches' if cfg.grad_accum > 1 else ''} on {where}.", fix + ".")
