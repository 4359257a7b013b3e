"""Model loading (user files, the built-in tiny GPT) and output adaptation."""

from .loader import BUILTIN, PROBABILITIES_FIX, extract_logits, load_model, looks_like_probabilities, max_positions

__all__ = ["BUILTIN", "PROBABILITIES_FIX", "extract_logits", "load_model", "looks_like_probabilities", "max_positions"]
