"""``--precision auto`` on a CPU with native bf16 measures the model; without, it is fp32 at once.

The native-bf16 answer is forced both ways with TIERLAB_CPU_NATIVE_BF16, so these tests
take both branches on every kind of CPU; the real /proc/cpuinfo reading has its own test.
"""

import json
from pathlib import Path

import pytest
import torch

import tierlab
from tierlab.errors import ConfigError
from tierlab.models import load_model
from tierlab.train import auto_precision
from tierlab.train.auto_precision import MAX_STEPS, MIN_STEPS, AutoProbe, Measurement, choose, explain
from tierlab.train.device import cpu_flags, cpu_native_bf16
from tierlab.train.precision import decide_precision
from helpers import TINY_MODEL, fast_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("step_ms, expected", [
    ({"fp32": 100.0, "bf16": 120.0}, "fp32"),  # bf16 slower
    ({"fp32": 100.0, "bf16": 97.0}, "fp32"),   # bf16 faster, but within the margin: the more accurate one
    ({"fp32": 105.0, "bf16": 100.0}, "fp32"),  # exactly 5%: still within
    ({"fp32": 106.0, "bf16": 100.0}, "bf16"),  # beyond the margin
    ({"fp32": 100.0, "bf16": 45.0}, "bf16"),
])
def test_the_more_accurate_precision_wins_within_the_margin(step_ms, expected):
    assert choose(step_ms) == expected


def test_the_reason_carries_the_figures():
    m = Measurement({"fp32": 100.0, "bf16": 107.5}, 6, "probe", 16, 128)
    assert explain("fp32", m) == ("bf16 measured 0.93x fp32 on this model at batch 16 x 128 (6 steps each): "
                                  "fp32 is the fastest here")
    m = Measurement({"fp32": 100.0, "bf16": 97.0}, 9, "bench", 8, 256)
    said = explain("fp32", m)
    assert "bf16 measured 1.03x fp32" in said and "measured by tierlab bench precision" in said
    assert said.endswith("fp32, the more accurate, since bf16 is less than 5% faster")


def _probe(tmp_path, planned=400, model=None):
    torch.manual_seed(0)
    model = model or load_model("tiny-gpt", dict(TINY_MODEL), 256)
    block = torch.randint(0, 256, (4, 33))
    return model, AutoProbe(model, block, CPU, planned, tmp_path / "cache")


def test_the_probe_measures_both_precisions_and_decides_from_its_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    model, probe = _probe(tmp_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    d = decide_precision("auto", CPU, measure=probe)
    m = d.measured
    assert set(m["step_ms"]) == {"fp32", "bf16"} and all(v > 0 for v in m["step_ms"].values())
    assert MIN_STEPS <= m["steps"] <= MAX_STEPS and m["source"] == "probe"
    assert d.used == choose(m["step_ms"]) and d.requested == "auto"
    assert f"bf16 measured {m['speedup_vs_fp32']['bf16']:.2f}x fp32" in d.reason
    assert f"({m['steps']} steps each)" in d.reason and "TIERLAB_CPU_NATIVE_BF16=1" in d.reason
    # The user's model and the run's random stream are as they were: the probe trained a copy.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    # The next run of the same model and shape reads the cache: same answer, same figures.
    again = decide_precision("auto", CPU, measure=probe)
    assert again.used == d.used and again.measured["step_ms"] == m["step_ms"]
    assert again.measured["source"] == "cache" and "measured by an earlier run" in again.reason


def test_another_shape_or_model_is_measured_again_and_a_broken_cache_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    model, probe = _probe(tmp_path)
    probe("x")
    files = list((tmp_path / "cache" / "precision").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["source"] == "probe"
    wider = load_model("tiny-gpt", {**TINY_MODEL, "d_model": 64}, 256)
    assert AutoProbe(wider, probe.block, CPU, 400, probe.cache_dir)("x").measured["source"] == "probe"
    assert AutoProbe(model, probe.block[:2], CPU, 400, probe.cache_dir)("x").measured["source"] == "probe"
    assert len(list((tmp_path / "cache" / "precision").glob("*.json"))) == 3
    files[0].write_text("{not json")
    assert probe("x").measured["source"] == "probe"  # measured again, and the file repaired
    assert json.loads(files[0].read_text())["source"] == "probe"


def test_a_run_too_short_for_the_probe_is_fp32_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    _, probe = _probe(tmp_path, planned=60)
    d = decide_precision("auto", CPU, measure=probe)
    assert d.used == "fp32" and d.measured is None and "60-step run is too short" in d.reason
    assert "tierlab bench precision" in d.reason
    assert not (tmp_path / "cache" / "precision").exists()


def test_the_switch_forces_both_answers_and_rejects_other_values(monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    assert cpu_native_bf16() == "TIERLAB_CPU_NATIVE_BF16=1"
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "0")
    assert cpu_native_bf16() is None
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "yes")
    with pytest.raises(ConfigError, match="neither 0 nor 1"):
        cpu_native_bf16()


def test_without_the_switch_the_real_cpu_flags_decide(monkeypatch):
    monkeypatch.delenv("TIERLAB_CPU_NATIVE_BF16")
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    expected = next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    assert cpu_native_bf16() == expected and (expected is None or expected in cpu_flags())
    d = decide_precision("auto", CPU, measure=lambda flag: decide_precision("bf16", CPU))
    assert d.used == ("bf16" if expected else "fp32")


def test_a_run_records_the_measurement_and_its_resume_keeps_the_decision(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    monkeypatch.setattr(auto_precision, "MAX_SHARE", 1.0)  # a 20-step test run may spend what the probe needs
    cfg = fast_config(tmp_path, precision="auto", max_steps=20, ckpt_every=10)
    run = tierlab.train(config=cfg.replace(max_steps=10), cache_dir=tmp_path / "cache")
    event = run.events("precision")[0]
    assert event["requested"] == "auto" and set(event["measured"]["step_ms"]) == {"fp32", "bf16"}
    summary = run.summary
    assert summary["precision"] == event["used"] == choose(event["measured"]["step_ms"])
    assert summary["precision_measured"] == event["measured"] and summary["precision_reason"] == event["reason"]
    # The cache is gone and the machine would measure differently: the resume keeps the run's precision.
    for f in (tmp_path / "cache" / "precision").glob("*.json"):
        f.write_text(json.dumps({"step_ms": {"fp32": 1.0, "bf16": 1.0} if event["used"] == "bf16" else
                                 {"fp32": 100.0, "bf16": 1.0}, "steps": 5, "batch_size": 8, "seq_len": 32}))
    resumed = tierlab.resume(run.dir, {"max_steps": 20, "allow_config_change": True}, cache_dir=tmp_path / "cache")
    again = resumed.events("precision")[-1]
    assert again["used"] == event["used"] and again["reason"].endswith("kept on resume)")
    assert again["measured"] == event["measured"] and resumed.summary["precision"] == event["used"]


@pytest.mark.parametrize("step_ms", [{"fp32": 1, "bf16": 0}, {"fp32": 100, "bf16": -5}, {"fp32": float("nan"), "bf16": 1},
                                     {"fp32": 100, "bf16": 90, "fp16": 1}, {"bf16": 50}, {"fp32": 100, "bf16": float("inf")}])
def test_a_cache_entry_with_impossible_figures_is_measured_again(tmp_path, monkeypatch, step_ms):
    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "1")
    _, probe = _probe(tmp_path)
    probe("x")
    (entry,) = (tmp_path / "cache" / "precision").glob("*.json")
    entry.write_text(json.dumps({"step_ms": step_ms, "steps": 5, "batch_size": 4, "seq_len": 32}))
    d = probe("x")  # no ZeroDivisionError / StopIteration / KeyError: a fresh measurement
    assert d.measured["source"] == "probe" and set(d.measured["step_ms"]) == {"fp32", "bf16"}


def test_a_shorter_measurement_does_not_replace_a_longer_one(tmp_path):
    from tierlab.train.auto_precision import read_cached, write_cached

    long = Measurement({"fp32": 100.0, "bf16": 80.0}, 20, "bench", 4, 32)
    write_cached(tmp_path, "k", long)
    write_cached(tmp_path, "k", Measurement({"fp32": 100.0, "bf16": 120.0}, 2, "bench", 4, 32))  # bench --steps 2
    assert read_cached(tmp_path, "k").step_ms == long.step_ms
    write_cached(tmp_path, "k", Measurement({"fp32": 100.0, "bf16": 99.0}, 20, "probe", 4, 32))  # as long: replaces
    assert read_cached(tmp_path, "k").step_ms == {"fp32": 100.0, "bf16": 99.0}


@pytest.mark.parametrize("command", [["validate", "--model", "tiny-gpt"],
                                     ["bench", "precision", "--precisions", "fp32,bf16", "--steps", "1"]])
def test_a_bad_switch_value_stops_validate_and_bench_up_front(tmp_path, monkeypatch, command):
    from helpers import assert_user_error, run_cli

    monkeypatch.setenv("TIERLAB_CPU_NATIVE_BF16", "banana")
    result = run_cli(*command, cwd=tmp_path)
    assert_user_error(result, "TIERLAB_CPU_NATIVE_BF16='banana' is neither 0 nor 1")
    assert "round" not in result.stderr and "warm-up" not in result.stderr  # nothing ran first
