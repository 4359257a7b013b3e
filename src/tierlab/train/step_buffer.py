"""The steps since the last log step, kept on the device: the loop writes them, the log step reads them once.

One row per optimizer step: loss, gradient norm, learning rate, loss scale, skipped flag,
then each trainable parameter's gradient norm (they name the layers that overflowed when a
step is skipped).  The loop writes straight into a row's cells (``out=`` views), so keeping
the records costs no host sync; :meth:`StepBuffer.take` hands the filled rows over at a log
step and :meth:`StepBuffer.state_dict` saves unread rows with a checkpoint, so a resumed run
writes exactly the records an uninterrupted one writes.
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

import torch

from .distributed import Dist

# Columns of a row; each parameter's gradient norm follows them, from NORMS on.
LOSS, GRAD_NORM, LR, SCALE, SKIPPED = range(5)
NORMS = 5


class Row(NamedTuple):
    """Views of one row's cells, made once (indexing a tensor costs host time at every use)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: torch.Tensor
    scale: torch.Tensor
    skipped: torch.Tensor
    norms: torch.Tensor

    @classmethod
    def of(cls, row: torch.Tensor) -> Row:
        return cls(row[LOSS], row[GRAD_NORM], row[LR], row[SCALE], row[SKIPPED], row[NORMS:])


class Step(NamedTuple):
    """One step's figures, read back to the host."""

    loss: float
    grad_norm: float
    lr: float
    scale: float  # 0 without a GradScaler
    skipped: float  # 1.0 when the update was dropped


class StepBuffer:
    def __init__(self, capacity: int, n_params: int, device: torch.device):
        self.rows = torch.zeros(capacity, NORMS + n_params, dtype=torch.float32, device=device)
        self._views = [Row.of(row) for row in self.rows]
        self.filled = 0
        self.restored = 0  # rows loaded from a checkpoint: they ran in another process, so are not timed

    def next_row(self) -> Row:
        """The row of the step about to run (written in place by the loop)."""
        row = self._views[self.filled]
        self.filled += 1
        return row

    def take(self) -> torch.Tensor:
        """The filled rows' first columns [n, 5], still on the device; empties the buffer."""
        rows = self.rows[: self.filled, :NORMS].clone()
        self.filled = 0
        return rows

    def bad_params(self, row: int, names: list[str]) -> list[str]:
        """The parameters whose gradient norm was not finite in ``row`` (a skipped step)."""
        norms = self.rows[row, NORMS:].tolist()  # host sync, only in a window that had a skipped step
        return [name for name, n in zip(names, norms) if not math.isfinite(n)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        # Steps since the last log step, not yet read: their record is written after a resume.
        return {"rows": self.rows[: self.filled].detach().cpu()}

    def load_state_dict(self, window: dict[str, torch.Tensor]) -> None:
        rows = window["rows"]
        self.filled = self.restored = len(rows)
        self.rows[: self.filled, : rows.shape[1]] = rows.to(self.rows.device)
        if "first_bad_norms" in window:  # older checkpoints kept the skipped step's norms apart from the rows
            self.rows[: self.filled, NORMS:] = window["first_bad_norms"].to(self.rows.device)


def read(rows: torch.Tensor) -> list[Step]:
    """Rows taken from a :class:`StepBuffer`, as host figures (a host sync)."""
    return [Step(*r) for r in rows.tolist()]


def read_all_ranks(rows: torch.Tensor, dist: Dist, last_step: int) -> list[Step]:
    """Every rank's rows as one list of steps, the loss averaged over the ranks (a collective).

    Gradients are all-reduced, so the gradient norm, the skip decision and the loss scale are
    the same on every rank by construction; they are checked anyway, because replicas that
    drifted apart would otherwise train on silently.
    """
    if not dist.active:
        return read(rows)
    every = dist.gather(rows).tolist()  # [world, n, 5]
    merged = []
    for i, row in enumerate(every[0]):
        column = [rank_rows[i] for rank_rows in every]
        if any(r[SKIPPED] != row[SKIPPED] or r[SCALE] != row[SCALE] for r in column):
            raise RuntimeError(f"The ranks disagree at step {last_step - len(every[0]) + i + 1}: skipped "
                               f"{[r[SKIPPED] for r in column]}, loss scale {[r[SCALE] for r in column]}. The "
                               "model replicas are no longer identical (a non-deterministic gradient hook?).")
        merged.append(Step(statistics.fmean(r[LOSS] for r in column), *row[1:]))
    return merged
