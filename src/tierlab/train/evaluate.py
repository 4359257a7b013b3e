"""Validation: loss and accuracy over fixed blocks of the held-out split (or, for classify, its rows: also macro-F1)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import blocks_at
from ..models import extract_logits
from .distributed import Dist
from .objective import CONFUSION_CLASSES, Classification, MaskedLM, macro_f1, macro_f1_of_counts
from .precision import PrecisionPolicy


@torch.no_grad()
def validation_figures(model: nn.Module, val: np.ndarray, starts_per_batch: list, seq_len: int,
                       policy: PrecisionPolicy, dist: Dist, objective: MaskedLM | None = None) -> tuple[float, float]:
    """(mean loss per token, accuracy) over the blocks at ``starts_per_batch``, summed over all ranks.

    The tokens scored are the next tokens, or with ``objective`` (``--objective mlm``) the
    masked positions of each block, masked the same way at every evaluation.

    Each rank scores its own slice of each global batch; the sums are added up (one small
    all-reduce and one host read per evaluation), so the figures are those one process with
    the global batch computes.  The model is back in training mode on return.
    """
    device = policy.device
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0  # this rank's share of the blocks; the sums below add up all ranks'
    for index, starts in enumerate(starts_per_batch):
        x, y = blocks_at(val, starts, seq_len)
        x, y = x.to(device), y.to(device)
        scored = y.numel()
        if objective is not None:
            x, y = objective.mask(x, objective.eval_stream(index, dist.rank))
            scored = x.size(0) * objective.chosen_per_sequence(seq_len)  # known without reading the mask back
        with policy.autocast():
            logits = extract_logits(model(x)).float()
        loss_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
        correct += (logits.argmax(-1) == y).sum()  # (an unscored label, -100, never equals an argmax)
        count += scored
    model.train()
    totals = torch.stack([loss_sum, correct.to(torch.float64),
                          torch.tensor(float(count), dtype=torch.float64, device=device)])
    loss_total, correct_total, count_total = dist.sum_(totals).tolist()  # host sync: evaluations only
    return loss_total / count_total, correct_total / count_total


def eval_rows(n_rows: int, batch_size: int, batches: int, rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's row indices of each global batch of held-out rows (``--objective classify``).

    The first ``batches`` global batches of the held-out rows (all of them when fewer):
    the same rows at every evaluation, already in a random order (see :mod:`tierlab.data.rows`).
    """
    width = batch_size * world_size
    count = min(n_rows, width * batches)
    return [np.arange(start, min(start + width, count))[rank * batch_size:(rank + 1) * batch_size]
            for start in range(0, count, width)]


@torch.no_grad()
def classification_figures(model: nn.Module, val: np.ndarray, rows_per_batch: list[np.ndarray],
                           policy: PrecisionPolicy, dist: Dist, classify: Classification) -> dict:
    """val_loss, val_acc, val_f1 (macro) and the confusion matrix over the rows at ``rows_per_batch``, all ranks'."""
    device, classes = policy.device, classify.classes
    dense = classes <= CONFUSION_CLASSES  # else per-class counts only: right, true, predicted (3 * C numbers)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(classes * classes if dense else 3 * classes, dtype=torch.float64, device=device)
    for rows in rows_per_batch:
        if not len(rows):
            continue  # (the last global batch may not reach this rank)
        x, y = classify.split(torch.from_numpy(val[rows].astype(np.int64)).to(device))
        with policy.autocast():
            scores = classify.pooled(extract_logits(model(x)).float(), x)
        loss_sum += F.cross_entropy(scores, y, reduction="sum")
        predicted, one = scores.argmax(-1), torch.ones_like(y, dtype=torch.float64)
        if dense:
            counts.index_add_(0, y * classes + predicted, one)  # true * C + predicted
        else:
            counts.index_add_(0, y, (predicted == y).to(torch.float64))
            counts.index_add_(0, classes + y, one)
            counts.index_add_(0, 2 * classes + predicted, one)
    model.train()
    totals = dist.sum_(torch.cat([loss_sum.view(1), counts])).tolist()  # host sync: evaluations only
    figures = torch.tensor(totals[1:], dtype=torch.float64)
    if dense:
        matrix = figures.view(classes, classes)
        right, count, f1 = float(matrix.diag().sum()), float(matrix.sum()), macro_f1(matrix)
    else:
        true_positive, support, given = figures.view(3, classes)
        right, count, f1 = float(true_positive.sum()), float(support.sum()), macro_f1_of_counts(true_positive,
                                                                                                 support, given)
    record = {"val_loss": totals[0] / count, "val_acc": right / count, "val_f1": f1}
    if dense:
        record["confusion"] = matrix.to(torch.int64).tolist()
    return record
