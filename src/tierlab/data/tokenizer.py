"""Tokenizers: raw UTF-8 bytes, or BPE from the `tokenizers` library.

Every tokenizer has an ``identity`` string; it keys the token cache and is recorded in
the run so that a run can always tell which tokenizer produced its data.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

from ..errors import DataError
from ..run_files import TOKENIZER

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    vocab_size: int
    identity: str

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: Path) -> Path | None: ...


class ByteTokenizer:
    """Each UTF-8 byte is a token: 256 ids, no training, nothing unknown."""

    vocab_size = 256
    identity = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> Path | None:
        return None


class HFTokenizer:
    """A `tokenizers.Tokenizer` (loaded from tokenizer.json or trained as byte-level BPE)."""

    def __init__(self, tok, source: str):
        self._tok = tok
        self.source = source
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        digest = hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]
        self.identity = f"tokenizer.json:{digest}"

    def encode(self, text: str) -> np.ndarray:
        # Encode line batches: tokenizers parallelises a batch and keeps memory bounded.
        lines = text.splitlines(keepends=True)
        encoded = self._tok.encode_batch(lines, add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encoded]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def save(self, directory: Path) -> Path:
        return self.save_as(directory / TOKENIZER)

    def save_as(self, path: Path) -> Path:
        self._tok.save(str(path))
        return path


def load_tokenizer_file(path: str) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tok

    p = Path(path)
    if not p.is_file():
        raise DataError(f"Tokenizer file {path!r} does not exist.", "check the path given to --tokenizer.")
    try:
        tok = _Tok.from_file(str(p))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for bad JSON
        raise DataError(f"{path!r} is not a tokenizers tokenizer.json: {exc}.",
                        "save one with Tokenizer.save() or use byte or bpe:VOCAB.") from None
    return HFTokenizer(tok, source=str(p))


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE (GPT-2 style) trained on ``texts``: every byte sequence stays encodable."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    log.info("trained byte-level BPE: %d tokens", tok.get_vocab_size())
    return HFTokenizer(tok, source=f"bpe:{vocab_size}")
