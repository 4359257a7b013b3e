"""tierlab analyze: attention statistics on hand-set patterns, the collapse detector, robustness, the CLI."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import NARROW_MODEL, TINY_MODEL, assert_user_error, fast_config, run_cli, write_model
from torch import nn

import tierlab
from tierlab.analyze import analyze, observe_attention, robustness_curve
from tierlab.analyze.attention import head_stats
from tierlab.analyze.robustness import default_ks

T = 16


def previous_token_mask(t: int) -> torch.Tensor:
    """[T, T] bool: row i may attend only to key i-1 (row 0, which has no previous token, to itself)."""
    i = torch.arange(t)
    return i[None, :] == (i[:, None] - 1).clamp_min(0)


class PrevTokenSdpa(nn.Module):
    """Attention hand-set to always look at the previous token, through F.scaled_dot_product_attention."""

    def __init__(self, vocab=256, d=16, heads=2):
        super().__init__()
        self.emb, self.head, self.heads = nn.Embedding(vocab, d), nn.Linear(d, vocab), heads

    def forward(self, ids):
        b, t = ids.shape
        q = self.emb(ids).view(b, t, self.heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, q, q, attn_mask=previous_token_mask(t))
        return self.head(out.transpose(1, 2).reshape(b, t, -1))


class PrevTokenMha(nn.Module):
    """The same pattern through nn.MultiheadAttention (which the model asks for no weights)."""

    def __init__(self, vocab=256, d=16, heads=2):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, ids):
        x = self.emb(ids)
        blocked = torch.zeros(ids.size(1), ids.size(1)).masked_fill(~previous_token_mask(ids.size(1)), float("-inf"))
        out, _ = self.attn(x, x, x, attn_mask=blocked, need_weights=False)
        return self.head(out)


class NoAttention(nn.Module):
    def __init__(self, vocab=256):
        super().__init__()
        self.emb, self.head = nn.Embedding(vocab, 8), nn.Linear(8, vocab)

    def forward(self, ids):
        return self.head(self.emb(ids))


class CumulativeMean(nn.Module):
    """Toy causal model: position t predicts from the mean embedding of tokens 0..t."""

    def __init__(self, vocab=64, d=16):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(vocab, d), nn.Linear(d, vocab)

    def forward(self, ids):
        x = self.emb(ids).cumsum(1) / torch.arange(1, ids.size(1) + 1).view(1, -1, 1)
        return self.head(x) * 4


@pytest.mark.parametrize("model, source", [(PrevTokenSdpa(), "F.scaled_dot_product_attention"),
                                           (PrevTokenMha(), "nn.MultiheadAttention")])
def test_a_previous_token_head_gives_the_expected_numbers(model, source):
    report = observe_attention(model, torch.randint(0, 256, (3, T)))
    assert report.observable and report.source == source and report.causal
    assert len(report.heads) == 2
    for h in report.heads:
        assert h.previous_token == pytest.approx(1.0, abs=1e-6)
        assert h.first_token == pytest.approx(1 / (T - 1), abs=1e-6)  # only row 1's previous token is token 0
        assert h.diagonal == pytest.approx(0.0, abs=1e-6)
        assert h.entropy == pytest.approx(0.0, abs=1e-5) and h.near_zero_rows == 1.0
        assert h.collapsed and h.pattern == "previous-token"
    assert report.maps[0].shape == (2, T, T)


def test_the_collapse_detector_leaves_a_healthy_causal_model_alone():
    # Uniform causal attention: row 0 has entropy 0 by construction, and must not count.
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1).view(-1, 1)
    stats = head_stats(0, 0, uniform.expand(2, T, T), causal=True)
    assert not stats.collapsed and stats.near_zero_rows == 0.0
    assert stats.normalized_entropy == pytest.approx(1.0) and stats.pattern == "uniform"
    # A real (untrained) transformer, and the same after a short training run.
    model = tierlab.models.load_model("tiny-gpt", dict(TINY_MODEL), 256)
    report = observe_attention(model, torch.randint(0, 256, (4, 32)))
    assert report.observable and len(report.heads) == 2 and not report.collapsed


def test_a_first_token_sink_is_flagged():
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0
    stats = head_stats(0, 0, sink.expand(2, T, T), causal=True)
    assert stats.collapsed and stats.pattern == "first-token" and stats.first_token == 1.0


def test_hugging_face_attentions_are_observed():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config)
    report = observe_attention(model, torch.randint(0, 256, (2, 24)))
    assert report.observable and report.source == "output_attentions" and report.causal
    assert [(h.layer, h.head) for h in report.heads] == [(layer, h) for layer in range(2) for h in range(4)]
    assert not report.collapsed


def test_attention_that_cannot_be_seen_is_said_plainly():
    report = observe_attention(NoAttention(), torch.randint(0, 256, (2, T)))
    assert not report.observable and report.heads == []
    assert "no attention weights could be observed" in report.source


def test_robustness_curve_is_monotone_on_a_toy_model():
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 64, (16, 32), generator=gen), torch.randint(0, 64, (16, 32), generator=gen))
               for _ in range(2)]
    ks = default_ks(32)
    assert ks == [0, 1, 2, 4, 8, 16]
    curve = robustness_curve(CumulativeMean(), batches, 64, ks)
    assert curve[0].kl == 0.0 and curve[0].flip_rate == 0.0
    kls, flips = [p.kl for p in curve], [p.flip_rate for p in curve]
    assert kls == sorted(kls) and flips == sorted(flips) and kls[-1] > 10 * kls[1] > 0
    assert all(p.loss is not None for p in curve)


class Recorder(nn.Module):
    """[B, 2] scores; remembers every input it was given."""

    def __init__(self):
        super().__init__()
        self.seen, self.weight = [], nn.Parameter(torch.zeros(2))

    def forward(self, ids):
        self.seen.append(ids.clone())
        return ids.float().mean(-1, keepdim=True) * self.weight


def test_a_classifiers_padding_is_never_perturbed():
    pad, rows = 99, torch.full((4, 12), 99)
    lengths = [12, 5, 2, 1]
    for row, length in enumerate(lengths):
        rows[row, :length] = torch.arange(1, length + 1)
    model = Recorder()
    robustness_curve(model, [(rows, torch.zeros(4, dtype=torch.long))], 50, [0, 1, 4, 8], pad_id=pad)
    for perturbed in model.seen:
        assert torch.equal(perturbed == pad, rows == pad)  # padding stays, and no text becomes padding
    changed = (model.seen[-1] != rows).sum(-1)  # k = 8: at most 8 per row, at most the row's text
    assert all(c <= min(8, n) for c, n in zip(changed.tolist(), lengths)) and changed[0] >= 6


def test_attention_statistics_count_only_the_rows_asked_for():
    weights = torch.zeros(2, T, T)
    weights[:, :, 0] = 1.0  # every row on the first token ...
    weights[:, 8:] = 0.0
    weights[:, 8:, :] = 1.0 / T  # ... but rows 8 and after (padding, say) spread out
    queries = torch.zeros(2, T, dtype=torch.bool)
    queries[:, :8] = True
    assert head_stats(0, 0, weights, causal=False, queries=queries).first_token == pytest.approx(1.0)
    assert head_stats(0, 0, weights, causal=False).first_token < 0.6


def test_cli_on_a_trained_run_and_on_a_model_file(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, max_steps=10))
    result = run_cli("analyze", "--run", str(run.dir), "--json", "r.json", "--png", "att.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "observed through F.scaled_dot_product_attention" in result.stdout and "top-1 flips" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"] == str(run.dir) and report["shape"] == [8, 32]
    assert len(report["attention"]["heads"]) == 2 and report["attention"]["collapsed"] == []
    assert [p["k"] for p in report["robustness"]] == [0, 1, 2, 4, 8, 16]
    assert report["robustness"][0]["loss"] == pytest.approx(run.summary["final_val_loss"], rel=0.2)
    assert (tmp_path / "att.png").stat().st_size > 1000
    # --model with --run: the model file's architecture, the run's weights (here the same model).
    same = analyze("tiny-gpt", run.dir, model_args=dict(TINY_MODEL))
    assert same.robustness[0].loss == pytest.approx(report["robustness"][0]["loss"])
    # The run positionally, as `tierlab sample RUN` and `tierlab export RUN` take it: the same analysis.
    positional = run_cli("analyze", str(run.dir), "--json", "p.json", "--png", "", cwd=tmp_path)
    assert positional.returncode == 0, positional.stderr
    assert json.loads((tmp_path / "p.json").read_text())["robustness"] == report["robustness"]
    assert_user_error(run_cli("analyze", str(run.dir), "--run", str(tmp_path), cwd=tmp_path), "Two runs given")
    assert_user_error(run_cli("analyze", "--run", str(tmp_path / "nope"), cwd=tmp_path), "not a tierlab run")
    assert_user_error(run_cli("analyze", "--model", "tiny-gpt", "--batches", "0", cwd=tmp_path), "--batches")


def test_png_to_a_folder_writes_attention_png_into_it(tmp_path):
    tiny = [x for k, v in TINY_MODEL.items() for x in ("--model-arg", f"{k}={v}")]
    result = run_cli("analyze", *tiny, "--batches", "1", "--png", "figures/", cwd=tmp_path)  # ends with /: created
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "figures" / "attention.png").stat().st_size > 1000
    assert f"heatmaps: {Path('figures') / 'attention.png'}" in result.stdout.splitlines()
    assert not (tmp_path / "figures.png").exists()
    result = run_cli("analyze", *tiny, "--batches", "1", "--png", "figures", "--json", "r.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # an existing folder, without the slash
    assert f"heatmaps: {Path('figures') / 'attention.png'}" in result.stdout.splitlines()
    assert_user_error(run_cli("analyze", *tiny, "--png", "nope/att.png", cwd=tmp_path), "its folder does not exist")


def test_too_few_outputs_suggest_vocab_size_only_to_a_factory_that_takes_it(tmp_path):
    model = write_model(tmp_path, NARROW_MODEL)
    with pytest.raises(tierlab.UserError) as err:
        analyze(f"{model}:fixed", batches=1)
    message = str(err.value)
    assert "only 40 outputs" in message and "vocab_size=" not in message, message
    assert "make the model's output layer and its token embedding at least 256 wide" in message
    assert f"{model}:fixed takes no vocab_size argument" in message
    with pytest.raises(tierlab.UserError, match=r"e\.g\. --model-arg vocab_size=256\)"):
        analyze(f"{model}:sized", model_args={"vocab_size": 40}, batches=1)
    with pytest.raises(tierlab.UserError, match=r":ignores_it was given vocab_size=256 but its output is narrower"):
        analyze(f"{model}:ignores_it", batches=1)  # tierlab passed the tokenizer's 256 itself
    namespace = {}
    exec(textwrap.dedent(NARROW_MODEL), namespace)
    with pytest.raises(tierlab.UserError) as err:
        analyze(namespace["Narrow"](), batches=1)  # an in-memory module: no factory to give arguments to
    assert "at least 256 wide" in str(err.value) and "vocab_size" not in str(err.value)


def test_a_run_whose_model_file_moved_is_analysed_with_model(tmp_path):
    write_model(tmp_path / "models", """
        from tierlab.models.tiny_gpt import TinyGPT

        def build(vocab_size):
            return TinyGPT(vocab_size=vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
        """)
    run = tierlab.train(config=fast_config(tmp_path, model=str(tmp_path / "models" / "my_model.py:build"),
                                           model_args={}, max_steps=4, eval_every=0))
    (tmp_path / "models").rename(tmp_path / "moved")
    assert_user_error(run_cli("analyze", run.dir, "--png", "", cwd=tmp_path), "my_model.py', which no longer exists",
                      "pass its new place to `tierlab analyze`: --model NEW/PLACE/my_model.py:build")
    result = run_cli("analyze", run.dir, "--png", "", "--batches", "1", "--model", "moved/my_model.py:build",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tierlab analyze: moved/my_model.py:build (run " in result.stdout
