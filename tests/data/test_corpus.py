import json

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
    ('{"text": 5}\n', 'line 1 has no string field "text"'),
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
    with pytest.raises(DataError, match="holds no .txt files"):
        open_corpus(str(tmp_path / "nodocs"), tmp_path)
    for name in ("a.md", "b.md", "sub/c.rst"):
        (tmp_path / "nodocs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "nodocs" / name).write_text("# notes\n")
    with pytest.raises(DataError, match=r"holds no .txt files \(it holds 2 .md files, 1 .rst file\)"):
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
    with pytest.raises(DataError, match="is not a .jsonl file"):
        open_corpus(str(tmp_path / "plain.txt"), tmp_path, text_field="content")
