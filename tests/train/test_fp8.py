"""--precision fp8: the per-layer plan from shapes, torchao's conversion, and training (emulated on this CPU)."""

import sys

import pytest
import torch
from helpers import TINY_MODEL, fast_config
from torch import nn

import tierlab
from tierlab.errors import PrecisionError
from tierlab.models.tiny_gpt import TinyGPT
from tierlab.train import fp8
from tierlab.train.precision import decide_precision

pytest.importorskip("torchao")
CPU = torch.device("cpu")


def test_the_expected_gain_sides_with_torchaos_measurements():
    assert fp8.expected_gain(1024, 2048, 1024) < 0.9  # torchao measured 0.80x
    assert fp8.expected_gain(4096, 8192, 16384) > 1.3  # and 1.39x


def _gpt2_shaped(d, layers=2):
    return TinyGPT(vocab_size=50304, n_layer=layers, n_head=max(1, d // 64), d_model=d, max_seq_len=16)


def test_gpt2_small_keeps_its_small_layers_and_a_1_3b_model_converts_all():
    with torch.device("meta"):
        small, large = _gpt2_shaped(768), _gpt2_shaped(2048)
    small_plan = {r.name: r for r in fp8.plan(small, 16 * 1024)}
    assert not small_plan["blocks.0.attn.proj"].convert  # 768 x 768: the casts cost what fp8 saves
    assert "too small to gain" in small_plan["blocks.0.attn.proj"].why
    assert small_plan["head"].convert  # 768 x 50304 (the vocabulary padded to a multiple of 64) gains
    assert all(r.convert for r in fp8.plan(large, 16 * 1024))
    assert not any(r.convert for r in fp8.plan(small, 512))  # a small batch: nothing gains


def test_sizes_the_kernels_cannot_take_stay_bf16_even_with_all():
    model = nn.Sequential(nn.Linear(64, 100), nn.Linear(100, 64))
    rows = fp8.plan(model, 4096, layers="all")
    assert [r.convert for r in rows] == [False, False] and "multiple of 16" in rows[0].why


def test_the_plan_is_said_once_per_kind_of_layer():
    lines = fp8.said_per_layer(fp8.plan(TinyGPT(vocab_size=64, **TINY_MODEL | {"n_layer": 3}), 256, "all"))
    assert "fp8 convert blocks.*.attn.qkv (3 layers) [32 x 96]" in lines[0]
    assert any(line.startswith("fp8 convert blocks.*.mlp.0 (3 layers)") for line in lines)


def test_conversion_keeps_the_parameters_their_names_and_the_tied_head():
    model = TinyGPT(vocab_size=64, **TINY_MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = fp8.convert(model, 4096, layers="all")
    assert all(r.convert for r in rows)
    assert type(model.head).__name__ == "Float8Linear" and isinstance(model.head, nn.Linear)
    assert model.head.weight is model.tok_emb.weight  # weight tying survives the swap
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_without_emulation_a_cpu_falls_back_with_the_reason(monkeypatch):
    monkeypatch.delenv(fp8.EMULATE_ENV, raising=False)
    decision = decide_precision("fp8", CPU)
    assert decision.used == "fp32" and decision.fallback and "fp8 tensor cores" in decision.reason
    with pytest.raises(PrecisionError, match="--precision fp8 cannot run here"):
        decide_precision("fp8", CPU, strict=True)


def test_without_torchao_the_fix_is_the_extra(monkeypatch):
    monkeypatch.setenv(fp8.EMULATE_ENV, "1")
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as if torchao were not installed
    decision = decide_precision("fp8", CPU)
    assert decision.used == "fp32" and "pip install 'tierlab[fp8]'" in decision.reason


def test_emulated_fp8_trains_like_bf16_and_records_its_plan(tmp_path, monkeypatch):
    monkeypatch.setenv(fp8.EMULATE_ENV, "1")
    cfg = fast_config(tmp_path, max_steps=10, model_args=TINY_MODEL | {"d_model": 64})
    bf16 = tierlab.train(config=cfg.replace(name="bf16", precision="bf16"))
    run = tierlab.train(config=cfg.replace(name="fp8", precision="fp8", fp8_layers="all"))
    assert run.summary["precision"] == "fp8" and run.summary["skipped_steps"] == 0
    (event,) = run.events("fp8")
    assert {r["name"] for r in event["layers"] if r["convert"]} >= {"blocks.0.attn.qkv", "head"}
    assert run.summary["final_loss"] == pytest.approx(bf16.summary["final_loss"], rel=0.03)
    assert run.summary["final_loss"] != bf16.summary["final_loss"]  # the matmuls really ran in fp8
    # The weights are saved under the names they always had: the model loads without torchao.
    model = tierlab.load(run.dir)[0]
    assert type(model.head) is nn.Linear
