"""Tier 1 checks: is the model wired like a causal language model?

Each check takes a :class:`Probe` (the model, its vocabulary and the probe shapes) and
returns a :class:`CheckResult` with pass / warn / fail, the measured figures and advice.
A check that raises is reported as a failure of that check, never as a crash; a check
that depends on one that failed (see DEPENDS_ON) is not run and is reported as "skip".
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import (CAUSAL_FIX, PROBABILITIES_FIX, extract_logits, future_leak, looks_like_probabilities,
                      repeatable_logits)
from ..train.device import synchronize
from ..train.memory import SavedForBackward
from ..train.objective import POOL_FIRST_FIX, POOL_FIRST_ON_CAUSAL, Classification, first_position_is_blind
from ..train.precision import DTYPES, low_precision_weights
from .report import CheckResult


@dataclass
class Probe:
    model: nn.Module
    vocab: int
    batch_size: int
    seq_len: int
    max_len: int | None
    device: torch.device
    seed: int = 0
    precision: str = "fp32"  # the speed check's autocast precision: fp32, bf16 or fp16
    mask_id: int | None = None  # --objective mlm: the mask token's id (the causality check becomes a context check)
    # --objective classify: ``vocab`` is the number of classes, the output is pooled to one position [B, 1, C],
    # token ids are drawn below ``token_range`` and each row's target is a class id derived from its first token.
    classify: Classification | None = None
    token_range: int | None = None

    def autocast(self):
        dtype = DTYPES[self.precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def tokens(self, batch: int, length: int, seed: int | None = None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.randint(0, self.token_range or self.vocab, (batch, length), generator=g).to(self.device)

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, T, V] logits, or a classifier's pooled scores as one position [B, 1, C]."""
        output = extract_logits(self.model(ids))
        return self.classify.pooled(output, ids).unsqueeze(1) if self.classify is not None else output

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy in fp32 of ``logits`` against ``targets`` (a classifier: one class id per row)."""
        if self.classify is not None:
            targets = targets.reshape(targets.size(0), -1)[:, 0] % self.vocab
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


def _output_shapes(p: Probe, forward) -> tuple[list[int], list[list[int]], list[tuple[int, int, object]]]:
    """(lengths, tried, [(B, T, shape list or the error text)]) of ``forward`` over the probe's batch sizes and lengths."""
    lengths = sorted({1, max(1, p.seq_len // 2), p.max_len or p.seq_len})
    tried, found = [], []
    p.model.eval()
    with torch.no_grad():
        for b in sorted({1, p.batch_size}):
            for t in lengths:
                tried.append([b, t])
                try:
                    found.append((b, t, list(forward(p.tokens(b, t)).shape)))
                except Exception as exc:  # noqa: BLE001 - a failing shape is the finding
                    found.append((b, t, f"[{b}, {t}] raised {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"))
    return lengths, tried, found


def shapes(p: Probe) -> CheckResult:
    if p.classify is not None:
        return class_shapes(p)
    lengths, tried, found = _output_shapes(p, p.logits)
    bad = [shape if isinstance(shape, str) else f"[{b}, {t}] gave {shape}, expected {[b, t, p.vocab]}"
           for b, t, shape in found if shape != [b, t, p.vocab]]
    if bad:
        return CheckResult("shapes", "fail", "; ".join(bad[:3]), {"tried": tried},
                           "forward(input_ids [B, T]) must return logits [B, T, V] for every B and T up to the "
                           "model's maximum length")
    return CheckResult("shapes", "pass", f"logits [B, T, {p.vocab}] for B in {sorted({1, p.batch_size})}, "
                       f"T in {lengths}", {"tried": tried})


def class_shapes(p: Probe) -> CheckResult:
    """A classifier returns [B, C] (or [B, T, C], pooled) with C = the classes, for every B and T."""
    lengths, tried, found = _output_shapes(p, lambda ids: extract_logits(p.model(ids)))
    bad, layouts = [], set()
    for b, t, shape in found:
        if shape in ([b, p.vocab], [b, t, p.vocab]):
            layouts.add("[B, C]" if len(shape) == 2 else "[B, T, C] (pooled by --pool)")
        else:
            bad.append(shape if isinstance(shape, str) else
                       f"[{b}, {t}] gave {shape}, expected {[b, p.vocab]} or {[b, t, p.vocab]}")
    if bad:
        return CheckResult("shapes", "fail", "; ".join(bad[:3]), {"tried": tried},
                           f"forward(input_ids [B, T]) must return class scores [B, {p.vocab}] (or [B, T, "
                           f"{p.vocab}]) for every B and T up to the model's maximum length")
    return CheckResult("shapes", "pass", f"class scores {' and '.join(sorted(layouts))}, C = {p.vocab}, for B in "
                       f"{sorted({1, p.batch_size})}, T in {lengths}", {"tried": tried, "classes": p.vocab})


def causality(p: Probe) -> CheckResult:
    """Changing token p must not change the logits at positions before p (a masked LM: see :func:`mlm_context`)."""
    if p.classify is not None:
        if p.classify.pool == "first" and p.seq_len > 1:  # the one pooling a causal model cannot serve
            ids = p.tokens(1, min(16, p.max_len or 16, p.seq_len), seed=1)
            with torch.no_grad():
                per_position = extract_logits(p.model.eval()(ids)).dim() == 3
            if per_position and first_position_is_blind(p.model, ids):
                return CheckResult("causality", "fail", POOL_FIRST_ON_CAUSAL.rstrip("."), {"pool": "first"},
                                   POOL_FIRST_FIX.rstrip("."))
        return CheckResult("causality", "skip", "not tested: a classifier (--objective classify) reads the whole row "
                           "by design", {"objective": "classify"})
    if p.mask_id is not None:
        return mlm_context(p)
    length = min(16, p.max_len or 16, p.seq_len)
    ids = p.tokens(1, length, seed=1)
    p.model.eval()
    with torch.no_grad():
        base = repeatable_logits(p.logits, ids)
        if base is None:
            return CheckResult("causality", "warn", "not tested: two eval forwards of one input differ, so a "
                               "change at a later position cannot be told from that noise", {},
                               "make eval mode deterministic (see determinism), then validate again")
        for pos in range(1, length):
            diff = future_leak(p.logits, ids, pos, p.vocab, base=base)
            if diff is not None:
                return CheckResult("causality", "fail", f"logits at positions < {pos} change when token {pos} "
                                   f"changes (max diff {diff:.3g}): position {pos - 1} sees the future",
                                   {"first_leaking_position": pos - 1, "max_diff": diff}, CAUSAL_FIX)
    return CheckResult("causality", "pass", f"no position sees a later token (T={length})", {"length": length})


def mlm_context(p: Probe) -> CheckResult:
    """A masked position's prediction must come from the tokens around it, left and right: it cannot see its own."""
    length = min(16, p.max_len or 16, p.seq_len)
    if length < 3:
        return CheckResult("causality", "skip", f"not tested: T={length} leaves no token on both sides of a mask")
    middle = length // 2
    ids = p.tokens(1, length, seed=1)
    ids[0, middle] = p.mask_id
    p.model.eval()
    with torch.no_grad():
        base = repeatable_logits(p.logits, ids)
        if base is None:
            return CheckResult("causality", "warn", "not tested: two eval forwards of one input differ", {},
                               "make eval mode deterministic (see determinism), then validate again")
        moved = {}
        for side, position in (("left", middle - 1), ("right", middle + 1)):
            changed = ids.clone()
            changed[0, position] = (changed[0, position] + 1) % p.mask_id
            moved[side] = (p.logits(changed).float()[0, middle] - base[0, middle]).abs().amax().item()
    noise = 1e-4 * max(1.0, base.abs().amax().item())
    sees = [side for side, diff in moved.items() if diff > noise]
    details = {"masked_position": middle, "left_diff": moved["left"], "right_diff": moved["right"]}
    if len(sees) == 2:
        return CheckResult("causality", "pass", f"a masked position reads the tokens on both sides (T={length}; "
                           "--objective mlm needs no causal mask)", details)
    if sees == ["left"]:
        return CheckResult("causality", "warn", "a masked position reads only the tokens before it: the model is "
                           "causal, so a masked LM learns from one side only", details,
                           "remove the causal mask (or train it with --objective clm)")
    return CheckResult("causality", "fail", f"the prediction at a masked position does not change when the tokens "
                       f"{' or '.join(s for s in ('left', 'right') if s not in sees)} of it change: it cannot fill "
                       "a mask from its context", details, "make every position attend to the others")


def gradient_flow(p: Probe) -> CheckResult:
    p.model.train()
    p.model.zero_grad(set_to_none=True)
    ids = p.tokens(p.batch_size, p.seq_len, seed=2)
    logits = p.logits(ids[:, :-1]) if p.seq_len > 1 else p.logits(ids)
    target = ids[:, 1:] if p.seq_len > 1 else ids
    p.loss(logits, target).backward()
    missing, zero, nonfinite, norms = [], [], [], {}
    for name, param in p.model.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:
            missing.append(name)
        elif not torch.isfinite(param.grad).all():
            nonfinite.append(name)
        elif param.grad.abs().max().item() == 0:
            zero.append(name)
        else:
            norms[name] = param.grad.norm().item()
    p.model.zero_grad(set_to_none=True)
    median = statistics.median(norms.values()) if norms else 0.0
    vanishing = [n for n, v in norms.items() if median and v < 1e-5 * median]
    exploding = [n for n, v in norms.items() if median and v > 1e4 * median]
    figures = {"no_grad": missing, "zero_grad": zero, "nonfinite_grad": nonfinite, "vanishing": vanishing,
               "exploding": exploding, "median_grad_norm": median}
    if missing or zero or nonfinite:
        parts = [f"{len(x)} {what}: {', '.join(x[:4])}{', ...' if len(x) > 4 else ''}"
                 for x, what in ((missing, "get no gradient"), (zero, "get an all-zero gradient"),
                                 (nonfinite, "get non-finite gradients")) if x]
        return CheckResult("gradient_flow", "fail", "; ".join(parts), figures,
                           "look for detached tensors (.detach(), .data, torch.no_grad), unused branches, or a "
                           "zero-initialised layer that blocks the gradient to everything below it")
    if vanishing or exploding:
        return CheckResult("gradient_flow", "warn", f"{len(vanishing)} vanishing, {len(exploding)} exploding "
                           "parameter gradients relative to the median", figures,
                           "check normalisation and residual connections around those layers")
    return CheckResult("gradient_flow", "pass", f"all {len(norms)} trainable parameters get finite, non-zero "
                       f"gradients (median norm {median:.3g})", figures)


def numerics(p: Probe) -> CheckResult:
    p.model.eval()
    ids = p.tokens(p.batch_size, p.seq_len, seed=3)
    with torch.no_grad():
        logits = p.logits(ids).float()
    if not torch.isfinite(logits).all():
        bad = (~torch.isfinite(logits)).float().mean().item()
        return CheckResult("numerics", "fail", f"{bad:.1%} of the logits are NaN or Inf", {"nonfinite": bad},
                           "find the layer that produces them (division by zero, log of 0, overflowing exp)")
    if looks_like_probabilities(logits):
        return CheckResult("numerics", "fail", "the outputs are probabilities, not logits: every position's outputs "
                           "lie in [0, 1] and sum to 1 (a softmax at the end of forward)", {"probabilities": True},
                           PROBABILITIES_FIX)
    if p.classify is not None:  # one position: the pooled scores
        loss = p.loss(logits, ids).item()
    else:
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, p.vocab), ids[:, 1:].reshape(-1)).item() \
            if p.seq_len > 1 else F.cross_entropy(logits.reshape(-1, p.vocab), ids.reshape(-1)).item()
    # A fresh model's loss is near ln of the number of choices: the vocabulary, or a classifier's classes.
    outputs, name = (p.classify.classes, "C") if p.classify is not None else (p.vocab, "V")
    expected = math.log(outputs)
    figures = {"initial_loss": loss, "ln_vocab" if p.classify is None else "ln_classes": expected,
               "logit_mean": logits.mean().item(), "logit_std": logits.std().item(),
               "logit_max": logits.abs().max().item()}
    if abs(loss - expected) > 1.0:
        return CheckResult("numerics", "warn", f"initial loss {loss:.3f} is far from ln({name}) = {expected:.3f} "
                           f"(logit std {figures['logit_std']:.3g})", figures,
                           "a fresh model should predict near-uniformly: check the output layer's init scale "
                           "and the attention's 1/sqrt(d) factor")
    return CheckResult("numerics", "pass", f"finite logits; initial loss {loss:.3f} vs ln({name}) = {expected:.3f}",
                       figures)


def initialisation(p: Probe) -> CheckResult:
    zero, identical, odd, stats = [], [], [], {}
    for name, param in p.model.named_parameters():
        w = param.detach().float()
        stats[name] = {"mean": w.mean().item(), "std": w.std().item() if w.numel() > 1 else 0.0}
        if w.dim() < 2:
            continue
        if w.abs().max().item() == 0:
            zero.append(name)
        elif (name.split(".")[-1].endswith("weight") and w.shape[0] > 1 and torch.equal(w[0], w[1])
              and torch.equal(w[0], w[-1])):
            # Only layer weights (Linear, Embedding, Conv1D, in_proj_weight): other tables, such as
            # Mamba's A_log (log 1..N in every row), are identical per row by design.
            identical.append(name)
        elif not 1e-4 < stats[name]["std"] < 1.0:
            odd.append(f"{name} (std {stats[name]['std']:.2g})")
    figures = {"all_zero": zero, "identical_rows": identical, "unusual_std": odd, "params": stats}
    stored_low = low_precision_weights(p.model)
    if stored_low:
        figures["low_precision_weights"] = stored_low[0]
        return CheckResult("initialisation", "warn", stored_low[0], figures, stored_low[1])
    if zero or identical or odd:
        parts = [f"{what}: {', '.join(x[:3])}{', ...' if len(x) > 3 else ''}"
                 for x, what in ((zero, "all-zero weights"), (identical, "identical rows"), (odd, "unusual std"))
                 if x]
        return CheckResult("initialisation", "warn", "; ".join(parts), figures,
                           "weights are usually initialised with std ~0.02 (or 1/sqrt(fan_in)); an all-zero "
                           "matrix or identical rows cannot break symmetry")
    return CheckResult("initialisation", "pass", f"{len(stats)} parameters, no all-zero or identical-row "
                       "matrices, stds in the usual range", figures)


def memory(p: Probe) -> CheckResult:
    params = sum(t.numel() for t in p.model.parameters())
    trainable = sum(t.numel() for t in p.model.parameters() if t.requires_grad)
    per_precision = {}
    for name, weight_bytes in (("fp32", 4), ("bf16/fp16 autocast (fp32 master weights)", 4)):
        per_precision[name] = {"params": params * weight_bytes, "grads": trainable * 4,
                               "adamw_state": trainable * 8}
    p.model.train()
    ids = p.tokens(p.batch_size, p.seq_len, seed=4)
    cuda = p.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(p.device)
        torch.cuda.reset_peak_memory_stats(p.device)
        baseline = torch.cuda.memory_allocated(p.device)
    # Activation memory = what autograd saves for backward, measured on any device.
    with SavedForBackward() as saved:
        loss = p.loss(p.logits(ids), ids)
    activations = saved.bytes
    loss.backward()
    peak = (torch.cuda.max_memory_allocated(p.device) - baseline) if cuda else None
    p.model.zero_grad(set_to_none=True)
    figures = {"parameters": params, "trainable": trainable, "bytes": per_precision,
               "activation_bytes": activations, "cuda_peak_step_bytes": peak, "batch_size": p.batch_size,
               "seq_len": p.seq_len}
    total = sum(per_precision["fp32"].values()) + activations
    return CheckResult("memory", "pass", f"{params / 1e6:.2f} M parameters: weights {_mb(params * 4)}, grads "
                       f"{_mb(trainable * 4)}, AdamW state {_mb(trainable * 8)}, activations "
                       f"{_mb(activations)} at batch {p.batch_size} x {p.seq_len} (total ~{_mb(total)})", figures)


def speed(p: Probe, repeats: int = 5) -> CheckResult:
    ids = p.tokens(p.batch_size, p.seq_len, seed=5)
    p.model.eval()
    forward = []
    with torch.no_grad(), p.autocast():
        for i in range(repeats + 2):
            start = time.perf_counter()
            p.logits(ids)
            synchronize(p.device)
            if i >= 2:
                forward.append(time.perf_counter() - start)
    p.model.train()
    opt = torch.optim.AdamW(p.model.parameters(), lr=0.0)  # lr 0: measure the step, change nothing
    steps = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        with p.autocast():
            logits = p.logits(ids)
        p.loss(logits, ids).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(p.device)
        if i >= 1:
            steps.append(time.perf_counter() - start)
    fwd, step = statistics.median(forward), statistics.median(steps)
    tokens = p.batch_size * p.seq_len / step
    return CheckResult("speed", "pass", f"forward {fwd * 1e3:.1f} ms, train step {step * 1e3:.1f} ms = "
                       f"{tokens:,.0f} tokens/s (median of {repeats}, batch {p.batch_size} x {p.seq_len}, "
                       f"{p.precision})",
                       {"forward_ms": fwd * 1e3, "train_step_ms": step * 1e3, "tokens_per_s": tokens,
                        "precision": p.precision})


def determinism(p: Probe) -> CheckResult:
    ids = p.tokens(p.batch_size, p.seq_len, seed=6)
    p.model.eval()
    with torch.no_grad():
        a, b = p.logits(ids).float(), p.logits(ids).float()
    diff = (a - b).abs().max().item() if torch.isfinite(a).all() else float("nan")
    if not torch.equal(a, b) and not diff <= 1e-6:
        return CheckResult("determinism", "fail", f"two eval forwards of the same input differ (max {diff:.3g})",
                           {"max_diff": diff}, "dropout or other randomness is active in eval mode, or the model "
                           "keeps state between calls")
    return CheckResult("determinism", "pass", "two eval forwards agree", {"max_diff": diff})


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


ALL = (shapes, causality, gradient_flow, numerics, initialisation, memory, speed, determinism)

# The check each one needs to have passed. Every check that runs the model needs logits
# [B, T, V] (shapes): on other logits it would only fail with the error cross-entropy or a
# reshape raises, or measure nothing. A check whose dependency failed is skipped.
DEPENDS_ON = {"causality": "shapes", "gradient_flow": "shapes", "numerics": "shapes", "memory": "shapes",
              "speed": "shapes", "determinism": "shapes", "precision_doctor": "shapes"}


def skipped(name: str, results: list[CheckResult]) -> CheckResult | None:
    """The "skip" result of check ``name`` when a check it depends on failed among ``results``, else None."""
    needed = DEPENDS_ON.get(name)
    if needed is None or not any(r.name == needed and r.status == "fail" for r in results):
        return None
    return CheckResult(name, "skip", f"skipped: depends on {needed}, which failed", {"depends_on": needed})
