"""tierlab compare: baselines sized to the model, seed statistics, and a real comparison that resumes."""

import json

import pytest
from helpers import TINY_MODEL, assert_user_error, run_cli, write_model

from tierlab.compare.sizing import TOLERANCE, count_parameters, size_baseline
from tierlab.compare.stats import verdict
from tierlab.errors import ConfigError
from tierlab.models import load_model

# Three differently shaped user models: deep and narrow, wide and shallow, and one whose MLP is not 4x.
SHAPED = """
    import torch
    from torch import nn

    class Shaped(nn.Module):
        def __init__(self, vocab_size, n_layer=2, d_model=64, mlp=4, max_len=64):
            super().__init__()
            self.n_layer = n_layer
            self.emb, self.pos = nn.Embedding(vocab_size, d_model), nn.Embedding(max_len, d_model)
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(d_model, 2, mlp * d_model, batch_first=True,
                                                                   dropout=0.0) for _ in range(n_layer))
            self.out = nn.Linear(d_model, vocab_size)

        def forward(self, ids):
            t = ids.size(1)
            mask = torch.triu(torch.full((t, t), float("-inf"), device=ids.device), 1)
            x = self.emb(ids) + self.pos(torch.arange(t, device=ids.device))
            for layer in self.layers:
                x = layer(x, src_mask=mask)
            return self.out(x)

    def build(vocab_size, n_layer=2, d_model=64, mlp=4):
        return Shaped(vocab_size, n_layer, d_model, mlp)
"""


@pytest.mark.parametrize("args", [dict(n_layer=8, d_model=48), dict(n_layer=1, d_model=256), dict(mlp=2)])
@pytest.mark.parametrize("baseline", ["gpt", "llama"])
def test_baselines_are_sized_within_ten_percent(tmp_path, args, baseline):
    path = write_model(tmp_path, SHAPED)
    user = load_model(f"{path}:build", args, 256)
    target = count_parameters(user, 256).non_embedding
    sized = size_baseline(baseline, target, 256, 64, depth=args.get("n_layer", 2))
    built = load_model(sized.model, sized.args, 256)
    assert abs(count_parameters(built, 256).non_embedding / target - 1) <= TOLERANCE  # counted on the real model
    assert sized.non_embedding == count_parameters(built, 256).non_embedding
    assert f"n_layer={sized.args['n_layer']}" in sized.describe()


def test_embeddings_and_the_head_are_not_counted_as_the_architecture():
    model = load_model("tiny-gpt", dict(TINY_MODEL), 256)  # tied head: counted once, as an embedding
    counts = count_parameters(model, 256)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.embedding == model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    with pytest.raises(ConfigError, match="No gpt baseline has within 10%"):
        size_baseline("gpt", 10, 256, 64)


def test_a_planted_difference_is_found_and_noise_is_a_tie():
    better = verdict([3.00, 3.01, 2.99], [3.20, 3.22, 3.18])
    assert better.better == "model" and better.difference == pytest.approx(-0.2) and "model is better" in better.text
    worse = verdict([3.20, 3.22, 3.18], [3.00, 3.01, 2.99])
    assert worse.better == "baseline"
    noisy = verdict([3.00, 3.30, 2.80], [3.05, 3.25, 2.90])
    assert noisy.better is None and noisy.text.startswith("a tie")
    same = verdict([3.1, 3.2, 3.0], [3.1, 3.2, 3.0])
    assert same.better is None and same.difference == 0
    one = verdict([3.0], [3.5])
    assert one.better is None and "one seed" in one.text


def test_two_identical_configs_are_a_tie_and_a_second_call_keeps_the_runs(tmp_path):
    model = write_model(tmp_path, SHAPED)
    common = ["--model", f"{model}:build", "--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--max-steps", "10",
              "--eval-every", "5", "--log-every", "5", "--eval-batches", "2", "--seq-len", "32", "--batch-size", "8",
              "--precision", "fp32", "--seeds", "2", "--name", "same"]
    result = run_cli("compare", *common, "--baseline", f"{model}:build", "--baseline-arg", "n_layer=1",
                     "--baseline-arg", "d_model=32", "--json", "c.json", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Verdict (val loss at equal tokens): a tie: both sides' val loss is" in result.stdout
    report = json.loads((tmp_path / "c.json").read_text())
    root = tmp_path / "runs" / "same"
    assert [r["run"] for r in report["model"]["runs"]] == ["model-seed1337", "model-seed1338"]
    assert report["metrics"]["val_loss"]["model"]["values"] == report["metrics"]["val_loss"]["baseline"]["values"]
    assert all((root / run / "summary.json").is_file() for run in ("model-seed1337", "baseline-seed1338"))
    assert (root / "compare.png").stat().st_size > 10_000 and "| val loss (equal tokens)" in (root / "compare.md").read_text()
    # tierlab report overlays the sides like any runs
    overlay = run_cli("report", root / "model-seed1337", root / "baseline-seed1337", "--out", tmp_path / "o.png",
                      cwd=tmp_path)
    assert overlay.returncode == 0, overlay.stderr
    again = run_cli("compare", *common, "--baseline", f"{model}:build", "--baseline-arg", "n_layer=1",
                    "--baseline-arg", "d_model=32", cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and again.stderr.count(": kept (completed") == 4, again.stderr
    other = [a if a != "10" else "12" for a in common]  # --max-steps 12: not the runs it has
    changed = run_cli("compare", *other, "--baseline", f"{model}:build", "--baseline-arg", "n_layer=1",
                      "--baseline-arg", "d_model=32", cwd=tmp_path)
    assert_user_error(changed, "was trained with other options than this comparison's", "max_steps", "--name")
    (root / "baseline-seed1338" / "summary.json").unlink()  # as if cut short after its last checkpoint
    resumed = run_cli("compare", *common, "--baseline", f"{model}:build", "--baseline-arg", "n_layer=1",
                      "--baseline-arg", "d_model=32", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr  # resumed (its warm-up, left to the default, as it resolved it)
    assert resumed.stderr.count(": kept (completed") == 3 and "baseline-seed1338: training" in resumed.stderr


def test_compare_mistakes_are_plain(tmp_path):
    assert_user_error(run_cli("compare", "--baseline", "mamba", "--max-steps", "5", cwd=tmp_path),
                      "--baseline 'mamba' is neither gpt, llama nor a model file")
    assert_user_error(run_cli("compare", "--baseline", "gpt", "--objective", "mlm", cwd=tmp_path),
                      "tierlab compare measures language models")
    assert_user_error(run_cli("compare", "--baseline", "gpt", "--early-stop", "3", cwd=tmp_path),
                      "does not take --early-stop", "equal tokens")
