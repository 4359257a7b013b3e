"""What a model learns to predict: the next token (``clm``, the default), masked tokens (``mlm``) or a label (``classify``).

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
from ..models.loader import CLASS_ARGUMENTS  # a factory's argument for the number of classes

__all__ = ["OBJECTIVES", "Classification", "MaskedLM", "macro_f1", "make_objective", "missing_mask_row", "model_vocab",
           "split_block"]
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
    """The vocabulary the model must embed: the tokenizer's, plus the mask token (``mlm``) or padding (``classify``)."""
    return tokenizer_vocab + (1 if name in ("mlm", "classify") else 0)


class Classification:
    """``--objective classify``: one label per row, from the model's [B, C] output or its [B, T, C] pooled.

    Rows are padded on the right with a padding token added after the tokenizer's
    vocabulary (id = its size, as the mask token of ``mlm``); a training block is
    [B, T + 1]: the T token ids of each row, then its class id.  A model that returns one
    output per position ([B, T, C]) is pooled over the row's own positions (``pool``):
    ``mean`` (padding left out), ``last`` (the last text position, what a causal model has
    read the whole row at) or ``first``.
    """

    def __init__(self, pad_id: int, pool: str, labels: list[str]):
        self.pad_id, self.pool, self.labels = pad_id, pool, list(labels)

    @property
    def classes(self) -> int:
        return len(self.labels)

    @staticmethod
    def split(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [B, T], class ids [B]) of a [B, T + 1] block."""
        return block[:, :-1], block[:, -1]

    def pooled(self, logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """[B, C] scores: the model's own when it returns [B, C], else its [B, T, C] pooled over the text."""
        if logits.dim() == 2:
            return logits
        text = inputs != self.pad_id  # [B, T]
        if self.pool == "first":
            return logits[:, 0]
        if self.pool == "last":  # (a row with no text at all: its first position)
            last = (text.sum(1) - 1).clamp_min(0)
            return logits[torch.arange(logits.size(0), device=logits.device), last]
        weights = text.unsqueeze(-1).to(logits.dtype)
        return (logits * weights).sum(1) / weights.sum(1).clamp_min(1)


POOL_FIRST_ON_CAUSAL = ("--pool first reads the model's first position, and this model is causal: that position "
                        "sees only the first token of each row, so the classifier would learn next to nothing.")
POOL_FIRST_FIX = "use --pool last (the position that has read the whole row) or --pool mean."


def first_position_is_blind(model: torch.nn.Module, ids: torch.Tensor) -> bool:
    """Whether the first position of ``model``'s [B, T, C] output ignores the rest of the row (a causal model).

    False when it cannot be told (one token, or two forwards that differ: dropout left on).
    """
    from ..models import eval_mode, extract_logits, future_leak, repeatable_logits

    length = ids.size(1)
    if length < 2:
        return False
    with eval_mode(model), torch.no_grad():
        def logits_of(x: torch.Tensor) -> torch.Tensor:
            return extract_logits(model(x))

        base = repeatable_logits(logits_of, ids)
        return base is not None and future_leak(logits_of, ids, length - 1, vocab=2, base=base) is None


def split_block(block: torch.Tensor, classify: Classification | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of a training block: the next tokens [B, T], or a classification's class ids [B]."""
    return classify.split(block) if classify is not None else (block[:, :-1], block[:, 1:])


# Eval records carry the confusion matrix up to this many classes; beyond, its C * C numbers per
# evaluation would swell metrics.jsonl (and the all-reduce), so only per-class counts are kept.
CONFUSION_CLASSES = 30


def macro_f1(confusion: torch.Tensor) -> float:
    """The mean over classes of F1 from a [C, C] confusion matrix (rows: true class, columns: predicted)."""
    c = confusion.to(torch.float64)
    return macro_f1_of_counts(c.diag(), c.sum(1), c.sum(0))


def macro_f1_of_counts(true_positive: torch.Tensor, support: torch.Tensor, predicted: torch.Tensor) -> float:
    """Macro-F1 from per-class counts: rows rightly given the class, rows of the class, rows given it.

    A class that is neither in the labels nor predicted is left out of the mean (its F1 is
    undefined), as scikit-learn's ``f1_score(average="macro")`` with its labels observed.
    """
    true_positive, support, predicted = (t.to(torch.float64) for t in (true_positive, support, predicted))
    present = (support + predicted) > 0
    if not bool(present.any()):
        return float("nan")
    f1 = 2 * true_positive / (support + predicted).clamp_min(1)
    return float(f1[present].mean())


def classification_for(objective: str, data: object, pool: str) -> Classification | None:
    """The run's :class:`Classification` (``--objective classify``: its data are labelled rows), else None."""
    if objective != "classify":
        return None
    return Classification(data.pad_id, pool, data.labels)  # type: ignore[attr-defined]




def missing_pad_row(pad_id: int, said: str) -> ModelError:
    """The error for a classifier whose token embedding has no row for the padding token (train and validate)."""
    return ModelError(f"The model's forward pass failed on the padding token, id {pad_id} ({said}): --objective "
                      f"classify pads rows with it, after the tokenizer's {pad_id} tokens, and the model's token "
                      "embedding has no row for it.", f"build the model with vocab_size >= {pad_id + 1} (its factory "
                      "gets that by default when it takes a vocab_size argument; a model with its sizes written in "
                      "needs one more row in its embedding).")


def check_class_scores(logits: torch.Tensor, shape: tuple[int, int], classes: int | None,
                       labels: list[str] | None = None) -> int:
    """Refuse a classifier output that is not [B, C] or [B, T, C] floats (C = ``classes`` when known); return C."""
    batch, length = shape
    per_row = logits.dim() == 2 and logits.size(0) == batch
    per_position = logits.dim() == 3 and tuple(logits.shape[:2]) == (batch, length)
    if not (per_row or per_position):
        raise ModelError(f"The model returned {list(logits.shape)} for input_ids [{batch}, {length}]; --objective "
                         "classify needs class scores.", f"return [B, C] = [{batch}, classes] (one row of scores per "
                         f"input row), or [B, T, C] per position, which is pooled (--pool).")
    from ..models import refuse_non_logits

    refuse_non_logits(logits, "scores", "row")
    found = logits.size(-1)
    if classes is not None and found != classes:
        named = f" ({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''})" if labels else ""
        what = "outputs per row" if per_row else "outputs per position"
        arg = "num_classes"
        raise ModelError(f"The model returns {found} {what}, and the data has {classes} classes{named}.",
                         f"give its output layer {classes} outputs: a factory taking {' or '.join(CLASS_ARGUMENTS)} "
                         f"gets it by default (or --model-arg {arg}={classes}); a language model's head "
                         "(vocabulary-wide) is not a classifier.")
    return found
