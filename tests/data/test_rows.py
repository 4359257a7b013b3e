"""Labelled rows for --objective classify: reading each format, the label mapping, the split, padding, errors."""

import json

import numpy as np
import pytest
import torch

from helpers import labelled_rows, write_labelled_csv
from tierlab.data.rows import prepare_rows, read_labels
from tierlab.data.sampler import RowSampler
from tierlab.config import TrainConfig
from tierlab.errors import ConfigError, DataError


def _prepare(path, tmp_path, **options):
    values = dict(tokenizer_spec="byte", val_fraction=0.25, seq_len=16, cache_dir=tmp_path / "cache")
    values.update(options)
    return prepare_rows(str(path), **values)


def test_csv_rows_are_mapped_padded_cut_and_split_with_every_class_held_out(tmp_path):
    rows = [("good", "pos"), ("a much longer text than sixteen bytes", "neg")] * 20
    rows.sort(key=lambda r: r[1])  # sorted by label: a tail split would hold out one class only
    data = _prepare(write_labelled_csv(tmp_path / "r.csv", rows), tmp_path)
    assert data.labels == ["neg", "pos"] and data.pad_id == 256
    assert len(data.train) == 30 and len(data.val) == 10 and data.train.shape[1] == 17
    assert set(data.val[:, -1]) == {0, 1}  # both classes in the held-out rows
    short = data.train[data.train[:, -1] == 1][0]
    assert bytes(short[:4].tolist()) == b"good" and (short[4:16] == 256).all()  # padded on the right
    long = data.train[data.train[:, -1] == 0][0]
    assert bytes(long[:16].tolist()) == b"a much longer te" and data.truncated == 20  # the first 16 tokens kept
    again = _prepare(tmp_path / "r.csv", tmp_path)
    assert np.array_equal(again.val, data.val)  # the same rows held out every time


def test_labels_of_every_kind_and_format(tmp_path):
    numbers = write_labelled_csv(tmp_path / "n.csv", [("a", "10"), ("b", "2"), ("c", "1"), ("d", "2")])
    assert _prepare(numbers, tmp_path, val_fraction=0.01).labels == ["1", "2", "10"]  # numeric order
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text("\n".join(json.dumps({"review": t, "stars": s}) for t, s in
                               [("bad", 1), ("ok", 3), ("great", 5), ("meh", 3)]) + "\n")
    data = _prepare(jsonl, tmp_path, text_field="review", label_field="stars", val_fraction=0.01)
    assert data.labels == ["1", "3", "5"] and sorted(data.train[:, -1].tolist()) == [0, 1, 1, 2]
    flags = tmp_path / "f.jsonl"
    flags.write_text('{"text": "x", "label": true}\n{"text": "y", "label": false}\n')
    assert _prepare(flags, tmp_path, val_fraction=0.01).labels == ["false", "true"]
    spelt = tmp_path / "s.csv"  # one value, two spellings: one class (pandas writes an int column with NaN as floats)
    spelt.write_text("text,label\na,1\nb,1.0\nc,2\n")
    assert _prepare(spelt, tmp_path, val_fraction=0.01).labels == ["1", "2"]
    ids = tmp_path / "ids.csv"  # 20-digit ids: exact integers, not floats that round together
    ids.write_text("text,label\na,12345678901234567890\nb,12345678901234567891\n")
    assert _prepare(ids, tmp_path, val_fraction=0.01).labels == ["12345678901234567890", "12345678901234567891"]
    flags.write_text('{"text": "x", "label": true}\n{"text": "y", "label": "True"}\n{"text": "z", "label": false}\n')
    assert _prepare(flags, tmp_path, val_fraction=0.01).labels == ["false", "true"]
    tsv = tmp_path / "r.tsv"
    tsv.write_text("label\ttext\npos\tnice, really\nneg\tnot, at all\n")
    assert _prepare(tsv, tmp_path, val_fraction=0.01).labels == ["neg", "pos"]


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = labelled_rows(40)
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [int(lab == "pos") for _, lab in rows]}),
                   tmp_path / "r.parquet")
    data = _prepare(tmp_path / "r.parquet", tmp_path)
    assert data.labels == ["0", "1"] and len(data.train) + len(data.val) == 40
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [lab.encode() for _, lab in rows]}),
                   tmp_path / "b.parquet")
    assert _prepare(tmp_path / "b.parquet", tmp_path).labels == ["neg", "pos"]  # binary labels: their text


@pytest.mark.parametrize("content, fragments", [
    ("text,sentiment\nhi,pos\nho,neg\n", ["has no column \"label\"", "--label-field sentiment"]),
    ("review,label\nhi,pos\nho,neg\n", ["has no column \"text\"", "--text-field review"]),
    ("text,label\nhi,pos\nho,pos\n", ["has the label 'pos'", "two classes or more"]),
    ("text,label\nhi,pos\nho,\n", ["line 3 has no label"]),
    ("text,label\n", ["holds no rows"]),
    ("text,label\nhi,pos\nho,NaN\n", ["line 3 has no label", "'NaN', a missing value"]),
    ("id,text,labels\n1,hi,pos\n2,ho,neg\n", ["has no column \"label\"", "--label-field labels"]),  # a typo
    ("id,text, Label\n1,hi,pos\n2,ho,neg\n", ["--label-field ' Label'"]),  # a stray space, another case
    ("text;label\nhi;pos\nho;neg\n", ["separated by semicolons"]),
    ('text,label\n"hi,pos\nho,neg\n', ["line 2 has no label", "unclosed quote"]),
    ("text,label\n" + "".join(f"row {i},{i}\n" for i in range(40)), ["40 different values in 40 rows",
                                                                      "looks like an id or a text column"]),
])
def test_bad_rows_are_plain_errors(tmp_path, content, fragments):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        _prepare(path, tmp_path)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_rows_that_cannot_teach_are_said(tmp_path, caplog):
    path = tmp_path / "r.csv"  # "rare" has one row, and the fixed split holds it out; one text is empty
    path.write_text("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(30)) + "last,rare\n,a\n")
    with caplog.at_level("WARNING", logger="tierlab"):
        data = _prepare(path, tmp_path, val_fraction=0.5)
    assert "rare" not in [data.labels[c] for c in data.train[:, -1]]
    assert "'rare' have no training row" in caplog.text and "1 of 32 rows" in caplog.text
    with pytest.raises(DataError, match="built-in demo rows have the columns"):
        _prepare("demo", tmp_path, label_field="stars")
    with pytest.raises(ConfigError, match="both name 'text'"):
        TrainConfig(objective="classify", label_field="text")


def test_plain_text_is_refused_for_classification(tmp_path):
    (tmp_path / "t.txt").write_text("just text\n")
    with pytest.raises(DataError, match="needs labelled rows"):
        _prepare(tmp_path / "t.txt", tmp_path)


def test_the_label_mapping_is_saved_with_the_run(tmp_path):
    data = _prepare(write_labelled_csv(tmp_path / "r.csv"), tmp_path)
    (tmp_path / "run").mkdir()
    assert read_labels(tmp_path / "run") is None  # a run of another objective has none
    data.save(tmp_path / "run")
    assert read_labels(tmp_path / "run") == {"labels": ["neg", "pos"], "pad_token_id": 256, "label_field": "label",
                                             "text_field": "text"}


def test_the_row_sampler_visits_every_row_once_per_epoch_and_resumes_exactly():
    rows = np.arange(10 * 3).reshape(10, 3)
    rows[:, -1] = np.arange(10)  # the "label" column names the row
    sampler = RowSampler(rows, batch_size=4, seed=1)
    seen = [sampler.next_block()[:, -1].tolist() for _ in range(5)]  # 20 rows: two epochs
    flat = sum(seen, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # another order each epoch
    state = RowSampler(rows, 4, 1)
    for _ in range(2):
        state.next_block()
    resumed = RowSampler(rows, 4, 1)
    resumed.load_state_dict(state.state_dict())
    assert [resumed.next_block()[:, -1].tolist() for _ in range(3)] == seen[2:]
    ranks = [RowSampler(rows, 2, 1, rank=r, world_size=2).next_block()[:, -1].tolist() for r in (0, 1)]
    assert ranks[0] + ranks[1] == seen[0]  # two ranks split the global batch one process draws
    inputs, labels = RowSampler.split(torch.from_numpy(rows[:2]))
    assert inputs.shape == (2, 2) and labels.tolist() == [0, 1]


def test_an_edited_label_mapping_is_a_plain_error(tmp_path):
    (tmp_path / "labels.json").write_text('["a", "b"]')
    with pytest.raises(DataError, match="is not a label mapping tierlab wrote"):
        read_labels(tmp_path)
