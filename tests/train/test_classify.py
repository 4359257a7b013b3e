"""--objective classify: pooling, macro-F1, a run that learns labels, exact resume, and every command on it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tierlab
from helpers import TINY_MODEL, assert_same_run, assert_user_error, fast_config, labelled_rows, run_cli, \
    write_labelled_csv, write_model
from tierlab.errors import ConfigError, DataError, ModelError
from tierlab.train.distributed import SINGLE
from tierlab.train.evaluate import classification_figures, eval_rows
from tierlab.train.objective import Classification, macro_f1
from tierlab.train.precision import PrecisionDecision, PrecisionPolicy

CLASSIFIER = Path(__file__).parent.parent / "assets" / "builder" / "classifier"  # a Builder-format encoder classifier
TINY = {**TINY_MODEL, "n_layer": 2}


def _config(tmp_path, data, **changes):
    values = dict(objective="classify", data=str(data), model_args=dict(TINY), seq_len=24, batch_size=16,
                  max_steps=40, log_every=10, eval_every=20, eval_batches=4, lr=3e-3, pool="mean")
    values.update(changes)
    return fast_config(tmp_path, **values)


def test_pooling_leaves_the_padding_out():
    task = Classification(pad_id=9, pool="mean", labels=["a", "b"])
    inputs = torch.tensor([[1, 2, 9, 9], [3, 9, 9, 9]])
    logits = torch.arange(2 * 4 * 2, dtype=torch.float32).view(2, 4, 2)
    assert torch.equal(task.pooled(logits, inputs), torch.stack([logits[0, :2].mean(0), logits[1, 0]]))
    task.pool = "last"
    assert torch.equal(task.pooled(logits, inputs), torch.stack([logits[0, 1], logits[1, 0]]))
    task.pool = "first"
    assert torch.equal(task.pooled(logits, inputs), logits[:, 0])
    scores = torch.randn(2, 2)
    assert task.pooled(scores, inputs) is scores  # a [B, C] output is the model's own pooling


def test_macro_f1_is_the_mean_of_the_per_class_f1():
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])  # class 2 never seen nor predicted
    f1_0, f1_1 = 2 * 5 / (6 + 7), 2 * 3 / (5 + 4)
    assert macro_f1(confusion) == pytest.approx((f1_0 + f1_1) / 2)


class Constant(nn.Module):
    """Always predicts class ``answer``."""

    def __init__(self, answer: int, classes: int):
        super().__init__()
        self.answer, self.classes, self.bias = answer, classes, nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return nn.functional.one_hot(torch.full((ids.size(0),), self.answer), self.classes).float() * 5 + self.bias


def test_the_evaluation_counts_every_held_out_row_once():
    val = np.zeros((13, 5), dtype=np.int64)
    val[:, -1] = [0] * 8 + [1] * 5
    policy = PrecisionPolicy(PrecisionDecision("fp32", "fp32", "test"), torch.device("cpu"))
    batches = eval_rows(13, batch_size=4, batches=10, rank=0, world_size=1)
    figures = classification_figures(Constant(0, 2), val, batches, policy, SINGLE, Classification(99, "mean", ["a", "b"]))
    assert figures["confusion"] == [[8, 0], [5, 0]] and figures["val_acc"] == pytest.approx(8 / 13)
    assert figures["val_f1"] == pytest.approx((2 * 8 / (8 + 13)) / 2)
    many = np.zeros((13, 5), dtype=np.int64)  # 40 classes: per-class counts, no 40 x 40 matrix per evaluation
    many[:, -1] = np.arange(13) % 3
    labels = [f"c{i}" for i in range(40)]
    wide = classification_figures(Constant(1, 40), many, batches, policy, SINGLE, Classification(99, "mean", labels))
    assert "confusion" not in wide and wide["val_acc"] == pytest.approx(4 / 13)
    assert wide["val_f1"] == pytest.approx(macro_f1(torch.tensor(np.bincount(many[:, -1] * 40 + 1, minlength=1600)
                                                                 .reshape(40, 40))))
    split = [eval_rows(13, 2, 10, rank, 2) for rank in (0, 1)]  # two ranks: each row on exactly one of them
    assert sorted(np.concatenate(split[0] + split[1]).tolist()) == list(range(13))


def test_a_classifier_learns_the_labels_and_records_them(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(480))
    run = tierlab.train(config=_config(tmp_path, data, max_steps=60, eval_every=30))
    start = run.events("run_start")[0]
    assert start["objective"] == "classify" and start["labels"] == ["neg", "pos"] and start["classes"] == 2
    assert start["train_rows"] == 432 and start["val_rows"] == 48 and start["pad_token_id"] == 256
    assert json.loads((run.dir / "labels.json").read_text())["labels"] == ["neg", "pos"]
    last = run.metrics("eval")[-1]
    assert sum(map(sum, last["confusion"])) == 48 and "val_ppl" not in last
    assert last["val_acc"] > 0.8 and last["val_f1"] > 0.8  # chance is 0.5: the cue words were learned
    assert run.summary["final_val_f1"] == last["val_f1"]
    titles = [ax.get_title() for ax in run.plot().axes]
    assert "validation accuracy and macro-F1" in titles
    labelled = run_cli("sample", run.dir, "--prompt", "superb lovely great", cwd=tmp_path)
    assert labelled.returncode == 0, labelled.stderr
    label, scores = labelled.stdout.strip().split("\t")
    assert label == "pos" and scores.startswith("pos ") and "neg " in scores
    report = run_cli("report", run.dir, cwd=tmp_path)
    assert report.returncode == 0 and "confusion matrix at step 60 (48 held-out rows" in report.stdout
    assert "true \\ predicted" in report.stdout and "per-class recall" in report.stdout
    analysed = tierlab.analyze(run=run.dir, batches=1)
    assert analysed.robustness[0].kl == 0 and analysed.robustness[0].loss is not None
    warned = run_cli("sample", run.dir, "--prompt", "great", "--temperature", "0.5", cwd=tmp_path)
    assert warned.returncode == 0 and "--temperature ignored" in warned.stderr
    assert_user_error(run_cli("sample", run.dir, "--prompt", " ", cwd=tmp_path), "--prompt is empty")
    blanks = run_cli("sample", run.dir, "--prompt", "-", cwd=tmp_path, input="\n  \ngreat superb\n")
    assert blanks.returncode == 0 and len(blanks.stdout.splitlines()) == 1 and "2 blank line(s)" in blanks.stderr
    # labels.json edited or deleted: said as such, not blamed on the model (nor loaded as a language model)
    labels = run.dir / "labels.json"
    kept = json.loads(labels.read_text())
    labels.write_text(json.dumps({**kept, "labels": ["neg", "pos", "meh"]}))
    with pytest.raises(DataError, match="names 3 classes, but the run trained 2"):
        tierlab.load(run.dir)
    labels.write_text(json.dumps({**kept, "labels": ["pos", "neg"]}))  # the same count, the names swapped
    with pytest.raises(DataError, match=r"names the classes \['pos', 'neg'\], but the run trained \['neg', 'pos'\]"):
        tierlab.load(run.dir)
    labels.write_text(json.dumps({**kept, "pad_token_id": 255}))
    with pytest.raises(DataError, match="says the padding token is id 255"):
        tierlab.export_run(run.dir, "safetensors", out=tmp_path / "e")
    labels.unlink()
    assert_user_error(run_cli("sample", run.dir, "--prompt", "great", cwd=tmp_path),
                      "is a classification run, but its labels.json", "restore labels.json")
    from tierlab.track.plots import confusion_table

    assert "labels.json is missing" in confusion_table(run.dir)
    assert not (tmp_path / "e").exists()


def test_classify_resume_from_a_mid_run_checkpoint_is_exact(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(90))  # several epochs in 20 steps
    cfg = _config(tmp_path, data, model_args=dict(TINY_MODEL), batch_size=8, max_steps=20, log_every=5,
                  eval_every=10, ckpt_every=10, no_plots=True)
    tierlab.train(config=cfg.replace(name="full"))
    part = tierlab.train(config=cfg.replace(name="part")).dir
    # Back to the step-10 checkpoint as if the process had died after it: records cut there, weights from it.
    tierlab.resume(part / "checkpoints" / "step-00000010.pt")
    assert_same_run(tmp_path / "runs" / "full", part)
    with pytest.raises(ConfigError, match="different label_field"):
        tierlab.resume(part, {"label_field": "other"})


def test_a_builder_export_classifier_goes_through_validate_train_sample_export(tmp_path):
    three = labelled_rows(150, classes=("neg", "pos", "mixed"))
    data = write_labelled_csv(tmp_path / "three.csv", three)
    checked = run_cli("validate", "--model", CLASSIFIER, "--objective", "classify", "--num-classes", "3",
                      "--no-doctor", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "class scores [B, C], C = 3" in checked.stdout and "SKIP  causality" in checked.stdout
    assert "vs ln(C) = 1.099" in checked.stdout  # a fresh 3-way classifier's loss is ln 3, not ln of the vocabulary
    with pytest.raises(ConfigError, match="--num-classes 1: a classifier tells two classes or more apart"):
        tierlab.validate(str(CLASSIFIER), objective="classify", classes=1)
    trained = run_cli("train", "--model", CLASSIFIER, "--objective", "classify", "--data", data, "--seq-len", "32",
                      "--batch-size", "8", "--max-steps", "10", "--eval-every", "10", "--precision", "fp32",
                      "--name", "enc", "--no-plots", "--quiet", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    run_dir = tmp_path / "runs" / "enc"
    sampled = run_cli("sample", run_dir, "--prompt", "-", cwd=tmp_path, input="awful dull\ngreat superb\n")
    assert sampled.returncode == 0, sampled.stderr
    lines = sampled.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("neg", "pos", "mixed") for line in lines)
    exported = tierlab.export_run(run_dir, "safetensors")
    assert exported.max_abs_diff == 0
    spec = json.loads((exported.out / "model_config.json").read_text())
    assert spec["num_classes"] == 3 and spec["labels"] == ["mixed", "neg", "pos"] and spec["pad_token_id"] == 256
    assert (exported.out / "labels.json").is_file() and "class scores" in (exported.out / "README.md").read_text()


def test_a_hugging_face_sequence_classifier_trains(tmp_path):
    pytest.importorskip("transformers")
    model = write_model(tmp_path, """
        from transformers import BertConfig, BertForSequenceClassification

        def build_model(vocab_size, num_labels):
            config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
            return BertForSequenceClassification(config)
    """, "bert_cls.py")
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(120))
    run = tierlab.train(config=_config(tmp_path, data, model=str(model), model_args={}, max_steps=10,
                                       eval_every=10))
    assert run.events("run_start")[0]["classes"] == 2 and len(run.metrics("eval")) == 1


def test_a_language_model_head_or_no_labels_is_refused_plainly(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(60))
    lm = write_model(tmp_path, """
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, vocab_size=257):
                super().__init__()
                self.emb, self.out = nn.Embedding(vocab_size, 8), nn.Linear(8, vocab_size)

            def forward(self, ids):
                return self.out(self.emb(ids))
    """, "lm.py")
    with pytest.raises(ModelError, match="returns 257 outputs per position, and the data has 2 classes"):
        tierlab.train(config=_config(tmp_path, data, model=str(lm), model_args={}))
    no_pad = CLASSIFIER.parent / "no_args"  # 256 embedding rows: none for the padding token
    with pytest.raises(ModelError, match="failed on the padding token, id 256"):
        tierlab.train(config=_config(tmp_path, data, model=str(no_pad), model_args={}))
    with pytest.raises(ConfigError, match="--pool 'max' is not a pooling"):
        _config(tmp_path, data, pool="max")
    with pytest.raises(ConfigError, match="--pool first reads the model's first position, and this model is causal"):
        tierlab.train(config=_config(tmp_path, data, pool="first"))  # TinyGPT: position 0 has read one token
    checked = tierlab.validate("tiny-gpt", model_args=dict(TINY), objective="classify", classes=2, pool="first",
                               doctor=False)
    assert checked["causality"].status == "fail" and "--pool last" in checked["causality"].advice
    missing = run_cli("train", "--objective", "classify", "--data", data, "--label-field", "stars", cwd=tmp_path)
    assert_user_error(missing, "has no column \"stars\"", "--label-field")
    assert not (tmp_path / "runs").exists()


def test_the_built_in_demo_has_labelled_rows_too(tmp_path):
    run = tierlab.train(config=fast_config(tmp_path, objective="classify", seq_len=16, max_steps=30, eval_every=30,
                                           pool="last", lr=3e-3))
    start = run.events("run_start")[0]
    assert start["labels"] == ["minus", "plus", "times"] and start["train_rows"] == 18_000
    assert run.metrics("eval")[-1]["val_acc"] > 0.45  # chance is a third: the product's size alone tells "times"


def test_search_scores_a_classifier_by_macro_f1(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(120))
    searched = run_cli("search", "--objective", "classify", "--data", data, "--seq-len", "24", "--trials", "1",
                       "--steps-per-trial", "4", "--model-arg", "n_layer=1", "--model-arg", "d_model=32",
                       "--model-arg", "n_head=2", "--model-arg", "max_seq_len=64", "--precision", "fp32",
                       "--out", tmp_path / "search", cwd=tmp_path)
    assert searched.returncode == 0, searched.stderr
    assert "best: trial 0, val_f1 " in searched.stdout
    header = (tmp_path / "search" / "trials.csv").read_text().splitlines()[0]
    assert header.startswith("number,state,val_f1,")
    as_lm = run_cli("search", "--data", "demo", "--trials", "1", "--steps-per-trial", "4", "--out", tmp_path / "search",
                    cwd=tmp_path)
    assert_user_error(as_lm, "was created to maximize", "--study NEW-NAME")


def test_a_language_model_run_starts_a_classifier(tmp_path, caplog):
    lm = tierlab.train(config=fast_config(tmp_path, name="lm", max_steps=5, eval_every=0, no_plots=True))
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(60))
    for source in (lm.dir, lm.dir / "checkpoints" / "step-00000005.pt"):  # final weights (tied: stored once), a checkpoint
        cfg = _config(tmp_path, data, model_args=dict(TINY_MODEL), init_from=str(source), max_steps=1, lr=1e-9,
                      warmup_steps=0, eval_every=0, name=f"ft-{source.suffix or 'dir'}", no_plots=True)
        tuned = tierlab.train(config=cfg)
        before, after = lm.model.state_dict(), tuned.model.state_dict()
        assert torch.allclose(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"], atol=1e-6)
        assert torch.allclose(after["tok_emb.weight"][:256], before["tok_emb.weight"], atol=1e-6)
        assert after["head.weight"].shape == (2, 32)  # the class head is new
    relabelled = [(text, {"neg": "bad", "pos": "good"}[label]) for text, label in labelled_rows(60)]
    other = write_labelled_csv(tmp_path / "other.csv", relabelled)
    with caplog.at_level("WARNING", logger="tierlab"):  # a classifier of other labels: its head is reused, said
        tierlab.train(config=_config(tmp_path, other, model_args=dict(TINY_MODEL), init_from=str(tuned.dir),
                                     max_steps=1, eval_every=0, name="relabel", no_plots=True))
    assert "is a classifier of other labels" in caplog.text and "0: 'neg' -> 'bad'" in caplog.text
    with pytest.raises(ConfigError, match="do not fit this classifier"):
        tierlab.train(config=_config(tmp_path, data, model=str(CLASSIFIER), model_args={}, init_from=str(lm.dir),
                                     name="mismatch"))


def test_a_classifier_ending_in_softmax_and_date_labels_are_plain(tmp_path):
    data = write_labelled_csv(tmp_path / "reviews.csv", labelled_rows(60))
    probs = write_model(tmp_path, """
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, vocab_size=257, num_classes=2):
                super().__init__()
                self.emb, self.out = nn.Embedding(vocab_size, 8), nn.Linear(8, num_classes)

            def forward(self, ids):
                return self.out(self.emb(ids).mean(1)).softmax(-1)
    """, "probs.py")
    with pytest.raises(ModelError, match="returns probabilities, not scores"):
        tierlab.train(config=_config(tmp_path, data, model=str(probs), model_args={}))
    pa = pytest.importorskip("pyarrow")
    import datetime

    import pyarrow.parquet as pq

    rows = labelled_rows(40)
    days = [datetime.date(2026, 1, 1 + (lab == "pos")) for _, lab in rows]
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": days}), tmp_path / "d.parquet")
    from tierlab.data.rows import prepare_rows

    assert prepare_rows(str(tmp_path / "d.parquet"), "byte", 0.25, 16, tmp_path / "cache").labels == \
        ["2026-01-01", "2026-01-02"]
