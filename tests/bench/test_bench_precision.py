"""tierlab bench precision on the CPU: every row present, figures that add up, JSON, PNG, errors."""

import json
import statistics

import pytest
import torch
from helpers import assert_user_error, run_cli

from tierlab.train.device import cpu_native_bf16

STEPS, BATCH, SEQ = 4, 4, 32


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    where = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", "precision", "--model-arg", "n_layer=1", "--model-arg", "d_model=32",
                     "--model-arg", "n_head=2", "--model-arg", "max_seq_len=64", "--batch-size", BATCH,
                     "--seq-len", SEQ, "--steps", STEPS, "--warmup-steps", 1, "--chunk", 2,
                     "--json", "bench.json", "--png", "bench.png", "--markdown", cwd=where)
    assert result.returncode == 0, result.stderr
    return where, result, json.loads((where / "bench.json").read_text())


def test_every_precision_has_a_row_and_tf32_and_fp8_say_why_not(bench):
    _, result, data = bench
    rows = {r["precision"]: r for r in data["rows"]}
    assert list(rows) == ["fp32", "tf32", "bf16", "fp16", "fp8"]
    for name in ("fp32", "bf16", "fp16"):
        assert rows[name]["status"] == "ok", rows[name]
        assert len(rows[name]["step_ms"]) == STEPS
        assert rows[name]["val_loss"] > 0 and rows[name]["peak_mem_mb"] > 0
        assert rows[name]["mfu"] is None  # no known peak for a CPU
    assert rows["tf32"]["status"] == "unavailable" and "CPU" in rows["tf32"]["reason"]
    assert rows["fp8"]["status"] == "unavailable" and "fp8 tensor cores" in rows["fp8"]["reason"]
    assert "tf32" in result.stdout and "unavailable" in result.stdout  # shown, not silently skipped
    assert "| bf16 |" in result.stdout  # the Markdown table


def test_the_cli_default_lists_every_precision():
    from tierlab.bench import BENCH_PRECISIONS
    from tierlab.cli import build_parser
    from tierlab.precisions import NAMES

    ns = build_parser().parse_args(["bench", "precision"])
    assert tuple(ns.precisions.split(",")) == BENCH_PRECISIONS == NAMES


def test_json_schema(bench):
    _, _, data = bench
    assert {"device", "device_name", "torch_version", "model", "params", "flops_per_token", "batch_size",
            "seq_len", "tokens_per_step", "steps", "warmup_steps", "compile", "peak_mem_method", "rows",
            "verdict"} <= set(data)
    assert data["tokens_per_step"] == BATCH * SEQ and data["steps"] == STEPS and data["compile"] is False
    assert data["compile_mode"] is None  # set only under --compile
    row_keys = {"precision", "status", "reason", "median_step_ms", "tokens_per_s", "speedup_vs_fp32",
                "peak_mem_mb", "mfu", "val_loss", "val_loss_diff_vs_fp32", "final_train_loss", "skipped_steps",
                "compile_s", "step_ms"}
    assert all(set(r) == row_keys for r in data["rows"])


def test_speedups_and_throughput_follow_from_the_step_times(bench):
    _, _, data = bench
    ok = [r for r in data["rows"] if r["status"] == "ok"]
    fp32 = next(r for r in ok if r["precision"] == "fp32")
    for r in ok:
        assert r["median_step_ms"] == pytest.approx(statistics.median(r["step_ms"]))
        assert r["tokens_per_s"] == pytest.approx(BATCH * SEQ / (r["median_step_ms"] / 1000))
        assert r["speedup_vs_fp32"] == pytest.approx(fp32["median_step_ms"] / r["median_step_ms"])
        assert r["val_loss_diff_vs_fp32"] == pytest.approx(r["val_loss"] - fp32["val_loss"])
    assert fp32["speedup_vs_fp32"] == 1.0
    # Same weights and batches: after a few steps the precisions agree to well under 1%.
    assert all(abs(r["val_loss_diff_vs_fp32"]) < 0.01 * fp32["val_loss"] for r in ok)


def test_rounds_are_interleaved_in_rotating_order(bench):
    _, result, _ = bench
    assert "round 1/2: fp32, bf16, fp16" in result.stderr
    assert "round 2/2: bf16, fp16, fp32" in result.stderr


def test_png_is_written(bench):
    where, _, _ = bench
    head = (where / "bench.png").read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (1300, 450)


def test_cpu_verdict_is_plain(bench):
    _, result, data = bench
    fastest = max((r for r in data["rows"] if r["status"] == "ok"), key=lambda r: r["tokens_per_s"])
    assert data["verdict"].startswith(f"Fastest here: {fastest['precision']}")
    assert cpu_native_bf16() is None  # the suite's default: a CPU without native bf16
    if fastest["precision"] == "fp32":
        assert "fp32 is the fastest choice here" in result.stdout
    else:
        assert "the margin is likely noise" in result.stdout
    assert "--precision auto picks" not in data["verdict"]  # auto does not measure on such a CPU


def test_on_a_cpu_with_native_bf16_bench_says_and_saves_what_auto_picks(tmp_path, monkeypatch):
    """bench's figures become auto's: the next run of the same model and shape agrees with the bench."""
    from helpers import fast_config
    from tierlab.bench import bench_precision
    from tierlab.models import load_model
    from tierlab.train.auto_precision import AutoProbe, choose

    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    cfg = fast_config(tmp_path, batch_size=BATCH, seq_len=SEQ)
    result = bench_precision(cfg, steps=STEPS, warmup_steps=1, precisions=("fp32", "bf16"), chunk=2,
                             cache_dir=tmp_path / "cache")
    medians = {r.precision: r.median_step_ms for r in result.rows}
    picked = choose(medians)
    assert f"--precision auto picks {picked} for this model at batch {BATCH} x {SEQ}" in result.verdict
    torch.manual_seed(cfg.seed)
    model = load_model("tiny-gpt", cfg.model_args, 256)
    decision = AutoProbe(model, torch.zeros(BATCH, SEQ + 1, dtype=torch.long), torch.device("cpu"), 400,
                         tmp_path / "cache")("TIERLAB_CPU_NATIVE_BF16=1")
    assert decision.used == picked and decision.measured["step_ms"] == pytest.approx(medians)
    assert decision.measured["source"] == "bench" and decision.measured["steps"] == STEPS
    assert "measured by tierlab bench precision" in decision.reason


@pytest.mark.parametrize("args, fragments", [
    (["--precisions", "fp32,int4"], ["--precisions", "int4", "fp32,tf32,bf16,fp16,fp8"]),
    (["--json", "no/such/dir/b.json"], ["folder does not exist"]),
])
def test_bad_options_are_user_errors(tmp_path, args, fragments):
    assert_user_error(run_cli("bench", "precision", *args, cwd=tmp_path), *fragments)
    assert not (tmp_path / "bench-precision.png").exists()


def test_bad_values_are_refused_before_any_work(tmp_path):
    from helpers import fast_config
    from tierlab.bench import bench_precision
    from tierlab.errors import ConfigError, ModelError

    with pytest.raises(ConfigError, match="--steps must be at least 1"):
        bench_precision(fast_config(tmp_path), steps=0)
    with pytest.raises(ModelError, match="does not exist"):
        bench_precision(fast_config(tmp_path, model="missing.py"), steps=1)


def test_a_hugging_face_module_in_python(tmp_path):
    """The Python API takes an in-memory module (here a Hugging Face GPT-2 built from a config)."""
    transformers = pytest.importorskip("transformers")
    from helpers import fast_config
    from tierlab.bench import bench_precision
    from tierlab.train.flops import flops_per_token

    config = transformers.GPT2Config(vocab_size=256, n_layer=1, n_embd=32, n_head=2, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = bench_precision(fast_config(tmp_path), steps=2, warmup_steps=1, precisions=("fp32", "bf16"),
                             model=model)
    assert [(r.precision, r.status) for r in result.rows] == [("fp32", "ok"), ("bf16", "ok")]
    assert result.model == "<in-memory GPT2LMHeadModel>" and result.flops_per_token == flops_per_token(model, 32)
    assert result.flops_per_token > 6 * 32 * 256  # the HF config publishes L, H and the width: attention counted
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's module untouched


def test_a_model_file_returning_logits_and_loss(tmp_path):
    from helpers import write_model

    path = write_model(tmp_path, """
        import torch
        from torch import nn

        class Model(nn.Module):  # nanoGPT style: forward returns (logits, loss)
            def __init__(self, vocab_size=256):
                super().__init__()
                self.emb = nn.Embedding(vocab_size, 32)
                self.head = nn.Linear(32, vocab_size)

            def forward(self, idx, targets=None):
                return self.head(torch.cumsum(self.emb(idx), dim=1)), None
        """)
    result = run_cli("bench", "precision", "--model", path, "--precisions", "fp32", "--steps", 2,
                     "--warmup-steps", 0, "--batch-size", 2, "--seq-len", 16, "--png", "", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "my_model.py" in result.stdout and "fp32" in result.stdout
    assert not (tmp_path / "bench-precision.png").exists()  # --png "" writes no chart


def test_an_in_memory_nanogpt_style_module_benches_as_it_trains(tmp_path, caplog):
    """bench prepares the model as train does: nanoGPT's last-position shortcut, the low-precision warning."""
    import importlib.util
    import logging

    from helpers import fast_config, write_model
    from models.test_loader import NANOGPT_GENERATION_SHORTCUT
    from tierlab.bench import bench_precision

    path = write_model(tmp_path, NANOGPT_GENERATION_SHORTCUT, name="nano.py")
    spec = importlib.util.spec_from_file_location("nano_for_bench", path)
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    model = nano.GPT(256)  # built by the user, not by tierlab's loader: no hook yet
    result = bench_precision(fast_config(tmp_path), steps=2, warmup_steps=1, precisions=("fp32",), model=model)
    assert [(r.precision, r.status) for r in result.rows] == [("fp32", "ok")]
    assert not model._forward_pre_hooks  # the user's module is untouched: bench hooked its own copy
    with caplog.at_level(logging.WARNING, logger="tierlab"):
        bench_precision(fast_config(tmp_path), steps=1, warmup_steps=0, precisions=("fp32",),
                        model=nano.GPT(256).to(torch.bfloat16))
    assert any("stored in bfloat16" in r.getMessage() for r in caplog.records)
