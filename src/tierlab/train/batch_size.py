"""``--batch-size auto`` and ``--global-batch-size``: the micro-batch that fits, and the accumulation that reaches the global batch.

The largest micro-batch is found on real training steps of the real model, at the run's
sequence length: forward under the run's autocast, the loss, backward and a step of a
throwaway optimizer of the run's kind (its state is memory the run will hold too).  Sizes
double from 1 until one does not fit, then the gap is bisected.  "Fits" on a GPU means
the step ran without ``OutOfMemoryError`` and its allocator peak stayed under
:data:`HEADROOM` of the GPU's memory (room for DDP's buckets, the prefetched batch and
fragmentation); on a CPU, where an allocation too big gets the process killed rather than
an exception, it means the step's peak resident memory stayed under :data:`HEADROOM` of the
memory available when the search began (``TIERLAB_AUTO_BATCH_MEMORY_MB`` sets that budget,
on either device).  The probes leave nothing behind: the weights are put back from a copy,
the random streams are forked, gradients and the optimizer are dropped.

With ``--global-batch-size N`` the micro-batch is then lowered, if need be, to the largest
size that fits and divides N / processes, and ``--grad-accum`` is N / (micro-batch x
processes).  What was chosen is written into the run's config (so a resume reuses it
without searching again) and told in a ``batch_size`` event with every probe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from .memory import is_out_of_memory

log = logging.getLogger(__name__)

BUDGET_ENV = "TIERLAB_AUTO_BATCH_MEMORY_MB"
HEADROOM = 0.85  # the share of the budget one probe step may use
MAX_AUTO = 4096  # the search stops here (a larger micro-batch is better reached with --grad-accum)
# On a CPU memory is seldom what limits the batch -- time per step is, and it grows with the
# batch while tokens/s stops improving after a few sequences -- so the search stops sooner.
MAX_AUTO_CPU = 64


def cap_for(device: torch.device, cap: int) -> int:
    """The search's upper end on ``device``: ``cap`` (the global batch per process, or MAX_AUTO), lower on a CPU."""
    return min(cap, MAX_AUTO_CPU) if device.type != "cuda" else cap


@dataclass
class Finding:
    micro_batch: int  # the largest that fit
    budget_mb: float
    probes: list[dict] = field(default_factory=list)  # {"batch": B, "fits": bool, "peak_mb": float | None}
    capped_at: int | None = None  # the search's upper end, when it reached it

    def as_event(self) -> dict:
        return {"largest_fitting": self.micro_batch, "budget_mb": round(self.budget_mb, 1),
                "probes": self.probes, "capped_at": self.capped_at}


def per_process(global_batch: int, world: int) -> int:
    if global_batch % world:
        raise ConfigError(f"--global-batch-size {global_batch} does not split over {world} processes.",
                          f"pass a multiple of {world}.")
    return global_batch // world


def accumulate_to(global_batch: int, world: int, largest: int, requested_accum: int = 1) -> tuple[int, int]:
    """(micro-batch, grad_accum) with micro-batch <= ``largest`` and micro x accum x world == ``global_batch``."""
    rows = per_process(global_batch, world)
    for accum in range(max(1, -(-rows // max(largest, 1))), rows + 1):
        if rows % accum == 0:
            return rows // accum, accum
    return 1, rows  # (unreachable: accum == rows always divides)


def resolve(cfg: TrainConfig, world: int, find) -> tuple[TrainConfig, dict | None]:
    """The config with a whole --batch-size and --grad-accum; the ``batch_size`` event's fields (None: nothing chosen).

    ``find(cap)``: runs the search (a :class:`Finding`), called only for ``--batch-size auto``.
    """
    if cfg.batch_size != "auto" and cfg.global_batch_size is None:
        return cfg, None
    if cfg.batch_size == "auto" and find is None:
        raise ValueError("--batch-size auto needs the search (find)")
    event: dict = {"requested": cfg.batch_size, "global_batch_size": cfg.global_batch_size, "world_size": world}
    if cfg.batch_size == "auto":
        cap = per_process(cfg.global_batch_size, world) if cfg.global_batch_size else MAX_AUTO
        finding = find(cap)
        event.update(finding.as_event())
        largest = finding.micro_batch
    else:
        largest = int(cfg.batch_size)
    if cfg.global_batch_size is None:
        micro, accum = largest, cfg.grad_accum
    else:
        micro, accum = accumulate_to(cfg.global_batch_size, world, largest)
        if cfg.grad_accum not in (1, accum):
            raise ConfigError(f"--global-batch-size {cfg.global_batch_size} over {world} process(es) at micro-batch "
                              f"{micro} needs --grad-accum {accum}, not {cfg.grad_accum}.",
                              "leave --grad-accum out: --global-batch-size sets it.")
    event.update(batch_size=micro, grad_accum=accum)
    log.info("batch size: micro-batch %d x %d accumulation x %d process(es)%s", micro, accum, world,
             f" (largest that fits: {largest})" if cfg.batch_size == "auto" else "")
    return cfg.replace(batch_size=micro, grad_accum=accum), event


class _Probe:
    """Runs one training step at a batch size and says whether it fitted, and its peak memory."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, make_batch, policy):
        from .loss import make_loss_fn
        from .optim import build_optimizer

        self.model, self.cfg, self.device, self.make_batch = model, cfg, device, make_batch
        self.loss_fn = make_loss_fn(model, policy)
        self.build_optimizer = build_optimizer
        self.policy = policy
        self.budget_mb = _budget_mb(device)

    def fits(self, batch: int) -> tuple[bool, float | None]:
        x, y = self.make_batch(batch)
        optimizer = None
        try:
            before = _reset_peak(self.device)
            optimizer, _ = self.build_optimizer(self.model, self.cfg, self.device)
            with self.policy.activate():
                self.loss_fn(x, y).backward()
                optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            peak_mb = _peak_mb(self.device, before)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            return False, None
        finally:
            self.model.zero_grad(set_to_none=True)
            del optimizer
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        return peak_mb <= HEADROOM * self.budget_mb, round(peak_mb, 1)


def find_largest(model: nn.Module, cfg: TrainConfig, device: torch.device, make_batch, policy, cap: int) -> Finding:
    """The largest micro-batch up to ``cap`` whose training step fits (doubling, then bisecting)."""
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    devices = [device] if device.type == "cuda" else []
    probe = _Probe(model, cfg, device, make_batch, policy)
    finding = Finding(0, probe.budget_mb)

    def attempt(batch: int) -> bool:
        fits, peak = probe.fits(batch)
        finding.probes.append({"batch": batch, "fits": fits, "peak_mb": peak})
        log.info("batch size auto: %d %s%s", batch, "fits" if fits else "does not fit",
                 f" ({peak:,.0f} MB of {HEADROOM * probe.budget_mb:,.0f})" if peak is not None else " (out of memory)")
        return fits

    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            low, high = 0, None  # the largest that fitted, the smallest that did not
            batch = 1
            while batch <= cap:
                if not attempt(batch):
                    high = batch
                    break
                low = batch
                if batch == cap:
                    break
                batch = min(batch * 2, cap)
            while high is not None and high - low > 1:
                middle = (low + high) // 2
                if attempt(middle):
                    low = middle
                else:
                    high = middle
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
    if low == 0:
        raise ConfigError(f"Not even one sequence of --seq-len {cfg.seq_len} fits a training step in "
                          f"{HEADROOM * probe.budget_mb:,.0f} MB on {device}.",
                          "use a smaller --seq-len or model, a lower-memory --precision (bf16), or a device with "
                          f"more memory (or set {BUDGET_ENV} if the budget is wrong).")
    finding.micro_batch = low
    finding.capped_at = cap if low == cap else None
    return finding


def _budget_mb(device: torch.device) -> float:
    if os.environ.get(BUDGET_ENV):
        try:
            value = float(os.environ[BUDGET_ENV])
        except ValueError:
            value = -1
        if not value > 0:
            raise ConfigError(f"{BUDGET_ENV}={os.environ[BUDGET_ENV]!r} is not a positive number of megabytes.",
                              "set it to e.g. 8000, or unset it for the device's memory.")
        return value
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    return _available_mb()


def _available_mb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") / 2**20


def _reset_peak(device: torch.device) -> float:
    """Start measuring a step's peak; returns the baseline it is measured from (MB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _rss_mb("VmRSS")


def _peak_mb(device: torch.device, baseline: float) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max(0.0, _rss_mb("VmHWM") - baseline)


def _rss_mb(field_name: str) -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # (no /proc: the process's peak)
