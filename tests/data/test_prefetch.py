"""The prefetcher hands out the sampler's batches in order and checkpoints where it really is."""

import numpy as np
import torch

from tierlab.data import BlockSampler, DevicePrefetcher


def _tokens():
    return np.arange(5000, dtype=np.uint16) % 251


def test_batches_are_the_samplers_in_order():
    plain = BlockSampler(_tokens(), 4, 16, seed=3)
    ahead = DevicePrefetcher(BlockSampler(_tokens(), 4, 16, seed=3), torch.device("cpu"))
    for _ in range(5):
        x1, y1 = plain.next_batch()
        x2, y2 = ahead.next_batch()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x2[:, 1:], y2[:, :-1])  # targets are the inputs shifted by one


def test_state_is_the_next_batch_not_the_prefetched_one():
    ahead = DevicePrefetcher(BlockSampler(_tokens(), 4, 16, seed=3), torch.device("cpu"))
    for _ in range(3):
        ahead.next_batch()
    state = ahead.state_dict()  # one batch has already been drawn ahead at this point
    expected = ahead.next_batch()

    resumed = DevicePrefetcher(BlockSampler(_tokens(), 4, 16, seed=99), torch.device("cpu"))
    resumed.load_state_dict(state)
    got = resumed.next_batch()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_fresh_prefetcher_state_is_the_samplers():
    sampler = BlockSampler(_tokens(), 4, 16, seed=3)
    ahead = DevicePrefetcher(sampler, torch.device("cpu"))
    assert torch.equal(ahead.state_dict()["generator"], sampler.state_dict()["generator"])
