"""Transformer Builder exports: a ``model.py`` and the ``config.json`` beside it, loaded as they are.

Transformer Builder (a visual model designer) exports exactly two files.  ``config.json``
is either flat -- ``{"vocab_size": 50257, "d_model": 512, "nhead": 8, "num_layers": 6,
"model_name": "CustomTransformer"}`` -- or a node graph, ``{"nodes": [{"params": {...}},
...], "version": ..., "model_name": ...}``, whose nodes' ``params`` together hold the sizes.
``model_name`` names the ``nn.Module`` class in ``model.py``; its constructor takes the
config's keys, a subset of them, or nothing at all (sizes written into the code).

This module only reads the export: which file, which class, which constructor arguments,
and the sequence length the config declares.  :func:`tierlab.models.load_model` builds it.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE = "model.py", "config.json"
# Keys of the export's own bookkeeping: never constructor arguments.
META_KEYS = ("model_name", "nodes", "version", "edges", "connections", "links")
# Keys under which a config declares the longest sequence the model takes.
MAX_LEN_KEYS = ("max_seq_len", "seq_length", "max_seq_length", "max_len", "block_size", "max_position_embeddings",
                "n_positions", "n_ctx", "context_length", "seq_len")


@dataclass
class Export:
    """A Builder export: its model file and what its config.json says."""

    model_file: Path
    config_file: Path
    values: dict[str, Any] = field(default_factory=dict)  # the constructor-argument candidates
    model_name: str | None = None

    @property
    def max_len(self) -> int | None:
        for key in MAX_LEN_KEYS:
            value = self.values.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def arguments_for(self, accepted: set[str] | None) -> dict[str, Any]:
        """The config values the constructor takes (all of them when it takes ``**kwargs``)."""
        if accepted is None:
            return dict(self.values)
        return {k: v for k, v in self.values.items() if k in accepted}


def find_export(path: Path) -> Export | None:
    """The export at ``path``: a folder holding model.py (+ config.json), or a model.py with an export's config beside it.

    A plain model file with some other ``config.json`` beside it (one without ``model_name``
    or ``nodes``) is not an export: its folder's config is left alone.
    """
    if path.is_dir():
        model_file, config_file = path / MODEL_FILE, path / CONFIG_FILE
        if not model_file.is_file():
            found = sorted(p.name for p in path.glob("*.py"))
            raise ModelError(f"--model {str(path)!r} is a folder without a {MODEL_FILE}"
                             f"{' (it holds ' + ', '.join(found[:5]) + ')' if found else ''}.",
                             f"pass a folder holding {MODEL_FILE} and {CONFIG_FILE} (a Transformer Builder export), "
                             "or the path of the model's .py file.")
        if not config_file.is_file():
            log.info("%s has no %s: the model is built with its constructor's defaults", path, CONFIG_FILE)
            return Export(model_file, config_file)
        return _read(model_file, config_file, required=True)
    config_file = path.with_name(CONFIG_FILE)
    if path.suffix == ".py" and path.is_file() and config_file.is_file():
        return _read(path, config_file, required=False)
    return None


def _read(model_file: Path, config_file: Path, required: bool) -> Export | None:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if not required:
            return None  # not readable as an export's config: not an export
        raise ModelError(f"{str(config_file)!r} is not a JSON config ({type(exc).__name__}: {exc}).",
                         "export the model again, or fix the file (one JSON object of constructor arguments).") from None
    if not isinstance(config, dict):
        if not required:
            return None
        raise ModelError(f"{str(config_file)!r} holds a JSON {type(config).__name__}, not an object of constructor "
                         "arguments.", "export the model again, or write the arguments as one JSON object.")
    if not required and "model_name" not in config and "nodes" not in config:
        return None
    name = config.get("model_name")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise ModelError(f"{str(config_file)!r}: model_name {name!r} is not a Python class name.",
                         f"set model_name to the name of the nn.Module class defined in {model_file.name}.")
    values = _node_params(config, config_file) if isinstance(config.get("nodes"), list) else {}
    values.update({k: v for k, v in config.items() if k not in META_KEYS})
    return Export(model_file, config_file, values, name)


_WARNED: set[tuple[Path, str]] = set()


def _node_params(config: dict[str, Any], config_file: Path) -> dict[str, Any]:
    """The params of every node, merged; the first node that sets a key wins (a conflict is said)."""
    merged: dict[str, Any] = {}
    for index, node in enumerate(config["nodes"]):
        params = node.get("params") if isinstance(node, dict) else None
        if not isinstance(params, dict):
            continue
        for key, value in params.items():
            if key in merged and merged[key] != value:
                if (config_file, key) in _WARNED:
                    continue
                _WARNED.add((config_file, key))  # (an export is read more than once per command)
                log.warning("%s: nodes disagree on %s (%r, and %r in node %d): %r is used (--model-arg %s=... "
                            "chooses)", config_file, key, merged[key], value, index, merged[key], key)
                continue
            merged.setdefault(key, value)
    return merged


def find_class(module: Any, export: Export) -> type[nn.Module]:
    """The class ``model_name`` names, else the one ``nn.Module`` subclass the file defines."""
    where = str(export.model_file)
    if export.model_name:
        cls = getattr(module, export.model_name, None)
        if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
            factory = (f", or, since {export.model_name}() is a function, name it as the factory: --model "
                       f"{export.model_file.parent}:{export.model_name}" if callable(cls) else "")
            raise ModelError(f"{export.config_file.name} names the model {export.model_name!r}, which {where!r} does "
                             f"not define as an nn.Module class{_defined(module)}.",
                             f"set model_name in {export.config_file.name} to the model's class name{factory}.")
        return cls
    own = _own_modules(module)
    top = [c for c in own if not any(c is not other and _uses(other, c) for other in own)] or own
    if len(top) == 1:
        return top[0]
    raise ModelError(f"{where!r} defines {'no' if not own else len(top)} nn.Module classes{_defined(module)} and "
                     f"{export.config_file.name} names none (no model_name).",
                     f"add \"model_name\": \"ClassName\" to {export.config_file.name}, or name the class: "
                     f"--model {export.model_file.parent}:ClassName.")


def _own_modules(module: Any) -> list[type[nn.Module]]:
    return [obj for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, nn.Module)
            and obj.__module__ == module.__name__]


def _uses(outer: type, inner: type) -> bool:
    """Whether ``outer``'s source mentions ``inner`` by name (a block used inside the model)."""
    try:
        return inner.__name__ in inspect.getsource(outer)
    except (OSError, TypeError):
        return False


def _defined(module: Any) -> str:
    names = [c.__name__ for c in _own_modules(module)]
    return f" (it defines {', '.join(names[:6])})" if names else ""
