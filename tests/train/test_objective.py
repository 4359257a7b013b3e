"""--objective mlm: BERT's masking, scored on the masked positions only, resumed exactly, sampled by filling masks."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tierlab
from helpers import assert_same_run, assert_user_error, fast_config, run_cli
from tierlab.errors import ConfigError, ModelError
from tierlab.train.distributed import SINGLE
from tierlab.train.evaluate import validation_figures
from tierlab.train.objective import IGNORE, MaskedLM
from tierlab.train.precision import PrecisionDecision, PrecisionPolicy

GRAPH = Path(__file__).parent.parent / "assets" / "builder" / "graph"  # a bidirectional Builder export


def test_the_masking_is_berts_recipe_and_a_function_of_its_stream():
    masking = MaskedLM(vocab=256, seed=7)
    tokens = torch.randint(0, 256, (512, 40), generator=torch.Generator().manual_seed(0))
    inputs, labels = masking.mask(tokens, stream=3)
    chosen = labels != IGNORE
    assert (chosen.sum(1) == 6).all()  # 15% of 40, in every sequence
    assert torch.equal(labels[chosen], tokens[chosen]) and torch.equal(inputs[~chosen], tokens[~chosen])
    masked = (inputs[chosen] == 256).float().mean().item()
    kept = (inputs[chosen] == tokens[chosen]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13  # 80% mask token, 10% kept (10% random: some equal by chance)
    again, _ = masking.mask(tokens, stream=3)
    other, _ = masking.mask(tokens, stream=4)
    assert torch.equal(again, inputs) and not torch.equal(other, inputs)


class CopyInput(nn.Module):
    """Predicts each position's own input token: right on every unmasked position, never on a masked one."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.scale = vocab, nn.Parameter(torch.tensor(10.0))

    def forward(self, ids):
        return nn.functional.one_hot(ids.clamp(max=self.vocab - 1), self.vocab).float() * self.scale


def test_validation_scores_the_masked_positions_only():
    val = np.random.default_rng(0).integers(0, 200, 4000).astype(np.uint16)
    policy = PrecisionPolicy(PrecisionDecision("fp32", "fp32", "test"), torch.device("cpu"))
    starts = [np.arange(0, 3000, 300)[:8]]
    _, accuracy = validation_figures(CopyInput(257), val, starts, 32, policy, SINGLE, MaskedLM(256, seed=0))
    # Copying is right only where the token was kept (10%, plus a random replacement that hit it): scored on every
    # position it would be ~87% right.
    assert accuracy < 0.25
    _, next_token = validation_figures(CopyInput(257), val, starts, 32, policy, SINGLE)
    assert next_token < 0.05  # the next token is not the current one


def test_an_mlm_run_records_its_mask_token_and_learns(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, model=str(GRAPH), model_args={}, objective="mlm", max_steps=20,
                                           log_every=5, eval_every=10))
    start = run.events("run_start")[0]
    assert start["objective"] == "mlm" and start["mask_token_id"] == 256
    assert json.loads((run.dir / "config.json").read_text())["objective"] == "mlm"
    losses = [r["loss"] for r in run.metrics("train")]
    assert losses[-1] < losses[0]
    assert all(0 <= r["val_acc"] <= 1 for r in run.metrics("eval"))
    titles = [ax.get_title() for ax in run.plot().axes]  # the dashboard says what was scored
    assert "validation masked-token accuracy" in titles and "loss (masked-token positions)" in titles
    analysed = tierlab.analyze(run=run.dir, batches=1)  # no next-token loss for a masked LM
    assert analysed.robustness and all(p.loss is None for p in analysed.robustness)


def test_mlm_resume_from_a_mid_run_checkpoint_is_exact(tmp_path):
    args = ("--model", GRAPH, "--objective", "mlm", "--data", "demo", "--precision", "fp32", "--batch-size", "8",
            "--seq-len", "32", "--max-steps", "20", "--log-every", "5", "--eval-every", "10", "--eval-batches", "2",
            "--ckpt-every", "10", "--no-plots", "--quiet")
    full = run_cli("train", *args, "--name", "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    part_dir = tmp_path / "runs" / "part"
    interrupted = run_cli("train", *args, "--name", "part", cwd=tmp_path)
    assert interrupted.returncode == 0, interrupted.stderr
    # Back to the step-10 checkpoint as if the process had died after it: records cut there, weights from it.
    resumed = run_cli("train", "--resume", part_dir / "checkpoints" / "step-00000010.pt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(tmp_path / "runs" / "full", part_dir)


def test_mlm_sample_fills_the_masks_and_options_that_contradict_are_refused(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, model=str(GRAPH), model_args={}, objective="mlm", max_steps=5,
                                           eval_every=0))
    filled = run_cli("sample", run.dir, "--prompt", "The [MASK]at sat.", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    text = filled.stdout.strip()
    assert text.startswith("The ") and text.endswith("at sat.") and "[MASK]" not in text and len(text) == 12
    assert_user_error(run_cli("sample", run.dir, "--prompt", "no mask here", cwd=tmp_path), "holds no [MASK]")
    assert_user_error(run_cli("sample", run.dir, "--prompt", "[MASK]" * 100, cwd=tmp_path),
                      "The prompt is 100 tokens", "more than the model's 64 positions")
    with pytest.raises(ConfigError, match="contradict each other"):
        fast_config(tmp_path, objective="mlm", causal_mask=True)
    with pytest.raises(ConfigError, match="--objective 'bert' is not an objective"):
        fast_config(tmp_path, objective="bert")


def test_a_model_without_a_row_for_the_mask_token_is_told_how_to_make_one(tmp_path):
    no_args = GRAPH.parent / "no_args"  # its embedding is fixed at 256 rows, the byte tokenizer's size
    with pytest.raises(ModelError, match="failed on the mask token, id 256"):
        tierlab.train(config=fast_config(tmp_path, model=str(no_args), model_args={}, objective="mlm"))


def test_validate_checks_a_masked_lm_reads_both_sides(tmp_path):
    both = run_cli("validate", "--model", GRAPH, "--objective", "mlm", "--no-doctor", cwd=tmp_path)
    assert both.returncode == 0 and "a masked position reads the tokens on both sides" in both.stdout
    causal = run_cli("validate", "--model", "tiny-gpt", "--objective", "mlm", "--no-doctor", cwd=tmp_path)
    assert causal.returncode == 0 and "reads only the tokens before it" in causal.stdout  # a warning, not a failure
