"""Reading a corpus: a UTF-8 text file, a directory of .txt files, or JSON lines with "text" (or another field).

Text is streamed in chunks so that a large corpus never sits in memory as one string, and
it is decoded strictly: undecodable bytes are an error that names the file and the offset.
"""

from __future__ import annotations

import codecs
import collections
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from .demo import DEMO_VERSION, demo_text

CHUNK_BYTES = 1 << 22  # 4 MiB of text per tokenizer call


@dataclass(frozen=True)
class Corpus:
    """Where the text comes from; iterate it with :meth:`chunks`."""

    spec: str
    files: tuple[Path, ...]
    jsonl: bool
    text_field: str = "text"  # JSONL: the string field holding each document

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def content_hash(self) -> str:
        """SHA-256 over the files' bytes (in order), the key of the token cache."""
        h = hashlib.sha256(b"jsonl" if self.jsonl else b"text")
        if self.jsonl and self.text_field != "text":  # other text from the same file (hashes of "text" unchanged)
            h.update(b"\0field\0" + self.text_field.encode())
        for f in self.files:
            h.update(b"\0file\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                    h.update(block)
        return h.hexdigest()

    def chunks(self, byte_limit: int | None = None) -> Iterator[str]:
        """Decoded text in pieces of about CHUNK_BYTES, ending on line boundaries.

        Documents (files, JSON records) are separated by a newline. ``byte_limit`` stops
        after that many source bytes (used to train BPE on the training part only).
        """
        consumed = 0
        for f in self.files:
            source = _jsonl_texts(f, self.text_field) if self.jsonl else _text_chunks(f)
            for text, nbytes in source:
                if byte_limit is not None and consumed + nbytes >= byte_limit:
                    # Keep only the part before the limit (whole characters).
                    keep = byte_limit - consumed
                    yield text.encode("utf-8")[:keep].decode("utf-8", errors="ignore")
                    return
                yield text
                consumed += nbytes


def open_corpus(spec: str, cache_dir: Path, text_field: str = "text") -> Corpus:
    """Resolve ``--data`` into a :class:`Corpus`, with a clear error for every bad input.

    ``text_field``: the string field of each JSONL record that holds its text.
    """
    if spec == "demo":
        path = cache_dir / f"demo-v{DEMO_VERSION}.txt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(demo_text(), encoding="utf-8")
            os.replace(tmp, path)
        return Corpus(spec, (path,), jsonl=False)
    p = Path(spec)
    if not p.exists():
        raise DataError(f"Data path {spec!r} does not exist.",
                        "pass a .txt file, a directory of .txt files, a .jsonl file, or 'demo'.")
    if p.is_dir():
        files = tuple(sorted(x for x in p.rglob("*.txt") if x.is_file()))
        if not files:
            others = collections.Counter(x.suffix.lower() or "(no suffix)" for x in p.rglob("*") if x.is_file())
            kinds = [f"{n} {kind} file{'s' if n > 1 else ''}" for kind, n in others.most_common(4)]
            found = f" (it holds {', '.join(kinds)})" if kinds else ""
            raise DataError(f"Directory {spec!r} holds no .txt files{found}.",
                            "tierlab reads *.txt in a directory: rename plain-text files to .txt, or pass a file.")
        corpus = Corpus(spec, files, jsonl=False)
    else:
        corpus = Corpus(spec, (p,), jsonl=p.suffix.lower() in (".jsonl", ".ndjson"), text_field=text_field)
    if text_field != "text" and not corpus.jsonl:
        raise DataError(f"--text-field {text_field!r} was given, but {spec!r} is not a .jsonl file.",
                        "drop --text-field (plain text is read whole), or pass JSON lines.")
    if corpus.total_bytes == 0:
        raise DataError(f"The corpus {spec!r} is empty.", "pass a file with text in it.")
    return corpus


def _text_chunks(path: Path) -> Iterator[tuple[str, int]]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    pending = ""
    with path.open("rb") as fh:
        while True:
            block = fh.read(CHUNK_BYTES)
            final = not block
            try:
                text = decoder.decode(block, final=final)
            except UnicodeDecodeError as exc:
                raise DataError(f"{str(path)!r} is not valid UTF-8: undecodable byte at offset "
                                f"{offset + exc.start}.",
                                "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it.") from None
            offset += len(block)
            text = pending + text
            if final:
                if text:
                    yield (text if text.endswith("\n") else text + "\n"), len(text.encode("utf-8"))
                return
            cut = text.rfind("\n") + 1
            if cut == 0:
                pending = text
                continue
            pending = text[cut:]
            yield text[:cut], len(block)


def _jsonl_texts(path: Path, field: str = "text") -> Iterator[tuple[str, int]]:
    batch: list[str] = []
    size = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{str(path)!r} line {lineno} is not valid UTF-8 (byte {exc.start} of the line).",
                                "convert the file to UTF-8.") from None
            except json.JSONDecodeError as exc:
                raise DataError(f"{str(path)!r} line {lineno} is not JSON: {exc.msg}.",
                                "write one JSON object per line.") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                fields = [k for k, v in record.items() if isinstance(v, str)] if isinstance(record, dict) else []
                found = f" (its string fields: {', '.join(fields[:8])})" if fields else ""
                raise DataError(f"{str(path)!r} line {lineno} has no string field {json.dumps(field)}{found}.",
                                f"name the field that holds the text: --text-field {fields[0]}." if fields else
                                f"write records like {{{json.dumps(field)}: \"...\"}}.")
            text = record[field]
            batch.append(text if text.endswith("\n") else text + "\n")
            size += len(raw)
            if size >= CHUNK_BYTES:
                yield "".join(batch), size
                batch, size = [], 0
    if batch:
        yield "".join(batch), size
