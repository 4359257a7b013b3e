"""The corpus formats tierlab reads, in one table: adding a format is one entry (and its reader) in this file.

Every reader yields ``(text, source bytes)`` pieces of about CHUNK_BYTES, documents ending
in a newline, and decodes strictly: undecodable bytes are an error that names the file and
the offset.  Text is streamed, so a large corpus never sits in memory as one string.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from ..errors import DataError
from .compression import DECOMPRESS, STREAM_ERRORS, compression, inner_name, open_bytes

CHUNK_BYTES = 1 << 22  # 4 MiB of text per tokenizer call

Pieces = Iterator[tuple[str, int]]


@dataclass(frozen=True)
class Format:
    name: str  # the Corpus.kind
    label: str  # in messages: "tierlab reads text, JSON lines, ..."
    suffixes: tuple[str, ...]  # file names it is recognised by (after a compression suffix)
    # (decompressed byte stream or None, path, text field, compression) -> pieces; the stream is None
    # for a format that reads the file itself (``streamed=False``).
    read: Callable[[IO[bytes] | None, Path, str, str | None], Pieces]
    field_based: bool = False  # the text sits in a named field or column (--text-field)
    streamed: bool = True  # read as a byte stream (so also compressed); uncompressed, its size is its source bytes
    magic: bytes | None = None  # recognised by its first bytes when its name does not say


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


def _to_utf8(path: Path, otherwise: str) -> str:
    """The fix for a file that is not UTF-8: from UTF-16 (or UTF-32) when its first bytes say so, else ``otherwise``.

    A byte-order mark names the encoding (Windows tools, PowerShell's ``>``, Notepad's
    "Unicode" write one); without one, UTF-16 text is recognised by its NUL bytes (every
    other byte of ASCII text), on the side that tells its byte order.
    """
    compressed = compression(path)
    try:
        with open_bytes(path, compressed) as fh:
            head = fh.read(4096)
    except STREAM_ERRORS:
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
    stem, suffix = os.path.splitext(path.name[:len(inner_name(path))])  # (without a compression suffix)
    new = path.with_name(f"{stem}.utf8{suffix or '.txt'}")
    convert = f"iconv -f {source} -t UTF-8 {shlex.quote(str(path))}"
    if compressed:
        convert = f"{DECOMPRESS[compressed]} {shlex.quote(str(path))} | iconv -f {source} -t UTF-8"
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


def open_parquet(path: Path):
    """A ``pyarrow.parquet.ParquetFile``, with plain errors for a missing pyarrow and an unreadable file."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{str(path)!r} is a Parquet file, and reading Parquet needs pyarrow, which is not installed.",
                        "pip install 'tierlab[parquet]' (or pip install pyarrow), then run the same command.") from None
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{str(path)!r} is not a readable Parquet file ({exc}).",
                        "download or write it again.") from None


def _parquet_texts(path: Path, field: str) -> Iterator[tuple[str, int]]:
    """The ``field`` string column of a Parquet file (what Hugging Face datasets ship), row group by row group."""
    parquet = open_parquet(path)  # (first: it says how to install a missing pyarrow)
    import pyarrow as pa
    import pyarrow.compute as pc

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


def _text(fh: IO[bytes] | None, path: Path, field: str, compressed: str | None) -> Pieces:
    return _text_chunks(fh, path, compressed)


def _jsonl(fh: IO[bytes] | None, path: Path, field: str, compressed: str | None) -> Pieces:
    return _in_chunks(_jsonl_documents(fh, path, field))


def _csv(fh: IO[bytes] | None, path: Path, field: str, compressed: str | None) -> Pieces:
    return _table_texts(fh, path, field, ",")


def _tsv(fh: IO[bytes] | None, path: Path, field: str, compressed: str | None) -> Pieces:
    return _table_texts(fh, path, field, "\t")


def _parquet(fh: IO[bytes] | None, path: Path, field: str, compressed: str | None) -> Pieces:
    return _parquet_texts(path, field)


# In the order a directory is searched: it is read as its files of the first format it holds.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("text", "text", (".txt",), _text),
    Format("jsonl", "JSON lines", (".jsonl", ".ndjson"), _jsonl, field_based=True),
    Format("parquet", "Parquet", (".parquet",), _parquet, field_based=True, streamed=False, magic=b"PAR1"),
    Format("csv", "CSV", (".csv",), _csv, field_based=True),
    Format("tsv", "TSV", (".tsv",), _tsv, field_based=True),
)}
TEXT = FORMATS["text"]  # also what a file of any other name is read as


def by_suffix(suffix: str) -> Format | None:
    return next((f for f in FORMATS.values() if suffix in f.suffixes), None)


def suffix_list(glue: str = "or") -> str:
    """".txt, .jsonl, .parquet, .csv or .tsv": each format's first suffix, in the table's order."""
    names = [f.suffixes[0] for f in FORMATS.values()]
    return ", ".join(names[:-1]) + f" {glue} " + names[-1]


def field_suffixes() -> str:
    """".jsonl/.parquet/.csv/.tsv": the formats whose text sits in a named field or column."""
    return "/".join(f.suffixes[0] for f in FORMATS.values() if f.field_based)


def readable() -> str:
    """"text, JSON lines, Parquet, CSV and TSV": what tierlab reads, for messages."""
    labels = [f.label for f in FORMATS.values()]
    return ", ".join(labels[:-1]) + " and " + labels[-1]
