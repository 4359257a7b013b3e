"""tierlab.train: the run directory contract, set-up checks, and what a failed set-up leaves behind."""

import json
import math
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

import tierlab
from helpers import TINY_MODEL, fast_config, write_corpus, write_model
from tierlab.errors import ConfigError, DataError, ModelError, UserError

TRAIN_FIELDS = {"kind", "step", "tokens", "loss", "lr", "grad_norm", "loss_scale", "skipped_steps", "tokens_per_s",
                "step_ms", "mem_peak_mb", "mfu"}
EVAL_FIELDS = {"kind", "step", "tokens", "val_loss", "val_ppl", "val_acc"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tierlab.train(config=fast_config(tmp_path_factory.mktemp("api"), max_steps=20, log_every=5, eval_every=10))


def test_run_directory_holds_the_whole_story(run):
    names = {p.name for p in run.dir.iterdir()}
    assert {"config.json", "metrics.jsonl", "events.jsonl", "summary.json", "model.safetensors"} <= names
    train, evals = run.metrics("train"), run.metrics("eval")
    assert [r["step"] for r in train] == [5, 10, 15, 20]
    assert [r["step"] for r in evals] == [10, 20]
    assert all(set(r) == TRAIN_FIELDS for r in train)
    assert all(set(r) == EVAL_FIELDS for r in evals)
    tokens_per_step = 8 * 32
    assert [r["tokens"] for r in train] == [s * tokens_per_step for s in (5, 10, 15, 20)]
    last = train[-1]
    assert last["loss_scale"] is None and last["mfu"] is None and last["skipped_steps"] == 0
    assert last["tokens_per_s"] > 0 and last["step_ms"] > 0 and last["mem_peak_mb"] > 0
    assert 0 < last["grad_norm"] < 100 and 0 < last["lr"] <= 1e-2
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert 0 <= evals[-1]["val_acc"] <= 1


def test_events_and_summary(run):
    events = run.events()
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert all("time" in e for e in events)
    (precision,) = run.events("precision")
    assert precision["requested"] == "fp32" and precision["used"] == "fp32" and precision["reason"]
    assert run.events("run_end")[0]["status"] == "completed"
    s = run.summary
    assert s["steps"] == 20 and s["tokens"] == 20 * 8 * 32 and s["precision"] == "fp32"
    assert s["skipped_steps"] == 0 and s["final_loss_scale"] is None and s["wall_seconds"] > 0
    assert s["best_val_loss"] <= s["final_val_loss"] and s["median_tokens_per_s"] > 0


def test_final_weights_are_the_trained_model_in_safetensors(run):
    saved = load_file(str(run.weights_path))
    state = run.model.state_dict()
    assert saved.keys() <= state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)


def test_resolved_config_round_trips(run, tmp_path):
    config = run.config
    assert config["warmup_steps"] == 1 and config["min_lr"] is None  # not given: lr/10, whatever --lr becomes
    again = tierlab.train(config={**config, "out": str(tmp_path), "name": "again"})
    assert {k: v for k, v in again.config.items() if k not in ("out", "name")} == \
           {k: v for k, v in config.items() if k not in ("out", "name")}
    assert [r["loss"] for r in again.metrics("train")] == [r["loss"] for r in run.metrics("train")]


def test_epochs_set_the_number_of_steps(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", sentences=300)
    run = tierlab.train(config=fast_config(tmp_path, data=str(corpus), epochs=0.5, max_steps=None,
                                            eval_every=0))
    train_tokens = len(corpus.read_bytes()) - int(len(corpus.read_bytes()) * 0.1)
    assert run.summary["steps"] == math.ceil(0.5 * train_tokens / (8 * 32))
    assert run.metrics("eval") == []


def test_existing_run_directory_is_refused_and_untouched(tmp_path):
    cfg = fast_config(tmp_path)
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"precious": true}\n')
    with pytest.raises(ConfigError, match="already exists"):
        tierlab.train(config=cfg)
    assert [p.name for p in run_dir.iterdir()] == ["metrics.jsonl"]
    assert (run_dir / "metrics.jsonl").read_text() == '{"precious": true}\n'


def test_an_empty_folder_made_beforehand_is_used_and_a_taken_one_is_not(tmp_path):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)  # e.g. a job script's mkdir before the run
    run = tierlab.train(config=fast_config(tmp_path, max_steps=3, eval_every=0))
    assert run.dir == run_dir and run.summary["status"] == "completed"
    # Two runs of one --name started together: both find the folder empty; the second to
    # create its metrics file stops with a plain error and writes nothing.
    from tierlab.train.run import claim as _claim

    other = tmp_path / "runs" / "race"
    other.mkdir()
    _claim(other)
    with pytest.raises(ConfigError, match="just taken by another run"):
        _claim(other)
    assert [p.name for p in other.iterdir()] == ["metrics.jsonl"]


@pytest.mark.parametrize("source, changes, error, fragment", [
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 8)\n    def forward(self, ids):\n        return self.e(ids).mean(1)\n",
     {}, ModelError, "returned logits of shape [2, 8]"),
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(48, 48)\n    def forward(self, ids):\n        return self.e(ids)\n", {},
     DataError, "only 48 outputs"),
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 4)\n    def forward(self, ids):\n        return self.e(ids).sum(-1)\n",
     {}, ModelError, "returned logits of shape [2, 32]"),
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 256)\n    def forward(self, ids):\n        return {'hidden': ids}\n",
     {}, ModelError, "holds no logits"),
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 256)\n    def forward(self, ids):\n        return self.e(ids).softmax(-1)\n",
     {}, ModelError, "returns probabilities, not logits"),
    # Sees the future: every position mixes in the whole sequence (no causal mask) ...
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 256)\n    def forward(self, ids):\n"
     "        x = self.e(ids)\n        return x + x.mean(1, keepdim=True)\n",
     {}, ModelError, "The model sees the future"),
    # ... or an off-by-one: position t reads token t + 1, the very token it should predict.
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.e = torch.nn.Embedding(256, 256)\n    def forward(self, ids):\n"
     "        return self.e(torch.roll(ids, -1, dims=1))\n",
     {}, ModelError, "would teach it to copy the next token"),
    (None, {"seq_len": 128}, ModelError, "longer than the model's 64 positions"),
    # Positions in a table that publishes no length: the short table is named from the IndexError.
    ("import torch\nclass Model(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
     "        self.tok, self.pos = torch.nn.Embedding(256, 8), torch.nn.Embedding(16, 8)\n"
     "        self.head = torch.nn.Linear(8, 256)\n    def forward(self, ids):\n"
     "        return self.head(self.tok(ids) + self.pos(torch.arange(ids.size(1))))\n",
     {}, ModelError, "its embedding 'pos' has 16 rows, fewer than --seq-len 32 positions"),
])
def test_bad_models_fail_before_the_run_directory_exists(tmp_path, source, changes, error, fragment):
    spec = str(write_model(tmp_path, source)) if source else "tiny-gpt"
    cfg = fast_config(tmp_path, model=spec, model_args={} if source else dict(TINY_MODEL), **changes)
    with pytest.raises(error) as err:
        tierlab.train(config=cfg)
    assert fragment in str(err.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("text, changes, fragment", [
    ("", {}, "is empty"),
    ("short\n", {}, "fewer than one block"),
    ("x" * 300, {"val_fraction": 0.05}, "validation split"),
])
def test_too_little_data_is_a_data_error(tmp_path, text, changes, fragment):
    path = tmp_path / "c.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=fragment):
        tierlab.train(config=fast_config(tmp_path, data=str(path), **changes))


def test_in_memory_model_and_bpe_on_a_user_corpus(tmp_path):
    corpus = write_corpus(tmp_path / "c.txt", sentences=2000)
    model = tierlab.train(config=fast_config(tmp_path, data=str(corpus), tokenizer="bpe:320", max_steps=30,
                                             eval_every=30)).model
    assert model.tok_emb.num_embeddings == 320  # vocab_size passed from the tokenizer
    run_dir = tmp_path / "runs" / "run"
    assert json.loads((run_dir / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    evals = tierlab.Run.load(run_dir).metrics("eval")
    assert evals[-1]["val_loss"] < math.log(320) - 1.0


def test_options_as_keywords_and_an_in_memory_model_loaded_back(tmp_path):
    from tierlab.models.tiny_gpt import TinyGPT

    # Any option as a keyword; keywords win over the config they sit beside.
    run = tierlab.train(TinyGPT(vocab_size=256, **TINY_MODEL), "demo", fast_config(tmp_path, max_steps=50),
                        max_steps=6, eval_every=0, name="kw")
    assert run.summary["steps"] == 6 and run.dir == tmp_path / "runs" / "kw"
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        tierlab.train("tiny-gpt", "demo", max_step=5, out=str(tmp_path / "runs"))
    with pytest.raises(ConfigError, match="--lr"):
        tierlab.train("tiny-gpt", "demo", fast_config(tmp_path), lr=-1.0)
    # The run trained an in-memory module: tierlab cannot rebuild it, but loads its weights into one you pass.
    with pytest.raises(UserError, match="tierlab.load\\(run, model=my_model\\)"):
        tierlab.load(run.dir)
    fresh = TinyGPT(vocab_size=256, **TINY_MODEL)
    loaded, tokenizer = tierlab.load(run.dir, model=fresh)
    assert loaded is fresh and tokenizer.vocab_size == 256
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), run.model.state_dict().values()))


def test_a_module_passed_as_the_model_keyword_is_trained(tmp_path):
    from tierlab.models.tiny_gpt import TinyGPT

    module = TinyGPT(vocab_size=256, **TINY_MODEL)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    run = tierlab.train(model=module, data="demo", config=fast_config(tmp_path, max_steps=3, eval_every=0),
                        name="keyword")
    assert run.summary["status"] == "completed" and run.model is module
    assert run.config["model"] == "<in-memory TinyGPT>"
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())  # this module was trained
    with pytest.raises(ConfigError, match="two models"):
        tierlab.train(TinyGPT(vocab_size=256, **TINY_MODEL), model=module, config=fast_config(tmp_path))


def test_jsonl_with_another_text_field_trains_and_is_part_of_the_run(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    sentences = write_corpus(tmp_path / "c.txt", sentences=600).read_text().splitlines()
    corpus.write_text("".join(json.dumps({"id": i, "content": line}) + "\n" for i, line in enumerate(sentences)))
    run = tierlab.train("tiny-gpt", str(corpus), fast_config(tmp_path, max_steps=4, eval_every=0, ckpt_every=2),
                        text_field="content")
    assert run.config["text_field"] == "content" and run.summary["status"] == "completed"
    with pytest.raises(ConfigError, match="different text_field"):  # other text, another run
        tierlab.resume(run.dir, {"text_field": "id", "max_steps": 6, "allow_config_change": True})


def test_the_final_weights_follow_the_umask(tmp_path):
    old = os.umask(0o027)  # not the usual 022: the umask is followed, not one fixed mode
    try:
        run = tierlab.train(config=fast_config(tmp_path, max_steps=2, eval_every=0))
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in run.dir.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == 0o640, modes  # not safetensors' 0600
    assert set(modes.values()) == {0o640}, modes  # like every other file of the run


DETACHED = """
    from tierlab.models.tiny_gpt import TinyGPT
    class Detached(TinyGPT):
        def forward(self, ids):
            return super().forward(ids).detach()
    def build(vocab_size=256):
        return Detached(vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
"""

FAILS_LATER = """
    from tierlab.models.tiny_gpt import TinyGPT
    class FailsLater(TinyGPT):
        calls = 0
        def forward(self, ids):
            if self.training:
                FailsLater.calls += 1
                if FailsLater.calls == 3:
                    raise ValueError("a shape the author did not expect")
            return super().forward(ids)
    def build(vocab_size=256):
        return FailsLater(vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
"""


def test_an_error_in_the_model_during_training_is_one_plain_line(tmp_path):
    """Issue 19.14: the step, the model's file and line, what the run kept; a run that never stepped leaves nothing."""
    from helpers import assert_user_error, run_cli, write_model

    detached = write_model(tmp_path, DETACHED, "detached.py")
    result = run_cli("train", "--model", f"{detached}:build", "--max-steps", "5", "--seq-len", "32",
                     "--batch-size", "4", "--name", "d", cwd=tmp_path)
    assert_user_error(result, "cannot be trained at step 1", "the run directory was removed")
    assert not (tmp_path / "runs" / "d").exists()  # so the same --name works after the fix
    later = write_model(tmp_path, FAILS_LATER, "later.py")
    result = run_cli("train", "--model", f"{later}:build", "--max-steps", "5", "--seq-len", "32", "--batch-size", "4",
                     "--ckpt-every", "2", "--log-every", "1", "--name", "l", cwd=tmp_path)
    assert_user_error(result, "ValueError: a shape the author did not expect at step 3", f"{later}:",
                      "step-00000002.pt", "--resume")
    assert (tmp_path / "runs" / "l" / "summary.json").is_file()
