"""Corpora, tokenizers, the token cache and the batch sampler."""

from .cache import TokenData, default_cache_dir, prepare_data
from .prefetch import DevicePrefetcher
from .sampler import BlockSampler, blocks_at, eval_starts

__all__ = ["BlockSampler", "DevicePrefetcher", "TokenData", "blocks_at", "default_cache_dir", "eval_starts", "prepare_data"]
