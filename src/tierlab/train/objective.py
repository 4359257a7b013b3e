"""What a model learns to predict: the next token (``clm``, the default) or masked tokens (``mlm``).

``--objective mlm`` trains a bidirectional model (an encoder, a Transformer Builder export
called without a mask) as a masked language model, as BERT was: a mask token is added after
the tokenizer's vocabulary (id = its size), and in every micro-batch 15% of the positions
of each sequence are chosen -- 80% of them replaced by the mask token, 10% by a random
token, 10% kept -- and only they are scored: the loss and the accuracy count the chosen
positions alone (their labels; every other label is -100, which cross-entropy ignores).

The choice is a function of the run's seed and the micro-batch's place in the run (step,
micro-batch, rank), drawn on the device from a generator seeded for it: a resumed run masks
exactly as the uninterrupted one, with no state in the checkpoint, and drawing costs no host
sync.  Validation masks its fixed blocks the same way at every evaluation, so val loss is
comparable across steps.
"""

from __future__ import annotations

import torch

from ..config import OBJECTIVES
from ..errors import ModelError

__all__ = ["OBJECTIVES", "MaskedLM", "make_objective", "missing_mask_row", "model_vocab"]
MASK_FRACTION = 0.15
IGNORE = -100  # cross-entropy's ignore_index: a position that is not scored
_EVAL_STREAM = 1 << 40  # validation's masks come from streams no training micro-batch uses


class MaskedLM:
    """The masking of ``--objective mlm`` for a tokenizer of ``vocab`` tokens (the mask token is id ``vocab``)."""

    def __init__(self, vocab: int, seed: int):
        self.vocab, self.mask_id, self.seed = vocab, vocab, seed

    def chosen_per_sequence(self, length: int) -> int:
        return max(1, round(MASK_FRACTION * length))

    def mask(self, tokens: torch.Tensor, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) for a [B, T] block of tokens; ``stream`` numbers the micro-batch in the run."""
        batch, length = tokens.shape
        generator = torch.Generator(device=tokens.device)
        generator.manual_seed((self.seed * 1_000_003 + stream) % (1 << 63))
        k = self.chosen_per_sequence(length)
        chosen = torch.rand(batch, length, generator=generator, device=tokens.device).argsort(-1)[:, :k]  # [B, k]
        original = tokens.gather(1, chosen)
        labels = torch.full_like(tokens, IGNORE).scatter_(1, chosen, original)
        roll = torch.rand(batch, k, generator=generator, device=tokens.device)
        random_ids = torch.randint(0, self.vocab, (batch, k), generator=generator, device=tokens.device)
        replaced = torch.where(roll < 0.8, torch.full_like(original, self.mask_id),
                               torch.where(roll < 0.9, random_ids, original))
        return tokens.clone().scatter_(1, chosen, replaced), labels

    def training_stream(self, step: int, micro: int, grad_accum: int, rank: int, world_size: int) -> int:
        return ((step * grad_accum + micro) * world_size + rank)

    def eval_stream(self, batch_index: int, rank: int) -> int:
        return _EVAL_STREAM + batch_index * 4096 + rank


def missing_mask_row(mask_id: int, said: str) -> ModelError:
    """The error for a model whose token embedding has no row for the mask token (train and validate)."""
    return ModelError(f"The model's forward pass failed on the mask token, id {mask_id} ({said}): --objective mlm "
                      f"adds it after the tokenizer's {mask_id} tokens, and the model's token embedding has no row for "
                      f"it.", f"build the model with vocab_size >= {mask_id + 1} (its factory gets that by default when "
                      f"it takes a vocab_size argument: --model-arg vocab_size={mask_id + 1}; a model with its sizes "
                      "written in needs one more row in its embedding).")


def make_objective(name: str, vocab: int, seed: int) -> MaskedLM | None:
    """The masking for ``name`` (None for ``clm``: the next token is the label, no change to the batch)."""
    return MaskedLM(vocab, seed) if name == "mlm" else None


def model_vocab(name: str, tokenizer_vocab: int) -> int:
    """The vocabulary the model must embed: the tokenizer's, plus the mask token for ``mlm``."""
    return tokenizer_vocab + (1 if name == "mlm" else 0)
