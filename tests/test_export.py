"""tierlab export: each format's parity on real validation batches, its files, and refusals."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from helpers import assert_user_error, fast_config, run_cli, write_corpus, write_model

import tierlab
from tierlab.export import TOLERANCE, export_run

# A user's own model: nn.MultiheadAttention with a causal mask, its own file and factory.
MHA_MODEL = """
    import torch
    from torch import nn

    class MhaLM(nn.Module):
        def __init__(self, vocab_size, d=32, heads=2, max_len=64):
            super().__init__()
            self.emb, self.pos = nn.Embedding(vocab_size, d), nn.Embedding(max_len, d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab_size)

        def forward(self, ids):
            t = ids.size(1)
            x = self.emb(ids) + self.pos(torch.arange(t, device=ids.device))
            mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=ids.device), 1)
            a, _ = self.attn(x, x, x, attn_mask=mask, need_weights=False)
            return self.head(self.norm(x + a))

    def build(vocab_size):
        return MhaLM(vocab_size)
"""

# Keeps Python state between calls: a trace records one call's path, so the export cannot
# compute what the model computes.
STATEFUL_MODEL = """
    from torch import nn

    class Alternating(nn.Module):
        def __init__(self, vocab_size=256):
            super().__init__()
            self.emb, self.head, self.calls = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size), 0

        def forward(self, ids):
            self.calls += 1
            h = self.emb(ids)
            return self.head(h if self.calls % 2 else -h)
"""


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory):
    return tierlab.train(config=fast_config(tmp_path_factory.mktemp("export"), max_steps=10)).dir


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export-user")
    write_model(tmp, MHA_MODEL)
    corpus = write_corpus(tmp / "corpus.txt", sentences=800)
    cfg = fast_config(tmp, model=str(tmp / "my_model.py:build"), model_args={}, data=str(corpus), max_steps=10)
    return tierlab.train(config=cfg).dir


def _trained(tmp_path, source: str, factory: str):
    """A 4-step run of the model ``factory`` defined by ``source`` (a user's model file)."""
    write_model(tmp_path, source)
    return tierlab.train(config=fast_config(tmp_path, model=str(tmp_path / f"my_model.py:{factory}"), model_args={},
                                            max_steps=4, eval_every=0))


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_export_parity_on_the_builtin_model(builtin_run, tmp_path, fmt):
    result = export_run(builtin_run, fmt, tmp_path / fmt)
    assert result.checked and result.max_abs_diff <= result.tolerance
    assert TOLERANCE[fmt] <= result.tolerance <= TOLERANCE[fmt] * 100  # scaled by the logits' size
    assert result.batches == 4 and result.shape == [8, 32]
    files = {p.name for p in (tmp_path / fmt).iterdir()}
    assert "README.md" in files and set(result.files) == files
    readme = (tmp_path / fmt / "README.md").read_text()
    assert "## Loading" in readme and "byte-level" in readme and f"{result.max_abs_diff:.3g}" in readme
    # The exported artefact loads the way its README says and computes the model's logits.
    model, _ = tierlab.load(builtin_run)
    ids = torch.randint(0, 256, (2, 20))
    expected = model(ids).detach()
    if fmt == "torchscript":
        got = torch.jit.load(str(tmp_path / fmt / "model.pt"))(ids)
    elif fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(tmp_path / fmt / "model.onnx"))
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
    else:
        from safetensors.torch import load_file

        assert json.loads((tmp_path / fmt / "model_config.json").read_text())["vocab_size"] == 256
        weights = load_file(str(tmp_path / fmt / "model.safetensors"))
        got = torch.func.functional_call(model, weights, (ids,))
    assert (got - expected).abs().max() <= max(result.tolerance, 1e-6) * 10  # other shape than the check's


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript", "onnx"])
def test_export_parity_on_a_user_model_file(user_run, tmp_path, fmt):
    result = export_run(user_run, fmt, tmp_path / fmt)
    assert result.checked and result.max_abs_diff <= result.tolerance, result.text()


def test_export_into_a_folder_that_does_not_exist_yet(builtin_run, tmp_path):
    result = export_run(builtin_run, "safetensors", tmp_path / "new" / "deploy")
    assert result.checked and (tmp_path / "new" / "deploy" / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["deploy"]  # no staging left behind


def test_cli_export_json_and_refusals(builtin_run, tmp_path):
    ok = run_cli("export", str(builtin_run), "--format", "torchscript", "--out", str(tmp_path / "ts"), "--json",
                 str(tmp_path / "r.json"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "parity on 4 validation batch(es)" in ok.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["format"] == "torchscript" and report["checked"] and report["tolerance"] >= 1e-5
    before = sorted(p.name for p in (tmp_path / "ts").iterdir())
    again = run_cli("export", str(builtin_run), "--format", "torchscript", "--out", str(tmp_path / "ts"), cwd=tmp_path)
    assert_user_error(again, "already exists")
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == before  # untouched
    assert_user_error(run_cli("export", str(tmp_path / "nope"), "--format", "onnx", cwd=tmp_path), "not a tierlab run")


def test_a_model_that_cannot_be_traced_is_refused_with_the_reason(tmp_path):
    run = _trained(tmp_path, STATEFUL_MODEL, "Alternating")
    result = run_cli("export", str(run.dir), "--format", "torchscript", cwd=tmp_path)
    assert_user_error(result, "The torchscript export does not compute what the model computes",
                      "Python control flow")
    assert not (run.dir / "export-torchscript").exists()
    assert not [p for p in run.dir.iterdir() if p.name.startswith(".export")]  # no staging left behind


def test_a_data_dependent_branch_stops_the_onnx_exporter(tmp_path):
    run = _trained(tmp_path, """
        from torch import nn

        class Branchy(nn.Module):
            def __init__(self, vocab_size=256):
                super().__init__()
                self.emb, self.head = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size)

            def forward(self, ids):
                h = self.emb(ids)
                if ids.float().mean() > 100:  # a Python branch on the input's values
                    h = -h
                return self.head(h)
    """, "Branchy")
    result = run_cli("export", str(run.dir), "--format", "onnx", cwd=tmp_path)
    assert_user_error(result, "torch.onnx.export cannot export this model", "data-dependent")
    assert "def forward" not in result.stderr  # no graph dump on the terminal
    assert not np.any([p.name.startswith("export") for p in run.dir.iterdir()])


def test_onnx_without_its_packages_says_what_to_install(builtin_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(tierlab.UserError, match=r"pip install 'tierlab\[onnx\]'"):
        export_run(builtin_run, "onnx", tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_tracer_warnings_are_named_in_whole_sentences(tmp_path):
    run = _trained(tmp_path, """
        import math
        import torch
        from torch import nn

        class Scaled(nn.Module):
            def __init__(self, vocab_size=256):
                super().__init__()
                self.emb, self.head = nn.Embedding(vocab_size, 16), nn.Linear(16, vocab_size)

            def forward(self, ids):
                return self.head(self.emb(ids) / torch.tensor(math.sqrt(16.0)))  # a constant made in forward
    """, "Scaled")
    result = export_run(run.dir, "torchscript", tmp_path / "ts")
    assert result.checked and result.max_abs_diff <= result.tolerance
    # Cut at the first ". ", not the first ".": "torch.tensor" must not come out as "torch".
    assert "tracer warning: torch.tensor results are registered as constants in the trace" in result.notes


def test_the_export_folder_and_its_files_follow_the_umask(builtin_run, tmp_path):
    umask = 0o027  # not the usual 022: what is checked is that the umask is followed, not one fixed mode
    old = os.umask(umask)
    try:
        # Staged beside the target (a rename), and in the temporary directory (a copy: the folder is new).
        for out in (tmp_path / "deploy", tmp_path / "new" / "deploy"):
            result = run_cli("export", builtin_run, "--format", "safetensors", "--out", out, cwd=tmp_path)
            assert result.returncode == 0, result.stderr
            assert stat.S_IMODE(out.stat().st_mode) == 0o750, oct(out.stat().st_mode)  # not mkdtemp's 0700
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
            assert modes == {name: 0o640 for name in ("README.md", "model.safetensors", "model_config.json")}, modes
    finally:
        os.umask(old)


def test_a_run_whose_model_file_moved_is_exported_with_model(tmp_path):
    write_model(tmp_path / "models", MHA_MODEL)
    run = tierlab.train(config=fast_config(tmp_path, model=str(tmp_path / "models" / "my_model.py:build"),
                                           model_args={}, max_steps=4, eval_every=0))
    (tmp_path / "models").rename(tmp_path / "moved")
    assert_user_error(run_cli("export", run.dir, "--format", "safetensors", cwd=tmp_path), "which no longer exists",
                      "pass its new place to `tierlab export`: --model NEW/PLACE/my_model.py:build")
    assert not (run.dir / "export-safetensors").exists()
    result = run_cli("export", run.dir, "--format", "safetensors", "--model", "moved/my_model.py:build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "max |logit diff| 0 " in result.stdout  # rebuilt from the file given, the run's weights loaded into it
    config = json.loads((run.dir / "export-safetensors" / "model_config.json").read_text())
    assert config["model"] == str(tmp_path / "moved" / "my_model.py") + ":build"  # where it is now, absolute
