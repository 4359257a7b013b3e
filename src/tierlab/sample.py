"""Using what was trained: sample a continuation of a prompt (the run is loaded by :mod:`tierlab.run_reader`)."""

from __future__ import annotations

import torch
from torch import nn

from .data.tokenizer import Tokenizer
from .errors import UserError
from .models import extract_logits, max_positions
from .run_reader import RecordedModelMissing, load

__all__ = ["RecordedModelMissing", "classify", "fill_masks", "generate", "load"]  # tierlab.sample.load, as before


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 100,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             context: int | None = None) -> str:
    """``prompt`` followed by ``max_new_tokens`` sampled tokens (temperature 0: greedy)."""
    if temperature < 0 or max_new_tokens < 0 or (top_k is not None and top_k < 1):
        raise UserError("--temperature and --max-new-tokens must be 0 or more, --top-k at least 1.",
                        "e.g. --temperature 0.8 --top-k 40 --max-new-tokens 200.")
    device = next(model.parameters()).device
    ids = torch.as_tensor(tokenizer.encode(prompt).astype("int64"), device=device).view(1, -1)
    if ids.numel() == 0:
        raise UserError("The prompt is empty.", "pass some text with --prompt.")
    context = context or max_positions(model) or 256
    generator = torch.Generator(device=device)
    generator.manual_seed(0 if seed is None else seed)
    # Only the last position is needed here: a nanoGPT-style model (see models.every_position)
    # gets targets=None said outright, which skips tierlab's hook and takes its own shortcut.
    shortcut = {"targets": None} if getattr(model, "_tierlab_every_position", None) is not None else {}
    for _ in range(max_new_tokens):
        logits = extract_logits(model(ids[:, -context:], **shortcut))[:, -1, :].float()  # [1, V]
        # A model with more outputs than the tokenizer has tokens (a Builder export sized for GPT-2's
        # vocabulary, trained on bytes): the extra outputs were never a target and have no text.
        next_id = _choose(logits[:, :tokenizer.vocab_size], temperature, top_k, generator)
        ids = torch.cat([ids, next_id], dim=1)
    return tokenizer.decode(ids[0].tolist())


MASK_TEXT = "[MASK]"


@torch.no_grad()
def fill_masks(model: nn.Module, tokenizer: Tokenizer, prompt: str, temperature: float = 0.0,
               top_k: int | None = None, seed: int | None = None) -> str:
    """``prompt`` with each ``[MASK]`` replaced by the token a masked LM (``--objective mlm``) predicts there.

    Each ``[MASK]`` stands for one token (the mask token, id ``tokenizer.vocab_size``); all are
    predicted in one forward pass.  Temperature 0 (the default here) takes the likeliest token.
    """
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise UserError("--temperature must be 0 or more, --top-k at least 1.", "e.g. --temperature 0 (the likeliest).")
    parts = prompt.split(MASK_TEXT)
    if len(parts) == 1:
        raise UserError(f"The prompt holds no {MASK_TEXT}: this run is a masked language model (--objective mlm), "
                        "which fills masks instead of continuing text.",
                        f"mark the tokens to fill, e.g. --prompt 'To be or {MASK_TEXT}{MASK_TEXT}{MASK_TEXT} to be'.")
    mask_id = tokenizer.vocab_size
    ids: list[int] = []
    where: list[int] = []
    for index, part in enumerate(parts):
        ids.extend(int(i) for i in tokenizer.encode(part))
        if index < len(parts) - 1:
            where.append(len(ids))
            ids.append(mask_id)
    limit = max_positions(model)
    if limit is not None and len(ids) > limit:
        raise UserError(f"The prompt is {len(ids)} tokens (each [MASK] one of them), more than the model's {limit} "
                        "positions.", f"shorten it to at most {limit} tokens.")
    device = next(model.parameters()).device
    logits = extract_logits(model(torch.tensor([ids], device=device)))[0, where, :tokenizer.vocab_size].float()
    generator = torch.Generator(device=device).manual_seed(0 if seed is None else seed)
    chosen = _choose(logits, temperature, top_k, generator).view(-1)
    for position, token in zip(where, chosen.tolist()):
        ids[position] = token
    return tokenizer.decode(ids)


@torch.no_grad()
def classify(model: nn.Module, tokenizer: Tokenizer, text: str, labels: list[str], seq_len: int,
             pool: str = "mean") -> list[tuple[str, float]]:
    """(label, probability) for every class of a classification run (``--objective classify``), likeliest first.

    The text is tokenized, cut and padded to the run's ``seq_len`` exactly as its training
    rows were, so the model sees what it was trained on.
    """
    from .train.objective import Classification

    ids = [int(i) for i in tokenizer.encode(text)][:seq_len]
    task = Classification(tokenizer.vocab_size, pool, labels)
    row = torch.full((1, seq_len), task.pad_id, dtype=torch.long, device=next(model.parameters()).device)
    row[0, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    probabilities = torch.softmax(task.pooled(extract_logits(model(row)).float(), row), -1)[0].tolist()
    return sorted(zip(labels, probabilities), key=lambda pair: -pair[1])


def _choose(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """One token id per row of ``logits`` [N, V], as [N, 1]: the likeliest (temperature 0), or drawn from the top k."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
