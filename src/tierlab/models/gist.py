"""``--model gist:ID[@REVISION]``: a Transformer Builder export published as a GitHub gist, fetched once and pinned.

The gist's ``model.py`` and ``config.json`` are fetched through the GitHub gist API into
tierlab's cache (``$TIERLAB_CACHE/gists/ID/REVISION/``) with each file's sha256 beside
them; a run records the spec pinned to the revision it used (``gist:ID@REVISION``), so
``--resume``, ``sample`` and ``export`` use exactly that code, offline.  A cached file whose
bytes changed is refused, never imported.  The API's address is ``$TIERLAB_GIST_API``
(default https://api.github.com; the tests point it at a loopback server).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..errors import ModelError

log = logging.getLogger(__name__)

PREFIX = "gist:"
API_ENV, DEFAULT_API = "TIERLAB_GIST_API", "https://api.github.com"
FILES = ("model.py", "config.json")  # what an export holds; other files of the gist are left out
META = "gist.json"
TIMEOUT_S = 20
_SPEC = re.compile(r"^gist:([0-9A-Za-z_-]+)(?:@([0-9A-Fa-f]{7,40}))?$")


def is_gist(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def parse(spec: str) -> tuple[str, str | None]:
    match = _SPEC.match(spec)
    if not match:
        raise ModelError(f"--model {spec!r} is not a gist spec.", "write gist:ID or gist:ID@REVISION (the ID is the "
                         "last part of the gist's address, the revision a commit hash from its revisions page).")
    return match.group(1), match.group(2)


def pinned(spec: str, cache: Path) -> str:
    """``gist:ID@REVISION``: the spec with the revision it resolves to now (fetching the gist if needed)."""
    gist_id, _ = parse(spec)
    return f"{PREFIX}{gist_id}@{fetch(spec, cache).name}"


def fetch(spec: str, cache: Path) -> Path:
    """The folder holding the gist's model.py (and config.json) at the spec's revision, fetched once and verified."""
    gist_id, revision = parse(spec)
    root = cache / "gists" / gist_id
    if revision is not None:
        cached = _cached(root, revision)
        if cached is not None:
            return cached
    try:
        data = _get_json(f"{_api()}/gists/{gist_id}" + (f"/{revision}" if revision else ""))
    except _Unreachable as exc:
        newest = _newest_cached(root) if revision is None else None
        if newest is not None:
            log.warning("the gist API cannot be reached (%s): using gist %s as last fetched, revision %s", exc,
                        gist_id, newest.name)
            return newest
        raise ModelError(f"Cannot fetch gist {gist_id}{'@' + revision if revision else ''} from {_api()}: {exc}.",
                         f"download model.py and config.json from https://gist.github.com/{gist_id} (its Raw "
                         "buttons) into a folder, and pass that folder: --model FOLDER.") from None
    history = data.get("history") or []
    resolved = revision or (history[0].get("version") if history and isinstance(history[0], dict) else None)
    if not resolved or not re.fullmatch(r"[0-9A-Fa-f]{7,40}", str(resolved)):
        raise ModelError(f"The gist API's answer for {gist_id} names no revision.",
                         f"pin one: --model gist:{gist_id}@REVISION (from the gist's revisions page).")
    cached = _cached(root, resolved)
    return cached if cached is not None else _store(root, str(resolved), gist_id, data)


def model_folder(spec: str, cache: Path) -> Path | None:
    """The cached folder of a pinned spec, without the network (None when it is not cached)."""
    gist_id, revision = parse(spec)
    return _cached(cache / "gists" / gist_id, revision) if revision else None


class _Unreachable(Exception):
    pass


def _api() -> str:
    return os.environ.get(API_ENV, DEFAULT_API).rstrip("/")


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                                   "User-Agent": "tierlab"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - an https/http API URL
            return response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ModelError(f"{url} answered 404: no such gist (or revision), or it is secret and needs a token.",
                             "check the ID and revision in the gist's address (gist.github.com/USER/ID).") from None
        raise _Unreachable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise _Unreachable(str(getattr(exc, "reason", exc))) from None


def _get_json(url: str) -> dict[str, Any]:
    try:
        data = json.loads(_get(url))
    except ValueError:
        raise _Unreachable(f"{url} did not answer with JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise _Unreachable(f"{url} did not answer with a gist")
    return data


def _store(root: Path, revision: str, gist_id: str, data: dict[str, Any]) -> Path:
    files = data["files"]
    if "model.py" not in files:
        raise ModelError(f"Gist {gist_id} has no model.py (it holds {', '.join(sorted(files)) or 'no files'}).",
                         "point --model at a Transformer Builder export's gist (model.py and config.json).")
    contents = {name: _content(files[name]) for name in FILES if name in files}
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{revision}.tmp", dir=root))
    try:
        for name, content in contents.items():
            (staging / name).write_bytes(content)
        meta = {"gist": gist_id, "revision": revision, "api": _api(),
                "sha256": {name: hashlib.sha256(content).hexdigest() for name, content in contents.items()}}
        (staging / META).write_text(json.dumps(meta, indent=2) + "\n")
        target = root / revision
        try:
            staging.rename(target)  # whole or not at all; another process that got there first wins
        except OSError:
            if _cached(root, revision) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("fetched gist %s at revision %s into %s", gist_id, revision, root / revision)
    return root / revision


def _content(entry: dict[str, Any]) -> bytes:
    if entry.get("truncated") or entry.get("content") is None:  # large files come by their raw address
        return _get(str(entry["raw_url"]))
    return str(entry["content"]).encode("utf-8")


def _cached(root: Path, revision: str) -> Path | None:
    folder = root / revision
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None
    for name, digest in (meta.get("sha256") or {}).items():
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ModelError(f"The cached gist file {path} was changed since it was fetched (its sha256 no longer "
                             "matches): tierlab does not import it.",
                             f"delete {folder} to fetch the gist again, or copy the folder elsewhere and pass it "
                             "with --model FOLDER if the change is yours.")
    return folder


def _newest_cached(root: Path) -> Path | None:
    folders = [f for f in root.glob("*") if f.is_dir() and (f / META).is_file()] if root.is_dir() else []
    return max(folders, key=lambda f: (f / META).stat().st_mtime) if folders else None
