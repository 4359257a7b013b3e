"""Compressed corpus files: recognised by their first bytes, not their names, and read through the standard library.

Formats tierlab cannot read (zstd, zip, 7z) are recognised too, with a message saying how
to unpack them.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path
from typing import IO

from ..errors import DataError

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
TEST_COMMAND = {"gzip": "gzip -t", "bzip2": "bzip2 -t", "xz": "xz -t"}
DECOMPRESS = {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc"}
# What a broken compressed stream raises while it is read.
STREAM_ERRORS = (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, OSError)


def magic(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(8)


def compression(path: Path) -> str | None:
    """'gzip', 'bzip2' or 'xz' when the file starts like one, whatever its name; else None."""
    head = magic(path)
    return next((name for start, name in _COMPRESSED.items() if head.startswith(start)), None)


def open_bytes(path: Path, compressed: str | None) -> IO[bytes]:
    """The file's (decompressed) bytes."""
    return _OPENERS[compressed](path, "rb") if compressed else path.open("rb")


def inner_name(path: Path) -> str:
    """The file's name in lower case without a compression suffix: what says its kind (data.jsonl.gz -> data.jsonl)."""
    name = path.name.lower()
    return name.removesuffix(next((s for s in _COMPRESSED_SUFFIXES if name.endswith(s)), ""))


def check_readable(path: Path, readable: str) -> None:
    """Refuse an archive or a compression tierlab does not read; ``readable`` names what it does read."""
    head = magic(path)
    for start, (what, fix) in _UNREADABLE.items():
        if head.startswith(start):
            raise DataError(f"{str(path)!r} is {what}; tierlab reads {readable}, plain or gzip/bzip2/xz-compressed.",
                            fix)
