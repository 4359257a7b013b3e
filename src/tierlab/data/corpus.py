"""Reading a corpus: one file, a directory or a pattern of files of one format (see :mod:`.formats`), compressed or not.

The formats themselves (text, JSON lines, CSV/TSV, Parquet) and their readers are in
:mod:`.formats`; compression in :mod:`.compression`.  Here: which files ``--data`` names,
what kind they are, and a clear error for every bad input.
"""

from __future__ import annotations

import collections
import functools
import glob
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..atomic import atomic_write
from ..errors import DataError
from .compression import STREAM_ERRORS, TEST_COMMAND, check_readable, compression, inner_name, magic, open_bytes
from .demo import DEMO_VERSION, demo_text
from .formats import CHUNK_BYTES, FORMATS, TEXT, by_suffix, readable, suffix_list

__all__ = ["CHUNK_BYTES", "Corpus", "is_pattern", "open_corpus"]


@dataclass(frozen=True)
class Corpus:
    """Where the text comes from; iterate it with :meth:`chunks`."""

    spec: str
    files: tuple[Path, ...]
    kind: str = "text"  # a name in formats.FORMATS, the same for every file
    text_field: str = "text"  # JSONL / CSV / Parquet: the field or column holding each document

    @property
    def size_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    @functools.cached_property
    def total_bytes(self) -> int:
        """Bytes of source text: the file sizes, or for compressed and Parquet files one pass counting them.

        The unit :meth:`chunks` counts ``byte_limit`` in, so "the first 90%" means the same
        thing for a .txt and its .txt.gz.
        """
        if FORMATS[self.kind].streamed and not any(compression(f) for f in self.files):
            return self.size_on_disk
        return sum(nbytes for f in self.files for _, nbytes in self._read(f))

    def content_hash(self) -> str:
        """SHA-256 over the files' bytes (in order) and what is read from them, the key of the token cache."""
        h = hashlib.sha256(self.kind.encode())
        if self.kind != "text" and (self.kind != "jsonl" or self.text_field != "text"):
            h.update(b"\0field\0" + self.text_field.encode())  # (hashes of .jsonl "text" corpora unchanged)
        for f in self.files:
            h.update(b"\0file\0")
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
                    h.update(block)
        return h.hexdigest()

    def chunks(self, byte_limit: int | None = None) -> Iterator[str]:
        """Decoded text in pieces of about CHUNK_BYTES, ending on line boundaries.

        Documents (files, records, rows) are separated by a newline. ``byte_limit`` stops
        after that many source bytes (used to train BPE on the training part only).
        """
        consumed = 0
        for f in self.files:
            for text, nbytes in self._read(f):
                if byte_limit is not None and consumed + nbytes >= byte_limit:
                    # Keep only the part before the limit (whole characters).
                    keep = byte_limit - consumed
                    yield text.encode("utf-8")[:keep].decode("utf-8", errors="ignore")
                    return
                yield text
                consumed += nbytes

    def _read(self, path: Path) -> Iterator[tuple[str, int]]:
        """(text, source bytes) pieces of one file, a broken compressed stream reported as a DataError."""
        fmt = FORMATS[self.kind]
        if not fmt.streamed:
            yield from fmt.read(None, path, self.text_field, None)
            return
        compressed = compression(path)
        try:
            with open_bytes(path, compressed) as fh:
                yield from fmt.read(fh, path, self.text_field, compressed)
        except STREAM_ERRORS as exc:
            if not compressed:
                raise
            raise DataError(f"{str(path)!r} is not a complete {compressed} file ({exc}).",
                            f"download or compress it again; `{TEST_COMMAND[compressed]} FILE` checks it.") from None


def _kind(path: Path) -> str:
    """What a file holds, by its name once a compression suffix is dropped (or its first bytes); else text."""
    suffix = os.path.splitext(inner_name(path))[1]
    fmt = by_suffix(suffix)
    if fmt is not None:
        return fmt.name
    if suffix not in TEXT.suffixes and path.is_file():
        head = magic(path)  # e.g. a download saved without its suffix
        fmt = next((f for f in FORMATS.values() if f.magic and head.startswith(f.magic)), None)
        if fmt is not None:
            return fmt.name
    return TEXT.name


def _directory_files(p: Path, spec: str) -> tuple[str, tuple[Path, ...]]:
    """The files of the first format in FORMATS' order that the directory holds (*.txt for text), sorted."""
    found: dict[str, list[Path]] = collections.defaultdict(list)
    for x in p.rglob("*"):
        if x.is_file() and not any(part.startswith(".") for part in x.relative_to(p).parts):
            kind = _kind(x)
            if kind != TEXT.name or inner_name(x).endswith(TEXT.suffixes):
                found[kind].append(x)
    for kind in FORMATS:
        if found[kind]:
            files = tuple(sorted(found[kind]))
            _refuse_several_splits(p, spec, files)
            return kind, files
    others = collections.Counter(x.suffix.lower() or "(no suffix)" for x in p.rglob("*") if x.is_file())
    kinds = [f"{n} {kind} file{'s' if n > 1 else ''}" for kind, n in others.most_common(4)]
    held = f" (it holds {', '.join(kinds)})" if kinds else ""
    first, *others = [f"*{f.suffixes[0]}" for f in FORMATS.values()]
    raise DataError(f"Directory {spec!r} holds no {suffix_list()} files{held}.",
                    f"tierlab reads {first} in a directory (else {', '.join(others)}; compressed too): "
                    "rename plain-text files to .txt, or pass a file.")


# Names datasets give their splits (a folder, or a file name's first word), and what each means.
_SPLIT_WORDS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


def _split_of(root: Path, path: Path) -> tuple[str, Path] | None:
    """(split, the pattern or folder that selects it) for a file named like a dataset split, else None."""
    rel = path.relative_to(root)
    for depth, part in enumerate(rel.parts):
        words = re.split(r"[._-]+", part.lower())
        last = depth == len(rel.parts) - 1
        if last and words[0] in _SPLIT_WORDS:  # train-00000-of-00002.parquet
            return _SPLIT_WORDS[words[0]], path.parent / (part[: len(words[0])] + "*" + "".join(path.suffixes))
        if not last and part.lower() in _SPLIT_WORDS:  # train/part-0.txt
            return _SPLIT_WORDS[part.lower()], root.joinpath(*rel.parts[: depth + 1])
    return None


def _refuse_several_splits(root: Path, spec: str, files: tuple[Path, ...]) -> None:
    """A folder with train and test (or validation) files: reading it whole would train on the held-out ones."""
    splits: dict[str, Path] = {}
    for f in files:
        found = _split_of(root, f)
        if found:
            splits.setdefault(*found)
    if len(splits) < 2:
        return
    pick = splits.get("train", next(iter(splits.values())))
    raise DataError(f"Directory {spec!r} holds the {', '.join(sorted(splits))} splits of a dataset; read whole, "
                    "training would see the held-out ones.",
                    f"pass the training split alone: --data '{pick}' (tierlab holds out --val-fraction "
                    f"of it for evaluation); to read every file anyway: --data '{root}/**/*{''.join(files[0].suffixes)}'.")


def is_pattern(spec: str) -> bool:
    """Whether ``--data`` is a glob pattern (``data/train-*.parquet``) rather than a path."""
    return any(c in spec for c in "*?[") and not Path(spec).exists()


def _pattern_files(spec: str) -> tuple[str, tuple[Path, ...]]:
    files = tuple(sorted(Path(f) for f in glob.glob(spec, recursive=True) if Path(f).is_file()))
    if not files:
        raise DataError(f"--data pattern {spec!r} matches no file.",
                        "check the pattern (and quote it, so that the shell passes it to tierlab as it is).")
    kinds = collections.Counter(_kind(f) for f in files)
    if len(kinds) > 1:
        raise DataError(f"--data pattern {spec!r} matches files of several kinds "
                        f"({', '.join(f'{n} {k}' for k, n in kinds.most_common())}).",
                        "narrow the pattern to one kind, e.g. end it in .parquet or .txt.")
    return next(iter(kinds)), files


def open_corpus(spec: str, cache_dir: Path, text_field: str = "text") -> Corpus:
    """Resolve ``--data`` into a :class:`Corpus`, with a clear error for every bad input.

    ``text_field``: the JSONL field, CSV/TSV column or Parquet column that holds the text.
    """
    if spec == "demo":
        path = cache_dir / f"demo-v{DEMO_VERSION}.txt"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, demo_text())
        return Corpus(spec, (path,))
    p = Path(spec)
    if is_pattern(spec):
        kind, files = _pattern_files(spec)
    elif not p.exists():
        raise DataError(f"Data path {spec!r} does not exist.",
                        f"pass a {suffix_list()} file (plain or .gz/.bz2/.xz), a directory of them, or 'demo'.")
    elif p.is_dir():
        kind, files = _directory_files(p, spec)
    else:
        kind, files = _kind(p), (p,)
    if text_field != "text" and not FORMATS[kind].field_based:
        fielded = [f.label for f in FORMATS.values() if f.field_based]
        raise DataError(f"--text-field {text_field!r} was given, but {spec!r} is plain text, not "
                        f"{', '.join(fielded[:-1])} or {fielded[-1]}.",
                        "drop --text-field (plain text is read whole), or pass such a file.")
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"The corpus {spec!r} is empty.", "pass a file with text in it.")
    for f in files:
        check_readable(f, readable())
    return Corpus(spec, files, kind, text_field)
