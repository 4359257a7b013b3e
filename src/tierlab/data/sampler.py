"""Batches of random contiguous token blocks, from a seeded generator whose state can be saved."""

from __future__ import annotations

import numpy as np
import torch


class BlockSampler:
    """Draws ``batch_size`` blocks of ``seq_len + 1`` tokens at uniformly random offsets.

    Inputs are the first ``seq_len`` tokens of each block, targets the last ``seq_len``.
    The offsets come from a CPU ``torch.Generator``: drawing them never touches the
    accelerator, and ``state_dict()`` captures exactly where the stream of batches is.

    With several processes (``world_size`` > 1) every rank draws the offsets of the whole
    global batch, ``batch_size * world_size`` of them, from the same seed, and keeps its own
    slice: ranks see different blocks, and together exactly the blocks a single process
    with ``batch_size * world_size`` draws, so a multi-process run is the same run as that
    one (up to floating-point summation order).  Drawing a few hundred integers per step
    costs nothing next to the step.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill a block of {seq_len + 1}")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_block(self) -> torch.Tensor:
        """The next [B, T + 1] int64 block: inputs are ``[:, :-1]``, targets ``[:, 1:]``."""
        high = len(self.tokens) - self.seq_len  # exclusive bound for a block of seq_len + 1
        starts = torch.randint(0, high, (self.batch_size * self.world_size,), generator=self.generator).numpy()
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]  # this rank's slice
        return block_at(self.tokens, starts, self.seq_len)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.next_block())

    @staticmethod
    def split(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], targets [B, T]: the next tokens) of a [B, T + 1] block."""
        return block[:, :-1], block[:, 1:]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def block_at(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    """The int64 blocks [B, T + 1] of ``seq_len + 1`` tokens starting at ``starts``."""
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]  # [B, T + 1]
    return torch.from_numpy(tokens[index].astype(np.int64))


def blocks_at(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [B, T] and targets [B, T] (int64) for blocks starting at ``starts``."""
    block = block_at(tokens, starts, seq_len)
    return block[:, :-1], block[:, 1:]


def eval_starts(n_tokens: int, seq_len: int, batch_size: int, batches: int) -> list[np.ndarray]:
    """Fixed, evenly spaced block offsets over the validation split.

    The same blocks at every evaluation make val loss comparable across steps, and drawing
    them consumes nothing from the training sampler's random stream.
    """
    high = n_tokens - seq_len - 1
    count = batch_size * batches
    starts = np.linspace(0, max(high, 0), num=count).astype(np.int64)
    return [starts[i * batch_size:(i + 1) * batch_size] for i in range(batches)]


class RowSampler:
    """Batches of labelled rows (``--objective classify``), each row once per epoch, in a seeded order.

    ``rows`` is [N, T + 1]: T token ids, then the class id.  Epoch ``e`` visits the rows in
    the permutation drawn from ``seed`` and ``e``, so where the stream stands is two numbers
    (epoch, position) and a resume continues it exactly.  As :class:`BlockSampler`, every
    rank walks the global batch of ``batch_size * world_size`` rows and keeps its own slice;
    a batch that runs past the end of an epoch continues with the next epoch's first rows.
    """

    def __init__(self, rows: np.ndarray, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if len(rows) == 0:
            raise ValueError("no rows to sample")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(len(self.rows), generator=generator).numpy()
        return self._order

    def next_block(self) -> torch.Tensor:
        """The next [B, T + 1] int64 block: inputs are ``[:, :-1]``, class ids ``[:, -1]``."""
        picked, needed = [], self.batch_size * self.world_size
        while needed:  # whole runs of the epoch's order (a batch may span the end of an epoch, or several)
            take = min(needed, len(self.rows) - self.position)
            picked.append(self._epoch_order()[self.position:self.position + take])
            self.position, needed = self.position + take, needed - take
            if self.position == len(self.rows):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        mine = np.concatenate(picked)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return torch.from_numpy(self.rows[mine].astype(np.int64))

    @staticmethod
    def split(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], class ids [B]) of a [B, T + 1] block."""
        return block[:, :-1], block[:, -1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
