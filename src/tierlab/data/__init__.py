"""Corpora, tokenizers, the token cache and the batch sampler.

Imported lazily (PEP 562): the corpus format table (:mod:`.formats`) is read by the config
and ``--help`` without loading numpy's and torch's parts of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"TokenData": ".cache", "default_cache_dir": ".cache", "prepare_data": ".cache",
            "DevicePrefetcher": ".prefetch", "BlockSampler": ".sampler", "RowSampler": ".sampler", "blocks_at": ".sampler",
            "LabelledData": ".rows", "prepare_rows": ".rows",
            "eval_starts": ".sampler"}
__all__ = ['BlockSampler', 'DevicePrefetcher', 'LabelledData', 'RowSampler', 'TokenData', 'blocks_at', 'default_cache_dir',
           'eval_starts', 'prepare_data', 'prepare_rows']

if TYPE_CHECKING:
    from .cache import TokenData, default_cache_dir, prepare_data
    from .prefetch import DevicePrefetcher
    from .rows import LabelledData, prepare_rows
    from .sampler import BlockSampler, RowSampler, blocks_at, eval_starts


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tierlab.data' has no attribute {name!r}")
