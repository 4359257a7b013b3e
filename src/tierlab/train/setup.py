"""Set-up: from a config (and perhaps a module) to a checked model and its data, before anything is written.

One path for ``tierlab train`` and ``tierlab bench``: the data is read and tokenized, the
model built (or the caller's module adopted), moved to the device and probed at the
training shape, and every mistake the user can make -- a corpus too short, a model with the
wrong output, token ids beyond its vocabulary, a future-leaking mask -- is a plain error
here, before a run directory exists.  ``validate`` and ``analyze`` use its pieces
(:func:`build_or_adopt`, :func:`check_logits`): they have no training corpus of their own.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import MAX_STEPS, TrainConfig
from ..data import LabelledData, TokenData, prepare_data, prepare_rows
from ..data.sampler import block_at, eval_starts
from ..errors import ConfigError, DataError, ModelError, UserError
from ..models import (CAUSAL_FIX, adapt, eval_mode, extract_logits, future_leak, load_model,
                      max_positions, refuse_non_logits, vocab_fix)
from ..models.causal_mask import refuse_unreached
from . import batch_size
from .auto_precision import AutoProbe
from .distributed import SINGLE, Dist
from .init_from import WeightSource, load_initial_weights
from .objective import (POOL_FIRST_FIX, POOL_FIRST_ON_CAUSAL, Classification, check_class_scores,
                        classification_for, first_position_is_blind, missing_mask_row, missing_pad_row, model_vocab,
                        split_block)
from .precision import PrecisionDecision, PrecisionPolicy, decide_precision, low_precision_weights
from .resume import check_same_data, check_same_model
from .schedule import default_warmup

log = logging.getLogger(__name__)

DEFAULT_MAX_STEPS = 400
KEPT_ON_RESUME = " (decided when the run started; kept on resume)"


@dataclass
class Prepared:
    """What :func:`prepare` hands on: everything checked, nothing written."""

    cfg: TrainConfig  # with the warm-up resolved and, for an in-memory module, its name recorded
    tokens: TokenData | LabelledData  # labelled rows for --objective classify
    model: nn.Module  # on the device, returning every position's logits
    vocab: int  # the model's output size (classify: the number of classes)
    block: torch.Tensor  # a real [B, T + 1] training block for the set-up passes (probe, compile)
    max_steps: int
    weights_warning: str | None  # trainable weights stored in bf16/fp16, in words
    init_source: WeightSource | None = None  # where --init-from took the weights from
    batch_event: dict[str, Any] | None = None  # --batch-size auto / --global-batch-size: what was chosen, how


def prepare(model_or_path: nn.Module | str | None, cfg: TrainConfig, device: torch.device, *,
            dist: Dist = SINGLE, cache_dir: Path | None = None, resume_state: dict[str, Any] | None = None,
            ckpt_path: Path | None = None) -> Prepared:
    """Data, model and the checks between them, in the order a user's mistake is cheapest to report.

    With ``resume_state`` (a checkpoint), the data and the model must be the ones it was
    trained on, and the weights come from it later (so ``--init-from`` is not applied).
    """
    seed_everything(cfg.seed)  # the same on every rank: DDP starts from rank 0's weights anyway
    # Rank 0 fills the token cache, the others then read it.
    tokens = dist.main_first(lambda: read_data(cfg, cache_dir))
    if resume_state is not None:
        check_same_data(resume_state, tokens.tokenizer.identity, tokens.corpus_hash, ckpt_path)
    if cfg.batch_size != "auto":  # (--batch-size auto: the length is known once the batch is found, below)
        cfg, batch_event = batch_size.resolve(cfg, dist.world_size, find=None)
        cfg, max_steps = _length(cfg, tokens)
    check_sizes(cfg, tokens)
    classes = len(tokens.labels) if isinstance(tokens, LabelledData) else None
    model = build_or_adopt(model_or_path, cfg.model, cfg.model_args,
                           model_vocab(cfg.objective, tokens.tokenizer.vocab_size), cfg.causal_mask, classes)
    if isinstance(model_or_path, nn.Module) and resume_state is None:
        cfg = cfg.replace(model=f"<in-memory {type(model).__name__}>")
    init_source = None
    if resume_state is not None:
        check_same_model(resume_state, model, ckpt_path)
    elif cfg.init_from:  # a resume has its own weights
        init_source = load_initial_weights(model, cfg.init_from, tokens.tokenizer.identity,
                                           labels=tokens.labels if isinstance(tokens, LabelledData) else None)
    model.to(device)
    vocab = probe_model(model, cfg, tokens, device)
    if cfg.batch_size == "auto":
        cfg, batch_event = _find_batch(model, cfg, tokens, device, dist)
        cfg, max_steps = _length(cfg, tokens)
    return Prepared(cfg, tokens, model, vocab, first_block(tokens, cfg), max_steps,
                    low_precision_warning(model, say=dist.is_main), init_source, batch_event)


def _length(cfg: TrainConfig, tokens: TokenData | LabelledData) -> tuple[TrainConfig, int]:
    """(config with the warm-up resolved, max_steps): --max-steps, or --epochs over the training split."""
    max_steps = cfg.max_steps or steps_for_epochs(cfg, tokens)
    if max_steps > MAX_STEPS:
        raise ConfigError(f"--epochs {cfg.epochs:g} is {max_steps:,} steps of {cfg.batch_size} x {cfg.seq_len} tokens "
                          f"here, more than tierlab's {MAX_STEPS:,}.", "pass fewer --epochs or a larger batch.")
    if cfg.warmup_steps is None:
        cfg = cfg.replace(warmup_steps=default_warmup(max_steps))
    if cfg.warmup_steps > max_steps:  # warm-up only (==) is a legitimate schedule
        raise ConfigError(f"--warmup-steps ({cfg.warmup_steps}) is longer than the run ({max_steps} steps).",
                          "shorten the warm-up or train longer.")
    return cfg, max_steps


def _find_batch(model: nn.Module, cfg: TrainConfig, tokens: TokenData | LabelledData, device: torch.device,
                dist: Dist) -> tuple[TrainConfig, dict[str, Any] | None]:
    """--batch-size auto on the real model, under the precision the run will most likely take; rank 0's choice for all."""
    classify = classification_for(cfg.objective, tokens, cfg.pool)
    policy = PrecisionPolicy(decide_precision(cfg.precision, device), device)

    def make_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return split_block(first_block(tokens, cfg.replace(batch_size=size, global_batch_size=None)).to(device), classify)

    resolved, event = batch_size.resolve(cfg, dist.world_size, lambda cap: batch_size.find_largest(
        model, cfg, device, make_batch, policy, batch_size.cap_for(device, cap)))
    chosen = dist.broadcast((resolved.batch_size, resolved.grad_accum, event))
    return cfg.replace(batch_size=chosen[0], grad_accum=chosen[1]), chosen[2]


def read_data(cfg: TrainConfig, cache_dir: Path | None) -> TokenData | LabelledData:
    """The tokenized corpus, or for ``--objective classify`` its tokenized, labelled rows."""
    if cfg.objective == "classify":
        from ..data import default_cache_dir

        return prepare_rows(cfg.data, cfg.tokenizer, cfg.val_fraction, cfg.seq_len, cache_dir or default_cache_dir(),
                            cfg.text_field, cfg.label_field)
    return prepare_data(cfg.data, cfg.tokenizer, cfg.val_fraction, cache_dir, cfg.text_field)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def steps_for_epochs(cfg: TrainConfig, tokens: TokenData) -> int:
    if cfg.epochs is None:
        return DEFAULT_MAX_STEPS
    per_step = cfg.batch_size * cfg.grad_accum * (1 if isinstance(tokens, LabelledData) else cfg.seq_len)
    return max(1, math.ceil(cfg.epochs * len(tokens.train) / per_step))  # (classify: rows, not tokens)


def check_sizes(cfg: TrainConfig, tokens: TokenData | LabelledData) -> None:
    if isinstance(tokens, LabelledData):  # rows: the training split is never empty (prepare_rows says so)
        if cfg.eval_every and not len(tokens.val):
            raise DataError(f"--val-fraction {cfg.val_fraction:g} holds out none of the {len(tokens.train)} rows.",
                            "use a larger --val-fraction, more rows, or --eval-every 0.")
        return
    need = cfg.seq_len + 1
    if len(tokens.train) < need:
        raise DataError(f"The training split has {len(tokens.train)} tokens, fewer than one block of "
                        f"--seq-len + 1 = {need}.", "use a larger corpus or a smaller --seq-len.")
    if cfg.eval_every and len(tokens.val) < need:
        raise DataError(f"The validation split ({cfg.val_fraction:.0%} of the corpus) has {len(tokens.val)} "
                        f"tokens, fewer than one block of --seq-len + 1 = {need}.",
                        "use a larger corpus, a larger --val-fraction, a smaller --seq-len, or --eval-every 0.")


def build_or_adopt(model_or_path: nn.Module | str | None, spec: str, model_args: dict[str, Any],
                   vocab_size: int, causal_mask: bool = False, classes: int | None = None) -> nn.Module:
    """The model: the caller's module, or one built from ``spec`` -- either way returning every position's logits.

    Shared by train, bench, validate and analyze, so that a module that works in one works
    in all (nanoGPT's last-position shortcut included, see
    :func:`~tierlab.models.every_position`).
    """
    if isinstance(model_or_path, nn.Module):
        return adapt(model_or_path, causal_mask)
    return load_model(model_or_path or spec, model_args, vocab_size, causal_mask, classes)


def probe_model(model: nn.Module, cfg: TrainConfig, tokens: TokenData, device: torch.device) -> int:
    """One forward pass at the training shape; returns the model's vocabulary size (V).

    Catches, before any training, the mistakes that otherwise surface as an opaque CUDA
    assert or a shape error deep inside cross-entropy.
    """
    limit = max_positions(model)
    if limit is not None and cfg.seq_len > limit:
        raise ModelError(f"--seq-len {cfg.seq_len} is longer than the model's {limit} positions.",
                         f"use --seq-len {limit} or less, or build the model with more positions.")
    probe = torch.zeros(2, cfg.seq_len, dtype=torch.long, device=device)
    probe[:, 1::2] = min(tokens.max_id, 1) if tokens.max_id >= 0 else 0
    mask_id = tokens.tokenizer.vocab_size if cfg.objective == "mlm" else None
    if mask_id is not None:
        probe[:, 0] = mask_id  # the mask token must have an embedding row
    pad_id = tokens.pad_id if isinstance(tokens, LabelledData) else None
    if pad_id is not None and cfg.seq_len > 1:
        probe[1, -1] = pad_id  # so must the padding (one row padded: pooling sees both kinds)
    try:
        with eval_mode(model), torch.no_grad():
            output = model(probe)
    except UserError:
        raise
    except Exception as exc:
        said = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        short = (_short_position_tables(model, cfg.seq_len, tokens.tokenizer.vocab_size)
                 if isinstance(exc, IndexError) else [])
        if mask_id is not None and isinstance(exc, IndexError) and not short:
            raise missing_mask_row(mask_id, said) from None
        if pad_id is not None and isinstance(exc, IndexError) and not short:
            raise missing_pad_row(pad_id, said) from None
        if short:  # the probe's ids are 0 and 1, so an index out of range is a position past a table's end
            name, rows = short[0]
            raise ModelError(f"The model's forward pass failed on input_ids of shape [2, {cfg.seq_len}] ({said}): "
                             f"its embedding {name!r} has {rows} rows, fewer than --seq-len {cfg.seq_len} "
                             "positions.", f"use --seq-len {rows} or less, or build the model with more "
                             "positions.") from None
        raise ModelError(f"The model's forward pass failed on input_ids of shape [2, {cfg.seq_len}]: {said}.",
                         "make forward(input_ids) accept a LongTensor [B, T] (try a smaller --seq-len if the "
                         "model has fewer positions).") from None
    if isinstance(tokens, LabelledData):  # class scores: no vocabulary to check, no future to leak
        classes = check_class_scores(extract_logits(output), probe.shape, len(tokens.labels), tokens.labels)
        if cfg.pool == "first" and extract_logits(output).dim() == 3:
            _refuse_a_blind_first_position(model, probe[:1, :min(cfg.seq_len, 64)])
        return classes
    vocab = check_logits(extract_logits(output), probe.shape, tokens, model)
    if vocab > model_vocab(cfg.objective, tokens.tokenizer.vocab_size):
        log.info("the model has %d outputs, more than the %d tokens of tokenizer %s: the extra outputs are never a "
                 "target (fine; a smaller vocab_size would only save memory)", vocab, tokens.tokenizer.vocab_size,
                 tokens.tokenizer.identity)
    if cfg.objective == "clm":  # a masked LM reads both sides by design
        _refuse_a_future_leak(model, probe[:1, :min(cfg.seq_len, 64)])
    return vocab


def check_logits(logits: torch.Tensor, shape: torch.Size | tuple[int, int], tokens: TokenData,
                 model: nn.Module) -> int:
    """Refuse logits that are not [B, T, V] floats of ``shape`` or cannot score ``tokens``; return V."""
    batch, length = shape
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, length):
        raise ModelError(f"The model returned logits of shape {list(logits.shape)} for input_ids [{batch}, {length}].",
                         f"return logits [B, T, V] = [{batch}, {length}, vocab_size]: one row per position.")
    refuse_non_logits(logits)
    vocab = logits.size(-1)
    if tokens.max_id >= vocab:
        raise DataError(f"The data holds token id {tokens.max_id} but the model has only {vocab} outputs "
                        f"(ids 0..{vocab - 1}); tokenizer {tokens.tokenizer.identity} has "
                        f"{tokens.tokenizer.vocab_size} tokens.",
                        vocab_fix(model, tokens.tokenizer.vocab_size) + ".")
    return vocab


def _refuse_a_future_leak(model: nn.Module, ids: torch.Tensor) -> None:
    """Stop when earlier positions see the last token: a bidirectional or off-by-one mask.

    Such a model learns to copy the next token and its loss means nothing; one more forward
    tells. ``tierlab validate`` walks every position and names the first that leaks.
    """
    length = ids.size(1)
    if length < 2:
        return
    with eval_mode(model), torch.no_grad():
        leak = future_leak(lambda x: extract_logits(model(x)), ids, length - 1, vocab=2)
    if leak is not None and getattr(model, "_tierlab_causal_mask", None):
        raise refuse_unreached(model, leak)
    if leak is not None:
        raise ModelError(f"The model sees the future: its logits at earlier positions change when the last of "
                         f"{length} tokens changes (max diff {leak:.3g}), so training would teach it to copy the "
                         "next token and the loss would mean nothing.",
                         f"{CAUSAL_FIX}; for a Hugging Face model use its ...ForCausalLM class. "
                         "`tierlab validate --model ...` names the first position that leaks.")


def _refuse_a_blind_first_position(model: nn.Module, ids: torch.Tensor) -> None:
    """``--pool first`` on a causal model: its first position has read one token, so it would train at chance."""
    if first_position_is_blind(model, ids):
        raise ConfigError(POOL_FIRST_ON_CAUSAL, POOL_FIRST_FIX)


def _short_position_tables(model: nn.Module, seq_len: int, vocab: int) -> list[tuple[str, int]]:
    """(name, rows) of the embeddings with fewer rows than ``seq_len``: position tables too short for it.

    A token table (as many rows as the tokenizer has tokens) is left out: a small vocabulary
    is shorter than a long sequence without being at fault.
    """
    return [(name, m.num_embeddings) for name, m in model.named_modules()
            if isinstance(m, nn.Embedding) and m.num_embeddings < seq_len and m.num_embeddings != vocab]


def first_block(tokens: TokenData | LabelledData, cfg: TrainConfig) -> torch.Tensor:
    """A real [B, T + 1] block of training tokens (evenly spaced offsets; draws nothing from the sampler)."""
    if isinstance(tokens, LabelledData):  # the first rows (already in a random order), cycled for a tiny set
        rows = np.arange(cfg.batch_size) % len(tokens.train)
        return torch.from_numpy(tokens.train[rows].astype(np.int64))
    (starts,) = eval_starts(len(tokens.train), cfg.seq_len, cfg.batch_size, batches=1)
    return block_at(tokens.train, starts, cfg.seq_len)


def low_precision_warning(model: nn.Module, say: bool = True) -> str | None:
    """The warning for trainable weights stored in bf16/fp16 (logged when ``say``), or None."""
    stored_low = low_precision_weights(model)
    warning = f"{stored_low[0]}. Fix: {stored_low[1]}." if stored_low else None
    if warning and say:
        log.warning("%s", warning)
    return warning


def decide_for_run(cfg: TrainConfig, device: torch.device, model: nn.Module, block: torch.Tensor, max_steps: int,
                   resume_state: dict[str, Any] | None, cache_dir: Path | None,
                   classify: Classification | None = None) -> PrecisionDecision:
    """``--precision`` for this run: ``auto`` on a CPU with native bf16 measures the model at its batch shape.

    A resume with ``auto`` keeps the decision recorded when the run started (on the same
    kind of device), so a run does not change precision half-way because a probe was noisy.
    """
    recorded = ((resume_state or {}).get("precision") or {}).get("decision")
    if cfg.precision == "auto" and recorded and recorded.get("device_type") == device.type:
        reason = recorded["reason"]
        if not reason.endswith(KEPT_ON_RESUME):
            reason += KEPT_ON_RESUME
        return PrecisionDecision("auto", recorded["used"], reason, measured=recorded.get("measured"))
    probe = AutoProbe(model, block, device, max_steps * cfg.grad_accum, cache_dir, cfg.lr, cfg.clip_grad, classify)
    return decide_precision(cfg.precision, device, cfg.strict_precision, measure=probe)
