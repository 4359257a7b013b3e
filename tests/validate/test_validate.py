"""tierlab validate: every check passes on the built-in model and fails on a model broken for it."""

import json

import pytest

import tierlab
from helpers import assert_user_error, run_cli, write_model

ZOO = '''
import torch
import torch.nn.functional as F
from torch import nn
from tierlab.models.tiny_gpt import TinyGPT

SMALL = dict(n_layer=1, n_head=2, d_model=32, max_seq_len=64)


class NoMask(TinyGPT):
    """Attention without the causal mask: every position sees the whole sequence."""
    def __init__(self, vocab_size):
        super().__init__(vocab_size=vocab_size, **SMALL)
        for block in self.blocks:
            attn = block.attn
            def forward(x, attn=attn):
                B, T, C = x.shape
                q, k, v = attn.qkv(x).split(C, dim=2)
                q, k, v = (t.view(B, T, attn.n_head, C // attn.n_head).transpose(1, 2) for t in (q, k, v))
                y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
                return attn.proj(y.transpose(1, 2).reshape(B, T, C))
            attn.forward = forward


class Detached(TinyGPT):
    """The transformer blocks' output is detached: nothing below the final norm learns."""
    def forward(self, input_ids):
        T = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x.detach()))


class Scaled(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor
    def forward(self, x):
        return x * self.factor


class WithLayer(TinyGPT):
    """TinyGPT with an extra layer `amp` between the final norm and the head."""
    def __init__(self, vocab_size, factor):
        super().__init__(vocab_size=vocab_size, **SMALL)
        self.amp = Scaled(factor)
    def forward(self, input_ids):
        T = input_ids.shape[1]
        x = self.tok_emb(input_ids) + self.pos_emb(torch.arange(T, device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.amp(self.ln_f(x)))


class Flat(TinyGPT):
    def forward(self, input_ids):
        return super().forward(input_ids)[:, -1]  # [B, V]: forgot the positions


class Transposed(TinyGPT):
    def forward(self, input_ids):
        return super().forward(input_ids).transpose(1, 2)  # [B, V, T]: the layout F.cross_entropy takes


class Softmaxed(TinyGPT):
    def forward(self, input_ids):
        return super().forward(input_ids).softmax(-1)  # probabilities: cross-entropy would softmax them again


class LogSoftmaxed(TinyGPT):
    def forward(self, input_ids):
        return super().forward(input_ids).log_softmax(-1)  # log-probabilities: fine for cross-entropy


class Noisy(TinyGPT):
    def forward(self, input_ids):
        logits = super().forward(input_ids)
        return F.dropout(logits, 0.1, training=True)  # randomness even in eval mode


def good(vocab_size):
    return TinyGPT(vocab_size=vocab_size, **SMALL)

def no_mask(vocab_size):
    return NoMask(vocab_size)

def heavy_dropout(vocab_size):
    return TinyGPT(vocab_size=vocab_size, dropout=0.5, **SMALL)

def detached(vocab_size):
    return Detached(vocab_size=vocab_size, **SMALL)

def zero_head(vocab_size):
    model = TinyGPT(vocab_size=vocab_size, **SMALL)
    model.head = nn.Linear(32, vocab_size, bias=False)  # untied, and all zero
    nn.init.zeros_(model.head.weight)
    return model

def nan_layer(vocab_size):
    return WithLayer(vocab_size, float("nan"))

def overflow(vocab_size):
    return WithLayer(vocab_size, 1e5)

def flat(vocab_size):
    return Flat(vocab_size=vocab_size, **SMALL)

def transposed(vocab_size):
    return Transposed(vocab_size=vocab_size, **SMALL)

def softmaxed(vocab_size):
    return Softmaxed(vocab_size=vocab_size, **SMALL)

def constant_head(vocab_size):
    model = TinyGPT(vocab_size=vocab_size, **SMALL)
    model.head = nn.Linear(32, vocab_size, bias=False)
    nn.init.constant_(model.head.weight, 0.01)  # every output row the same: symmetry is never broken
    return model

class WithDecayTable(TinyGPT):
    """A state-space-style table, log(1..N) in every row (as Mamba's A_log): identical rows by design."""
    def __init__(self, vocab_size):
        super().__init__(vocab_size=vocab_size, **SMALL)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, 9.0)).repeat(32, 1))
    def forward(self, input_ids):
        return super().forward(input_ids) + 0 * self.A_log.sum()

def decay_table(vocab_size):
    return WithDecayTable(vocab_size)

def bf16_weights(vocab_size):
    return TinyGPT(vocab_size=vocab_size, **SMALL).to(torch.bfloat16)

def log_softmaxed(vocab_size):
    return LogSoftmaxed(vocab_size=vocab_size, **SMALL)

def noisy(vocab_size):
    return Noisy(vocab_size=vocab_size, **SMALL)
'''


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("zoo"), ZOO, name="zoo.py")


@pytest.fixture(scope="module")
def healthy():
    return tierlab.validate("tiny-gpt", model_args={"n_layer": 1, "d_model": 32, "n_head": 2, "max_seq_len": 64})


CHECKS = ["shapes", "causality", "gradient_flow", "numerics", "initialisation", "memory", "speed", "determinism",
          "precision_doctor", "fp8"]


def test_the_built_in_model_passes_every_check(healthy):
    assert [c.name for c in healthy.checks] == CHECKS
    assert all(c.status == "pass" for c in healthy.checks), healthy.text()
    assert healthy.ok and "all checks passed" in repr(healthy)
    assert healthy["memory"].figures["activation_bytes"] > 0
    assert healthy["speed"].figures["tokens_per_s"] > 0
    assert healthy["precision_doctor"].figures["fp16_safe"] is True


@pytest.mark.parametrize("factory, check, fragment", [
    ("no_mask", "causality", "position 0 sees the future"),
    ("detached", "gradient_flow", "get no gradient: pos_emb.weight"),
    ("zero_head", "gradient_flow", "get an all-zero gradient"),
    ("zero_head", "initialisation", "all-zero weights: head.weight"),
    ("nan_layer", "numerics", "100.0% of the logits are NaN or Inf"),
    ("flat", "shapes", "expected [1, 1, 256]"),
    ("noisy", "determinism", "two eval forwards of the same input differ"),
    ("softmaxed", "numerics", "the outputs are probabilities, not logits"),
    ("bf16_weights", "initialisation", "are stored in bfloat16"),
    ("constant_head", "initialisation", "identical rows: head.weight"),
])
def test_each_check_catches_its_broken_model(zoo, factory, check, fragment):
    report = tierlab.validate(f"{zoo}:{factory}")
    result = report[check] if factory != "flat" else report["shapes"]
    assert result.status in ("fail", "warn") and fragment in result.summary, report.text()
    if result.status == "fail":
        assert not report.ok


def test_the_doctor_names_the_overflowing_module_and_advises_against_fp16(zoo, monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "0")  # a CPU without native bf16: fp32 without measuring
    report = tierlab.validate(f"{zoo}:overflow")
    doctor = report["precision_doctor"]
    assert doctor.status == "warn" and "fp16 UNSAFE" in doctor.summary
    assert doctor.figures["overflow_modules"][0] == "amp"
    assert report.recommendation.startswith("not fp16") and "keep amp" in report.recommendation
    assert report.recommendation.endswith("(on this CPU, fp32 is also the fastest)")
    assert doctor.figures["autocast"]["bf16"]["finite"] is True and doctor.figures["auto"] is None


def test_on_a_cpu_with_native_bf16_the_doctor_advises_what_auto_measures(zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    monkeypatch.setenv("TIERLAB_CACHE", str(tmp_path))  # measured here, not taken from another test's cache
    report = tierlab.validate(f"{zoo}:overflow")
    auto = report["precision_doctor"].figures["auto"]
    assert auto["requested"] == "auto" and set(auto["measured"]["step_ms"]) == {"fp32", "bf16"}
    assert auto["measured"]["batch_size"] == 4 and auto["measured"]["seq_len"] == 64  # validate's shape
    expected = "fp32, which --precision auto picks here" if auto["used"] == "fp32" else "bf16: native"
    assert report.recommendation.startswith(expected), report.recommendation
    assert auto["reason"] in report.recommendation
    assert "not fp16 (activations beyond fp16's 65504 in amp" in report.recommendation  # still said
    assert "keep amp" in report.recommendation


def test_cli_exit_codes_and_json(zoo, tmp_path):
    good = run_cli("validate", "--model", f"{zoo}:good", "--json", tmp_path / "good.json", cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "result: all checks passed" in good.stdout
    data = json.loads((tmp_path / "good.json").read_text())
    assert data["ok"] is True and [c["name"] for c in data["checks"]] == CHECKS
    broken = run_cli("validate", "--model", f"{zoo}:no_mask", "--no-doctor", cwd=tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "FAIL  causality" in broken.stdout and "FAILED: causality" in broken.stdout
    assert_user_error(run_cli("validate", "--model", tmp_path / "missing.py", cwd=tmp_path), "does not exist")


@pytest.mark.parametrize("factory, check", [("detached", "gradient_flow"), ("zero_head", "gradient_flow"),
                                            ("nan_layer", "numerics")])
def test_cli_fails_each_broken_model(zoo, tmp_path, factory, check):
    result = run_cli("validate", "--model", f"{zoo}:{factory}", "--no-doctor", "--precision", "bf16", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL  {check}" in result.stdout and "bf16)" in result.stdout


def test_log_probabilities_are_accepted_as_logits(zoo):
    # log_softmax output is what cross-entropy computes anyway: not the softmax mistake.
    report = tierlab.validate(f"{zoo}:log_softmaxed")
    assert report["numerics"].status == "pass", report.text()


def test_a_table_with_identical_rows_by_design_is_not_a_symmetry_problem(zoo):
    report = tierlab.validate(f"{zoo}:decay_table")
    assert report["initialisation"].status == "pass", report.text()


def test_the_doctors_precision_error_is_not_dropout_noise(zoo):
    # Dropout is off in all three forwards compared: what is left is what fp16/bf16 cost (bf16 keeps 8 bits).
    autocast = tierlab.validate(f"{zoo}:heavy_dropout")["precision_doctor"].figures["autocast"]
    assert autocast["fp16"]["logits_rel_error"] < 0.01 and autocast["bf16"]["logits_rel_error"] < 0.05, autocast


def test_checks_that_need_logits_of_the_right_shape_are_skipped_when_shapes_fails(zoo, tmp_path):
    result = run_cli("validate", "--model", f"{zoo}:flat", "--json", tmp_path / "flat.json", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # One failure, said plainly: no raw PyTorch errors from checks that could not mean anything.
    assert "FAIL  shapes" in result.stdout and "raised" not in result.stdout, result.stdout
    assert "Expected input batch_size" not in result.stdout and "FAIL  causality" not in result.stdout
    dependent = [n for n in CHECKS if n not in ("shapes", "initialisation", "fp8")]  # (fp8: planned from layer shapes)
    for name in dependent:
        assert f"SKIP  {name}" in result.stdout, result.stdout
    assert f"result: FAILED: shapes (skipped: {', '.join(dependent)})" in result.stdout
    data = json.loads((tmp_path / "flat.json").read_text())
    assert data["ok"] is False and [c["name"] for c in data["checks"]] == CHECKS
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["shapes"]["status"] == "fail" and checks["initialisation"]["status"] == "pass"
    for name in dependent:
        assert checks[name]["status"] == "skip"
        assert checks[name]["summary"] == "skipped: depends on shapes, which failed"
        assert checks[name]["figures"] == {"depends_on": "shapes"}


def test_logits_laid_out_b_v_t_are_told_the_b_t_v_they_should_be(zoo):
    shapes = tierlab.validate(f"{zoo}:transposed", doctor=False)["shapes"]
    assert shapes.status == "fail"
    assert "[1, 1] gave [1, 256, 1], expected [1, 1, 256]" in shapes.summary  # not "expected [1, 1, 2]"


def test_a_model_whose_forward_raises_fails_shapes_and_skips_the_rest(tmp_path):
    model = write_model(tmp_path, """
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(256, 16)

            def forward(self, input_ids):
                raise RuntimeError("forward is not written yet")
        """)
    report = tierlab.validate(str(model))
    assert [c.name for c in report.checks] == CHECKS and not report.ok
    assert report["shapes"].status == "fail" and "forward is not written yet" in report["shapes"].summary
    assert report["initialisation"].status == "pass"  # it reads the weights, and runs nothing
    assert report["fp8"].status == "pass"  # (a plan from the layer shapes: it runs nothing either)
    assert {c.status for c in report.checks if c.name not in ("shapes", "initialisation", "fp8")} == {"skip"}


def test_the_doctor_says_which_layers_fp8_would_convert_at_the_training_shape(tmp_path):
    from tierlab.validate import validate

    small = validate("tiny-gpt", fp8_tokens=16 * 1024)["fp8"]
    assert small.status == "pass" and small.figures["converted"] == 0 and "kept bf16" in small.summary
    wide = validate("tiny-gpt", model_args={"d_model": 2048, "n_head": 16, "n_layer": 1}, batch_size=1, seq_len=8,
                    fp8_tokens=32 * 1024, doctor=True)["fp8"]
    converted = {r["name"] for r in wide.figures["layers"] if r["convert"]}
    assert {"blocks.0.mlp.0", "blocks.0.mlp.2"} <= converted and "would run in fp8: " in wide.summary
    result = run_cli("validate", "--fp8-tokens", "0", cwd=tmp_path)
    assert_user_error(result, "--fp8-tokens")
