import json
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TINY_MODEL, assert_user_error, run_cli
from tierlab.config import TrainConfig, load_config_file, parse_model_arg
from tierlab.errors import ConfigError


def test_defaults_are_valid_and_resolve_min_lr():
    cfg = TrainConfig()
    assert cfg.precision == "auto" and cfg.model == "tiny-gpt" and cfg.data == "demo"
    assert cfg.min_lr is None and cfg.final_lr == pytest.approx(cfg.lr / 10)


def test_the_final_lr_follows_lr_unless_given():
    cfg = TrainConfig(lr=1e-3).replace(lr=1e-5)  # raised "--min-lr (0.0001) must be between 0 and --lr" before
    assert cfg.final_lr == pytest.approx(1e-6)
    assert TrainConfig(lr=1e-3, min_lr=0.0).replace(lr=1e-2).final_lr == 0.0  # given: kept


@pytest.mark.parametrize("changes, fragment", [
    ({"precision": "int4"}, "--precision 'int4'"),
    ({"device": "tpu"}, "--device 'tpu'"),
    ({"device": "mps"}, "Apple's Metal backend is not supported yet"),
    ({"max_steps": 0}, "--max-steps must be at least 1"),
    ({"max_steps": 10, "epochs": 1.0}, "both given"),
    ({"batch_size": 0}, "--batch-size must be at least 1"),
    ({"lr": -1.0}, "--lr must be a positive"),
    ({"lr": 1e-3, "min_lr": 1e-2}, "--min-lr"),
    ({"warmup_steps": 50, "max_steps": 10}, "--warmup-steps (50) is longer than the run"),
    ({"warmup_steps": 11, "max_steps": 10}, "--warmup-steps (11) is longer than the run"),
    ({"tokenizer": "bpe:abc"}, "BPE vocabulary size"),
    ({"tokenizer": "sentencepiece"}, "not a tokenizer"),
    ({"val_fraction": 1.5}, "--val-fraction"),
    ({"name": "a/b"}, "--name"),
    ({"batch_size": "8"}, "--batch-size must be a whole number"),
    ({"eval_every": -1}, "--eval-every"),
    ({"compile_mode": "fastest", "compile": True}, "--compile-mode 'fastest' is not a torch.compile mode"),
    ({"compile_mode": "max-autotune"}, "without --compile"),
])
def test_bad_values_are_rejected_with_the_option_named(changes, fragment):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**changes)
    assert fragment in str(err.value)
    assert "Fix:" in str(err.value)


def test_a_warm_up_as_long_as_the_run_is_accepted():
    assert TrainConfig(warmup_steps=40, max_steps=40).warmup_steps == 40  # as HF Trainer and nanoGPT allow


def test_ints_are_accepted_for_floats():
    cfg = TrainConfig(lr=1, clip_grad=0)
    assert isinstance(cfg.lr, float) and cfg.lr == 1.0


def test_unknown_key_suggests_the_close_name():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        TrainConfig.from_mapping({"batch-sise": 4})


def test_toml_and_json_files_load_with_dashes_or_underscores(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('lr = 3e-4\nbatch-size = 4\n[model_args]\nn_layer = 2\n')
    values = load_config_file(toml)
    assert values == {"lr": 3e-4, "batch_size": 4, "model_args": {"n_layer": 2}}
    js = tmp_path / "run.json"
    js.write_text(json.dumps(TrainConfig(lr=0.01).to_dict()))
    assert TrainConfig.from_mapping(load_config_file(js)) == TrainConfig(lr=0.01)


def test_broken_config_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file(tmp_path / "missing.toml")


def test_model_arg_values_parse_as_json_when_they_can():
    assert parse_model_arg("n_layer=4") == ("n_layer", 4)
    assert parse_model_arg("dropout=0.1") == ("dropout", 0.1)
    assert parse_model_arg("bias=true") == ("bias", True)
    assert parse_model_arg("act=gelu") == ("act", "gelu")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_model_arg("n_layer")


def test_a_zero_validation_fraction_points_to_eval_every_0(tmp_path):
    tiny = [x for k, v in TINY_MODEL.items() for x in ("--model-arg", f"{k}={v}")]
    refused = run_cli("train", *tiny, "--val-fraction", "0", "--max-steps", "2", cwd=tmp_path)
    assert_user_error(refused, "--val-fraction must be between 0 and 1, got 0.0",
                      "to train without validation, pass --eval-every 0 instead")
    # What the fix says works: no evaluation, 99% of the tokens for training.
    done = run_cli("train", *tiny, "--eval-every", "0", "--val-fraction", "0.01", "--max-steps", "2", "--seq-len", "32",
                   "--name", "noval", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "runs" / "noval" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_val_loss"] is None
    assert_user_error(run_cli("train", "--val-fraction", "1.5", cwd=tmp_path), "pass e.g. 0.1")


def test_every_option_declares_one_role_and_one_help_group():
    import dataclasses

    from tierlab.config import IDENTITY, OPTION_GROUPS, PLACE, SESSION, TRAINING, options_with

    names = [f.name for f in dataclasses.fields(TrainConfig)]
    by_role = [options_with(r) for r in (IDENTITY, PLACE, SESSION, TRAINING)]
    assert sorted(n for group in by_role for n in group) == sorted(names)  # a partition: one role each
    grouped = [n for group in OPTION_GROUPS.values() for n in group]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    assert "seed" in options_with(TRAINING) and "data" in options_with(IDENTITY)


def test_fsdp_with_compile_is_accepted_and_chunked_loss_with_fsdp_is_refused():
    assert TrainConfig(fsdp=True, compile=True).compile  # each block compiled on its own (train/compile.py)
    with pytest.raises(ConfigError, match="--chunked-loss and --fsdp"):
        TrainConfig(fsdp=True, chunked_loss=True)


@pytest.mark.parametrize("changes, fragment", [
    ({"weight_decay": float("inf")}, "--weight-decay must be a finite number"),
    ({"min_loss_scale": float("inf")}, "--min-loss-scale must be a finite number"),
    ({"max_steps": 10_000_000_000}, "--max-steps must be at most 10,000,000"),
    ({"log_every": 1_000_000_000}, "--log-every must be at most"),
    ({"eval_batches": 100_000_000}, "--eval-batches must be at most"),
    ({"epochs": 1e300}, "--epochs must be a positive number of passes"),
    ({"seed": 10**23}, "--seed must be between 0 and 2**63 - 1"),
    ({"loss_scale_growth_interval": 10**23}, "--loss-scale-growth-interval must be at most"),
    ({"name": "x" * 300}, "is not a usable run name"),
    ({"name": "a\x00b"}, "is not a usable run name"),
])
def test_harmful_or_absurd_values_are_refused_up_front(changes, fragment):
    """Issue 19.10: values that trained wrong, allocated tens of GB or crashed deep inside are one plain error."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        TrainConfig(**changes)


def test_bad_config_files_and_epochs_are_plain_errors_that_leave_nothing(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    (tmp_path / "resume7.toml").write_text("resume = 7\n")
    for args, fragment in ((("--config", "latin1.toml"), "is not UTF-8 text"),
                           (("--config", "resume7.toml"), "Option --resume must be a string, got 7"),
                           (("--epochs", "100000"), "more than tierlab's 10,000,000")):
        assert_user_error(run_cli("train", *args, cwd=tmp_path), fragment)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


_NUMBER = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, -1, 2**31, 2**63]))
_NUMERIC = [f.name for f in __import__("dataclasses").fields(TrainConfig)
            if f.type in ("int", "float", "int | None", "float | None")]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_NUMERIC), _NUMBER, max_size=4))
def test_any_numeric_values_build_a_bounded_config_or_one_plain_error(values):
    """Property (issue 19.10): never another exception, and whatever is accepted stays within allocatable sizes."""
    try:
        cfg = TrainConfig(**values)
    except ConfigError as err:
        assert str(err) and "\n" not in str(err)
        return
    from tierlab.config import LIMITS, MAX_STEPS

    assert cfg.max_steps is None or cfg.max_steps <= MAX_STEPS
    assert all(getattr(cfg, name) <= limit for name, limit in LIMITS.items())
    for name in _NUMERIC:
        value = getattr(cfg, name)
        assert value is None or math.isfinite(value), (name, value)
