"""Corpus -> token ids, tokenized once and cached as a memory-mapped array.

The cache key is the corpus's content hash plus the tokenizer's identity, so editing the
corpus or changing the tokenizer retokenizes, and nothing else does.  Files are written
under a temporary name and renamed, so an interrupted tokenization never leaves a
half-written cache entry behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write, remove_leftovers
from ..disk import STORAGE_ERRNOS, describe, free_space, write_failed
from ..errors import DataError
from .corpus import Corpus, open_corpus
from .tokenizer import ByteTokenizer, Tokenizer, load_tokenizer_file, train_bpe

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TIERLAB_CACHE") or Path.home() / ".cache" / "tierlab")


@dataclass
class TokenData:
    """The tokenized corpus split into a training head and a held-out validation tail."""

    corpus: Corpus
    corpus_hash: str
    tokenizer: Tokenizer
    tokens: np.ndarray  # memory-mapped, uint16 or uint32
    max_id: int
    val_fraction: float

    @property
    def split_index(self) -> int:
        return len(self.tokens) - int(len(self.tokens) * self.val_fraction)

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.split_index]

    @property
    def val(self) -> np.ndarray:
        return self.tokens[self.split_index:]

    def save(self, run_dir: Path) -> None:
        """What the run directory keeps of the data: the tokenizer."""
        self.tokenizer.save(run_dir)


def prepare_data(data: str, tokenizer_spec: str, val_fraction: float, cache_dir: Path | None = None,
                 text_field: str = "text") -> TokenData:
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    for shared in ("tokens", "tokenizers"):  # what killed writers left (never a live writer's file)
        remove_leftovers(cache_dir / shared, dead_writers_only=True)
    try:
        corpus = open_corpus(data, cache_dir, text_field)
        corpus_hash = corpus.content_hash()
        tokenizer = _make_tokenizer(tokenizer_spec, corpus, corpus_hash, val_fraction, cache_dir)
        tokens, max_id = _token_cache(corpus, corpus_hash, tokenizer, cache_dir)
    except OSError as exc:
        # Only the cache is written here, and reading the corpus never finds a disk full: a full disk
        # is the cache's, even where the error does not name a file (a write into an open file).
        if not (_inside(exc, cache_dir) or exc.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        space = f"; {free_space(cache_dir)}" if exc.errno in STORAGE_ERRNOS else ""
        raise DataError(f"Cannot write tierlab's cache in {str(cache_dir)!r}: {describe(exc)} "
                        f"({exc.filename or 'a file in it'}{space}).",
                        "set TIERLAB_CACHE to a writable folder (or free disk space there).") from None
    if len(tokens) == 0:
        raise DataError(f"The corpus {data!r} holds no text.", "pass a file with text in it.")
    return TokenData(corpus, corpus_hash, tokenizer, tokens, max_id, val_fraction)


def _inside(exc: OSError, folder: Path) -> bool:
    """Whether the failed operation was on ``folder`` or a path inside it (the cache, not the user's data)."""
    for name in (exc.filename, getattr(exc, "filename2", None)):
        if name is not None:
            path, root = Path(name).absolute(), folder.absolute()
            if path == root or root in path.parents:
                return True
    return False


def _make_tokenizer(spec: str, corpus: Corpus, corpus_hash: str, val_fraction: float, cache_dir: Path) -> Tokenizer:
    if spec == "byte":
        return ByteTokenizer()
    if spec.startswith("bpe:"):
        from tokenizers import Tokenizer as _Tok

        from .tokenizer import HFTokenizer

        vocab = int(spec[4:])
        path = cache_dir / "tokenizers" / f"{corpus_hash[:24]}-bpe{vocab}-val{val_fraction:g}.json"
        if path.is_file():
            return HFTokenizer(_Tok.from_file(str(path)), source=spec)
        # Train on the training part only: the held-out tail must not leak into the vocabulary.
        limit = int(corpus.total_bytes * (1 - val_fraction))
        log.info("training a byte-level BPE of %d tokens on the training split (%.1f MB; once per corpus, then "
                 "cached)", vocab, limit / 1e6)
        tok = train_bpe(corpus.chunks(byte_limit=limit), vocab)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tok.save_as(tmp)
        return tok
    return load_tokenizer_file(spec)


def _token_cache(corpus: Corpus, corpus_hash: str, tokenizer: Tokenizer, cache_dir: Path) -> tuple[np.ndarray, int]:
    key = hashlib.sha256(f"{corpus_hash}|{tokenizer.identity}".encode()).hexdigest()[:32]
    base = cache_dir / "tokens" / key
    meta_path, bin_path = base.with_suffix(".json"), base.with_suffix(".bin")
    if not (meta_path.is_file() and bin_path.is_file()):
        _write_cache(corpus, tokenizer, bin_path, meta_path)
    meta = json.loads(meta_path.read_text())
    if meta["count"] == 0:
        return np.zeros(0, dtype=meta["dtype"]), -1
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r", shape=(meta["count"],))
    return tokens, int(meta["max_id"])


def _write_cache(corpus: Corpus, tokenizer: Tokenizer, bin_path: Path, meta_path: Path) -> None:
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    count, max_id = 0, -1
    # The size on disk: total_bytes would decompress a compressed corpus once more just for this line.
    log.info("tokenizing %s (%.1f MB) with %s", corpus.spec, corpus.size_on_disk / 1e6, tokenizer.identity)
    try:
        with atomic_path(bin_path) as tmp, tmp.open("wb") as fh:
            for text in corpus.chunks():
                ids = tokenizer.encode(text)
                if ids.size:
                    max_id = max(max_id, int(ids.max()))
                    fh.write(ids.astype(dtype).tobytes())
                    count += ids.size
        atomic_write(meta_path, json.dumps({"count": count, "dtype": np.dtype(dtype).name, "max_id": max_id,
                                            "tokenizer": tokenizer.identity, "corpus": corpus.spec}))
    except OSError as exc:  # a full disk while writing: the corpus itself is the user's and untouched
        bin_path.unlink(missing_ok=True)  # without its meta file it would be written again anyway
        raise write_failed(bin_path, exc, "no run was started",
                           f"free space in {bin_path.parent.parent}, or set TIERLAB_CACHE to a folder on a disk "
                           "with room.", DataError) from None
    log.info("cached %d tokens in %s", count, bin_path)
