"""How much the model's next-token predictions move when some input tokens are replaced at random.

For each k, every sequence gets k of its positions replaced by random token ids, and the
next-token distribution at every position is compared with the unperturbed one:
KL(p_clean || p_perturbed) in nats, and the share of positions whose most likely token
changed ("top-1 flip rate").  The perturbations are nested (the positions and tokens
used for k are the first k of one random draw per sequence), so the curve over k
compares like with like.  With the targets of real data, the loss under the same
perturbations says how much the model relies on each token being right.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import eval_mode, extract_logits


@dataclass
class RobustnessPoint:
    k: int  # tokens replaced per sequence
    kl: float  # mean KL(p_clean || p_perturbed) over positions (nats)
    flip_rate: float  # share of positions whose top-1 prediction changed
    loss: float | None  # cross-entropy against the real next tokens (None without targets)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_ks(seq_len: int) -> list[int]:
    """0, 1, 2, 4, ... up to half the sequence."""
    ks, k = [0], 1
    while k <= seq_len // 2:
        ks.append(k)
        k *= 2
    return ks


@torch.no_grad()
def robustness_curve(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor | None]], vocab_size: int,
                     ks: list[int], seed: int = 0, pad_id: int | None = None) -> list[RobustnessPoint]:
    """The curve over ``ks`` for ``batches`` of (inputs [B, T], targets [B, T] or None).

    With ``pad_id`` (a classifier's right-padded rows) only text positions are replaced: a row
    with fewer than k text tokens has all of them replaced, never its padding.
    """
    generator = torch.Generator().manual_seed(seed)
    sums = {k: [0.0, 0.0, 0.0, 0] for k in ks}  # kl, flips, loss, positions
    with eval_mode(model):
        for inputs, targets in batches:
            b, t = inputs.shape
            device = inputs.device
            # One random order of positions and one random replacement per position, per row;
            # padding sorts after every text position and is replaced by itself.
            draw = torch.rand(b, t, generator=generator)
            replacement = torch.randint(0, vocab_size, (b, t), generator=generator).to(device)
            if pad_id is not None:
                padding = (inputs == pad_id).cpu()
                draw = draw.masked_fill(padding, 2.0)
                replacement = torch.where(padding.to(device), inputs, replacement)
            order = torch.argsort(draw, dim=1).to(device)
            clean = extract_logits(model(inputs)).float()
            log_p = F.log_softmax(clean, -1)
            top = clean.argmax(-1)
            for k in ks:
                perturbed = inputs.clone()
                if k:
                    positions = order[:, :k]
                    perturbed.scatter_(1, positions, replacement.gather(1, positions))
                logits = extract_logits(model(perturbed)).float() if k else clean
                log_q = F.log_softmax(logits, -1)
                kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [B, T]
                entry = sums[k]
                entry[0] += float(kl.sum())
                entry[1] += float((logits.argmax(-1) != top).sum())
                if targets is not None:
                    entry[2] += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                      reduction="sum"))
                entry[3] += kl.numel()  # positions ([B, T] logits), or rows (a classifier's [B, C])
    has_targets = all(targets is not None for _, targets in batches)
    return [RobustnessPoint(k, s[0] / s[3], s[1] / s[3], s[2] / s[3] if has_targets else None)
            for k, s in sums.items()]
