"""``tierlab validate``: Tier 1 checks and the precision doctor."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..models import extract_logits, max_positions
from ..train import fp8
from ..train.device import cpu_native_bf16
from ..train.objective import Classification, missing_mask_row, missing_pad_row, model_vocab
from ..train.setup import build_or_adopt
from . import checks
from .checks import Probe
from .doctor import precision_doctor
from .report import CheckResult, Report

__all__ = ["CheckResult", "Report", "validate"]


def validate(model: nn.Module | str, *, model_args: dict[str, Any] | None = None, vocab_size: int = 256,
             batch_size: int = 4, seq_len: int = 64, max_len: int | None = None, device: str = "cpu",
             doctor: bool = True, seed: int = 0, precision: str = "fp32", causal_mask: bool = False,
             objective: str = "clm", classes: int = 2, pool: str = "mean", fp8_tokens: int = 16 * 1024) -> Report:
    """Run every check on ``model`` (a module, ``path.py[:factory]`` or an export's folder) and return the :class:`Report`.

    ``causal_mask``: check the model as ``tierlab train --causal-mask`` trains it.  ``objective``
    ``"mlm"``: as ``--objective mlm`` trains it (a mask token after the ``vocab_size`` tokens;
    the causality check becomes "a masked position reads both sides").  ``"classify"``: as
    ``--objective classify`` trains it with ``classes`` labels (a padding token after the
    ``vocab_size`` tokens; the output [B, C], or [B, T, C] pooled by ``pool``; no causality check).
    ``fp8_tokens``: the tokens per micro-batch (batch x sequence length) of the training run the
    doctor's fp8 plan is for (which linear layers ``--precision fp8`` would convert, and the gain).
    """
    cpu_native_bf16()  # a bad TIERLAB_CPU_NATIVE_BF16 is a user error now, not a failed check later
    if objective == "classify" and classes < 2:
        raise ConfigError(f"--num-classes {classes}: a classifier tells two classes or more apart.",
                          "pass --num-classes 2 or more (the number of labels your data has).")
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        torch.manual_seed(seed)
    mask_id = vocab_size if objective == "mlm" else None
    classify = Classification(vocab_size, pool, [str(i) for i in range(classes)]) if objective == "classify" else None
    model = build_or_adopt(model, name, model_args or {}, model_vocab(objective, vocab_size), causal_mask,
                           classes if classify is not None else None)
    dev = torch.device(device)
    model.to(dev)
    extra_id = mask_id if mask_id is not None else (vocab_size if classify is not None else None)
    if extra_id is not None:  # the mask or padding token needs an embedding row: said as train says it
        try:
            with torch.no_grad():
                model.eval()(torch.full((1, 2), extra_id, dtype=torch.long, device=dev))
        except IndexError as exc:
            missing = missing_mask_row if mask_id is not None else missing_pad_row
            raise missing(extra_id, f"IndexError: {exc}") from None
        except Exception:  # noqa: BLE001 - any other failure is the shapes check's to report
            pass
    max_len = max_len or max_positions(model)
    seq_len = min(seq_len, max_len) if max_len else seq_len
    no_forward = None  # the shapes result when not even a forward on [1, 2] runs
    try:
        model.eval()
        with torch.no_grad():
            out = extract_logits(model(torch.zeros(1, 2, dtype=torch.long, device=dev)))
        # The vocabulary is the logits' last dimension when they are laid out [B, T, V]; otherwise
        # (e.g. [B, V, T]) the given vocab_size, so the shapes check names the layout it expected.
        vocab = out.shape[-1] if out.dim() == 3 and out.shape[1] == 2 else vocab_size
        if classify is not None:  # the classes the model scores, in whichever layout; shapes checks the count
            vocab = classes
    except Exception as exc:  # noqa: BLE001 - the checks that run the model cannot: report it as shapes
        vocab = 0
        no_forward = CheckResult("shapes", "fail", f"forward on input_ids [1, 2] raised "
                                 f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", {},
                                 "make forward(input_ids) accept a LongTensor [B, T] and return logits")
    probe = Probe(model, vocab, batch_size, seq_len, max_len, dev, seed, precision, mask_id, classify,
                  vocab_size if classify is not None else None)
    results: list[CheckResult] = []
    recommendation = None
    for check in checks.ALL:
        if check is checks.shapes and no_forward is not None:
            results.append(no_forward)
        else:
            results.append(checks.skipped(check.__name__, results)
                           or _guarded(check.__name__, lambda check=check: check(probe)))
    if doctor:
        result = checks.skipped("precision_doctor", results)
        if result is None:
            try:
                result, recommendation = precision_doctor(probe)
            except Exception as exc:  # noqa: BLE001
                result = CheckResult("precision_doctor", "fail", f"raised {type(exc).__name__}: {exc}")
        results.append(result)
        results.append(_guarded("fp8", lambda: _fp8_plan(model, fp8_tokens)))
    return Report(name, results, recommendation)


def _fp8_plan(model: nn.Module, tokens: int) -> CheckResult:
    rows = fp8.plan(model, tokens)
    return CheckResult("fp8", "pass", fp8.doctor_summary(rows), {
        "tokens_per_micro_batch": tokens, "reference_gpu": fp8.REFERENCE, "layers": [r.as_dict() for r in rows],
        "converted": sum(r.convert for r in rows)})


def _guarded(name: str, run) -> CheckResult:
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - a check that crashes is a failed check, with the reason
        return CheckResult(name, "fail", f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
