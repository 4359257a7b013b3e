"""Corpora, tokenizers, the token cache and the batch sampler."""

from .cache import TokenData, default_cache_dir, prepare_data
from .sampler import BlockSampler, blocks_at, eval_starts

__all__ = ["BlockSampler", "TokenData", "blocks_at", "default_cache_dir", "eval_starts", "prepare_data"]
