"""Hyperparameter search with Optuna (``tierlab search``): real training runs as trials."""

from .space import DEFAULT_SPACE, Dimension, load_space
from .study import SearchConfig, SearchResult, run_search

__all__ = ["DEFAULT_SPACE", "Dimension", "SearchConfig", "SearchResult", "load_space", "run_search"]
