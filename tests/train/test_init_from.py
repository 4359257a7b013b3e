"""--init-from: a new run that starts from another run's weights, with its own optimizer, schedule and data."""

import hashlib
import re

import pytest

import tierlab
from helpers import assert_user_error, fast_config, run_cli, write_corpus
from tierlab.errors import ConfigError


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """40 steps on one English-like corpus: a model that has learned its byte statistics."""
    tmp = tmp_path_factory.mktemp("base")
    corpus = write_corpus(tmp / "old.txt", sentences=1500, seed=0)
    return tierlab.train(config=fast_config(tmp, data=str(corpus), max_steps=40, name="base"))


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("source", ["run", "checkpoint", "safetensors"])
def test_a_new_run_on_new_data_starts_from_the_weights(tmp_path, base_run, source):
    corpus = write_corpus(tmp_path / "new.txt", sentences=1500, seed=1)  # other sentences, the same words
    spec = {"run": base_run.dir, "checkpoint": sorted((base_run.dir / "checkpoints").glob("*.pt"))[-1],
            "safetensors": base_run.dir / "model.safetensors"}[source]
    before = {p: _digest(p) for p in base_run.dir.rglob("*") if p.is_file()}
    common = dict(data=str(corpus), max_steps=5, log_every=1, eval_every=0, seed=3)
    fresh = tierlab.train(config=fast_config(tmp_path, name="fresh", **common))
    tuned = tierlab.train(config=fast_config(tmp_path, name="tuned", init_from=str(spec), **common))
    first = lambda run: run.metrics("train")[0]["loss"]  # noqa: E731
    assert first(tuned) < first(fresh) - 1.0, (first(tuned), first(fresh))  # bytes already learned (~5.5 fresh)
    (event,) = tuned.events("init_from")
    assert event["tokenizer"] == "byte" and event["weights"].endswith((".pt", ".safetensors"))
    assert tuned.config["init_from"] == str(spec)  # recorded absolute, as the data path
    # A new run: its own step count and schedule, and the source run is not touched.
    assert tuned.summary["steps"] == 5 and tuned.metrics("train")[0]["step"] == 1
    assert before == {p: _digest(p) for p in base_run.dir.rglob("*") if p.is_file()}


def test_weights_that_do_not_fit_are_refused_before_anything_is_written(tmp_path, base_run):
    with pytest.raises(ConfigError, match=r"do not fit this model: .*size mismatch.*Fix: build the model they were "
                                          r"trained with"):
        tierlab.train(config=fast_config(tmp_path, init_from=str(base_run.dir),
                                         model_args={"n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 64}))
    corpus = write_corpus(tmp_path / "c.txt", sentences=1500)
    with pytest.raises(ConfigError, match=r"trained with tokenizer byte, this run's is tokenizer\.json:.*the same "
                                          r"token ids would mean other things\. Fix: train with theirs: --tokenizer byte"):
        tierlab.train(config=fast_config(tmp_path, init_from=str(base_run.dir), data=str(corpus),
                                         tokenizer="bpe:300"))
    with pytest.raises(ConfigError, match="does not exist"):
        tierlab.train(config=fast_config(tmp_path, init_from=str(tmp_path / "nope")))
    assert not (tmp_path / "runs").exists()


def test_cli_init_from(tmp_path, base_run):
    bad = run_cli("train", "--init-from", str(tmp_path), "--max-steps", "2", cwd=tmp_path)
    assert_user_error(bad, "holds neither model.safetensors nor a checkpoint")


def test_a_size_mismatch_names_whole_parameters_and_counts_the_rest(tmp_path, base_run):
    from safetensors.torch import load_file

    from tierlab.models.tiny_gpt import TinyGPT

    small = {"n_layer": 1, "n_head": 2, "d_model": 16, "max_seq_len": 64}
    with pytest.raises(ConfigError) as err:
        tierlab.train(config=fast_config(tmp_path, init_from=str(base_run.dir), model_args=small))
    message = str(err.value)
    item = r"[\w.]+ \(\w+ in the weights, \w+ in the model\)"
    found = re.search(rf"do not fit this model: (\d+) size mismatches: ({item}, ){{2}}{item} and (\d+) more\. "
                      r"Fix: build the model they were trained with", message)
    assert found, message  # whole items, not a cut mid-word
    weights, model = load_file(str(base_run.dir / "model.safetensors")), TinyGPT(vocab_size=256, **small).state_dict()
    mismatched = [k for k, v in weights.items() if k in model and model[k].shape != v.shape]
    assert int(found[1]) == len(mismatched) == 3 + int(found[3])
    assert "pos_emb.weight (64x32 in the weights, 64x16 in the model)" in message
