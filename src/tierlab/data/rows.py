"""Labelled rows for ``--objective classify``: text and label per row of a CSV/TSV, JSON-lines or Parquet file.

``text,label`` / ``good movie,1``: each row's text is tokenized, cut to ``--seq-len`` tokens
and padded on the right with the padding token (id = the tokenizer's vocabulary size);
labels of any kind (``1``, ``"pos"``, ``true``) are mapped to class ids 0..C-1 -- numbers in
numeric order, anything else alphabetically -- and the mapping is recorded in the run
(``labels.json``), so ``sample`` prints names and a resume is refused if the labels changed.

The held-out rows are drawn with a fixed seed, not taken from the tail: labelled files are
often sorted by label (all negatives, then all positives), and a tail would hold one class.
Rows are tokenized in memory on every start (no token cache: classification sets are small
next to pre-training corpora, and one pass of the tokenizer over them takes seconds).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import numpy as np

from ..atomic import atomic_path, atomic_write, write_json_atomic
from ..errors import DataError
from ..run_files import LABELS
from .compression import STREAM_ERRORS, compression, open_bytes
from .corpus import Corpus, open_corpus
from .demo import DEMO_ROWS_VERSION, demo_rows_csv
from .formats import FORMATS, _to_utf8, open_parquet
from .tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer_file, train_bpe

log = logging.getLogger(__name__)

SPLIT_SEED = 0  # which rows are held out: the same for every run on the same file
# A label column with at least this many values, more than this share of the rows, is an id or text column.
MIN_SUSPECT_CLASSES, MAX_CLASS_SHARE = 20, 0.5
MISSING_LABELS = {"nan", "null", "none"}  # how pandas and friends write a missing value into a CSV
Row = tuple[str, object, str]  # (text, label as read, where: "FILE line N")


@dataclass
class LabelledData:
    """Tokenized rows, split into training and held-out rows; each array [N, T + 1]: T token ids, then the class id."""

    corpus: Corpus
    corpus_hash: str
    tokenizer: Tokenizer
    labels: list[str]  # class names, in id order
    train: np.ndarray
    val: np.ndarray
    max_id: int  # the largest token id of the text (the padding id aside)
    val_fraction: float
    label_field: str
    truncated: int  # rows longer than seq_len, cut

    @property
    def pad_id(self) -> int:
        return self.tokenizer.vocab_size

    def save(self, run_dir: Path) -> None:
        """The tokenizer and the label mapping, into the run directory."""
        self.tokenizer.save(run_dir)
        write_json_atomic(run_dir / LABELS, {"labels": self.labels, "pad_token_id": self.pad_id,
                                             "label_field": self.label_field, "text_field": self.corpus.text_field})

    def summary(self) -> dict[str, object]:
        """What the run_start event says about the rows."""
        counts = np.bincount(self.train[:, -1], minlength=len(self.labels)).tolist()
        return {"objective": "classify", "labels": self.labels, "pad_token_id": self.pad_id,
                "train_rows": len(self.train), "val_rows": len(self.val), "train_label_counts": counts,
                "truncated_rows": self.truncated, "train_tokens": self.text_tokens(self.train),
                "val_tokens": self.text_tokens(self.val)}

    def text_tokens(self, rows: np.ndarray) -> int:
        """The tokens of text in ``rows`` (padding left out)."""
        return int((rows[:, :-1] != self.pad_id).sum())


def read_labels(run_dir: Path) -> dict[str, object] | None:
    """A classification run's labels.json (None for a run of another objective)."""
    path = run_dir / LABELS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path} is not readable JSON ({exc}).",
                        "restore it from a copy of the run (it maps the class ids to names).") from None
    labels = record.get("labels") if isinstance(record, dict) else None
    if (not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(n, str) for n in labels)
            or len(set(labels)) != len(labels) or not isinstance(record.get("pad_token_id"), int)):
        raise DataError(f"{path} is not a label mapping tierlab wrote: it needs \"labels\", two or more distinct "
                        "names in class-id order, and an integer \"pad_token_id\".",
                        "restore it from a copy of the run (tierlab writes it when the run starts).")
    return record


def prepare_rows(data: str, tokenizer_spec: str, val_fraction: float, seq_len: int, cache_dir: Path,
                 text_field: str = "text", label_field: str = "label") -> LabelledData:
    """Read, map, split and tokenize the labelled rows of ``data``; every bad input a plain DataError.

    ``demo``: the built-in rows (see :func:`~tierlab.data.demo.demo_rows_csv`), written once into the cache.
    """
    if data == "demo" and (text_field, label_field) != ("text", "label"):
        raise DataError(f"The built-in demo rows have the columns \"text\" and \"label\", not "
                        f"{json.dumps(text_field)} and {json.dumps(label_field)}.",
                        "drop --text-field and --label-field for --data demo, or pass your own file with --data.")
    corpus = open_corpus(str(demo_rows_file(cache_dir)) if data == "demo" else data, cache_dir, text_field)
    if not FORMATS[corpus.kind].field_based:
        raise DataError(f"--objective classify needs labelled rows, and {data!r} is plain text.",
                        f"pass a CSV, TSV, JSON-lines or Parquet file with a {json.dumps(text_field)} and a "
                        f"{json.dumps(label_field)} column (e.g. text,label / good movie,1).")
    rows = [row for path in corpus.files for row in _rows(corpus.kind, path, text_field, label_field)]
    if not rows:
        raise DataError(f"{data!r} holds no rows.", "pass a file with a header and at least two labelled rows.")
    labels, ids = _class_ids([label for _, label, _ in rows])
    if len(labels) < 2:
        raise DataError(f"Every row of {data!r} has the label {labels[0]!r}: there is nothing to tell apart.",
                        f"check --label-field (now {label_field!r}): a classifier needs two classes or more.")
    if len(labels) >= MIN_SUSPECT_CLASSES and len(labels) > len(rows) * MAX_CLASS_SHARE:
        raise DataError(f"The {json.dumps(label_field)} column of {data!r} holds {len(labels)} different values in "
                        f"{len(rows)} rows: nearly every row would be a class of its own, so it looks like an id or "
                        "a text column, not labels.",
                        "name the column of labels with --label-field (a classifier needs several rows per class).")
    empty = sum(1 for text, _, _ in rows if not text.strip())
    if empty:
        log.warning("%d of %d rows of %s have empty text: the model sees only padding for them (their label is "
                    "still a target)", empty, len(rows), data)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(rows))
    n_val = int(len(rows) * val_fraction)
    if len(rows) - n_val < 1:
        raise DataError(f"{data!r} has {len(rows)} row(s): none is left for training after --val-fraction "
                        f"{val_fraction:g}.", "use more rows or a smaller --val-fraction.")
    val_rows, train_rows = order[:n_val], order[n_val:]
    unseen = [labels[c] for c in sorted(set(range(len(labels))) - set(ids[train_rows].tolist()))]
    if unseen:
        log.warning("class(es) %s have no training row (only held-out ones): the model cannot learn them; give "
                    "each class more rows", ", ".join(map(repr, unseen[:10])) + (", ..." if len(unseen) > 10 else ""))
    corpus_hash = _rows_hash(corpus, label_field)
    tokenizer = _tokenizer(tokenizer_spec, [rows[i][0] for i in train_rows], corpus_hash, val_fraction, cache_dir)
    encoded = _encode([text for text, _, _ in rows], tokenizer)
    max_id = max((int(e.max()) for e in encoded if e.size), default=-1)
    truncated = sum(1 for e in encoded if e.size > seq_len)
    if truncated:
        log.info("%d of %d rows are longer than --seq-len %d tokens: their first %d tokens are kept", truncated,
                 len(rows), seq_len, seq_len)
    table = np.full((len(rows), seq_len + 1), tokenizer.vocab_size, dtype=np.int64)
    for i, e in enumerate(encoded):
        table[i, :min(e.size, seq_len)] = e[:seq_len]
    table[:, -1] = ids
    log.info("%d labelled rows (%d classes: %s), %d held out", len(rows), len(labels),
             ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else ""), n_val)
    return LabelledData(corpus, corpus_hash, tokenizer, labels, table[train_rows], table[val_rows], max_id,
                        val_fraction, label_field, truncated)


def demo_rows_file(cache_dir: Path) -> Path:
    """The built-in labelled rows as a CSV file in the cache (written on first use, atomically)."""
    path = cache_dir / f"demo-classify-v{DEMO_ROWS_VERSION}.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, demo_rows_csv())
    return path


def _class_ids(raw: list[object]) -> tuple[list[str], np.ndarray]:
    """(class names in id order, each row's id): numbers in numeric order, other names alphabetically.

    One class is one value however it is spelt: ``1`` and ``1.0`` (a column pandas wrote as
    floats), ``True`` and ``true`` (Python's and JSON's booleans); the first spelling names it.
    """
    names = [_label_name(v) for v in raw]

    def numeric(name: str) -> int | float | None:
        try:
            return int(name)  # exact: 20-digit ids stay apart (as floats they would round together)
        except ValueError:
            pass
        try:
            return float(name)
        except ValueError:
            return None

    if all(numeric(n) is not None for n in set(names)):
        key = numeric
    elif all(n.lower() in ("true", "false") for n in set(names)):
        key = str.lower
    else:
        key = None
    if key is not None:  # the first spelling of each value names its class
        spelling: dict[object, str] = {}
        names = [spelling.setdefault(key(n), n) for n in names]
    distinct = set(names)
    if key is numeric:
        labels = sorted(distinct, key=lambda n: (numeric(n), n))
    else:
        labels = sorted(distinct)
    index = {name: i for i, name in enumerate(labels)}
    return labels, np.asarray([index[n] for n in names], dtype=np.int64)


def _label_name(value: object) -> str:
    """A label as its class name: strings as they are (stripped), JSON numbers and booleans as JSON writes them."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)) or value is None:
        return json.dumps(value)
    if isinstance(value, bytes):  # a Parquet binary column: its text, not b'...'
        return value.decode("utf-8", errors="replace").strip()
    return str(value)  # a Parquet date, decimal...: as Python writes it


def _rows_hash(corpus: Corpus, label_field: str) -> str:
    """The corpus hash, with the label column in it (the same file read for another label is other data)."""
    return hashlib.sha256(f"{corpus.content_hash()}|label={label_field}".encode()).hexdigest()


def _tokenizer(spec: str, train_texts: list[str], corpus_hash: str, val_fraction: float,
               cache_dir: Path) -> Tokenizer:
    """The byte tokenizer, a tokenizer.json, or a BPE trained on the training rows' text (cached)."""
    if spec == "byte":
        return ByteTokenizer()
    if not spec.startswith("bpe:"):
        return load_tokenizer_file(spec)
    from tokenizers import Tokenizer as _Tok

    vocab = int(spec[4:])
    path = cache_dir / "tokenizers" / f"{corpus_hash[:24]}-bpe{vocab}-rows-val{val_fraction:g}.json"
    if path.is_file():
        return HFTokenizer(_Tok.from_file(str(path)), source=spec)
    log.info("training a byte-level BPE of %d tokens on the %d training rows (once per file, then cached)", vocab,
             len(train_texts))
    tok = train_bpe(train_texts, vocab)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tok.save_as(tmp)
    return tok


def _encode(texts: list[str], tokenizer: Tokenizer) -> list[np.ndarray]:
    if isinstance(tokenizer, HFTokenizer):  # one batch call: tokenizers parallelises it
        return [np.asarray(e.ids, dtype=np.int64) for e in tokenizer._tok.encode_batch(texts, add_special_tokens=False)]
    return [tokenizer.encode(t) for t in texts]


# ----------------------------------------------------------------------------- readers
def _rows(kind: str, path: Path, text_field: str, label_field: str) -> Iterator[Row]:
    if kind == "parquet":
        yield from _parquet_rows(path, text_field, label_field)
        return
    compressed = compression(path)
    try:
        with open_bytes(path, compressed) as fh:
            if kind == "jsonl":
                yield from _jsonl_rows(fh, path, text_field, label_field)
            else:
                yield from _table_rows(fh, path, text_field, label_field, "\t" if kind == "tsv" else ",")
    except STREAM_ERRORS as exc:
        if not compressed:
            raise
        raise DataError(f"{str(path)!r} is not a complete {compressed} file ({exc}).",
                        "download or compress it again.") from None


def _checked(path: Path, where: str, text: object, label: object, text_field: str, label_field: str) -> Row:
    if not isinstance(text, str):
        raise DataError(f"{str(path)!r} {where} has no text in {json.dumps(text_field)} "
                        f"(it holds {'nothing' if text is None else type(text).__name__}).",
                        "give every row its text, or remove the row.")
    if label is None or (isinstance(label, str) and label.strip().lower() in {"", *MISSING_LABELS}):
        said = f" (it holds {label.strip()!r}, a missing value)" if isinstance(label, str) and label.strip() else ""
        swallowed = (" — an unclosed quote in its text may have taken in the lines after it"
                     if label is None and "\n" in text else "")
        raise DataError(f"{str(path)!r} {where} has no label in {json.dumps(label_field)}{said}{swallowed}.",
                        "close the quote of that text." if swallowed else
                        "give every row a label, or remove the rows without one.")
    if isinstance(label, (list, dict)) or (isinstance(label, float) and label != label):
        raise DataError(f"{str(path)!r} {where}: its label {json.dumps(label)} is not one class.",
                        "write one label per row: a name or a number.")
    return text, label, where


def _jsonl_rows(fh: IO[bytes], path: Path, text_field: str, label_field: str) -> Iterator[Row]:
    for lineno, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{str(path)!r} line {lineno} is not valid UTF-8.",
                            _to_utf8(path, "convert the file to UTF-8.")) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} line {lineno} is not JSON: {exc.msg}.",
                            "write one JSON object per line.") from None
        if not isinstance(record, dict):
            raise DataError(f"{str(path)!r} line {lineno} is a JSON {type(record).__name__}, not an object.",
                            f"write one object per line, like {{{json.dumps(text_field)}: \"...\", "
                            f"{json.dumps(label_field)}: 1}}.")
        for name in (text_field, label_field):
            if name not in record:
                raise _missing(f"{str(path)!r} line {lineno} has no field {json.dumps(name)}", "fields", list(record),
                               name, (text_field, label_field))
        yield _checked(path, f"line {lineno}", record[text_field], record[label_field], text_field, label_field)


def _missing(problem: str, what: str, candidates: list[str], missing: str, fields: tuple[str, str]) -> DataError:
    """The error for a row without the text or the label field: what it has, and the option that names another.

    The suggestion is a column whose name is close to the missing one (a typo, a stray space,
    another case); never the column the other option already names.
    """
    text_field, label_field = fields
    option = "--text-field" if missing == text_field else "--label-field"
    found = f" (its {what}: {', '.join(json.dumps(str(c)) for c in candidates[:8])})" if candidates else ""
    other = label_field if missing == text_field else text_field
    free = [str(c) for c in candidates if c != other]
    by_key = {c.strip().lower(): c for c in free}
    close = difflib.get_close_matches(missing.strip().lower(), list(by_key), n=1, cutoff=0.6)
    if len(candidates) == 1 and ";" in str(candidates[0]):
        fix = "the file looks separated by semicolons: tierlab reads commas (.csv) or tabs (.tsv); save it as one."
    elif close or len(free) == 1:
        fix = f"name the column that holds it: {option} {_shell_word(by_key[close[0]] if close else free[0])}."
    elif free:
        fix = f"name the column that holds it with {option} (one of {', '.join(_shell_word(c) for c in free[:8])})."
    else:
        fix = f"give the rows a {json.dumps(missing)} field."
    return DataError(f"{problem}{found}.", fix)


def _shell_word(name: str) -> str:
    """A column name as it would be typed on a command line (quoted when it holds spaces)."""
    return shlex.quote(name)


def _table_rows(fh: IO[bytes], path: Path, text_field: str, label_field: str, delimiter: str) -> Iterator[Row]:
    stream = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(stream, delimiter=delimiter)
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)
    try:
        header = next(reader, None)
        if header is None:
            return
        for name in (text_field, label_field):
            if name not in header:
                raise _missing(f"{str(path)!r} has no column {json.dumps(name)}", "columns", header, name,
                               (text_field, label_field))
        t, lab = header.index(text_field), header.index(label_field)
        while True:
            start = reader.line_num + 1  # where the row begins (a quoted text may span lines)
            row = next(reader, None)
            if row is None:
                break
            if not row:
                continue
            where = f"line {start}"
            yield _checked(path, where, row[t] if t < len(row) else None, row[lab] if lab < len(row) else None,
                           text_field, label_field)
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid UTF-8 near line {reader.line_num + 1} ({exc.reason}).",
                        _to_utf8(path, "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8).")) from None
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} line {reader.line_num} is not valid CSV: {exc}.",
                        "check the quoting of that line.") from None
    finally:
        csv.field_size_limit(previous_limit)
        stream.detach()


def _parquet_rows(path: Path, text_field: str, label_field: str) -> Iterator[Row]:
    parquet = open_parquet(path)
    names = parquet.schema_arrow.names
    for name in (text_field, label_field):
        if name not in names:
            raise _missing(f"{str(path)!r} has no column {json.dumps(name)}", "columns", names, name,
                           (text_field, label_field))
    number = 0
    for batch in parquet.iter_batches(columns=[text_field, label_field], batch_size=4096):
        texts, labels = batch.column(0).to_pylist(), batch.column(1).to_pylist()
        for text, label in zip(texts, labels):
            number += 1
            yield _checked(path, f"row {number}", text, label, text_field, label_field)
