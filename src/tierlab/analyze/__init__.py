"""``tierlab analyze``: Tier 2 for a fresh or trained model — attention patterns and robustness to token noise.

Inputs are real: blocks of the validation split of a run's own data (``run=``), or of
``data`` (the built-in demo corpus by default) for a model that has not been trained.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError, ModelError, UserError
from ..models import extract_logits, max_positions
from ..train.setup import build_or_adopt, check_logits
from .attention import COLLAPSE_SHARE, NEAR_ZERO_ENTROPY, AttentionReport, HeadStats, observe_attention
from .robustness import RobustnessPoint, default_ks, robustness_curve

__all__ = ["AnalysisReport", "AttentionReport", "HeadStats", "RobustnessPoint", "analyze", "observe_attention",
           "robustness_curve"]

log = logging.getLogger(__name__)


@dataclass
class AnalysisReport:
    model: str
    run: str | None
    data: str
    shape: list[int]  # [batch, tokens] of each analysed batch
    batches: int
    attention: AttentionReport
    robustness: list[RobustnessPoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "run": self.run, "data": self.data, "shape": self.shape,
                "batches": self.batches, "attention": self.attention.to_dict(),
                "robustness": [p.to_dict() for p in self.robustness]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def text(self) -> str:
        a = self.attention
        lines = [f"tierlab analyze: {self.model}" + (f" (run {self.run})" if self.run else " (untrained)"),
                 f"inputs: {self.batches} batch(es) of {self.shape} from {self.data}", "", "attention"]
        if not a.observable:
            lines.append(f"  not observable: {a.source}")
        else:
            lines.append(f"  observed through {a.source}; {len({h.layer for h in a.heads})} layer(s), "
                         f"{len(a.heads)} head(s), {'causal' if a.causal else 'not causal'}")
            lines.append("  head     entropy  norm   prev   first  diag   pattern")
            for h in a.heads:
                flag = "  COLLAPSED" if h.collapsed else ""
                lines.append(f"  L{h.layer:<2}H{h.head:<3} {h.entropy:7.3f}  {h.normalized_entropy:5.2f}  "
                             f"{h.previous_token:5.2f}  {h.first_token:5.2f}  {h.diagonal:5.2f}  {h.pattern}{flag}")
            if a.collapsed:
                names = ", ".join(f"L{h.layer}H{h.head} ({h.pattern})" for h in a.collapsed)
                lines.append(f"  collapsed heads: {names} — entropy below {NEAR_ZERO_ENTROPY} nats on at least "
                             f"{COLLAPSE_SHARE:.0%} of rows: each row puts nearly all weight on one token")
            else:
                lines.append("  no collapsed heads")
        if self.robustness:
            lines += ["", "robustness to random token replacement (per sequence)",
                      "  k      KL (nats)  top-1 flips  loss"]
            for p in self.robustness:
                loss = f"{p.loss:.4f}" if p.loss is not None else "-"
                lines.append(f"  {p.k:<5}  {p.kl:9.4f}  {p.flip_rate:10.1%}  {loss}")
        return "\n".join(lines)

    def save_heatmaps(self, path: str | Path, max_tokens: int = 64) -> Path | None:
        """Mean attention map of every head (rows: queries, columns: keys) as one PNG; None when unobservable."""
        if not self.attention.observable or not self.attention.maps:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        maps = self.attention.maps
        layers, heads = len(maps), max(m.size(0) for m in maps)
        from matplotlib.colors import PowerNorm

        fig, axes = plt.subplots(layers, heads, figsize=(max(6.0, 1.9 * heads + 0.5), 1.9 * layers + 0.8), squeeze=False,
                                 layout="constrained")
        stats = {(h.layer, h.head): h for h in self.attention.heads}
        for layer, m in enumerate(maps):
            for head in range(heads):
                ax = axes[layer][head]
                ax.set_xticks([])
                ax.set_yticks([])
                if head >= m.size(0):
                    ax.axis("off")
                    continue
                # A square-root colour scale: spread-out weights (1/t each) stay visible next to sharp ones.
                ax.imshow(m[head, :max_tokens, :max_tokens].numpy(), cmap="viridis",
                          norm=PowerNorm(gamma=0.5, vmin=0, vmax=1))
                s = stats[(layer, head)]
                ax.set_title(f"L{layer}H{head} {s.pattern}", fontsize=7, color="red" if s.collapsed else "black")
        fig.suptitle(f"attention (rows: queries, first {max_tokens} tokens, batch mean,\n"
                     "square-root colour scale; red: collapsed)", fontsize=9)
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def analyze(model_or_path: nn.Module | str | None = None, run: str | Path | None = None, *,
            model_args: dict[str, Any] | None = None, data: str = "demo", tokenizer: str = "byte",
            text_field: str = "text", batch_size: int = 8, seq_len: int | None = None, batches: int = 2, ks: list[int] | None = None,
            seed: int = 0, device: str = "cpu", cache_dir: str | Path | None = None,
            causal_mask: bool = False) -> AnalysisReport:
    """Attention statistics and the robustness curve of a model (a module, a model file, or a run's model)."""
    from ..data import eval_starts, prepare_data
    from ..data.sampler import blocks_at

    for name, value in (("--batch-size", batch_size), ("--batches", batches)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}.", f"pass a positive {name}.")
    torch.manual_seed(seed)
    val_fraction, name, objective = 0.1, None, "clm"
    if run is not None:
        from ..run_reader import run_model

        model, _, config = run_model(Path(run), model_or_path, model_args)
        data, tokenizer, val_fraction = config["data"], config["tokenizer"], config["val_fraction"]
        text_field = config.get("text_field", "text")
        seq_len = seq_len or int(config["seq_len"])
        objective = config.get("objective") or "clm"
        name = model_or_path if isinstance(model_or_path, str) else str(config["model"])
    if objective == "classify":  # held-out labelled rows; the curve's loss is the label's, its KL per row
        return _analyze_classifier(model, Path(run), config, name, batch_size, batches, ks, seed, device, cache_dir)
    tokens = prepare_data(data, tokenizer, val_fraction, Path(cache_dir) if cache_dir else None, text_field)
    if run is None:
        name = (f"<in-memory {type(model_or_path).__name__}>" if isinstance(model_or_path, nn.Module)
                else model_or_path or "tiny-gpt")
        model = build_or_adopt(model_or_path, "tiny-gpt", dict(model_args or {}), tokens.tokenizer.vocab_size,
                               causal_mask)
    limit = max_positions(model)
    seq_len = seq_len or min(128, limit or 128)
    if limit is not None and seq_len > limit:
        raise ModelError(f"--seq-len {seq_len} is longer than the model's {limit} positions.",
                         f"use --seq-len {limit} or less.")
    if len(tokens.val) < seq_len + 1:
        raise DataError(f"The validation split has {len(tokens.val)} tokens, fewer than one block of {seq_len + 1}.",
                        "use a larger corpus or a smaller --seq-len.")
    target = torch.device(device)
    model = model.to(target)
    pairs = [tuple(t.to(target) for t in blocks_at(tokens.val, starts, seq_len))
             for starts in eval_starts(len(tokens.val), seq_len, batch_size, batches)]
    if objective == "mlm":  # a masked LM predicts no next token: the curve's loss column would mean nothing
        pairs = [(inputs, None) for inputs, _ in pairs]
    vocab = _check_vocab(model, pairs[0][0], tokens)
    attention = observe_attention(model, pairs[0][0])
    curve = robustness_curve(model, pairs, vocab, ks if ks is not None else default_ks(seq_len), seed)
    report = AnalysisReport(name, str(run) if run is not None else None, data, list(pairs[0][0].shape), len(pairs),
                            attention, curve)
    log.info("%s", report.text())
    return report


class _Pooled(nn.Module):
    """A classifier as [B, C] scores whatever it returns ([B, T, C] pooled as the run trained it)."""

    def __init__(self, model: nn.Module, classify):
        super().__init__()
        self.model, self.classify = model, classify

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.classify.pooled(extract_logits(self.model(input_ids)).float(), input_ids)


def _analyze_classifier(model: nn.Module, run: Path, config: dict[str, Any], name: str | None, batch_size: int,
                        batches: int, ks: list[int] | None, seed: int, device: str,
                        cache_dir: str | Path | None) -> AnalysisReport:
    """analyze RUN for ``--objective classify``: attention over held-out rows, robustness of the predicted label."""
    from ..data import default_cache_dir, prepare_rows
    from ..run_reader import run_labels
    from ..train.objective import Classification

    seq_len = int(config["seq_len"])
    rows = prepare_rows(config["data"], config["tokenizer"], config["val_fraction"], seq_len,
                        Path(cache_dir) if cache_dir else default_cache_dir(), config.get("text_field", "text"),
                        config.get("label_field", "label"))
    if not len(rows.val):
        raise DataError("The run holds out no rows to analyze on.", "analyze a run trained with --val-fraction > 0.")
    labels = run_labels(run, config)["labels"]
    classify = Classification(rows.pad_id, config.get("pool") or "mean", labels)
    target = torch.device(device)
    model = model.to(target)
    pairs = [classify.split(torch.from_numpy(rows.val[start:start + batch_size].astype("int64")).to(target))
             for start in range(0, min(len(rows.val), batch_size * batches), batch_size)]
    # Text positions only: what padding attends to, or a pad byte replaced, says nothing of the classifier.
    attention = observe_attention(model, pairs[0][0], queries=pairs[0][0] != rows.pad_id)
    curve = robustness_curve(_Pooled(model, classify), pairs, rows.tokenizer.vocab_size,
                             ks if ks is not None else default_ks(seq_len), seed, pad_id=rows.pad_id)
    report = AnalysisReport(name or str(config["model"]), str(run), config["data"], list(pairs[0][0].shape),
                            len(pairs), attention, curve)
    log.info("%s", report.text())
    return report


def _check_vocab(model: nn.Module, ids: torch.Tensor, tokens) -> int:
    with torch.no_grad():
        logits = extract_logits(model.eval()(ids[:1]))
    return check_logits(logits, ids[:1].shape, tokens, model)
