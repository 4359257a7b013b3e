"""--batch-size auto and --global-batch-size: the largest micro-batch that fits, found on real steps, and the accumulation."""

import json

import pytest
from helpers import assert_user_error, fast_config, run_cli, write_model

import tierlab
from tierlab.config import TrainConfig
from tierlab.errors import ConfigError
from tierlab.train.batch_size import accumulate_to

# A model whose activations, past 12 sequences, ask the allocator for more than any machine
# has: the CPU allocator really refuses ("can't allocate memory"), as a GPU's would say OOM.
ROOMY_UP_TO_12 = """
    import torch
    from torch import nn

    class RoomyUpTo12(nn.Module):
        def __init__(self, vocab_size=256):
            super().__init__()
            self.emb, self.head = nn.Embedding(vocab_size, 32), nn.Linear(32, vocab_size)

        def forward(self, ids):
            if self.training and ids.size(0) > 12:
                torch.empty(ids.size(0) << 44, dtype=torch.uint8)  # ~ids.size(0) x 16 TiB
            return self.head(self.emb(ids))

    def build_model(vocab_size):
        return RoomyUpTo12(vocab_size)
"""


@pytest.mark.parametrize("global_batch, world, largest, want", [
    (48, 1, 12, (12, 4)), (48, 1, 64, (48, 1)), (48, 2, 12, (12, 2)), (48, 1, 10, (8, 6)), (7, 1, 3, (1, 7))])
def test_the_micro_batch_divides_the_global_batch_and_fits(global_batch, world, largest, want):
    micro, accum = accumulate_to(global_batch, world, largest)
    assert (micro, accum) == want and micro <= largest and micro * accum * world == global_batch


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused():
    with pytest.raises(ConfigError, match="does not split over 3 processes"):
        accumulate_to(16, 3, 4)


def test_options_that_contradict_are_refused():
    with pytest.raises(ConfigError, match="not a multiple of --batch-size 16"):
        TrainConfig(batch_size=16, global_batch_size=40)
    with pytest.raises(ConfigError, match="--batch-size must be a whole number or auto"):
        TrainConfig(batch_size="max")


def test_auto_finds_the_largest_that_fits_by_doubling_then_bisecting_and_reaches_the_global_batch(tmp_path):
    model = write_model(tmp_path, ROOMY_UP_TO_12)
    cfg = fast_config(tmp_path, model=str(model), model_args={}, batch_size="auto", global_batch_size=48,
                      max_steps=4, ckpt_every=2, eval_every=0)
    run = tierlab.train(config=cfg)
    (event,) = run.events("batch_size")
    assert [p["batch"] for p in event["probes"]] == [1, 2, 4, 8, 16, 12, 14, 13]
    assert [p["fits"] for p in event["probes"]] == [True] * 4 + [False, True, False, False]
    assert event["largest_fitting"] == 12 and (event["batch_size"], event["grad_accum"]) == (12, 4)
    recorded = json.loads((run.dir / "config.json").read_text())
    assert (recorded["batch_size"], recorded["grad_accum"], recorded["global_batch_size"]) == (12, 4, 48)
    assert run.summary["global_batch_size"] == 48
    assert all(r["tokens"] == r["step"] * 48 * 32 for r in run.metrics("train"))
    # The probes trained nothing: the run equals one started with the batch it found.
    fixed = tierlab.train(config=cfg.replace(name="fixed", batch_size=12, global_batch_size=None, grad_accum=4))
    assert [r["loss"] for r in run.metrics("train")] == [r["loss"] for r in fixed.metrics("train")]


def test_a_resume_keeps_what_the_run_found_without_searching(tmp_path):
    model = write_model(tmp_path, ROOMY_UP_TO_12)
    cfg = fast_config(tmp_path, model=str(model), model_args={}, batch_size="auto", global_batch_size=24,
                      max_steps=2, ckpt_every=2, eval_every=0)
    run = tierlab.train(config=cfg)
    tierlab.train(config=cfg.replace(resume=str(run.dir), max_steps=4, allow_config_change=True))
    found = run.events("batch_size")
    assert len(found) == 2 and "probes" in found[0] and "probes" not in found[1]  # searched once
    assert (found[1]["batch_size"], found[1]["grad_accum"]) == (12, 2)
    assert run.summary["steps"] == 4


def test_not_even_one_sequence_fitting_is_a_plain_error_and_writes_nothing(tmp_path):
    model = write_model(tmp_path, ROOMY_UP_TO_12.replace("ids.size(0) > 12", "ids.size(0) > 0"))
    cfg = fast_config(tmp_path, model=str(model), model_args={}, batch_size="auto", name="n")
    with pytest.raises(ConfigError, match="Not even one sequence of --seq-len 32 fits.*smaller --seq-len"):
        tierlab.train(config=cfg)
    assert not (tmp_path / "runs" / "n").exists()


def test_the_cli_takes_auto_and_a_word_it_does_not_know_is_one_plain_error(tmp_path):
    assert_user_error(run_cli("train", "--batch-size", "max", cwd=tmp_path),
                      "--batch-size must be a whole number or auto, got 'max'")
