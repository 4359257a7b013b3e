"""The device buffer of step rows (tierlab.train.step_buffer): written in place, read once, saved with checkpoints."""

import math

import torch

from tierlab.train.distributed import SINGLE
from tierlab.train.step_buffer import NORMS, StepBuffer, read, read_all_ranks


def _fill(buffer, n):
    for i in range(n):
        row = buffer.next_row()
        row.loss.fill_(float(i))
        row.skipped.fill_(1.0 if i == 1 else 0.0)
        row.norms.copy_(torch.tensor([1.0, math.inf if i == 1 else 2.0]))


def test_rows_are_written_through_views_and_taken_once():
    buffer = StepBuffer(4, n_params=2, device=torch.device("cpu"))
    _fill(buffer, 3)
    assert buffer.filled == 3
    steps = read(buffer.take())
    assert [s.loss for s in steps] == [0.0, 1.0, 2.0] and [s.skipped for s in steps] == [0.0, 1.0, 0.0]
    assert buffer.filled == 0 and read(buffer.take()) == []
    assert read_all_ranks(torch.zeros(0, NORMS), SINGLE, 0) == []


def test_the_parameters_that_overflowed_are_named():
    buffer = StepBuffer(4, n_params=2, device=torch.device("cpu"))
    _fill(buffer, 2)
    assert buffer.bad_params(1, ["w", "b"]) == ["b"] and buffer.bad_params(0, ["w", "b"]) == []


def test_unread_rows_survive_a_checkpoint_and_are_not_timed():
    first = StepBuffer(4, n_params=2, device=torch.device("cpu"))
    _fill(first, 2)
    state = first.state_dict()
    second = StepBuffer(4, n_params=2, device=torch.device("cpu"))
    second.load_state_dict(state)
    assert second.filled == second.restored == 2
    assert torch.equal(second.rows[:2], first.rows[:2])  # the per-parameter norms too
