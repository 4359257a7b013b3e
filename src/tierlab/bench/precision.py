"""``tierlab bench precision``: how fast each precision really is for one model on this machine.

Every precision trains its own copy of the model -- same initial weights, same batches,
same optimizer, through the real training loop (:class:`~tierlab.train.loop.Trainer`) --
for warm-up steps (not timed) and then for ``steps`` timed steps.  The timed steps are
interleaved: round after round, each precision runs a short chunk, in an order that
rotates every round, so drift of a noisy or thermally throttling machine is shared out
instead of favouring whoever ran first.  Afterwards each copy is evaluated on the same
validation blocks, which shows what the precision costs in accuracy after the same steps.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from ..data import TokenData
from ..errors import ConfigError, PrecisionError, UserError
from ..precisions import NAMES
from ..progress import quieted
from ..run_files import EVENTS, METRICS
from ..track import EventLog, JsonlWriter
from ..train.speedups import choose_speedups
from ..train.objective import classification_for
from ..train.setup import first_block, prepare
from ..train.step_buffer import read
from ..train.auto_precision import CANDIDATES as AUTO_CANDIDATES
from ..train.auto_precision import MARGIN as AUTO_MARGIN
from ..train.auto_precision import Measurement, cache_key, choose, write_cached
from ..train.compile import compile_model
from ..train.device import cpu_native_bf16, resolve_device, synchronize
from ..train.flops import flops_per_token, peak_flops
from ..train.loop import Trainer
from ..train.memory import SavedForBackward, optimizer_state_tensors, tensor_bytes
from ..train.precision import PrecisionPolicy, decide_precision

log = logging.getLogger(__name__)

BENCH_PRECISIONS = NAMES  # every precision tierlab knows


@dataclass
class BenchRow:
    """One precision's figures; ``status`` is ok, unavailable (cannot run here) or failed (e.g. out of memory)."""

    precision: str
    status: str
    reason: str = ""
    median_step_ms: float | None = None
    tokens_per_s: float | None = None
    speedup_vs_fp32: float | None = None
    peak_mem_mb: float | None = None
    mfu: float | None = None
    val_loss: float | None = None
    val_loss_diff_vs_fp32: float | None = None
    final_train_loss: float | None = None
    skipped_steps: int | None = None
    compile_s: float | None = None
    step_ms: list[float] = field(default_factory=list)


@dataclass
class BenchResult:
    device: str
    device_name: str
    torch_version: str
    model: str
    params: int
    flops_per_token: float
    batch_size: int
    seq_len: int
    tokens_per_step: int
    steps: int
    warmup_steps: int
    compile: bool
    peak_mem_method: str
    rows: list[BenchRow]
    verdict: str
    compile_mode: str | None = None  # torch.compile's mode under --compile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Contender:
    """One precision's model copy, optimizer and loop, plus what is measured of it."""

    def __init__(self, row: BenchRow, trainer: Trainer):
        self.row, self.trainer = row, trainer
        self.step_s: list[float] = []
        self.losses: list[float] = []
        self.skipped = 0
        self.transient_peak = 0  # CUDA: most bytes allocated above the chunk's starting point


def bench_precision(cfg: TrainConfig, steps: int = 20, warmup_steps: int = 3,
                    precisions: tuple[str, ...] = BENCH_PRECISIONS, chunk: int = 5,
                    cache_dir: str | Path | None = None, model: nn.Module | None = None) -> BenchResult:
    """Measure ``precisions`` for ``cfg``'s model (or ``model``, an in-memory module), data, batch and length.

    ``model`` is left untouched: every precision trains a copy of it.
    """
    _check_options(steps, warmup_steps, precisions, chunk)
    cpu_native_bf16()  # a bad TIERLAB_CPU_NATIVE_BF16 stops here, before any precision runs
    device = resolve_device(cfg.device)
    # The LR warms up over the untimed steps; the buffer holds one chunk (or the warm-up) of step rows.
    cfg = cfg.replace(max_steps=warmup_steps + steps, warmup_steps=warmup_steps, log_every=max(chunk, warmup_steps, 1),
                      eval_every=0, ckpt_every=0)
    if model is not None:
        model = copy.deepcopy(model)  # the caller's module stays as it was
    # The same data, model and checks train() has; the validation split must hold a block too.
    prepared = prepare(model, cfg.replace(eval_every=1), device, cache_dir=Path(cache_dir) if cache_dir else None)
    cfg, tokens, model = prepared.cfg.replace(eval_every=0), prepared.tokens, prepared.model
    init_state = copy.deepcopy(model.state_dict())
    params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, cfg.seq_len)
    auto_key = cache_key(model, device, cfg.batch_size, cfg.seq_len)

    rows: list[BenchRow] = []
    contenders: list[_Contender] = []
    # The per-copy evaluation lines would only repeat the table.
    with tempfile.TemporaryDirectory(prefix="tierlab-bench-") as scratch, quieted("tierlab.metrics"):
        for precision in precisions:
            row = BenchRow(precision, "ok")
            rows.append(row)
            try:
                contenders.append(_prepare(row, model, init_state, tokens, cfg, device, Path(scratch)))
            except PrecisionError as err:
                row.status, row.reason = "unavailable", err.problem.split("cannot run here: ", 1)[-1].rstrip(".")
                log.info("%s: cannot run here: %s", precision, row.reason)
            except UserError as err:  # e.g. torch.compile failed for this precision
                _fail(row, err.problem)
            except torch.cuda.OutOfMemoryError:
                _fail(row, f"out of memory at batch {cfg.batch_size} x {cfg.seq_len} while setting up")
        del model
        _run_interleaved(contenders, warmup_steps, steps, chunk, device)
        for c in contenders:
            if c.row.status == "ok":
                _finish(c, cfg, device, fpt)
            c.trainer = None  # free the copy before the next one is evaluated
    _relate_to_fp32(rows)
    result = BenchResult(
        device=str(device), device_name=_device_name(device), torch_version=torch.__version__, model=cfg.model,
        params=params, flops_per_token=fpt, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
        tokens_per_step=cfg.batch_size * cfg.seq_len, steps=steps, warmup_steps=warmup_steps, compile=cfg.compile,
        peak_mem_method=("CUDA allocator: this precision's weights and optimizer state plus its step's peak above "
                         "them" if device.type == "cuda" else
                         "estimate: weights + AdamW state + what autograd saves for backward (no allocator peak "
                         "on a CPU)"),
        rows=rows, verdict="", compile_mode=cfg.compile_mode if cfg.compile else None)
    measured = _auto_measurement(rows, cfg, device)
    if measured is not None:  # the next `train --precision auto` of this model and shape uses these figures
        write_cached(Path(cache_dir) if cache_dir else None, auto_key, measured)
    result.verdict = verdict(result, device, measured)
    return result


def _auto_measurement(rows: list[BenchRow], cfg: TrainConfig, device: torch.device) -> Measurement | None:
    """What ``--precision auto`` decides from, where it measures (a CPU with native bf16, eager steps)."""
    ok = {r.precision: r.median_step_ms for r in rows if r.status == "ok" and r.precision in AUTO_CANDIDATES}
    if device.type != "cpu" or cfg.compile or cpu_native_bf16() is None or set(ok) != set(AUTO_CANDIDATES):
        return None
    return Measurement(ok, cfg.max_steps - cfg.warmup_steps, "bench", cfg.batch_size, cfg.seq_len)


def _check_options(steps: int, warmup_steps: int, precisions: tuple[str, ...], chunk: int) -> None:
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}.", "pass e.g. --steps 20.")
    if warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be 0 or more, got {warmup_steps}.", "pass e.g. --warmup-steps 3.")
    if chunk < 1:
        raise ConfigError(f"--chunk must be at least 1, got {chunk}.", "pass e.g. --chunk 5.")
    unknown = [p for p in precisions if p not in BENCH_PRECISIONS]
    if unknown or not precisions:
        raise ConfigError(f"--precisions {','.join(precisions)!r} names no precision or an unknown one "
                          f"({', '.join(unknown)}).", f"use a comma-separated subset of {','.join(BENCH_PRECISIONS)}.")
    if len(set(precisions)) != len(precisions):
        raise ConfigError(f"--precisions {','.join(precisions)!r} names a precision twice.", "name each once.")


def _prepare(row: BenchRow, model: nn.Module, init_state: dict, tokens: TokenData, cfg: TrainConfig,
             device: torch.device, scratch: Path) -> _Contender:
    """A copy of the model with the shared initial weights and its own loop; compiled with --compile."""
    decision = decide_precision(row.precision, device, strict=True)  # PrecisionError: cannot run here
    policy = PrecisionPolicy(decision, device, cfg.loss_scale_init, cfg.loss_scale_growth_interval)
    replica = copy.deepcopy(model)
    replica.load_state_dict(init_state)
    policy.check_model(replica)
    policy.prepare_model(replica, cfg.batch_size * cfg.seq_len, cfg.fp8_layers)  # fp8: the linear layers that gain
    loss_fn = None
    classify = classification_for(cfg.objective, tokens, cfg.pool)
    speedups = choose_speedups(cfg, replica, first_block(tokens, cfg), device, policy, classify)
    if cfg.compile:
        loss_fn, row.compile_s = compile_model(replica, first_block(tokens, cfg), policy, device, cfg.compile_mode,
                                               classify, speedups.head, speedups.attention)
    run_dir = scratch / row.precision
    run_dir.mkdir()
    trainer = Trainer(replica, tokens, cfg.replace(precision=row.precision), policy, device, run_dir,
                      JsonlWriter(run_dir / METRICS), EventLog(run_dir / EVENTS), cfg.max_steps,
                      identity={}, loss_fn=loss_fn, head=speedups.head, attention=speedups.attention)
    replica.train()
    return _Contender(row, trainer)


def _run_interleaved(contenders: list[_Contender], warmup_steps: int, steps: int, chunk: int,
                     device: torch.device) -> None:
    for c in contenders:
        log.info("warm-up: %s, %d step(s)", c.row.precision, warmup_steps)
        _run_chunk(c, warmup_steps, device, timed=False)
    rounds = math.ceil(steps / chunk)
    for r in range(rounds):
        count = min(chunk, steps - r * chunk)
        live = [c for c in contenders if c.row.status == "ok"]
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        log.info("round %d/%d: %s", r + 1, rounds, ", ".join(c.row.precision for c in order))
        for c in order:
            _run_chunk(c, count, device, timed=True)


def _run_chunk(c: _Contender, count: int, device: torch.device, timed: bool) -> None:
    """``count`` training steps of one precision; step times from CUDA events (no per-step host sync)."""
    if count == 0 or c.row.status != "ok":
        return
    trainer = c.trainer
    cuda = device.type == "cuda"
    try:
        with trainer.policy.activate():
            synchronize(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                start_bytes = torch.cuda.memory_allocated(device)
                marks = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
                marks[0].record()
            else:
                marks = [time.perf_counter()]
            for i in range(count):
                trainer.train_step()
                if cuda:
                    marks[i + 1].record()
                else:
                    marks.append(time.perf_counter())
            synchronize(device)
    except torch.cuda.OutOfMemoryError:
        _fail(c.row, f"out of memory at batch {trainer.cfg.batch_size} x {trainer.cfg.seq_len}")
        c.trainer = None
        return
    steps = read(trainer.take_rows())
    if cuda:
        c.transient_peak = max(c.transient_peak, torch.cuda.max_memory_allocated(device) - start_bytes)
        seconds = [a.elapsed_time(b) / 1000 for a, b in pairwise(marks)]
    else:
        seconds = [b - a for a, b in pairwise(marks)]
    c.losses += [s.loss for s in steps]
    c.skipped += sum(int(s.skipped) for s in steps)
    if timed:
        c.step_s += seconds


def _finish(c: _Contender, cfg: TrainConfig, device: torch.device, fpt: float) -> None:
    row, trainer = c.row, c.trainer
    median = statistics.median(c.step_s)
    row.step_ms = [1000 * s for s in c.step_s]
    row.median_step_ms = 1000 * median
    row.tokens_per_s = cfg.batch_size * cfg.seq_len / median
    peak = peak_flops(device, row.precision)
    row.mfu = row.tokens_per_s * fpt / peak if peak else None
    row.skipped_steps = c.skipped
    row.final_train_loss = statistics.fmean(c.losses[-min(5, len(c.losses)):]) if c.losses else None
    with trainer.policy.activate():
        row.val_loss = trainer.evaluate()["val_loss"]
        resident = tensor_bytes(list(trainer.model.parameters()) + optimizer_state_tensors(trainer.optimizer))
        if device.type == "cuda":
            row.peak_mem_mb = (resident + c.transient_peak) / 2**20
        else:
            row.peak_mem_mb = (resident + _saved_activation_bytes(trainer, cfg)) / 2**20


def _saved_activation_bytes(trainer: Trainer, cfg: TrainConfig) -> int:
    """Bytes autograd keeps for backward in one training forward of this precision (eager model)."""
    inputs = first_block(trainer.data, cfg)[:, :-1].to(trainer.device)
    with SavedForBackward() as saved, trainer.policy.autocast():
        trainer.model(inputs)  # the graph (and what it saved) is dropped on return
    return saved.bytes


def _fail(row: BenchRow, reason: str) -> None:
    row.status, row.reason = "failed", reason
    log.warning("%s: %s", row.precision, reason)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _relate_to_fp32(rows: list[BenchRow]) -> None:
    base = next((r for r in rows if r.precision == "fp32" and r.status == "ok"), None)
    if base is None:
        return
    for r in rows:
        if r.status != "ok":
            continue
        r.speedup_vs_fp32 = base.median_step_ms / r.median_step_ms
        if r.val_loss is not None and base.val_loss is not None:
            r.val_loss_diff_vs_fp32 = r.val_loss - base.val_loss


def verdict(result: BenchResult, device: torch.device, measured: Measurement | None = None) -> str:
    """One or two plain sentences: what is fastest here, what it costs, and what ``auto`` takes from it."""
    ok = [r for r in result.rows if r.status == "ok"]
    if not ok:
        return "No precision could run here (see the reasons above)."
    fastest = max(ok, key=lambda r: r.tokens_per_s or 0.0)
    words = f"Fastest here: {fastest.precision} ({fastest.tokens_per_s:,.0f} tokens/s"
    if fastest.speedup_vs_fp32 is not None and fastest.precision != "fp32":
        words += f", {fastest.speedup_vs_fp32:.2f}x fp32"
    if fastest.val_loss_diff_vs_fp32 is not None and fastest.precision != "fp32":
        words += f", val loss {fastest.val_loss_diff_vs_fp32:+.4f} against fp32 after the same steps"
    words += ")."
    if device.type == "cpu" and cpu_native_bf16() is None:
        if fastest.precision == "fp32":
            words += (" This CPU has no native bf16 or fp16 matrix units (no AVX-512 BF16 or AMX): fp32 is the "
                      "fastest choice here; bf16/fp16 autocast on it is for checking correctness, not for speed.")
        else:
            words += " (This CPU has no native bf16 or fp16 units; the margin is likely noise: rerun with more --steps.)"
    if measured is not None:
        choice = choose(measured.step_ms)
        words += (f" --precision auto picks {choice} for this model at batch {result.batch_size} x "
                  f"{result.seq_len}" + ("" if choice == fastest.precision else
                                         f" ({fastest.precision} is less than {round((AUTO_MARGIN - 1) * 100)}% "
                                         f"faster and {choice} is more accurate)")
                  + "; these figures are saved for its next run.")
    return words


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
