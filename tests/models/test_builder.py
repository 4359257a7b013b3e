"""Transformer Builder exports (model.py + config.json), loaded as they are: tests/assets/builder holds the fixtures."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import tierlab
from helpers import assert_user_error, fast_config, run_cli, write_model
from tierlab.errors import DataError, ModelError
from tierlab.models import future_leak, load_model, max_positions

EXPORTS = Path(__file__).parent.parent / "assets" / "builder"
TINY = ("--data", "demo", "--precision", "fp32", "--batch-size", "4", "--seq-len", "32", "--log-every", "5",
        "--eval-every", "10", "--eval-batches", "2", "--no-plots")


def test_a_flat_export_goes_through_validate_train_resume_sample_and_export(tmp_path):
    flat = shutil.copytree(EXPORTS / "flat", tmp_path / "export")  # as downloaded: a folder of two files

    checked = run_cli("validate", "--model", flat, "--no-doctor", cwd=tmp_path)
    assert checked.returncode == 1 and "FAIL  causality" in checked.stdout and "--causal-mask" in checked.stdout
    masked = run_cli("validate", "--model", flat, "--no-doctor", "--causal-mask", cwd=tmp_path)
    assert masked.returncode == 0, masked.stdout + masked.stderr
    assert "PASS  causality" in masked.stdout and "logits [B, T, 300]" in masked.stdout  # the config's vocab_size

    refused = run_cli("train", "--model", flat, *TINY, "--max-steps", "10", "--name", "plain", cwd=tmp_path)
    assert_user_error(refused, "The model sees the future", "--causal-mask")
    assert not (tmp_path / "runs" / "plain").exists()

    trained = run_cli("train", "--model", flat, *TINY, "--max-steps", "10", "--causal-mask", "--name", "x",
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    out = trained.stdout + trained.stderr
    assert "building" in out and "d_model, nhead, num_layers, vocab_size from" in out
    assert "the model has 300 outputs, more than the 256 tokens" in out  # said once
    assert out.count("more than the 256 tokens") == 1
    run_dir = tmp_path / "runs" / "x"
    info = json.loads((run_dir / "run.json").read_text())
    assert info["model_sha256"] and info["model_config_sha256"]
    assert json.loads((run_dir / "config.json").read_text())["causal_mask"] is True

    resumed = run_cli("train", "--resume", run_dir, "--max-steps", "15", "--allow-config-change", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert tierlab.Run.load(run_dir).summary["steps"] == 15

    sampled = run_cli("sample", run_dir, "--prompt", "To be", "--max-new-tokens", "30", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr  # never a token id the byte tokenizer does not have
    assert sampled.stdout.startswith("To be")

    exported = run_cli("export", run_dir, "--format", "safetensors", "--out", tmp_path / "exported", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "parity on" in exported.stdout
    assert json.loads((tmp_path / "exported" / "model_config.json").read_text())["causal_mask"] is True
    readme = (tmp_path / "exported" / "README.md").read_text()
    snippet = readme.split("```python\n", 1)[1].split("```", 1)[0]  # the loading code, run as a user would
    scope = {}
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path / "exported")
    try:
        exec(snippet, scope)  # noqa: S102 - the export's own README
    finally:
        os.chdir(cwd)
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        assert future_leak(lambda x: scope["model"](x), ids, 15, 256) is None  # loaded causal, as it was trained


def test_a_node_graph_config_sizes_the_model_and_its_length():
    model = load_model(str(EXPORTS / "graph"), {}, vocab_size=256)
    assert type(model).__name__ == "GraphTransformer"
    assert model.embedding_0.weight.shape == (300, 32) and model.mhsa_0.num_heads == 4
    assert max_positions(model) == 64  # the config's seq_length
    narrower = load_model(str(EXPORTS / "graph"), {"embed_dim": 16}, vocab_size=256)  # --model-arg wins
    assert narrower.embedding_0.weight.shape == (300, 16)


def test_the_config_length_limits_the_sequence(tmp_path):
    cfg = fast_config(tmp_path, model=str(EXPORTS / "graph"), model_args={}, seq_len=128, causal_mask=True)
    with pytest.raises(ModelError, match="--seq-len 128 is longer than the model's 64 positions"):
        tierlab.train(config=cfg)


def test_a_constructor_without_arguments_is_built_as_written():
    model = load_model(str(EXPORTS / "no_args"), {}, vocab_size=256)
    assert model.embedding.weight.shape == (256, 32)
    with pytest.raises(ModelError, match="does not accept the argument"):
        load_model(str(EXPORTS / "no_args"), {"d_model": 64}, vocab_size=256)


def test_a_model_file_with_its_export_config_beside_it_is_the_same_export():
    model = load_model(str(EXPORTS / "flat" / "model.py"), {}, vocab_size=256)
    assert type(model).__name__ == "CustomTransformer" and model.fc_out.out_features == 300


def test_a_plain_model_file_leaves_an_unrelated_config_json_alone(tmp_path):
    write_model(tmp_path, """
        from torch import nn

        class Model(nn.Module):
            def __init__(self, vocab_size=256, width=8):
                super().__init__()
                self.emb, self.out = nn.Embedding(vocab_size, width), nn.Linear(width, vocab_size)

            def forward(self, ids):
                return self.out(self.emb(ids))
    """, name="model.py")
    (tmp_path / "config.json").write_text(json.dumps({"width": 999, "learning_rate": 3e-4}))  # not an export's
    model = load_model(str(tmp_path / "model.py"), {}, vocab_size=256)
    assert model.emb.weight.shape == (256, 8)


def test_the_broken_forward_signature_is_named_with_the_fix(tmp_path):
    result = run_cli("train", "--model", EXPORTS / "broken_forward", *TINY, "--max-steps", "5", cwd=tmp_path)
    assert_user_error(result, "GraphTransformer.forward(input_0_tokens, mhsa_0_output, residual_0_output, "
                      "residual_1_output) requires 3 argument(s) besides the token ids",
                      "tierlab calls model(input_ids)", "compute mhsa_0_output, residual_0_output, residual_1_output "
                      "inside forward")
    checked = run_cli("validate", "--model", EXPORTS / "broken_forward", cwd=tmp_path)
    assert_user_error(checked, "requires 3 argument(s) besides the token ids")


def test_an_export_without_model_name_and_two_classes_asks_which(tmp_path):
    with pytest.raises(ModelError, match="defines 2 nn.Module classes .*Encoder, Decoder.* names none"):
        load_model(str(EXPORTS / "two_classes"), {}, vocab_size=256)
    chosen = load_model(f"{EXPORTS / 'two_classes'}:Decoder", {}, vocab_size=256)  # as the message suggests
    assert type(chosen).__name__ == "Decoder" and chosen.out.out_features == 256  # config values still apply


def test_export_mistakes_are_plain(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.py").write_text("")
    with pytest.raises(ModelError, match="is a folder without a model.py .*notes.py"):
        load_model(str(empty), {}, vocab_size=256)
    broken = shutil.copytree(EXPORTS / "flat", tmp_path / "broken")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="is not a JSON config"):
        load_model(str(broken), {}, vocab_size=256)
    (broken / "config.json").write_text(json.dumps({"model_name": "Missing", "d_model": 8}))
    with pytest.raises(ModelError, match="names the model 'Missing'.*CustomTransformer"):
        load_model(str(broken), {}, vocab_size=256)


def test_a_config_vocabulary_smaller_than_the_tokenizer_is_the_usual_error(tmp_path):
    small = shutil.copytree(EXPORTS / "flat", tmp_path / "small")
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 40}))  # the demo text has higher ids
    with pytest.raises(DataError, match="the model has only 40 outputs"):
        tierlab.train(config=fast_config(tmp_path, model=str(small), model_args={}, causal_mask=True))


def test_a_model_trained_from_an_export_is_the_same_built_again(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, model=str(EXPORTS / "graph"), model_args={}, causal_mask=True, max_steps=5,
                                           eval_every=0))
    model, _ = tierlab.load(run.dir)
    trained = {k: v for k, v in run.model.state_dict().items()}
    assert all(torch.equal(model.state_dict()[k].cpu(), v.cpu()) for k, v in trained.items())
    assert getattr(model, "_tierlab_causal_mask", None)  # rebuilt with its mask, as it was trained
