"""Model loading (user files, the built-in tiny GPT) and output adaptation."""

from .loader import BUILTIN, extract_logits, load_model, max_positions

__all__ = ["BUILTIN", "extract_logits", "load_model", "max_positions"]
