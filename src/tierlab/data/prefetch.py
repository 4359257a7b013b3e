"""Batches that are already on the device when the step asks for them.

The sampler draws the next block (a NumPy gather from the memory-mapped tokens) right
after handing out the current one, so on CUDA that host work overlaps the GPU computing
the step the loop has just queued.  On CUDA the block is copied from pinned memory with a
non-blocking copy on a side stream: neither the gather nor the copy makes the GPU wait,
and the loop never waits for the copy either.

Because one batch is always drawn ahead, the sampler's position in a checkpoint is the
one from *before* that draw: a resumed run draws the same batch again.
"""

from __future__ import annotations

from typing import Any

import torch

from .sampler import BlockSampler, RowSampler


class DevicePrefetcher:
    """Hands out (inputs [B, T], targets: [B, T], or [B] class ids) on ``device``, drawing one batch ahead."""

    def __init__(self, sampler: BlockSampler | RowSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self._pending: torch.Tensor | None = None  # the next block, on the device (or in flight to it)
        self._position: Any = None  # sampler state from before the pending block was drawn

    def _draw(self) -> None:
        self._position = self.sampler.state_dict()
        block = self.sampler.next_block()  # [B, T + 1]
        if self.cuda:
            block = block.pin_memory()
            with torch.cuda.stream(self.stream):
                block = block.to(self.device, non_blocking=True)
        self._pending = block

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pending is None:
            self._draw()
        block = self._pending
        if self.cuda:
            # The step's kernels run on the current stream: make them wait for the copy (on
            # the device, not the host), and tell the allocator the block is used there.
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self.stream)
            block.record_stream(current)
        self._draw()
        return self.sampler.split(block)

    def state_dict(self) -> dict:
        """Where the stream of batches stands: the next batch handed out is drawn from here."""
        return self._position if self._pending is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._pending = self._position = None
