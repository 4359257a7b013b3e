import numpy as np
import pytest

from helpers import write_corpus
from tierlab.data import prepare_data
from tierlab.errors import DataError


def test_byte_tokens_are_the_utf8_bytes_and_split_is_a_tail(tmp_path):
    path = write_corpus(tmp_path / "c.txt", sentences=200)
    data = prepare_data(str(path), "byte", 0.1, tmp_path / "cache")
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    assert isinstance(data.tokens, np.memmap) and data.tokens.dtype == np.uint16
    assert np.array_equal(np.asarray(data.tokens), raw)
    assert len(data.val) == int(len(raw) * 0.1)
    assert np.array_equal(np.concatenate([data.train, data.val]), raw)
    assert data.max_id == raw.max()


def test_cache_is_reused_and_keyed_by_content_and_tokenizer(tmp_path):
    path = write_corpus(tmp_path / "c.txt", sentences=100)
    cache = tmp_path / "cache"
    first = prepare_data(str(path), "byte", 0.1, cache)
    files = sorted((cache / "tokens").iterdir())
    stamp = [f.stat().st_mtime_ns for f in files]
    again = prepare_data(str(path), "byte", 0.1, cache)
    assert [f.stat().st_mtime_ns for f in sorted((cache / "tokens").iterdir())] == stamp
    assert np.array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    path.write_text(path.read_text() + "One more sentence.\n")
    prepare_data(str(path), "byte", 0.1, cache)
    assert len(list((cache / "tokens").glob("*.bin"))) == 2
    assert not list((cache / "tokens").glob("*.tmp*"))


def test_bpe_is_trained_on_the_training_split_only(tmp_path):
    path = tmp_path / "c.txt"
    # The held-out tail uses a word that never occurs in the head: BPE must not learn it.
    path.write_text("the cat sat on the mat\n" * 900 + "zyzzyva " * 200 + "\n", encoding="utf-8")
    data = prepare_data(str(path), "bpe:300", 0.1, tmp_path / "cache")
    tok = data.tokenizer
    assert tok.vocab_size <= 300
    assert len(tok.encode("zyzzyva")) > 3  # still byte pieces
    assert len(tok.encode(" the cat sat on the mat")) < len(" the cat sat on the mat") / 2
    assert tok.decode(tok.encode("the cat sat\n")) == "the cat sat\n"
    # Loading the saved tokenizer.json gives the same identity and the same cached tokens.
    saved = tok.save(tmp_path)
    again = prepare_data(str(path), str(saved), 0.1, tmp_path / "cache")
    assert again.tokenizer.identity == tok.identity
    assert np.array_equal(np.asarray(again.tokens), np.asarray(data.tokens))
    assert len(list((tmp_path / "cache" / "tokens").glob("*.bin"))) == 1


def test_bad_tokenizer_file_is_a_data_error(tmp_path):
    path = write_corpus(tmp_path / "c.txt", sentences=10)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers tokenizer.json"):
        prepare_data(str(path), str(tmp_path / "tokenizer.json"), 0.1, tmp_path / "cache")
    with pytest.raises(DataError, match="does not exist"):
        prepare_data(str(path), str(tmp_path / "missing.json"), 0.1, tmp_path / "cache")


@pytest.mark.parametrize("data", ["demo", "corpus"])
def test_a_cache_that_cannot_be_written_is_a_user_error(tmp_path, data):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("hi")  # TIERLAB_CACHE pointing at a file
    source = "demo" if data == "demo" else str(write_corpus(tmp_path / "c.txt"))
    with pytest.raises(DataError) as err:
        prepare_data(source, "byte", 0.1, blocker)
    assert "Cannot write tierlab's cache" in str(err.value) and "TIERLAB_CACHE" in str(err.value)
