import numpy as np
import torch

from tierlab.data import BlockSampler, blocks_at, eval_starts


def test_targets_are_inputs_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BlockSampler(tokens, 4, 16, seed=0).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))


def test_same_seed_same_batches_and_state_restores_the_stream():
    tokens = np.arange(5000, dtype=np.uint16)
    a, b = BlockSampler(tokens, 4, 8, seed=3), BlockSampler(tokens, 4, 8, seed=3)
    for _ in range(3):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    state = a.state_dict()
    expected = [a.next_batch()[0] for _ in range(5)]
    c = BlockSampler(tokens, 4, 8, seed=999)
    c.load_state_dict(state)
    assert all(torch.equal(e, c.next_batch()[0]) for e in expected)
    assert not torch.equal(BlockSampler(tokens, 4, 8, seed=4).next_batch()[0],
                           BlockSampler(tokens, 4, 8, seed=3).next_batch()[0])


def test_blocks_reach_the_last_token_but_never_beyond():
    tokens = np.arange(20, dtype=np.uint16)
    sampler = BlockSampler(tokens, 64, 19, seed=0)  # exactly one possible block
    x, y = sampler.next_batch()
    assert int(y.max()) == 19 and int(x.min()) == 0


def test_eval_blocks_are_fixed_and_cover_the_split():
    starts = eval_starts(1000, 10, 4, 3)
    assert len(starts) == 3 and all(len(s) == 4 for s in starts)
    flat = np.concatenate(starts)
    assert flat[0] == 0 and flat[-1] == 1000 - 11
    x, y = blocks_at(np.arange(1000, dtype=np.uint16), starts[-1], 10)
    assert int(y.max()) == 999


def test_ranks_take_disjoint_slices_of_the_single_process_global_batch():
    tokens = np.arange(5000, dtype=np.uint16)
    whole = BlockSampler(tokens, 6, 8, seed=5)
    ranks = [BlockSampler(tokens, 2, 8, seed=5, rank=r, world_size=3) for r in range(3)]
    for _ in range(4):
        expected = whole.next_block()
        parts = [s.next_block() for s in ranks]
        assert torch.equal(torch.cat(parts), expected)  # together: exactly the single process's batch
        assert not torch.equal(parts[0], parts[1])  # apart: different blocks on each rank
