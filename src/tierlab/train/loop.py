"""The training loop, readable top to bottom.

Per optimizer step: draw micro-batches -> forward under autocast -> (scaled) backward ->
unscale -> clip (the pre-clip norm is what we log) -> optimizer step unless gradients are
non-finite -> advance the LR schedule only if the step happened.

Nothing in ``train_step`` reads a tensor back to the host: losses, norms, learning rates,
loss scales and skip flags go into a small device buffer, and ``flush`` reads that buffer
once per log step (the only host sync), turning it into metric records and into events
stamped with the exact step they happened at.  A checkpoint saves the unread part of the
buffer with everything else, so a resumed run writes exactly the records (and events) an
uninterrupted run writes.

Under torchrun the same loop runs in every process (see :mod:`.distributed`): the model is
wrapped in DDP, gradients are all-reduced in the last micro-batch's backward, the log-step
read gathers every rank's rows, and only rank 0 writes anything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import TrainConfig
from ..data import BlockSampler, DevicePrefetcher, LabelledData, RowSampler, TokenData, eval_starts
from ..disk import continue_fix, is_storage_error, write_failed
from ..run_files import BEST_WEIGHTS
from ..track import EventLog, JsonlWriter
from .checkpoint import (
    CKPT_DIR,
    checkpoint_name,
    latest_checkpoint,
    newest_checkpoint_before,
    load_checkpoint,
    own_part,
    rng_state,
    save_checkpoint,
    save_weights,
    set_rng_state,
    verify_checkpoint,
)
from .distributed import SINGLE, Dist, full_model_state, full_optimizer_state, load_full_state
from .flops import flops_per_token, peak_flops
from .guards import Diverged, Guard, GuardState
from .attention import AttentionPolicy
from .loss import LossFn, make_loss_fn
from .memory import peak_memory_mb
from .evaluate import classification_figures, eval_rows, validation_figures
from .objective import classification_for, make_objective
from .gradients import clip_gradients, sync_gradients_if
from .optim import build_optimizer
from .precision import PrecisionPolicy
from .schedule import WarmupCosine
from .step_buffer import Step, StepBuffer, read_all_ranks

if TYPE_CHECKING:
    from ..progress import Progress

log = logging.getLogger(__name__)
metrics_log = logging.getLogger("tierlab.metrics")

@dataclass
class LoopState:
    """What the host knows, updated only at log steps."""

    step: int = 0
    tokens: int = 0  # trained on so far: carried, since a resume may change the batch shape
    skipped_steps: int = 0
    loss_scale: float | None = None
    last_loss: float | None = None
    best_val_loss: float | None = None
    last_val_loss: float | None = None
    tokens_per_s: list = field(default_factory=list)
    last_scores: dict = field(default_factory=dict)  # classify: the last evaluation's val_acc and val_f1
    # --early-stop: the step of the best evaluation (its weights in best.safetensors), the loss an
    # evaluation must beat by --early-stop-delta, and how many in a row have not.
    best_step: int | None = None
    early_stop_reference: float | None = None
    evals_without_improvement: int = 0
    early_stopped: bool = False


class Trainer:
    def __init__(self, model: nn.Module, data: TokenData | LabelledData, cfg: TrainConfig, policy: PrecisionPolicy,
                 device: torch.device, run_dir: Path, metrics: JsonlWriter, events: EventLog, max_steps: int,
                 identity: dict[str, Any], progress: Progress | None = None, loss_fn: LossFn | None = None,
                 dist: Dist = SINGLE, head: nn.Linear | None = None, attention: AttentionPolicy | None = None):
        # ``model`` may come wrapped in DDP: ``net`` runs the training forward (its hooks
        # all-reduce the gradients), ``self.model`` is the plain module everything else uses.
        self.net = model
        model = model.module if isinstance(model, DistributedDataParallel) else model
        self.model, self.data, self.cfg, self.policy, self.device, self.dist = model, data, cfg, policy, device, dist
        # --objective classify: rows of text and a class id, the output pooled to [B, C]; None otherwise.
        self.classify = classification_for(cfg.objective, data, cfg.pool)
        # Forward + loss of a micro-batch; compiled under --compile (the weights are ``model``'s either way);
        # ``head``: --chunked-loss's output layer, ``attention``: --attention-backend's kernels.
        self.loss_fn = loss_fn if loss_fn is not None else make_loss_fn(self.net, policy, self.classify, head,
                                                                        attention=attention)
        self.run_dir, self.metrics, self.events, self.max_steps = run_dir, metrics, events, max_steps
        self.identity, self.progress = identity, progress
        self.optimizer, self.lr = build_optimizer(model, cfg, device)
        self._lr_out = self.lr.view(1)  # where the step's lookup writes the learning rate
        sampler = (RowSampler(data.train, cfg.batch_size, cfg.seed, dist.rank, dist.world_size) if self.classify else
                   BlockSampler(data.train, cfg.batch_size, cfg.seq_len, cfg.seed, dist.rank, dist.world_size))
        self.batches = DevicePrefetcher(sampler, device)
        # --objective mlm: each micro-batch's tokens masked (on the device, from the run's seed); None for clm.
        self.objective = make_objective(cfg.objective, data.tokenizer.vocab_size, cfg.seed)
        self.guard = Guard(cfg.on_nonfinite, cfg.max_consecutive_skips, cfg.min_loss_scale,
                           scales_loss=policy.scales_loss)
        self._rebuild_schedule()  # self.schedule and its device table, reversed: self.lr_reversed
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        # Steps whose update was dropped (non-finite gradients) so far: a float, like the found_inf flag it adds up.
        self.skips = torch.zeros((), dtype=torch.float32, device=device)
        # One row per step since the last log step: LOSS..SKIPPED, then the per-parameter gradient
        # norms (they name the layers that overflowed when a step is skipped). The scale column
        # stays 0 without a GradScaler.
        self.buffer = StepBuffer(min(cfg.log_every, max_steps), len(self.params), device)  # rows until a log step
        self.state = LoopState(loss_scale=cfg.loss_scale_init if policy.scales_loss else None)
        # Global figures: sequences and tokens of all ranks per step, and the peak of all their devices.
        self.global_batch = cfg.batch_size * cfg.grad_accum * dist.world_size
        self.tokens_per_step = self.global_batch * cfg.seq_len
        self.flops_per_token = flops_per_token(model, cfg.seq_len)
        peak = peak_flops(device, policy.name)
        self.peak = peak * dist.world_size if peak else peak
        # The fixed validation blocks are laid out in global batches, like the training ones:
        # each rank scores its slice of each and the sums are added up, so the val loss is
        # the one a single process with the global batch size computes.
        # (classify: the first eval_batches global batches of held-out rows.)
        width = cfg.batch_size
        self._eval_starts = (eval_rows(len(data.val), width, cfg.eval_batches, dist.rank, dist.world_size)
                             if self.classify else
                             [starts[dist.rank * width:(dist.rank + 1) * width] for starts in
                              eval_starts(len(data.val), cfg.seq_len, width * dist.world_size, cfg.eval_batches)])
        self.stop_requested = False  # set by the SIGINT/SIGTERM handler; checked between steps
        self._stop_agreed = False  # several processes: whether any rank was asked to stop (log steps)
        self.last_checkpoint_step: int | None = None
        self._start_window()

    # ----------------------------------------------------------------------- loop
    def fit(self) -> LoopState:
        with self.policy.activate():
            return self._fit()

    def _fit(self) -> LoopState:
        cfg = self.cfg
        self.model.train()
        if self.progress:
            self.progress.start(self.max_steps)
        if cfg.on_nonfinite == "rollback" and latest_checkpoint(self.run_dir) is None:
            self.checkpoint()  # rollback needs a good state to return to, even at step 0
        self._start_window()
        # Resumed from the checkpoint an early stop wrote: nothing more to train (a larger --early-stop goes on).
        # A checkpoint between the evaluation that ran out of patience and the log step goes on to that step.
        self.state.early_stopped = self.state.early_stopped and self._early_stop_due()
        while self.state.step < self.max_steps and not self.state.early_stopped:
            self.train_step()
            step = self.state.step
            ckpt_due = bool(cfg.ckpt_every) and step % cfg.ckpt_every == 0
            if step % cfg.log_every == 0 or step == self.max_steps:
                if self.flush():  # the non-finite policy asks for a rollback
                    self.rollback()
                    continue
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == self.max_steps):
                self.evaluate()
            stopping = self._stop_agreed if self.dist.active else self.stop_requested
            # --early-stop: at the first log step once patience has run out (every rank sees the same
            # all-reduced val_loss, so all stop together), checkpointed like any ending.
            early = self._early_stop_due() and step % cfg.log_every == 0 and step < self.max_steps
            if early:
                self._early_stop()
            if (ckpt_due or stopping) and cfg.on_nonfinite == "rollback" and self.buffered:
                # A rollback returns here: the steps since the last record are read first (one more record),
                # so a checkpoint never carries unread non-finite steps that every rollback would replay.
                if self.flush():
                    self.rollback()
                    continue
            if ckpt_due or stopping or early:
                self.checkpoint()
            if stopping:
                raise KeyboardInterrupt
            if early:
                break
        if self.last_checkpoint_step != self.state.step:
            self.checkpoint()
        self._refuse_a_run_that_did_not_train()
        return self.state

    def _refuse_a_run_that_did_not_train(self) -> None:
        """However short the run: no real optimizer step, or a non-finite final loss, is not a completed run."""
        s = self.state
        if s.step and s.skipped_steps >= s.step:
            self._diverge(f"Training ended at step {s.step} without a single real optimizer step: all {s.step} "
                          "step(s) were skipped for non-finite gradients.")
        if s.last_loss is not None and not math.isfinite(s.last_loss):
            self._diverge(f"Training ended at step {s.step} with a non-finite loss ({s.last_loss}): the weights "
                          "it leaves are not a trained model.")

    def train_step(self) -> None:
        """One optimizer step, counted in ``state.step``. No host syncs: every result stays on the device.

        Each result is written straight into this step's buffer row (``out=`` views), so the
        bookkeeping costs a handful of tiny kernels beyond a bare loop's: on a small model
        the step is bound by how fast Python launches kernels, and every one counts.
        """
        cfg, policy = self.cfg, self.policy
        row = self.buffer.next_row()  # views into the buffer: written in place below
        # The schedule follows the steps that really happened, step - skips. The reversed
        # table from index (last - step) on reads table[step], table[step - 1], ...: its entry
        # number `skips` is the learning rate, found by one gather without reading `skips`
        # back (the host's step count only picks where the view starts).
        start = max(0, len(self.lr_reversed) - 1 - self.state.step)
        torch.index_select(self.lr_reversed[start:], 0, self.skips.long().view(1), out=self._lr_out)
        row.lr.copy_(self.lr)
        for micro in range(cfg.grad_accum):
            x, y = self.batches.next_batch()  # [B, T] each, already on the device
            if self.objective is not None:  # masked LM: the block itself, 15% of it masked, is input and label
                x, y = self.objective.mask(x, self.objective.training_stream(
                    self.state.step, micro, cfg.grad_accum, self.dist.rank, self.dist.world_size))
            with sync_gradients_if(self.net, self.dist, last=micro == cfg.grad_accum - 1):
                loss = self.loss_fn(x, y)  # forward under autocast, cross-entropy in fp32
                # Each micro-batch contributes 1/grad_accum, so the step sees the mean loss (and
                # DDP averages the ranks' gradients: the mean over the global batch).
                policy.backward(loss / cfg.grad_accum if cfg.grad_accum > 1 else loss)
            if micro == 0:
                row.loss.copy_(loss.detach())
            else:
                row.loss.add_(loss.detach())
        if cfg.grad_accum > 1:
            row.loss.div_(cfg.grad_accum)
        policy.unscale_(self.optimizer)
        clip_gradients(self.params, row.grad_norm, row.norms, self.cfg.clip_grad, self.dist)  # pre-clip norms
        # Sharded, each rank sees only its shards' overflow: the (global) norm decides for all.
        policy.step(self.optimizer, row.grad_norm, norm_decides=self.dist.sharded, skipped_out=row.skipped)
        self.optimizer.zero_grad(set_to_none=True)
        self.skips.add_(row.skipped)
        if policy.scales_loss:
            row.scale.copy_(policy.loss_scale)
        self.state.step += 1  # skips <= step always holds: the lookup above stays inside the table
        self.state.tokens += self.tokens_per_step

    # ----------------------------------------------------------------------- logging
    def _start_window(self) -> None:
        """Timing of the steps up to the next log record starts now (evaluation time is excluded)."""
        self._window_start, self._window_excluded = time.perf_counter(), 0.0

    @property
    def buffered(self) -> int:
        """Steps run since the last log step, not yet read."""
        return self.buffer.filled

    def take_rows(self) -> torch.Tensor:
        """The buffered steps' rows [n, 5] (loss, grad_norm, lr, scale, skipped), still on the device."""
        return self.buffer.take()

    def flush(self) -> bool:
        """Read the buffered steps (the one host sync), write records and events, apply the guard.

        Returns True when the non-finite policy asks for a rollback.
        """
        steps = read_all_ranks(self.buffer.take(), self.dist, self.state.step)  # host sync: once per log step
        elapsed = time.perf_counter() - self._window_start - self._window_excluded
        losses, bad_steps = self._account(steps)
        timed = len(steps) - self.buffer.restored  # rows restored from a checkpoint ran in another process
        self.buffer.restored = 0
        tokens_per_s = self.tokens_per_step * timed / elapsed if elapsed > 0 else 0.0
        self.state.tokens_per_s.append(tokens_per_s)
        self.state.last_loss = statistics.fmean(losses) if losses else float("nan")
        last = steps[-1]
        record = {
            "kind": "train", "step": self.state.step, "tokens": self.state.tokens,
            "loss": self.state.last_loss, "lr": last.lr, "grad_norm": last.grad_norm,
            "loss_scale": self.state.loss_scale, "skipped_steps": self.state.skipped_steps,
            "tokens_per_s": tokens_per_s, "step_ms": 1000.0 * elapsed / max(timed, 1),
            "mem_peak_mb": peak_memory_mb(self.device),
            "mfu": (tokens_per_s * self.flops_per_token / self.peak) if self.peak else None,
        }
        self.metrics.write(record)
        metrics_log.info("step %d/%d | loss %.4f | lr %.3g | grad_norm %.3g | scale %s | skipped %d | %.0f tok/s",
                         record["step"], self.max_steps, record["loss"], last.lr, last.grad_norm,
                         "-" if record["loss_scale"] is None else f"{record['loss_scale']:g}",
                         record["skipped_steps"], tokens_per_s)
        if self.progress:
            self.progress.update(record)
        if self.dist.active:  # a stop asked of any rank is a stop of all, at the same step
            self._stop_agreed = self.dist.any(self.stop_requested, self.device)
        self._start_window()
        return self._apply_guard(bad_steps)

    def _account(self, steps: list[Step]) -> tuple[list[float], list[int]]:
        """Events for each step read (non-finite loss, skip, loss-scale change) and the guard's count.

        Returns the finite losses and the steps the non-finite policy counts as bad.
        """
        first_step = self.state.step - len(steps) + 1
        first_bad = next((i for i, r in enumerate(steps) if r.skipped), None)
        bad_params = self.buffer.bad_params(first_bad, [n for n, _ in self.params]) if first_bad is not None else []
        losses, bad_steps, first_skip = [], [], True
        for offset, (loss, _norm, _lr, scale, skipped) in enumerate(steps):
            step = first_step + offset
            scale = scale if self.policy.scales_loss else None
            if self.guard.observe(step, loss, bool(skipped), scale, self.state.loss_scale):
                bad_steps.append(step)
            if not math.isfinite(loss):
                self.events.emit("nonfinite_loss", step=step, loss=str(loss))  # "nan" or "inf"
            else:
                losses.append(loss)
            if skipped:
                self.state.skipped_steps += 1
                extra = {"params": bad_params[:20], "params_count": len(bad_params)} if first_skip else {}
                if first_skip:
                    self.guard.note_params(step, bad_params)
                first_skip = False
                self.events.emit("step_skipped", step=step, skipped_steps=self.state.skipped_steps,
                                 reason="non-finite gradients", **extra)
            if scale is not None and scale != self.state.loss_scale:
                self.events.emit("loss_scale_change", step=step, **{"from": self.state.loss_scale, "to": scale})
                self.state.loss_scale = scale
        return losses, bad_steps

    def _apply_guard(self, bad_steps: list[int]) -> bool:
        stop = self.guard.stop_reason(self.state.step, self.state.loss_scale)
        if stop:
            self._diverge(f"Training stopped at step {self.state.step}: {stop}.")
        if not bad_steps or self.cfg.on_nonfinite == "skip":
            return False
        if self.cfg.on_nonfinite == "raise":
            self._diverge(f"Training stopped at step {self.state.step} (--on-nonfinite raise): the loss or the "
                          f"gradients were not finite at step {bad_steps[0]}.")
        return True

    def _diverge(self, headline: str) -> None:
        text = self.guard.diagnosis(headline, self.device, self.policy.name, float(self.lr), len(self.params))
        good = self._last_good_checkpoint()
        if good is not None:
            text += f"\n  last good checkpoint: {good}"
        self.events.emit("diverged", step=self.state.step, diagnosis=text)
        raise Diverged(text)

    def _last_good_checkpoint(self) -> Path | None:
        """The newest checkpoint from before the current streak of skipped steps began."""
        streak = self.guard.state.streak_start if self.guard.state.consecutive_skips else None
        return newest_checkpoint_before(self.run_dir, streak)

    def evaluate(self) -> dict[str, Any]:
        """Loss, perplexity and next-token accuracy on fixed blocks of the validation split.

        For ``--objective classify``: loss, accuracy, macro-F1 and the confusion matrix
        (rows: true class, columns: predicted) over fixed held-out rows.
        """
        started = time.perf_counter()
        record: dict[str, Any] = {"kind": "eval", "step": self.state.step, "tokens": self.state.tokens}
        if self.classify is not None:
            record.update(classification_figures(self.model, self.data.val, self._eval_starts, self.policy, self.dist,
                                                 self.classify))
        else:
            val_loss, val_acc = validation_figures(self.model, self.data.val, self._eval_starts, self.cfg.seq_len,
                                                   self.policy, self.dist, self.objective)
            record.update({"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0)), "val_acc": val_acc})
        self.metrics.write(record)
        val_loss = record["val_loss"]
        if self.classify is not None:
            metrics_log.info("step %d/%d | val_loss %.4f | val_acc %.3f | val_f1 %.3f", record["step"],
                             self.max_steps, val_loss, record["val_acc"], record["val_f1"])
        else:
            metrics_log.info("step %d/%d | val_loss %.4f | val_ppl %.2f | val_acc %.3f", record["step"],
                             self.max_steps, val_loss, record["val_ppl"], record["val_acc"])
        self.state.last_val_loss = val_loss
        if self.classify is not None:
            self.state.last_scores = {"val_acc": record["val_acc"], "val_f1": record["val_f1"]}
        if math.isfinite(val_loss) and (self.state.best_val_loss is None or val_loss < self.state.best_val_loss):
            self.state.best_val_loss = val_loss
            if self.cfg.early_stop is not None:
                self._save_best_weights()
        if self.cfg.early_stop is not None:
            self._count_patience(val_loss)
        if self.progress:
            self.progress.update(record)
        self._window_excluded += time.perf_counter() - started  # evaluation is not training throughput
        return record

    # ----------------------------------------------------------------------- early stopping
    def _count_patience(self, val_loss: float) -> None:
        """An evaluation that beats the reference by --early-stop-delta resets the count; any other adds one."""
        s = self.state
        if math.isfinite(val_loss) and (s.early_stop_reference is None or
                                        val_loss < s.early_stop_reference - self.cfg.early_stop_delta):
            s.early_stop_reference, s.evals_without_improvement = val_loss, 0
        else:
            s.evals_without_improvement += 1

    def _early_stop_due(self) -> bool:
        return self.cfg.early_stop is not None and self.state.evals_without_improvement >= self.cfg.early_stop

    def _early_stop(self) -> None:
        s = self.state
        s.early_stopped = True
        self.events.emit("early_stop", step=s.step, patience=self.cfg.early_stop, delta=self.cfg.early_stop_delta,
                         best_step=s.best_step, best_val_loss=s.best_val_loss)
        log.info("early stop at step %d: %d evaluations in a row without a val_loss below %.4f%s (the last one "
                 "that counted as an improvement%s); the lowest val_loss, %.4f at step %s, is in %s", s.step,
                 s.evals_without_improvement, s.early_stop_reference,
                 f" - {self.cfg.early_stop_delta:g}" if self.cfg.early_stop_delta else "",
                 ", less the delta" if self.cfg.early_stop_delta else "", s.best_val_loss, s.best_step, BEST_WEIGHTS)

    def _save_best_weights(self) -> None:
        """best.safetensors: the weights of the best evaluation so far (a collective under --fsdp)."""
        gathered = full_model_state(self.model) if self.dist.sharded else None
        self.state.best_step = self.state.step
        if not self.dist.is_main:
            return
        path = self.run_dir / BEST_WEIGHTS
        try:
            save_weights(path, self.model, gathered)
        except Exception as exc:
            if not is_storage_error(exc):
                raise
            raise write_failed(path, exc, "the previous best weights and the checkpoints are kept",
                               continue_fix(self.run_dir)) from None

    # ----------------------------------------------------------------------- checkpoints
    def rank_state(self) -> dict[str, Any]:
        """What differs between ranks: random streams (dropout), sampler position, unread rows."""
        return {
            "rng": rng_state(self.device),
            "sampler": self.batches.state_dict(),
            "window": self.buffer.state_dict(),
        }

    def weights_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model, optimizer) state dicts; under --fsdp gathered whole onto rank 0 (a collective)."""
        if self.dist.sharded:
            return full_model_state(self.model), full_optimizer_state(self.model, self.optimizer)
        return self.model.state_dict(), self.optimizer.state_dict()

    def state_dict(self, ranks: list[dict[str, Any]] | None = None,
                   weights: tuple[dict[str, Any], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything an exact resume needs, as plain data (weights_only-loadable).

        ``ranks`` holds every rank's :meth:`rank_state` (gathered by :meth:`checkpoint`);
        the rest is the same on all ranks.
        """
        model_state, optimizer_state = weights if weights is not None else self.weights_state()
        return {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "real_steps": (self.state.step - self.skips.to(torch.int64)).cpu(),  # steps that updated weights
            "model": model_state,
            "optimizer": optimizer_state,
            "sharding": "fsdp" if self.dist.sharded else None,  # how "optimizer" is keyed
            "schedule": {"lr": self.schedule.lr, "min_lr": self.schedule.min_lr,
                         "warmup_steps": self.schedule.warmup_steps, "total_steps": self.schedule.total_steps},
            "precision": self.policy.state_dict(),
            "loop": dataclasses.asdict(self.state),
            "guard": dataclasses.asdict(self.guard.state),
            "records": {"metrics": self.metrics.tell(), "events": self.events.tell()},
            "world_size": self.dist.world_size,
            "ranks": ranks if ranks is not None else [self.rank_state()],
            **self.identity,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dist.sharded:
            load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # keep the one device lr tensor the loop updates
            group["lr"] = self.lr
        self.skips.fill_(state["step"] - int(state["real_steps"]))
        self.policy.load_state_dict(state["precision"])
        part = own_part(state, self.dist)
        self.batches.load_state_dict(part["sampler"])
        set_rng_state(part["rng"])
        # (checkpoints from before tokens were carried: the step count times that run's tokens per step)
        self.state = LoopState(**{"tokens": state.get("tokens", 0), **state["loop"]})
        self.buffer.load_state_dict(part["window"])
        self.guard.state = GuardState(**state["guard"])
        self._rebuild_schedule()
        self.last_checkpoint_step = self.state.step

    def _rebuild_schedule(self) -> None:
        """The schedule for the current learning-rate scale (lowered by rollbacks) and its device table, reversed."""
        scale = self.guard.state.lr_scale
        self.schedule = WarmupCosine(self.cfg.lr * scale, self.cfg.final_lr * scale, self.cfg.warmup_steps,
                                     self.max_steps)
        self.lr_reversed = self.schedule.table(self.device).flip(0)  # see train_step

    def checkpoint(self) -> None:
        """Every rank hands its own state to rank 0, which writes the checkpoint."""
        ranks = self.dist.gather_objects(self.rank_state())
        weights = self.weights_state()  # every rank takes part under --fsdp
        if self.dist.is_main:
            # The event goes first so that the checkpoint's record offsets include it: a resume
            # from this checkpoint keeps its own "checkpoint" event and cuts everything after.
            # If the checkpoint cannot be written (a full disk), the event is taken back.
            with self.events.provisional("checkpoint", step=self.state.step,
                                         path=f"{CKPT_DIR}/{checkpoint_name(self.state.step)}"):
                save_checkpoint(self.run_dir, self.state.step, self.state_dict(ranks, weights),
                                self.cfg.keep_ckpts, self.identity.get("run_id"))
        self.last_checkpoint_step = self.state.step

    def rollback(self) -> None:
        """Return to the last good checkpoint with a lower learning rate (--on-nonfinite rollback)."""
        failed_at = self.state.step
        guard = self.guard.state
        if guard.rollbacks >= self.cfg.max_rollbacks:
            self._diverge(f"Training stopped at step {failed_at}: the loss or gradients were not finite again "
                          f"after {guard.rollbacks} rollback(s) (limit --max-rollbacks {self.cfg.max_rollbacks}).")
        path = latest_checkpoint(self.run_dir)
        verify_checkpoint(path, self.run_dir)
        state = load_checkpoint(path)
        rollbacks, lr_scale = guard.rollbacks + 1, guard.lr_scale * self.cfg.rollback_lr_factor
        self.load_state_dict(state)
        self.guard.state.rollbacks, self.guard.state.lr_scale = rollbacks, lr_scale
        self._rebuild_schedule()
        self.metrics.truncate(state["records"]["metrics"])  # the steps being redone must not appear twice
        self.events.emit("rollback", step=failed_at, to_step=self.state.step, checkpoint=str(path),
                         lr_scale=lr_scale, rollbacks=rollbacks)
        log.warning("non-finite values at step %d: rolled back to step %d, learning rate x%g", failed_at,
                    self.state.step, lr_scale)
