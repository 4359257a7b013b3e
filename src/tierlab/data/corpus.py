"""Reading a corpus: text, JSON lines, CSV/TSV or Parquet; one file or a directory of them; compressed or not.

Text is streamed in chunks so that a large corpus never sits in memory as one string, and
it is decoded strictly: undecodable bytes are an error that names the file and the offset.
Compression (gzip, bzip2, xz) is recognised by the file's first bytes, not its name, and
read through the standard library; formats tierlab cannot read (zstd, zip, 7z) get a
message saying how to unpack them.
"""

from __future__ import annotations

import bz2
import codecs
import collections
import csv
import functools
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from ..atomic import atomic_write
from ..errors import DataError
from .demo import DEMO_VERSION, demo_text

CHUNK_BYTES = 1 << 22  # 4 MiB of text per tokenizer call

# Read transparently: the magic bytes that start such a file, and its name; each name's opener.
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_OPENERS = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z")
# Not read: what the file is and how to get text out of it.
_UNREADABLE = {
    b"\x28\xb5\x2f\xfd": ("zstd-compressed", "decompress it first (zstd -d FILE), or recompress with gzip, "
                                           "which tierlab reads directly."),
    b"PK\x03\x04": ("a zip archive", "unzip it and pass the file or the folder inside."),
    b"7z\xbc\xaf\x27\x1c": ("a 7z archive", "extract it (7z x FILE) and pass the file or the folder inside."),
}
_PARQUET_MAGIC = b"PAR1"
# The kinds of file, by name (after a compression suffix); anything else is read as plain text.
_KIND_BY_SUFFIX = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
# A directory is read as its files of the first kind here that it holds, in sorted order.
_DIRECTORY_KINDS = ("text", "jsonl", "parquet", "csv", "tsv")
_FIELD_KINDS = ("jsonl", "csv", "tsv", "parquet")  # kinds whose text sits in a named field or column


@dataclass(frozen=True)
class Corpus:
    """Where the text comes from; iterate it with :meth:`chunks`."""

    spec: str
    files: tuple[Path, ...]
    kind: str = "text"  # text | jsonl | csv | tsv | parquet, for every file
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
        if self.kind in ("text", "jsonl", "csv", "tsv") and not any(_compression(f) for f in self.files):
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
        if self.kind == "parquet":
            yield from _parquet_texts(path, self.text_field)
            return
        compression = _compression(path)
        try:
            with _OPENERS[compression](path, "rb") if compression else path.open("rb") as fh:
                if self.kind == "jsonl":
                    yield from _in_chunks(_jsonl_documents(fh, path, self.text_field))
                elif self.kind in ("csv", "tsv"):
                    yield from _table_texts(fh, path, self.text_field, "\t" if self.kind == "tsv" else ",")
                else:
                    yield from _text_chunks(fh, path, compression)
        except (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            if not compression:
                raise
            raise DataError(f"{str(path)!r} is not a complete {compression} file ({exc}).",
                            f"download or compress it again; `{_TEST_COMMAND[compression]} FILE` checks it.") from None


_TEST_COMMAND = {"gzip": "gzip -t", "bzip2": "bzip2 -t", "xz": "xz -t"}


def _magic(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(8)


def _compression(path: Path) -> str | None:
    """'gzip', 'bzip2' or 'xz' when the file starts like one, whatever its name; else None."""
    head = _magic(path)
    return next((name for magic, name in _COMPRESSED.items() if head.startswith(magic)), None)


def _kind(path: Path) -> str:
    """What a file holds, by its name once a compression suffix is dropped (and Parquet by its magic)."""
    suffix = os.path.splitext(_inner_name(path))[1]
    if suffix in _KIND_BY_SUFFIX:
        return _KIND_BY_SUFFIX[suffix]
    if suffix != ".txt" and path.is_file() and _magic(path).startswith(_PARQUET_MAGIC):
        return "parquet"  # e.g. a download saved without its suffix
    return "text"


def _check_readable(path: Path) -> None:
    head = _magic(path)
    for magic, (what, fix) in _UNREADABLE.items():
        if head.startswith(magic):
            raise DataError(f"{str(path)!r} is {what}; tierlab reads text, JSON lines, CSV/TSV and Parquet, "
                            "plain or gzip/bzip2/xz-compressed.", fix)


def _directory_files(p: Path, spec: str) -> tuple[str, tuple[Path, ...]]:
    """The files of the first kind in _DIRECTORY_KINDS that the directory holds (*.txt for text), sorted."""
    found: dict[str, list[Path]] = collections.defaultdict(list)
    for x in p.rglob("*"):
        if x.is_file() and not any(part.startswith(".") for part in x.relative_to(p).parts):
            kind = _kind(x)
            if kind != "text" or _inner_name(x).endswith(".txt"):
                found[kind].append(x)
    for kind in _DIRECTORY_KINDS:
        if found[kind]:
            files = tuple(sorted(found[kind]))
            _refuse_several_splits(p, spec, files)
            return kind, files
    others = collections.Counter(x.suffix.lower() or "(no suffix)" for x in p.rglob("*") if x.is_file())
    kinds = [f"{n} {kind} file{'s' if n > 1 else ''}" for kind, n in others.most_common(4)]
    held = f" (it holds {', '.join(kinds)})" if kinds else ""
    raise DataError(f"Directory {spec!r} holds no .txt, .jsonl, .parquet, .csv or .tsv files{held}.",
                    "tierlab reads *.txt in a directory (else *.jsonl, *.parquet, *.csv, *.tsv; compressed too): "
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
                    f"pass the training split alone: --data '{pick}' (tierlab holds out the last --val-fraction "
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


def _inner_name(path: Path) -> str:
    """The file's name in lower case without a compression suffix: what says its kind (data.jsonl.gz -> data.jsonl)."""
    name = path.name.lower()
    return name.removesuffix(next((s for s in _COMPRESSED_SUFFIXES if name.endswith(s)), ""))


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
                        "pass a .txt, .jsonl, .csv, .tsv or .parquet file (plain or .gz/.bz2/.xz), a directory of "
                        "them, or 'demo'.")
    elif p.is_dir():
        kind, files = _directory_files(p, spec)
    else:
        kind, files = _kind(p), (p,)
    if text_field != "text" and kind not in _FIELD_KINDS:
        raise DataError(f"--text-field {text_field!r} was given, but {spec!r} is plain text, not JSON lines, "
                        "CSV/TSV or Parquet.", "drop --text-field (plain text is read whole), or pass such a file.")
    if all(f.stat().st_size == 0 for f in files):
        raise DataError(f"The corpus {spec!r} is empty.", "pass a file with text in it.")
    for f in files:
        _check_readable(f)
    return Corpus(spec, files, kind, text_field)


def _text_chunks(fh: IO[bytes], path: Path, compression: str | None) -> Iterator[tuple[str, int]]:
    """Pieces of about CHUNK_BYTES ending on a newline, with the source bytes each accounts for.

    A line longer than a chunk (minified text, a script without spaces between words, one
    document on one line) is cut before its last space, or where the chunk ends when it has
    none, so memory stays bounded by the chunk size whatever the file's shape.
    """
    # utf-8-sig: a byte-order mark at the start (Notepad, Excel's "CSV UTF-8") is dropped, not read as text.
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    offset = reported = 0
    pending, ended_line = "", True
    while True:
        block = fh.read(CHUNK_BYTES)
        final = not block
        try:
            text = decoder.decode(block, final=final)
        except UnicodeDecodeError as exc:
            where = f" of its {compression}-decompressed text" if compression else ""
            raise DataError(f"{str(path)!r} is not valid UTF-8: undecodable byte at offset "
                            f"{offset + exc.start}{where}.",
                            _to_utf8(path, "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove "
                                           "it.")) from None
        offset += len(block)
        text = pending + text
        if final:  # the document ends with a newline: it separates it from the next file's
            if text or not ended_line:
                yield (text if text.endswith("\n") else text + "\n"), offset - reported
            return
        cut = text.rfind("\n") + 1
        if cut == 0 and len(text) >= CHUNK_BYTES // 4:  # characters (at most 4 bytes each)
            space = text.rfind(" ", 1)
            cut = space if space > 0 else len(text)  # before the space: " word" stays whole
        if cut == 0:
            pending = text
            continue
        # The bytes read so far, less those still pending (counted when they are yielded; a
        # character split across reads waits in the decoder, and the last piece squares it).
        pending = text[cut:]
        done = offset - len(pending.encode("utf-8"))
        yield text[:cut], done - reported
        reported, ended_line = done, text[cut - 1] == "\n"


_DECOMPRESS = {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc"}


def _to_utf8(path: Path, otherwise: str) -> str:
    """The fix for a file that is not UTF-8: from UTF-16 (or UTF-32) when its first bytes say so, else ``otherwise``.

    A byte-order mark names the encoding (Windows tools, PowerShell's ``>``, Notepad's
    "Unicode" write one); without one, UTF-16 text is recognised by its NUL bytes (every
    other byte of ASCII text), on the side that tells its byte order.
    """
    compression = _compression(path)
    try:
        with _OPENERS[compression](path, "rb") if compression else path.open("rb") as fh:
            head = fh.read(4096)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        return otherwise
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        source, why = "UTF-32", "it starts with a UTF-32 byte-order mark"
    elif head.startswith((b"\xff\xfe", b"\xfe\xff")):
        source, why = "UTF-16", "it starts with a UTF-16 byte-order mark"
    elif len(head) >= 8 and head.count(0) >= len(head) // 4:
        source = "UTF-16LE" if head[1::2].count(0) >= head[0::2].count(0) else "UTF-16BE"
        why = f"{head.count(0) / len(head):.0%} of its first bytes are NUL"
    else:
        return otherwise
    stem, suffix = os.path.splitext(path.name[:len(_inner_name(path))])  # (without a compression suffix)
    new = path.with_name(f"{stem}.utf8{suffix or '.txt'}")
    convert = f"iconv -f {source} -t UTF-8 {shlex.quote(str(path))}"
    if compression:
        convert = f"{_DECOMPRESS[compression]} {shlex.quote(str(path))} | iconv -f {source} -t UTF-8"
    return f"it looks like {source} text ({why}): convert it with {convert} > {shlex.quote(str(new))}, then " \
           f"--data {shlex.quote(str(new))}."


def _in_chunks(documents: Iterable[tuple[str | None, int]]) -> Iterator[tuple[str, int]]:
    """(document, source bytes) pairs joined into pieces of about CHUNK_BYTES, each document ending in a newline.

    A document of None (a row without the column) adds its bytes and no text.
    """
    batch: list[str] = []
    size = 0
    for text, nbytes in documents:
        if text is not None:
            batch.append(text if text.endswith("\n") else text + "\n")
        size += nbytes
        if size >= CHUNK_BYTES:
            yield "".join(batch), size
            batch, size = [], 0
    if batch:
        yield "".join(batch), size


def _jsonl_documents(fh: IO[bytes], path: Path, field: str) -> Iterator[tuple[str, int]]:
    """Each record's text with the bytes of its line; blank lines skipped."""
    for lineno, raw in enumerate(fh, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))  # (a BOM is dropped)
        except UnicodeDecodeError as exc:
            raise DataError(f"{str(path)!r} line {lineno} is not valid UTF-8 (byte {exc.start} of the line).",
                            _to_utf8(path, "convert the file to UTF-8.")) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} line {lineno} is not JSON: {exc.msg}.",
                            "write one JSON object per line.") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise _jsonl_without_text(path, lineno, record, field)
        yield record[field], len(raw)


def _jsonl_without_text(path: Path, lineno: int, record: object, field: str) -> DataError:
    """The error for a JSON line without the text field: the fields it has instead, a chat recognised as one."""
    problem = f"{str(path)!r} line {lineno} has no string field {json.dumps(field)}"
    if not isinstance(record, dict):
        return DataError(f"{problem}: it is a JSON {type(record).__name__}, not an object.",
                         f"write one object per line, like {{{json.dumps(field)}: \"...\"}}.")
    chat = next((k for k, v in record.items() if isinstance(v, list) and v and
                 all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in v)), None)
    if chat is not None:  # {"messages": [{"role": "user", "content": "..."}, ...]}: a conversation
        out = path.name.split(".")[0] + ".text.jsonl"
        flatten = f'{{text: ([.{chat}[] | (.role // "") + ": " + .content] | join("\\n"))}}'
        return DataError(f"{problem}: its {json.dumps(chat)} field is a conversation (a list of messages with "
                         "\"content\"), and tierlab trains on plain text.",
                         f"flatten each conversation to text first, e.g. jq -c '{flatten}' {path} > {out}, "
                         f"then --data {out}.")
    strings = [k for k, v in record.items() if isinstance(v, str)]
    if strings:
        return _no_text_field(problem, "string fields", strings, "")
    kinds = ", ".join(f"{k} ({type(v).__name__})" for k, v in list(record.items())[:8])
    return DataError(f"{problem} (its fields: {kinds or 'none'}).",
                     f"write records like {{{json.dumps(field)}: \"...\"}}, or name a string field with --text-field.")


def _table_texts(fh: IO[bytes], path: Path, field: str, delimiter: str) -> Iterator[tuple[str, int]]:
    """The ``field`` column of a CSV/TSV file with a header row; each row a document.

    Quoted fields may hold newlines and commas; the source bytes are counted by the
    (decompressed) stream's position, the unit of ``total_bytes``.
    """
    text_stream = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="strict", newline="")  # (a BOM is dropped)
    reader = csv.reader(text_stream, delimiter=delimiter)
    previous_limit = csv.field_size_limit()
    csv.field_size_limit(1 << 30)  # documents longer than csv's default 128 KiB per field are normal

    def rows(column: int) -> Iterator[tuple[str | None, int]]:
        start = 0
        for row in reader:
            position = fh.tell()  # a short row has no text: skipped, as a blank JSON line (its bytes counted)
            yield (row[column] if column < len(row) else None), position - start
            start = position

    try:
        header = next(reader, None)
        if header is None:
            return
        if field not in header:
            raise _no_text_field(f"{str(path)!r} has no column {json.dumps(field)}", "columns", header,
                                 f"give the text column the header {json.dumps(field)}.")
        yield from _in_chunks(rows(header.index(field)))
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid UTF-8 near line {reader.line_num + 1} ({exc.reason}).",
                        _to_utf8(path, "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8).")) from None
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} line {reader.line_num} is not valid {'TSV' if delimiter == chr(9) else 'CSV'}: "
                        f"{exc}.", "check the quoting of that line (a field with the delimiter, a quote or a "
                        "newline in it must be quoted).") from None
    finally:
        csv.field_size_limit(previous_limit)
        text_stream.detach()  # the caller closes the byte stream


def _parquet_texts(path: Path, field: str) -> Iterator[tuple[str, int]]:
    """The ``field`` string column of a Parquet file (what Hugging Face datasets ship), row group by row group."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{str(path)!r} is a Parquet file, and reading Parquet needs pyarrow, which is not installed.",
                        "pip install 'tierlab[parquet]' (or pip install pyarrow), then run the same command.") from None
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{str(path)!r} is not a readable Parquet file ({exc}).",
                        "download or write it again.") from None
    schema = parquet.schema_arrow
    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if field not in schema.names:
        raise _no_text_field(f"{str(path)!r} has no column {json.dumps(field)}", "text columns", strings,
                             f"store the text in a string column named {json.dumps(field)}.")
    if field not in strings:
        raise _no_text_field(f"{str(path)!r} column {json.dumps(field)} holds {schema.field(field).type}, not text",
                             "text columns", strings, f"store the text in a string column named {json.dumps(field)}.")

    def rows() -> Iterator[tuple[str, int]]:
        for record_batch in parquet.iter_batches(columns=[field], batch_size=4096):
            column = record_batch.column(0).drop_null()  # a null row has no text: skipped, as a blank JSON line
            yield from zip(column.to_pylist(), pc.binary_length(column).to_pylist())

    yield from _in_chunks(rows())


def _no_text_field(problem: str, what: str, candidates: list[str], otherwise: str) -> DataError:
    """'<problem> (its <what>: a, b, c).' with the fix naming the first candidate, for every field-based format."""
    found = f" (its {what}: {', '.join(candidates[:8])})" if candidates else ""
    fix = f"name the field that holds the text: --text-field {candidates[0]}." if candidates else otherwise
    return DataError(f"{problem}{found}.", fix)
