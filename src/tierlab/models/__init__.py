"""Model loading (user files, the built-in tiny GPT) and output adaptation."""

from .loader import (BUILTIN, CAUSAL_FIX, PROBABILITIES_FIX, adapt, check_forward_signature, eval_mode, every_position, extract_logits, future_leak,
                     load_model, looks_like_probabilities, max_positions, refuse_non_logits, repeatable_logits,
                     vocab_fix)

__all__ = ["BUILTIN", "CAUSAL_FIX", "PROBABILITIES_FIX", "adapt", "check_forward_signature", "eval_mode", "every_position", "extract_logits",
           "future_leak", "load_model", "looks_like_probabilities", "max_positions", "refuse_non_logits", "repeatable_logits",
           "vocab_fix"]
