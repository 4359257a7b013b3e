import bz2
import csv
import gzip
import json
import lzma
import re
import shlex
import shutil
import subprocess
import sys
import zipfile

import pytest

from helpers import write_corpus
from tierlab.data.corpus import CHUNK_BYTES, open_corpus
from tierlab.data.demo import demo_text
from tierlab.errors import DataError


def _text(corpus):
    return "".join(corpus.chunks())


def test_text_file_round_trips(tmp_path):
    path = write_corpus(tmp_path / "c.txt", sentences=50)
    assert _text(open_corpus(str(path), tmp_path)) == path.read_text()


def test_large_file_is_streamed_in_line_aligned_chunks(tmp_path):
    path = tmp_path / "big.txt"
    line = "é" * 99 + "\n"  # multi-byte characters straddle the read boundaries
    path.write_text(line * (2 * CHUNK_BYTES // len(line.encode()) + 7), encoding="utf-8")
    chunks = list(open_corpus(str(path), tmp_path).chunks())
    assert len(chunks) >= 2
    assert all(c.endswith("\n") for c in chunks)
    assert "".join(chunks) == path.read_text(encoding="utf-8")


def test_directory_of_txt_files_in_sorted_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("second\n")
    (tmp_path / "d" / "a.txt").write_text("first")
    (tmp_path / "d" / "sub" / "c.txt").write_text("third\n")
    (tmp_path / "d" / "skip.md").write_text("not text data\n")
    assert _text(open_corpus(str(tmp_path / "d"), tmp_path)) == "first\nsecond\nthird\n"


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["alpha", "beta\n"])) + "\n\n")
    assert _text(open_corpus(str(path), tmp_path)) == "alpha\nbeta\n"


@pytest.mark.parametrize("content, fragment", [
    ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
    ('{"body": "no text field"}\n', 'line 1 has no string field "text" \\(its string fields: body\\)'),
    ('{"text": 5}\n', 'line 1 has no string field "text" \\(its fields: text \\(int\\)\\)'),
    ('[1, 2]\n', "it is a JSON list, not an object"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n',
     "its \"messages\" field is a conversation .* Fix: flatten each conversation to text first, e.g. jq -c "
     "'{text: \\(\\[.messages\\[\\]"),
])
def test_bad_jsonl_names_the_line(tmp_path, content, fragment):
    path = tmp_path / "c.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=fragment):
        _text(open_corpus(str(path), tmp_path))


def test_undecodable_bytes_name_the_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf".encode() + b"\xe9" + b" au lait\n")
    with pytest.raises(DataError, match="undecodable byte at offset 3"):
        _text(open_corpus(str(path), tmp_path))


def test_missing_empty_and_textless_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_corpus(str(tmp_path / "nope.txt"), tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        open_corpus(str(tmp_path / "empty.txt"), tmp_path)
    (tmp_path / "nodocs").mkdir()
    with pytest.raises(DataError, match="holds no .txt, .jsonl, .parquet, .csv or .tsv files"):
        open_corpus(str(tmp_path / "nodocs"), tmp_path)
    for name in ("a.md", "b.md", "sub/c.rst"):
        (tmp_path / "nodocs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "nodocs" / name).write_text("# notes\n")
    with pytest.raises(DataError, match=r"or .tsv files \(it holds 2 .md files, 1 .rst file\)"):
        open_corpus(str(tmp_path / "nodocs"), tmp_path)


def test_content_hash_follows_content_not_name(tmp_path):
    a = write_corpus(tmp_path / "a.txt", sentences=20)
    b = tmp_path / "b.txt"
    b.write_text(a.read_text())
    ha, hb = (open_corpus(str(p), tmp_path).content_hash() for p in (a, b))
    assert ha == hb
    b.write_text(a.read_text() + "x")
    assert open_corpus(str(b), tmp_path).content_hash() != ha


def test_demo_corpus_is_deterministic_and_written_once(tmp_path):
    assert demo_text(100) == demo_text(100)
    line = demo_text(1).strip()
    a, rest = line.split("+")
    b, total = rest.split("=")
    assert int(a) + int(b) == int(total)
    corpus = open_corpus("demo", tmp_path)
    mtime = corpus.files[0].stat().st_mtime_ns
    assert open_corpus("demo", tmp_path).files[0].stat().st_mtime_ns == mtime


def test_another_jsonl_field_is_read_with_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "content": f"c{i}"}) for i in range(3)) + "\n")
    by_text = open_corpus(str(path), tmp_path)
    by_content = open_corpus(str(path), tmp_path, text_field="content")
    assert _text(by_text) == "t0\nt1\nt2\n" and _text(by_content) == "c0\nc1\nc2\n"
    # Other text from the same bytes: another token cache; the "text" hash is the one earlier runs recorded.
    assert by_content.content_hash() != by_text.content_hash()
    assert by_text.content_hash() == open_corpus(str(path), tmp_path, text_field="text").content_hash()
    with pytest.raises(DataError, match='no string field "body" \\(its string fields: text, content\\). '
                                        "Fix: name the field that holds the text: --text-field text"):
        _text(open_corpus(str(path), tmp_path, text_field="body"))
    (tmp_path / "plain.txt").write_text("hello\n")
    with pytest.raises(DataError, match="is plain text, not JSON lines, Parquet, CSV or TSV"):
        open_corpus(str(tmp_path / "plain.txt"), tmp_path, text_field="content")


# ----------------------------------------------------------------------------- compressed, CSV/TSV, Parquet
@pytest.mark.parametrize("opener, suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz")])
def test_compressed_files_are_read_like_their_plain_text(tmp_path, opener, suffix):
    plain = write_corpus(tmp_path / "c.txt", sentences=200)
    packed = tmp_path / f"c.txt{suffix}"
    with opener(packed, "wb") as fh:
        fh.write(plain.read_bytes())
    corpus = open_corpus(str(packed), tmp_path)
    assert _text(corpus) == plain.read_text()
    # Sizes are counted in decompressed bytes, so "the first half" means the same text as for the .txt.
    assert corpus.total_bytes == plain.stat().st_size != packed.stat().st_size
    half = open_corpus(str(plain), tmp_path)
    assert "".join(corpus.chunks(byte_limit=1000)) == "".join(half.chunks(byte_limit=1000))
    assert corpus.content_hash() != half.content_hash()


def test_compression_is_recognised_by_content_not_name(tmp_path):
    path = tmp_path / "corpus.txt"  # gzip bytes behind a .txt name
    path.write_bytes(gzip.compress("hello\nworld\n".encode()))
    assert _text(open_corpus(str(path), tmp_path)) == "hello\nworld\n"
    jsonl = tmp_path / "docs.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n'))
    assert _text(open_corpus(str(jsonl), tmp_path)) == "a\nb\n"


def test_broken_and_unreadable_archives_say_what_they_are(tmp_path):
    truncated = tmp_path / "cut.txt.gz"
    whole = gzip.compress(write_corpus(tmp_path / "c.txt", sentences=400).read_bytes())
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"is not a complete gzip file .*Fix: download or compress it again; "
                                        r"`gzip -t FILE` checks it"):
        _text(open_corpus(str(truncated), tmp_path))
    latin = tmp_path / "latin.txt.gz"
    latin.write_bytes(gzip.compress(b"caf\xe9\n"))
    with pytest.raises(DataError, match="undecodable byte at offset 3 of its gzip-decompressed text"):
        _text(open_corpus(str(latin), tmp_path))
    zst = tmp_path / "c.txt.zst"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    with pytest.raises(DataError, match=r"is zstd-compressed.*Fix: decompress it first \(zstd -d FILE\)"):
        open_corpus(str(zst), tmp_path)
    archive = tmp_path / "corpus.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "text\n")
    with pytest.raises(DataError, match=r"is a zip archive.*Fix: unzip it"):
        open_corpus(str(archive), tmp_path)


def test_csv_text_column_with_quoting_and_long_fields(tmp_path):
    long_doc = "word " * 40_000  # 200 kB: past csv's default 128 KiB field limit
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text", "label"])
        writer.writerows([[1, "first, with a comma", "a"], [2, 'a "quoted"\nsecond line', "b"], [3],
                          [4, long_doc, "c"]])
    limit = csv.field_size_limit()
    assert _text(open_corpus(str(path), tmp_path)) == f'first, with a comma\na "quoted"\nsecond line\n{long_doc}\n'
    assert csv.field_size_limit() == limit  # the process-wide limit is put back
    with pytest.raises(DataError, match=r'has no column "body" \(its columns: id, text, label\)\. '
                                        "Fix: name the field that holds the text: --text-field id"):
        _text(open_corpus(str(path), tmp_path, text_field="body"))
    tsv = tmp_path / "c.tsv.gz"
    tsv.write_bytes(gzip.compress("title\tcontent\nA\tone, two\nB\tthree\n".encode()))
    corpus = open_corpus(str(tsv), tmp_path, text_field="content")
    assert _text(corpus) == "one, two\nthree\n"
    assert corpus.total_bytes == len("title\tcontent\nA\tone, two\nB\tthree\n")


def test_parquet_string_column(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3], "content": ["alpha", None, "gamma\n"]}), path)
    corpus = open_corpus(str(path), tmp_path, text_field="content")
    assert _text(corpus) == "alpha\ngamma\n"  # the null row is skipped
    assert corpus.total_bytes == len("alphagamma\n")
    with pytest.raises(DataError, match=r'has no column "text" \(its text columns: content\)\. '
                                        "Fix: name the field that holds the text: --text-field content"):
        _text(open_corpus(str(path), tmp_path))
    with pytest.raises(DataError, match='column "id" holds int64, not text'):
        _text(open_corpus(str(path), tmp_path, text_field="id"))
    unnamed = tmp_path / "export"  # recognised by its PAR1 magic without the suffix
    unnamed.write_bytes(path.read_bytes())
    assert _text(open_corpus(str(unnamed), tmp_path, text_field="content")) == "alpha\ngamma\n"


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"text": ["x"]}), path)
    for name in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import pyarrow` meets where it is not installed
    with pytest.raises(DataError, match=r"needs pyarrow.*Fix: pip install 'tierlab\[parquet\]'"):
        _text(open_corpus(str(path), tmp_path))


def test_directory_reads_one_kind_of_file(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    shards = tmp_path / "dataset" / "data"
    shards.mkdir(parents=True)
    for i in (1, 0):  # Hugging Face datasets' layout: shards read in name order
        pq.write_table(pa.table({"text": [f"shard {i}"]}), shards / f"train-0000{i}-of-00002.parquet")
    (tmp_path / "dataset" / "README.md").write_text("# card\n")
    (tmp_path / "dataset" / ".cache").mkdir()
    (tmp_path / "dataset" / ".cache" / "x.txt").write_text("hidden\n")  # dot-folders are not data
    corpus = open_corpus(str(tmp_path / "dataset"), tmp_path)
    assert corpus.kind == "parquet" and _text(corpus) == "shard 0\nshard 1\n"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("plain\n")
    (mixed / "b.txt.gz").write_bytes(gzip.compress(b"packed\n"))
    (mixed / "meta.csv").write_text("id,text\n1,not read\n")  # .txt files present: only they are read
    assert _text(open_corpus(str(mixed), tmp_path)) == "plain\npacked\n"


@pytest.mark.parametrize("separator", [" ", ""])  # words with spaces; a script written without them
def test_a_file_that_is_one_long_line_is_read_in_bounded_chunks(tmp_path, separator):
    path = tmp_path / "one_line.txt"
    word = "言葉" if not separator else "word"
    path.write_text(separator.join([word] * (3 * CHUNK_BYTES // len(word.encode()) // max(1, len(separator) + 1))),
                    encoding="utf-8")
    corpus = open_corpus(str(path), tmp_path)
    chunks = list(corpus.chunks())
    assert len(chunks) >= 2 and max(len(c.encode()) for c in chunks) <= 2 * CHUNK_BYTES
    assert "".join(chunks) == path.read_text(encoding="utf-8") + "\n"
    if separator:  # cut before a space, so " word" is never split from its space
        assert all(c.startswith(" ") for c in chunks[1:])
    # Every source byte is accounted for exactly once: what BPE's "first 90%" is measured in.
    assert sum(n for _, n in corpus._read(path)) == path.stat().st_size


def test_a_folder_with_several_splits_is_refused_with_the_training_split_named(tmp_path):
    hub = tmp_path / "hub" / "data"  # Hugging Face's layout: <split>-NNNNN-of-NNNNN files side by side
    hub.mkdir(parents=True)
    for split in ("train", "test"):
        (hub / f"{split}-00000-of-00001.jsonl").write_text(json.dumps({"text": split}) + "\n")
    with pytest.raises(DataError, match=r"holds the test, train splits of a dataset.*Fix: pass the training split "
                                        rf"alone: --data '{hub}/train\*\.jsonl'"):
        open_corpus(str(tmp_path / "hub"), tmp_path)
    # The pattern it names reads the training split alone.
    assert _text(open_corpus(f"{hub}/train*.jsonl", tmp_path)) == "train\n"
    folders = tmp_path / "folders"  # or a folder per split
    for split in ("train", "validation"):
        (folders / split).mkdir(parents=True)
        (folders / split / "part-0.txt").write_text(f"{split}\n")
    with pytest.raises(DataError, match=rf"--data '{folders}/train'"):
        open_corpus(str(folders), tmp_path)
    assert _text(open_corpus(str(folders / "train"), tmp_path)) == "train\n"
    (tmp_path / "one" / "data").mkdir(parents=True)  # one split alone is just data
    (tmp_path / "one" / "data" / "train-00000-of-00001.jsonl").write_text('{"text": "only"}\n')
    assert _text(open_corpus(str(tmp_path / "one"), tmp_path)) == "only\n"


def test_glob_patterns(tmp_path):
    for name in ("b.txt", "a.txt", "c.md"):
        (tmp_path / name).write_text(name + "\n")
    assert _text(open_corpus(str(tmp_path / "*.txt"), tmp_path)) == "a.txt\nb.txt\n"
    with pytest.raises(DataError, match=r"matches no file\. Fix: check the pattern \(and quote it"):
        open_corpus(str(tmp_path / "*.parquet"), tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(DataError, match="matches files of several kinds"):
        open_corpus(str(tmp_path / "[ad].*"), tmp_path)


def test_a_byte_order_mark_is_not_read_as_text(tmp_path):
    bom = b"\xef\xbb\xbf"  # what Notepad and Excel's "CSV UTF-8" put first
    for name, content, expected in [("a.txt", b"hello\n", "hello\n"), ("a.jsonl", b'{"text": "a"}\n', "a\n"),
                                    ("a.csv", b"text,label\nhi,1\n", "hi\n")]:
        (tmp_path / name).write_bytes(bom + content)
        assert _text(open_corpus(str(tmp_path / name), tmp_path)) == expected


UTF16_TEXT = "café au lait\nthe cat sat on the mat\n" * 20


BOM16, BOM32, NUL = "it starts with a UTF-16 byte-order mark", "it starts with a UTF-32 byte-order mark", \
    "50% of its first bytes are NUL"


@pytest.mark.parametrize("name, content, source, why", [
    ("notes.txt", UTF16_TEXT.encode("utf-16"), "UTF-16", BOM16),
    ("rows.csv", ("text\n" + UTF16_TEXT).encode("utf-16"), "UTF-16", BOM16),
    ("docs.jsonl", '{"text": "café"}\n'.encode("utf-16"), "UTF-16", BOM16),
    ("packed.txt.gz", gzip.compress(UTF16_TEXT.encode("utf-16")), "UTF-16", BOM16),
    ("no bom.txt", UTF16_TEXT.encode("utf-16-le"), "UTF-16LE", NUL),
    ("big.txt", UTF16_TEXT.encode("utf-16-be"), "UTF-16BE", NUL),
    ("wide.txt", UTF16_TEXT.encode("utf-32"), "UTF-32", BOM32),
], ids=["txt", "csv", "jsonl", "gzip", "le-without-bom", "be-without-bom", "utf32"])
def test_utf16_text_is_told_to_convert_from_utf16_not_latin1(tmp_path, name, content, source, why):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        _text(open_corpus(str(path), tmp_path))
    message = str(err.value)
    assert "not valid UTF-8" in message and "latin1" not in message, message
    assert f"it looks like {source} text ({why})" in message and f"iconv -f {source} -t UTF-8" in message, message
    if shutil.which("iconv") is None:
        return
    # The command it gives converts the file: the new file reads as the text that was written.
    command, new = re.search(r"convert it with (.*) > (.*), then --data (.*)\.$", message).group(1, 3)
    subprocess.run(f"{command} > {new}", shell=True, cwd=tmp_path, check=True)
    converted = _text(open_corpus(str(tmp_path / shlex.split(new)[0]), tmp_path))
    assert converted == ("café\n" if name.endswith(".jsonl") else UTF16_TEXT), converted[:80]


def test_latin1_text_is_still_told_to_convert_from_latin1(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café au lait\n".encode("latin1") * 50)
    with pytest.raises(DataError, match=r"iconv -f latin1 -t utf-8"):
        _text(open_corpus(str(path), tmp_path))
