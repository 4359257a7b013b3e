"""``--precision auto`` where the answer depends on the model: measure it, briefly, and remember it.

On a CPU with native bf16 (AMX or AVX-512 BF16) the flag alone does not say whether bf16
autocast is faster than fp32: measured on such machines, tiny models and small batches ran
0.57-0.94x fp32 under bf16 and wider ones 1.2-2.2x.  So ``auto`` times a few training steps
(forward, backward, clip, fused AdamW step) of the user's own model at the run's batch shape
in each candidate precision -- one copy of the model, so every candidate starts from the
same weights; the candidates take turns step by step in a rotating order, so a noisy
machine's drift is shared out; the first step of each is a warm-up and is not counted --
and keeps the more accurate precision unless a faster one wins by more than ``MARGIN``.

The probe costs at most a few seconds and never more than ``MAX_SHARE`` of the planned run
(a run too short for that is trained in fp32, the more accurate choice, and says why).  Its
result is cached per CPU, thread count, torch version, model structure and batch shape, so
the next run of the same model pays nothing; ``tierlab bench precision`` writes the same
cache with its longer measurement.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import write_json_atomic
from ..data.cache import default_cache_dir
from .device import cpu_name
from .loss import make_loss_fn
from .objective import Classification, split_block
from .precision import PrecisionDecision, PrecisionPolicy, decide_precision

log = logging.getLogger(__name__)

CANDIDATES = ("fp32", "bf16")  # most accurate first: a tie goes to the earlier one
MARGIN = 1.05  # a less accurate precision must be more than 5% faster to be chosen
PROBE_SECONDS = 3.0  # what the timed rounds may cost at most ...
MAX_SHARE = 0.05  # ... and never more than this share of the planned run
WARMUP_STEPS = 1  # per candidate, not timed (first-call allocations, autocast caches)
MIN_STEPS, MAX_STEPS = 4, 12  # timed steps per candidate
CACHE_VERSION = 1  # bump when the probe's method changes: old figures are then measured again


@dataclass(frozen=True)
class Measurement:
    """Median step time per candidate precision, and where the figures came from."""

    step_ms: dict[str, float]
    steps: int  # timed steps per candidate
    source: str  # "probe" (measured now), "cache" (an earlier probe) or "bench" (tierlab bench precision)
    batch_size: int
    seq_len: int

    def speedup(self, precision: str) -> float:
        return self.step_ms["fp32"] / self.step_ms[precision]

    def as_dict(self) -> dict[str, Any]:
        return {"step_ms": self.step_ms, "steps": self.steps, "source": self.source, "batch_size": self.batch_size,
                "seq_len": self.seq_len,
                "speedup_vs_fp32": {p: round(self.speedup(p), 4) for p in self.step_ms}}


def choose(step_ms: dict[str, float]) -> str:
    """The most accurate candidate within ``MARGIN`` of the fastest (noise must not flip the choice)."""
    fastest = min(step_ms.values())
    return next(p for p in CANDIDATES if p in step_ms and step_ms[p] <= fastest * MARGIN)


def explain(choice: str, m: Measurement) -> str:
    """"bf16 measured 0.93x fp32 on this model at batch 16 x 128 (9 steps each)", plus why the choice follows."""
    others = [p for p in m.step_ms if p != "fp32"]
    figures = ", ".join(f"{p} measured {m.speedup(p):.2f}x fp32" for p in others)
    how = {"probe": f"{m.steps} steps each", "cache": f"{m.steps} steps each, measured by an earlier run",
           "bench": f"{m.steps} steps each, measured by tierlab bench precision"}[m.source]
    said = f"{figures} on this model at batch {m.batch_size} x {m.seq_len} ({how})"
    fastest = min(m.step_ms, key=m.step_ms.__getitem__)
    if choice == fastest:
        return f"{said}: {choice} is the fastest here"
    return (f"{said}: {choice}, the more accurate, since {fastest} is less than "
            f"{round((MARGIN - 1) * 100)}% faster")


@dataclass
class AutoProbe:
    """What ``auto`` needs to measure: the model, a training-shaped batch and the planned run's length."""

    model: nn.Module
    block: torch.Tensor  # [B, T + 1] token ids: inputs and targets of one micro-batch
    device: torch.device
    planned_steps: int | None  # micro-batch steps of the run; None: no run (validate), the time cap alone
    cache_dir: Path | None
    lr: float = 1e-4
    clip_grad: float = 1.0
    classify: Classification | None = None  # --objective classify: the block's last column is the class id

    def __call__(self, flag: str) -> PrecisionDecision:
        batch, length = self.block.shape[0], self.block.shape[1] - 1
        key = cache_key(self.model, self.device, batch, length)
        cached = read_cached(self.cache_dir, key)
        if cached is not None:
            return _decided(flag, cached)
        need = len(CANDIDATES) * (WARMUP_STEPS + MIN_STEPS)
        if self.planned_steps is not None and self.planned_steps * MAX_SHARE < need:
            return PrecisionDecision(
                "auto", "fp32",
                f"this CPU has native bf16 ({flag}), but whether bf16 is faster than fp32 depends on the model; "
                f"a {self.planned_steps}-step run is too short to measure it (the {need}-step probe would cost more "
                f"than {MAX_SHARE:.0%} of it): fp32, the more accurate; `tierlab bench precision` with the same "
                "model and batch shape measures it once for later runs",
                measured=None)
        log.info("measuring %s on this model at batch %d x %d (a few seconds; cached for later runs)",
                 " against ".join(CANDIDATES), batch, length)
        try:
            measurement = self.measure(batch, length)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot train this model is not chosen
            log.info("the precision probe failed (%s: %s): fp32", type(exc).__name__, exc)
            return PrecisionDecision("auto", "fp32", f"this CPU has native bf16 ({flag}), but timing this model's "
                                     f"training steps failed ({type(exc).__name__}: {exc}): fp32")
        write_cached(self.cache_dir, key, measurement)
        return _decided(flag, measurement)

    def measure(self, batch: int, length: int) -> Measurement:
        """Time interleaved training steps of one copy of the model in each candidate precision."""
        with torch.random.fork_rng(devices=[]):  # the probe must not move the run's random stream (init, dropout)
            return self._measure(batch, length)

    def _measure(self, batch: int, length: int) -> Measurement:
        replica = copy.deepcopy(self.model).train()
        params = [p for p in replica.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=torch.tensor(self.lr), fused=True)
        steps = {p: _step_fn(replica, params, optimizer, PrecisionPolicy(decide_precision(p, self.device),
                                                                         self.device), self.clip_grad, self.classify)
                 for p in CANDIDATES}
        inputs, targets = (t.to(self.device) for t in split_block(self.block, self.classify))
        times: dict[str, list[float]] = {p: [] for p in CANDIDATES}
        # The clock starts here: building the first fused AdamW of a process costs ~1.5 s of
        # one-off set-up that the run pays anyway; the probe's own cost is its steps.
        started = time.perf_counter()
        for step in steps.values():
            for _ in range(WARMUP_STEPS):
                step(inputs, targets)
        budget, rounds = PROBE_SECONDS, 0
        # Whole rounds until the budget (warm-up included) is spent, at least MIN_STEPS of them.
        while rounds < MAX_STEPS and (rounds < MIN_STEPS or time.perf_counter() - started < budget):
            order = CANDIDATES[rounds % len(CANDIDATES):] + CANDIDATES[:rounds % len(CANDIDATES)]
            for name in order:
                start = time.perf_counter()
                steps[name](inputs, targets)
                times[name].append(time.perf_counter() - start)
            rounds += 1
            if rounds == 1 and self.planned_steps is not None:  # now the run's length in seconds is known
                budget = min(PROBE_SECONDS, MAX_SHARE * self.planned_steps * times["fp32"][0])
        del replica, optimizer, steps
        return Measurement({p: 1000 * statistics.median(t) for p, t in times.items()}, rounds, "probe", batch, length)


def _step_fn(model: nn.Module, params: list[nn.Parameter], optimizer: torch.optim.Optimizer,
             policy: PrecisionPolicy, clip_grad: float, classify: Classification | None = None):
    """One training step as the loop takes it: autocast forward, fp32 loss, backward, clip, fused step."""
    loss_fn = make_loss_fn(model, policy, classify)

    def step(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        with policy.activate():
            policy.backward(loss_fn(inputs, targets))
            policy.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else float("inf"))
            policy.step(optimizer, norm)
            optimizer.zero_grad(set_to_none=True)

    return step


def _decided(flag: str, m: Measurement) -> PrecisionDecision:
    choice = choose(m.step_ms)
    reason = f"this CPU has native bf16 ({flag}); {explain(choice, m)}"
    return PrecisionDecision("auto", choice, reason, measured=m.as_dict())


# --------------------------------------------------------------------------- the cache
def cache_key(model: nn.Module, device: torch.device, batch_size: int, seq_len: int) -> str:
    """Same CPU, threads, torch, model structure and batch shape: the same answer."""
    structure = [(name, list(t.shape), str(t.dtype)) for name, t in model.state_dict().items()]
    identity = {"version": CACHE_VERSION, "device": device.type, "cpu": cpu_name(),
                "threads": torch.get_num_threads(), "torch": torch.__version__, "model": type(model).__name__,
                "structure": structure, "batch": [batch_size, seq_len], "candidates": list(CANDIDATES)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _cache_file(cache_dir: Path | None, key: str) -> Path:
    return (cache_dir or default_cache_dir()) / "precision" / f"{key}.json"


def read_cached(cache_dir: Path | None, key: str) -> Measurement | None:
    try:
        value = json.loads(_cache_file(cache_dir, key).read_text())
        step_ms = {str(k): float(v) for k, v in value["step_ms"].items()}
        m = Measurement(step_ms, int(value["steps"]), "bench" if value.get("source") == "bench" else "cache",
                        int(value["batch_size"]), int(value["seq_len"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, or edited into something unreadable: measure again
    sane = (set(m.step_ms) == set(CANDIDATES) and all(math.isfinite(v) and v > 0 for v in m.step_ms.values())
            and m.steps >= 1)
    return m if sane else None  # figures no measurement can give (edited by hand): measure again


def write_cached(cache_dir: Path | None, key: str, m: Measurement) -> None:
    """Best effort: a cache that cannot be written costs the next run a probe, nothing more.

    A shorter measurement never replaces a longer one (a 2-step bench, a short run's probe).
    """
    path = _cache_file(cache_dir, key)
    earlier = read_cached(cache_dir, key)
    if earlier is not None and earlier.steps > m.steps:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {**m.as_dict(), "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
                                 "torch": torch.__version__, "cpu": cpu_name()})
    except OSError as exc:
        log.info("could not cache the precision measurement in %s: %s", path, exc)
