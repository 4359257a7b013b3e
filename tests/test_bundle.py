"""export --format bundle: a folder that runs the model elsewhere, with pip alone (a fresh venv under -m slow)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
import torch
from helpers import fast_config, labelled_rows, write_corpus, write_labelled_csv, write_model

import tierlab
from tierlab.bundle import requirements
from tierlab.errors import UserError
from tierlab.export import export_run
from tierlab.sample import classify, generate

CLASSIFIER = Path(__file__).parent / "assets" / "builder" / "classifier"  # a Builder export: model.py + config.json
LM = """
    import torch
    from torch import nn

    class SmallLM(nn.Module):
        def __init__(self, vocab_size, d=32, max_len=64):
            super().__init__()
            self.emb, self.pos, self.head = nn.Embedding(vocab_size, d), nn.Embedding(max_len, d), nn.Linear(d, vocab_size)
            self.mix = nn.Linear(d, d)

        def forward(self, ids):
            x = self.emb(ids) + self.pos(torch.arange(ids.size(1), device=ids.device))
            return self.head(x + torch.tanh(self.mix(torch.cumsum(x, 1) / torch.arange(1, ids.size(1) + 1).view(1, -1, 1))))

    def build(vocab_size):
        return SmallLM(vocab_size)
"""


def _predict(bundle: Path, *args: str, cwd: Path, python: str = sys.executable, stdin: str | None = None):
    """The bundle's predict.py in another folder, without tierlab's source on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([python, str(bundle / "predict.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, input=stdin)


def _move(bundle: Path, tmp_path: Path) -> Path:
    """The bundle copied to another place, as if to another machine (the run and the model file stay behind)."""
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.copytree(bundle, moved)
    return moved


def test_a_language_model_file_bundle_generates_what_sample_does(tmp_path):
    # (a name no other test's model imports: Python keeps one module per name for the process)
    model = write_model(tmp_path / "src", "from bundle_layers import squash\n" +
                        textwrap.dedent(LM).replace("torch.tanh(", "squash("))
    write_model(tmp_path / "src", "import torch\n\ndef squash(x):\n    return torch.tanh(x)\n", "bundle_layers.py")
    corpus = write_corpus(tmp_path / "corpus.txt", sentences=600)
    run = tierlab.train(config=fast_config(tmp_path, model=f"{model}:build", model_args={}, data=str(corpus),
                                           tokenizer="bpe:300", max_steps=10))
    result = export_run(run.dir, "bundle", tmp_path / "bundle")
    assert result.checked and result.max_abs_diff == 0
    assert {"predict.py", "requirements.txt", "model.safetensors", "tokenizer.json", "README.md", "vendor",
            "model"} <= set(result.files)
    assert (tmp_path / "bundle" / "model" / "my_model.py").read_text() == model.read_text()
    assert (tmp_path / "bundle" / "model" / "bundle_layers.py").is_file()  # the module it imports from its own folder
    pins = (tmp_path / "bundle" / "requirements.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in pins and "tokenizers==" in pins
    card = (tmp_path / "bundle" / "README.md").read_text()
    params = sum(p.numel() for p in run.model.parameters())
    assert f"parameters: {params:,}" in card and run.events("run_start")[0]["corpus_sha256"] in card
    assert "status completed, 10 steps" in card and "largest absolute logit difference 0" in card
    assert "`SmallLM`" in card and "`model/my_model.py:build` with" in card  # the bundle's own copy of the source
    moved = _move(tmp_path / "bundle", tmp_path)
    shutil.rmtree(model.parent)  # the model file is gone from its old place: the bundle has its own copy
    out = _predict(moved, "the cat", "--max-new-tokens", "12", "--temperature", "0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    trained, tokenizer = tierlab.load(run.dir, model=str(moved / "model" / "my_model.py:build"))
    assert out.stdout.rstrip("\n") == generate(trained, tokenizer, "the cat", 12, 0.0)
    assert "--max-new-tokens" in _predict(moved, "--help", cwd=tmp_path).stdout
    empty = _predict(moved, "", cwd=tmp_path)
    assert empty.returncode == 2 and "predict.py: error: The prompt is empty" in empty.stderr
    assert "Traceback" not in empty.stderr


def test_a_builder_classifier_bundle_labels_as_sample_does(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(120))
    run = tierlab.train(config=fast_config(tmp_path, objective="classify", data=str(data), model=str(CLASSIFIER),
                                           model_args={}, seq_len=32, max_steps=10, early_stop=5))
    result = export_run(run.dir, "bundle", tmp_path / "bundle")
    assert result.max_abs_diff == 0
    bundle = _move(tmp_path / "bundle", tmp_path)
    assert (bundle / "model" / "model.py").is_file() and (bundle / "model" / "config.json").is_file()
    assert (bundle / "labels.json").is_file() and (bundle / "best.safetensors").is_file()
    out = _predict(bundle, "-", cwd=tmp_path, stdin="great superb\nawful dull\n")
    assert out.returncode == 0, out.stderr
    model, tokenizer = tierlab.load(run.dir)
    expected = [classify(model, tokenizer, text, ["neg", "pos"], 32, "mean") for text in ("great superb", "awful dull")]
    assert [line.split("\t")[0] for line in out.stdout.splitlines()] == [e[0][0] for e in expected]
    best = _predict(bundle, "great superb", "--weights", "best.safetensors", cwd=tmp_path)
    assert best.returncode == 0 and best.stdout.split("\t")[0] in ("neg", "pos")


def test_what_cannot_be_bundled_is_said(tmp_path):
    from torch import nn

    class InMemory(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(256, 8), nn.Linear(8, 256)

        def forward(self, ids):
            return self.head(self.emb(ids))

    run = tierlab.train(InMemory(), config=fast_config(tmp_path, model_args={}, max_steps=2, eval_every=0))
    with pytest.raises(UserError, match="in-memory model: there is no model file to put in a bundle"):
        export_run(run.dir, "bundle", tmp_path / "b", model=InMemory())  # (safetensors would export it)
    assert not (tmp_path / "b").exists()


def test_requirements_name_transformers_for_a_hugging_face_model():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16,
                                                                 n_layer=1, n_head=2))
    pins = requirements(model, hf_tokenizer=False)
    assert f"transformers=={transformers.__version__}" in pins and "tokenizers" not in pins


def test_requirements_name_what_the_model_files_import(tmp_path):
    pytest.importorskip("pandas")
    from importlib import metadata

    main = write_model(tmp_path, "import json\nimport pandas\nfrom helpers_of_mine import block\n", "net.py")
    local = write_model(tmp_path, "import numpy\n", "helpers_of_mine.py")
    pins = requirements(torch.nn.Linear(2, 2), False, [main, local])
    assert f"pandas=={metadata.version('pandas')}" in pins
    assert "json" not in pins and "helpers_of_mine" not in pins and pins.count("numpy==") == 1


@pytest.mark.slow  # a fresh virtual environment, installed from the bundle's requirements.txt (~1-2 min)
def test_a_bundle_runs_in_a_fresh_virtual_environment(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, max_steps=5, eval_every=5))
    export_run(run.dir, "bundle", tmp_path / "bundle")
    bundle = _move(tmp_path / "bundle", tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "-r",
                          str(bundle / "requirements.txt")], capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-2000:]
    python = str(env_dir / "bin" / "python")
    installed = subprocess.run([python, "-c", "import importlib.util; print(importlib.util.find_spec('tierlab'))"],
                               capture_output=True, text=True)
    assert installed.stdout.strip() == "None"  # nothing of tierlab in that environment
    out = _predict(bundle, "12+7=", "--max-new-tokens", "8", "--temperature", "0", cwd=tmp_path, python=python)
    assert out.returncode == 0, out.stderr
    model, tokenizer = tierlab.load(run.dir)
    assert out.stdout.rstrip("\n") == generate(model, tokenizer, "12+7=", 8, 0.0)
    assert json.loads((bundle / "model_config.json").read_text())["model"] == "tiny-gpt"
