"""What a run is, beyond its options: an id its checkpoints carry, and the model file it was started with.

``<run>/run.json`` is written once, when the run directory is created: a random run id and
the sha256 of the model file (for ``--model PATH.py``).  A resume only takes checkpoints
that carry the run's id (see :func:`tierlab.train.checkpoint.verify_checkpoint`) and only
imports a model file whose content is the one recorded -- nothing read from a checkpoint
chooses which code runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..errors import ConfigError
from ..run_files import RUN_INFO

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def model_file(spec: str) -> Path | None:
    """The Python file a --model spec imports (PATH.py[:factory]), or None for a built-in or in-memory model."""
    from ..models.gist import is_gist, model_folder
    from ..models.loader import split_spec

    if spec.startswith("<in-memory"):
        return None
    if is_gist(spec):  # fetched into the cache when the run started
        from ..data.cache import default_cache_dir

        folder = model_folder(spec, default_cache_dir()) if "@" in spec else None
        return folder / "model.py" if folder is not None else None
    path, _ = split_spec(spec)
    if path.is_dir():  # a Transformer Builder export: its model.py is the code
        path = path / "model.py"
    return path if path.suffix == ".py" and path.is_file() else None


def export_config(spec: str) -> Path | None:
    """The config.json of a Transformer Builder export named by ``spec``, or None for any other model."""
    from ..models.builder import find_export
    from ..models.gist import is_gist
    from ..models.loader import split_spec

    source = model_file(spec)
    if source is None:
        return None
    try:
        export = find_export(source.parent if is_gist(spec) else split_spec(spec)[0])
    except Exception:  # noqa: BLE001 - an unreadable export config is reported where the model is built
        return None
    return export.config_file if export is not None and export.config_file.is_file() else None


def create(run_dir: Path, model_spec: str) -> dict[str, Any]:
    """Write a new run's run.json and return it."""
    source = model_file(model_spec)
    info = {"run_id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": model_spec,
            "model_sha256": file_sha256(source) if source else None}
    config = export_config(model_spec)
    if config is not None:  # a Transformer Builder export: its config.json sizes the model
        info["model_config_sha256"] = file_sha256(config)
    write_json_atomic(run_dir / RUN_INFO, info)
    return info


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run's run.json, or None for a run made before tierlab wrote one (or one whose file was removed)."""
    try:
        info = json.loads((run_dir / RUN_INFO).read_bytes())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("run_id"), str) else None


def run_id(run_dir: Path) -> str | None:
    info = read(run_dir)
    return info["run_id"] if info else None


def check_model_source(run_dir: Path, model_spec: str, checkpoint_model: str) -> None:
    """Refuse to import a model file that is not the one the run was started with, unless the user named it.

    Accepted: the recorded content (wherever the file now is); the recorded path with edited
    content (the user's own file, changed in place: warned); a file the user named this time
    (``model_spec`` differs from what the checkpoint recorded: warned). Refused: a file the
    checkpoint names that is neither -- a checkpoint must not choose which code runs.
    """
    info = read(run_dir)
    source = model_file(model_spec)
    if not info or not info.get("model_sha256") or source is None:
        return
    from ..models.gist import is_gist
    from ..models.loader import split_spec

    if is_gist(model_spec):  # tierlab's own copy of a pinned revision: any change is an alteration, refused
        check_recorded_source(run_dir, model_spec)
        return
    config = export_config(model_spec)
    if config is not None and info.get("model_config_sha256") not in (None, file_sha256(config)):
        log.warning("%s differs from the config.json run %s was started with: the checkpoint's weights must still "
                    "fit the model it builds", config, run_dir)
    if file_sha256(source) == info["model_sha256"]:
        return
    recorded, _ = split_spec(str(info.get("model", "")))  # where the run's file was (it may be gone now)
    if source.resolve() == recorded.resolve() or model_spec != checkpoint_model:
        log.warning("the model file %s differs from the one run %s was started with (sha256 %s...): the "
                    "checkpoint's weights must still fit it", source, run_dir, info["model_sha256"][:12])
        return
    raise ConfigError(f"The checkpoint names the model file {str(source)!r}, which is not the file run "
                      f"{str(run_dir)!r} was started with ({info.get('model')!r}, sha256 "
                      f"{info['model_sha256'][:12]}...); tierlab does not import code a checkpoint chooses.",
                      "resume with the run's own model file, or name the file to use: --model PATH.py.")


def check_recorded_source(run_dir: Path, spec: str) -> None:
    """Before ``sample``, ``export`` or ``analyze`` import a run's own model: is it the code the run trained?

    A local file edited since is the user's own change: a warning (the weights must still
    fit it).  A gist's cached files are tierlab's copy of a pinned revision: a difference from
    what the run recorded means the cache was altered, and the code is refused.
    """
    from ..models.gist import is_gist

    info = read(run_dir)
    source = model_file(spec)
    if not info or not info.get("model_sha256") or source is None:
        return
    config = export_config(spec)
    changed = [path for path, recorded in ((source, info["model_sha256"]),
                                           (config, info.get("model_config_sha256")))
               if path is not None and recorded and file_sha256(path) != recorded]
    if not changed:
        return
    names = " and ".join(str(p) for p in changed)
    if is_gist(spec):
        raise ConfigError(f"{names} no longer hold(s) the code run {str(run_dir)!r} was trained with (its sha256 is "
                          "not the one run.json recorded): the cached gist was altered, and tierlab does not import it.",
                          f"delete {source.parent} to fetch the revision again.")
    log.warning("%s differ(s) from the file(s) run %s was trained with: the trained weights must still fit", names,
                run_dir)
