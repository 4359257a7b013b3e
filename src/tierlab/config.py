"""Typed training configuration: defaults, validation and loading from TOML/JSON files.

One dataclass holds every option of ``tierlab train``.  The CLI builds its options from the
fields below (their ``help`` metadata), so a setting has one name everywhere: in a config
file (``lr = 3e-4`` or ``"lr": 3e-4``), on the command line (``--lr 3e-4``) and in Python
(``TrainConfig(lr=3e-4)``).  Bad values are rejected at construction with a message that
says what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .data.formats import field_suffixes, suffix_list
from .errors import ConfigError
from .precisions import CHOICES, PRECISIONS as _TABLE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

PRECISIONS = CHOICES  # "auto" and every entry of tierlab.precisions
NONFINITE_POLICIES = ("skip", "raise", "rollback")
# torch.compile's modes ("default" passes none).
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
ATTENTION_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")  # train/attention.py
WANDB_MODES = ("online", "offline", "disabled")
OBJECTIVES = ("clm", "mlm", "classify")  # next token; masked tokens; a label per row (train/objective.py)
POOLS = ("mean", "last", "first")  # how --objective classify reduces per-position outputs [B, T, C] to [B, C]
# Upper bounds: beyond them a value is a typo (or a unit mistake), and some sizes scale with it
# (the learning-rate table holds one float per step, the log buffer one row per step).
MAX_STEPS = 10_000_000
LIMITS = {"batch_size": 1 << 20, "grad_accum": 1 << 20, "seq_len": 1 << 24, "log_every": MAX_STEPS,
          "eval_batches": 100_000, "loss_scale_growth_interval": 2**31 - 1}

# Each option's role, declared on its field (``role=``) and read by resume, search and the CLI:
IDENTITY = "identity"  # what the run is: changing one trains something else, so no flag allows it on resume
PLACE = "place"  # where the run lives: a resume takes it from the resume path, never compares it
SESSION = "session"  # how this process runs (trackers, compile, the terminal): free to differ on resume
TRAINING = "training"  # how it trains (the default): a resume that changes one needs --allow-config-change


def _precision_help() -> str:
    """auto, fp32, tf32 (CUDA), bf16 or fp16 (fp16 uses a GradScaler): read from the precision table."""
    names = [n + (" (CUDA)" if p.cuda_compute else "") for n, p in _TABLE.items()]
    scaled = [n for n, p in _TABLE.items() if p.loss_scaling]
    text = "auto, " + ", ".join(names[:-1]) + " or " + names[-1]
    return text + "".join(f" ({n} uses a GradScaler)" for n in scaled)


def _opt(default: Any, help: str, role: str = TRAINING, path: bool = False) -> Any:
    """A field with its --help text, its role (see IDENTITY ...) and whether its value may name a file."""
    return field(default=default, metadata={"help": help, "role": role, "path": path})


@dataclass
class TrainConfig:
    # --- what to train on -------------------------------------------------------------
    model: str = _opt("tiny-gpt", "tiny-gpt (built in), PATH.py[:factory], or a Transformer Builder export's folder "
                                  "(model.py + config.json)", role=IDENTITY, path=True)
    model_args: dict = field(default_factory=dict, metadata={"help": "arguments for the model factory", "role": IDENTITY})
    objective: str = _opt("clm", "what the model learns: clm (the next token, the default), mlm (masked tokens: a "
                                 "mask token is added to the vocabulary and 15 percent of the positions are scored, BERT's "
                                 "80/10/10 recipe; for bidirectional models) or classify (a label per row of a "
                                 "CSV/TSV/JSONL/Parquet file, see --label-field)", role=IDENTITY)
    pool: str = _opt("mean", "--objective classify with a model that returns [B, T, C]: mean (over the text's "
                             "positions, padding left out), last (the last text position: for causal models) or first "
                             "(a [CLS]-style first position)", role=IDENTITY)
    causal_mask: bool = _opt(False, "give every nn.MultiheadAttention, nn.TransformerEncoder(Layer) and "
                                    "nn.TransformerDecoder(Layer) the model calls without a mask a causal one (a "
                                    "bidirectional model, e.g. a Transformer Builder export, trained as a causal LM)",
                             role=IDENTITY)
    data: str = _opt("demo", f"demo (built in); a UTF-8 {suffix_list()} file, plain or "
                     ".gz/.bz2/.xz (the text in each record's \"text\" field or column, or --text-field's); "
                     "or a directory of such files", role=IDENTITY, path=True)
    text_field: str = _opt("text", f"with {field_suffixes()} data: the field or column that holds the text", role=IDENTITY)
    label_field: str = _opt("label", "--objective classify: the field or column that holds each row's label (any "
                                     "values: they are mapped to class ids, recorded in the run)", role=IDENTITY)
    tokenizer: str = _opt("byte", "byte, bpe:VOCAB (trained on the training split) or PATH/tokenizer.json", role=IDENTITY, path=True)
    val_fraction: float = _opt(0.1, "fraction of the tokens held out (the contiguous tail) for evaluation; with --objective "
                               "classify, of the rows (drawn with a fixed seed, so the same rows every run)", role=IDENTITY)
    # --- precision and device ---------------------------------------------------------
    precision: str = _opt("auto", _precision_help())
    fp8_layers: str = _opt("auto", "--precision fp8: which linear layers run in fp8: auto (those whose shapes are "
                           "expected to gain, said per layer at start-up) or all (every one whose sizes are multiples "
                           "of 16)")
    strict_precision: bool = _opt(False, "fail instead of falling back to fp32 when the precision cannot run")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    compile: bool = _opt(False, "torch.compile the model (the compile time is measured and reported on its own)", role=SESSION)
    compile_mode: str = _opt("default", "torch.compile mode with --compile: default, max-autotune-no-cudagraphs "
                             "(benchmarks the matrix kernels: minutes more compile, faster GPU steps), max-autotune "
                             "or reduce-overhead (both add CUDA graphs)", role=SESSION)
    chunked_loss: bool = _opt(False, "compute the output layer and the cross-entropy in chunks of rows, never holding "
                              "the full [batch x seq, vocab] logits (less memory, the same loss; language-model "
                              "objectives, a model whose last step is one nn.Linear)", role=SESSION)
    attention_backend: str = _opt("auto", "scaled_dot_product_attention kernel: auto (the fastest this GPU has: cuDNN, "
                                  "then flash, then memory-efficient), cudnn, flash, efficient or math; named at "
                                  "start-up", role=SESSION)
    fsdp: bool = _opt(False, "under torchrun: shard parameters, gradients and optimizer state over the ranks with "
                             "FSDP2 instead of replicating them with DDP (for models that do not fit one GPU); with --compile each "
                             "block is compiled on its own", role=SESSION)
    dist_timeout: float = _opt(600.0, "under torchrun: seconds a collective may wait for the other ranks before the "
                               "job ends with an error (a hung or lost rank)", role=SESSION)
    # --- how long ---------------------------------------------------------------------
    max_steps: int | None = _opt(None, "optimizer steps to run (default 400 unless --epochs is given)")
    epochs: float | None = _opt(None, "passes over the training tokens (alternative to --max-steps)")
    early_stop: int | None = _opt(None, "stop when this many evaluations in a row have not improved the best val_loss "
                                        "by --early-stop-delta (status early_stopped; best weights in "
                                        "best.safetensors)")
    early_stop_delta: float = _opt(0.0, "--early-stop: the least fall of val_loss that counts as an improvement")
    # --- batch ------------------------------------------------------------------------
    batch_size: int | str = _opt(16, "sequences per micro-batch, or auto: the largest that fits the device's memory, "
                                     "found on real training steps of the model (recorded in the run, kept on "
                                     "resume)")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    global_batch_size: int | None = _opt(None, "sequences per optimizer step over all processes: sets --grad-accum "
                                               "to reach it (with --batch-size auto, once the micro-batch is found)")
    seq_len: int = _opt(128, "tokens per sequence")
    # --- optimizer and schedule -------------------------------------------------------
    lr: float = _opt(1e-3, "peak learning rate (AdamW)")
    min_lr: float | None = _opt(None, "final learning rate of the cosine decay (default lr/10)")
    warmup_steps: int | None = _opt(None, "linear warm-up steps (default 5%% of the run, at most 100)")
    weight_decay: float = _opt(0.1, "AdamW weight decay, applied to matrices only (not biases, norms)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    clip_grad: float = _opt(1.0, "clip the global gradient norm to this value (0 disables clipping)")
    loss_scale_init: float = _opt(2.0**16, "initial fp16 loss scale")
    loss_scale_growth_interval: int = _opt(2000, "fp16: steps without overflow before the scale doubles")
    # --- checkpoints and faults --------------------------------------------------------
    ckpt_every: int = _opt(250, "optimizer steps between checkpoints (0: only at the end and on interrupt)")
    keep_ckpts: int = _opt(3, "checkpoints kept (the newest ones)")
    resume: str | None = _opt(None, "a run directory or checkpoint file to continue, or auto (the run --name)", role=SESSION)
    allow_config_change: bool = _opt(False, "on resume, accept changed options such as --max-steps or --lr", role=SESSION)
    init_from: str | None = _opt(None, "start a new run from trained weights: a run directory, a checkpoint .pt or a "
                                       ".safetensors file (optimizer, schedule and data start afresh)", path=True)
    on_nonfinite: str = _opt("skip", "skip, raise or rollback when the loss (or, without fp16, a gradient) is "
                             "not finite")
    rollback_lr_factor: float = _opt(0.5, "rollback: multiply the learning rate by this after each rollback")
    max_rollbacks: int = _opt(3, "rollback: give up after this many rollbacks")
    max_consecutive_skips: int = _opt(25, "stop with a diagnosis after this many skipped steps in a row")
    min_loss_scale: float = _opt(1.0, "stop with a diagnosis when the fp16 loss scale falls below this")
    # --- trackers and plots -----------------------------------------------------------
    tensorboard: bool = _opt(False, "also write TensorBoard event files to <run>/tensorboard", role=SESSION)
    wandb: str | None = _opt(None, "also log to this Weights & Biases project", role=SESSION)
    wandb_entity: str | None = _opt(None, "W&B entity (team or user)", role=SESSION)
    wandb_mode: str | None = _opt(None, "online, offline or disabled (default: $WANDB_MODE, else online)", role=SESSION)
    tracker_timeout: float = _opt(30.0, "seconds W&B may take to start, or to finish uploading, before the run goes "
                                  "on without it (the run directory keeps everything: tierlab sync sends it later)",
                                  role=SESSION)
    no_plots: bool = _opt(False, "do not write dashboard.png at the end of the run", role=SESSION)
    # --- observation ------------------------------------------------------------------
    log_every: int = _opt(10, "optimizer steps between metric records (the only host syncs)")
    eval_every: int = _opt(100, "optimizer steps between evaluations (0 disables evaluation)")
    eval_batches: int = _opt(20, "batches of the validation split per evaluation")
    # --- where ------------------------------------------------------------------------
    out: str = _opt("runs", "parent directory of run directories", role=PLACE)
    name: str | None = _opt(None, "run name (default: run-<date>-<time>)", role=PLACE)
    seed: int = _opt(1337, "seed for model init and batch sampling")
    quiet: bool = _opt(False, "print nothing but errors", role=SESSION)

    def __post_init__(self) -> None:
        self._check_types()
        self._check_values()

    # ------------------------------------------------------------------ validation
    def _check_types(self) -> None:
        hints = _type_hints()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            want = hints[f.name]
            ok_types, optional = want
            if value is None and optional:
                continue
            wrong = ConfigError(f"Option {_flag(f.name)} must be {_describe(ok_types)}, got {value!r}.",
                                f"write e.g. {_flag(f.name)} {_example(ok_types)}.")
            if isinstance(value, bool) and bool not in ok_types:
                raise wrong
            if float in ok_types and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
                continue
            if not isinstance(value, ok_types):
                raise wrong

    def _check_values(self) -> None:
        """Each group of options in turn; the first bad value raises a ConfigError naming it and the fix."""
        self._check_how_it_runs()
        self._check_length_and_schedule()
        self._check_faults_and_trackers()
        self._check_data_and_names()

    def _check_how_it_runs(self) -> None:
        need(self.precision in PRECISIONS, f"--precision {self.precision!r} is not a precision.",
             f"use one of {', '.join(PRECISIONS)}.")
        need(self.compile_mode in COMPILE_MODES, f"--compile-mode {self.compile_mode!r} is not a torch.compile mode.",
             f"use one of {', '.join(COMPILE_MODES)}.")
        need(self.fp8_layers in ("auto", "all"), f"--fp8-layers {self.fp8_layers!r} is not auto or all.",
             "use --fp8-layers auto (the layers that gain) or all.")
        need(self.fp8_layers == "auto" or self.precision == "fp8", f"--fp8-layers {self.fp8_layers} was given "
             f"with --precision {self.precision}.", "add --precision fp8, or drop --fp8-layers.")
        need(self.attention_backend in ATTENTION_BACKENDS,
             f"--attention-backend {self.attention_backend!r} is not an attention kernel.",
             f"use one of {', '.join(ATTENTION_BACKENDS)}.")
        need(not (self.chunked_loss and self.objective == "classify"), "--chunked-loss was given with --objective "
             "classify.", "drop --chunked-loss: a classifier's [batch, classes] scores are small, there is nothing "
             "to save.")
        need(not (self.chunked_loss and self.fsdp), "--chunked-loss and --fsdp were both given.",
             "drop one of them (under FSDP the output head's weight is sharded outside its forward).")
        need(self.compile or self.compile_mode == "default", f"--compile-mode {self.compile_mode} was given "
             "without --compile.", "add --compile, or drop --compile-mode.")
        need(self.device == "auto" or self.device == "cpu" or self.device == "cuda"
             or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
             f"--device {self.device!r} is not a device tierlab trains on"
             + (" (Apple's Metal backend is not supported yet)" if self.device.startswith("mps") else "") + ".",
             "use auto, cpu, cuda or cuda:N.")

    def _check_length_and_schedule(self) -> None:
        need(self.max_steps is None or self.epochs is None,
             "--max-steps and --epochs were both given.", "give one of them.")
        need(self.max_steps is None or self.max_steps >= 1,
             f"--max-steps must be at least 1, got {self.max_steps}.", "pass a positive number of steps.")
        need(self.max_steps is None or self.max_steps <= MAX_STEPS,
             f"--max-steps must be at most {MAX_STEPS:,}, got {self.max_steps}.", "pass fewer steps.")
        need(self.epochs is None or (math.isfinite(self.epochs) and 0 < self.epochs <= 1e6),
             f"--epochs must be a positive number of passes (at most a million), got {self.epochs}.",
             "pass e.g. --epochs 1.")
        need(self.batch_size == "auto" or not isinstance(self.batch_size, str),
             f"--batch-size must be a whole number or auto, got {self.batch_size!r}.",
             "write e.g. --batch-size 16, or --batch-size auto for the largest that fits.")
        need(self.global_batch_size is None or 1 <= self.global_batch_size <= LIMITS["batch_size"],
             f"--global-batch-size must be between 1 and {LIMITS['batch_size']:,}, got {self.global_batch_size}.",
             "pass a positive number of sequences per optimizer step.")
        need(self.global_batch_size is None or not isinstance(self.batch_size, int)
             or self.global_batch_size % (self.batch_size * self.grad_accum) == 0,
             f"--global-batch-size {self.global_batch_size} is not a multiple of --batch-size {self.batch_size}"
             + (f" x --grad-accum {self.grad_accum}" if self.grad_accum != 1 else "") + ".",
             "pass a global batch that the micro-batch divides (or --batch-size auto), and leave --grad-accum out: "
             "--global-batch-size sets it.")
        for name in ("batch_size", "grad_accum", "seq_len", "log_every", "eval_batches",
                     "loss_scale_growth_interval"):
            value = getattr(self, name)
            if value == "auto":
                continue
            need(value >= 1, f"{_flag(name)} must be at least 1, got {value}.", f"pass a positive {_flag(name)}.")
            need(value <= LIMITS[name], f"{_flag(name)} must be at most {LIMITS[name]:,}, got {value}.",
                 f"pass a smaller {_flag(name)}.")
        for name, example in (("dist_timeout", 600), ("tracker_timeout", 30)):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, f"{_flag(name)} must be a positive number of seconds, got {value}.",
                 f"pass e.g. {_flag(name)} {example}.")
        need(self.early_stop is None or (isinstance(self.early_stop, int) and self.early_stop >= 1),
             f"--early-stop must be a number of evaluations, 1 or more, got {self.early_stop}.",
             "use e.g. --early-stop 3 (stop after 3 evaluations without improvement).")
        need(self.early_stop is None or self.eval_every > 0,
             "--early-stop counts evaluations, and --eval-every 0 turns them off.",
             "pass --eval-every N (e.g. 100) with --early-stop, or drop --early-stop.")
        need(self.early_stop is not None or not self.early_stop_delta,
             f"--early-stop-delta {self.early_stop_delta:g} is given without --early-stop, which it is a part of.",
             "add --early-stop PATIENCE (e.g. 3), or drop --early-stop-delta.")
        need(math.isfinite(self.early_stop_delta) and self.early_stop_delta >= 0,
             f"--early-stop-delta must be a finite number, 0 or more, got {self.early_stop_delta}.",
             "use e.g. 0.01 (a fall of val_loss smaller than that is no improvement).")
        need(self.eval_every >= 0, f"--eval-every must be 0 (off) or positive, got {self.eval_every}.",
             "pass 0 to disable evaluation or a positive step interval.")
        need(0.0 < self.val_fraction < 1.0, f"--val-fraction must be between 0 and 1, got {self.val_fraction}.",
             "pass e.g. 0.1 to hold out the last 10% of the tokens." if self.val_fraction > 0 else
             "to train without validation, pass --eval-every 0 instead (a held-out tail remains, never "
             "evaluated: --val-fraction 0.01 keeps 99% of the tokens for training).")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}.",
             "pass e.g. --lr 3e-4.")
        # min_lr stays None unless given: the final learning rate then follows --lr (lr/10),
        # also after replace(lr=...) or a resume with a new --lr.
        need(self.min_lr is None or (math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr),
             f"--min-lr ({self.min_lr}) must be between 0 and --lr ({self.lr}).", "lower --min-lr or raise --lr.")
        need(self.warmup_steps is None or self.warmup_steps >= 0,
             f"--warmup-steps must be 0 or more, got {self.warmup_steps}.", "pass e.g. --warmup-steps 100.")
        if self.warmup_steps is not None and self.max_steps is not None:
            need(self.warmup_steps <= self.max_steps,  # warm-up only (==) is a legitimate schedule
                 f"--warmup-steps ({self.warmup_steps}) is longer than the run (--max-steps {self.max_steps}).",
                 "shorten the warm-up or train longer.")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be a finite number, 0 or more, got {self.weight_decay}.",
             "pass e.g. --weight-decay 0.1.")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "--beta1 and --beta2 must lie in [0, 1).",
             "use e.g. 0.9 and 0.95.")
        need(math.isfinite(self.clip_grad) and self.clip_grad >= 0,
             f"--clip-grad must be 0 (off) or positive, got {self.clip_grad}.", "pass e.g. --clip-grad 1.0.")

    def _check_faults_and_trackers(self) -> None:
        need(self.ckpt_every >= 0, f"--ckpt-every must be 0 or positive, got {self.ckpt_every}.",
             "pass e.g. --ckpt-every 500.")
        need(self.keep_ckpts >= 1, f"--keep-ckpts must be at least 1, got {self.keep_ckpts}.", "pass e.g. 3.")
        need(self.on_nonfinite in NONFINITE_POLICIES, f"--on-nonfinite {self.on_nonfinite!r} is not a policy.",
             f"use one of {', '.join(NONFINITE_POLICIES)}.")
        need(0 < self.rollback_lr_factor <= 1, f"--rollback-lr-factor must be in (0, 1], got "
             f"{self.rollback_lr_factor}.", "use e.g. 0.5.")
        need(self.max_rollbacks >= 0 and self.max_consecutive_skips >= 1,
             "--max-rollbacks must be 0 or more and --max-consecutive-skips at least 1.", "use e.g. 3 and 25.")
        need(math.isfinite(self.min_loss_scale) and self.min_loss_scale >= 0,
             f"--min-loss-scale must be a finite number, 0 or more, got {self.min_loss_scale}.",
             "use e.g. 1.0.")
        need(self.objective in OBJECTIVES, f"--objective {self.objective!r} is not an objective.",
             f"use one of {', '.join(OBJECTIVES)}.")
        need(not (self.objective == "mlm" and self.causal_mask),
             "--causal-mask and --objective mlm contradict each other: a masked language model reads both sides.",
             "drop --causal-mask to train it as a masked LM, or drop --objective mlm to train it causally.")
        need(self.pool in POOLS, f"--pool {self.pool!r} is not a pooling.", f"use one of {', '.join(POOLS)}.")
        need(isinstance(self.label_field, str) and bool(self.label_field.strip()), "--label-field needs a field name.",
             "pass the column that holds the labels, e.g. --label-field sentiment.")
        need(self.objective != "classify" or self.label_field != self.text_field,
             f"--label-field and --text-field both name {self.label_field!r}: the label would be the text itself.",
             "name the column of labels with --label-field and the column of text with --text-field.")
        need(self.wandb_mode is None or self.wandb_mode in WANDB_MODES,
             f"--wandb-mode {self.wandb_mode!r} is not a W&B mode.", "use online, offline or disabled.")
        need(self.wandb is None or bool(self.wandb.strip()), "--wandb needs a project name.",
             "write e.g. --wandb my-project.")
        need(self.loss_scale_init > 0 and math.isfinite(self.loss_scale_init),
             f"--loss-scale-init must be positive, got {self.loss_scale_init}.", "use e.g. 65536.")

    def _check_data_and_names(self) -> None:
        need(isinstance(self.text_field, str) and bool(self.text_field.strip()), "--text-field needs a field name.",
             "pass the JSONL field that holds the text, e.g. --text-field content.")
        tok = self.tokenizer
        if tok.startswith("bpe:"):
            size = tok[4:]
            need(size.isdigit() and 260 <= int(size) <= 1_000_000,
                 f"--tokenizer {tok!r}: the BPE vocabulary size must be a whole number from 260 up.",
                 "use e.g. --tokenizer bpe:4096.")
        else:
            need(tok == "byte" or tok.endswith(".json"), f"--tokenizer {tok!r} is not a tokenizer.",
                 "use byte, bpe:VOCAB or the path of a tokenizer.json.")
        if self.name is not None:
            need(bool(self.name) and "/" not in self.name and "\\" not in self.name and self.name not in (".", "..")
                 and len(self.name) <= 200 and self.name.isprintable(),
                 f"--name {self.name[:60]!r}{'...' if len(self.name) > 60 else ''} is not a usable run name.",
                 "use a plain name without slashes or control characters, at most 200 characters.")
        need(0 <= self.seed < 2**63, f"--seed must be between 0 and 2**63 - 1, got {self.seed}.",
             "pass e.g. --seed 1.")
        for key in self.model_args:
            need(isinstance(key, str) and key.isidentifier(), f"--model-arg key {key!r} is not a Python name.",
                 "write --model-arg NAME=VALUE with NAME a keyword argument of the model factory.")

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine decay ends at: --min-lr, or lr/10 when it was not given."""
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a dict whose keys may use dashes or underscores; unknown keys are errors."""
        return cls(**normalize_keys(values, source))


def normalize_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    result: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known options: {', '.join(names)}."
            raise ConfigError(f"Unknown option {raw_key!r} in {source}.", hint)
        if key == "model_args" and not isinstance(value, dict):
            raise ConfigError(f"model_args in {source} must be a table/object of NAME = VALUE.",
                              "write e.g. [model_args] with n_layer = 4 in TOML.")
        result[key] = value
    return result


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict (not yet validated)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} does not exist.", "check the path given to --config.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {str(p)!r} is not UTF-8 text (byte {exc.start}).",
                          "save it as UTF-8 (TOML and JSON files are UTF-8).") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Config file {str(p)!r} is not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {exc}.",
                          "fix the syntax, or use a .toml or .json file.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {str(p)!r} must hold a table/object of options.", "write key = value lines.")
    return normalize_keys(data, str(p))


def need(cond: bool, problem: str, fix: str) -> None:
    """A ConfigError(problem, fix) unless ``cond`` holds."""
    if not cond:
        raise ConfigError(problem, fix)


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value), where VALUE is read as JSON when it parses (4, 0.1, true)."""
    if "=" not in text:
        raise ConfigError(f"--model-arg {text!r} is not KEY=VALUE.", "write e.g. --model-arg n_layer=4.")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = {"True": True, "False": False, "None": None}.get(raw, raw)
    return key, value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _describe(types: tuple[type, ...]) -> str:
    words = {int: "a whole number", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    return " or ".join(words.get(t, t.__name__) for t in types)


def _example(types: tuple[type, ...]) -> str:
    return {int: "8", float: "0.1", str: "text", bool: "true", dict: "{...}"}[types[0]]


_HINTS: dict[str, tuple[tuple[type, ...], bool]] = {}


def _type_hints() -> dict[str, tuple[tuple[type, ...], bool]]:
    """Field name -> (accepted runtime types, accepts None), from the evaluated annotations."""
    if not _HINTS:
        for name, hint in typing.get_type_hints(TrainConfig).items():
            args = typing.get_args(hint) or (hint,)  # `int | None` -> (int, NoneType); `int` -> (int,)
            types = tuple(t for t in args if t is not type(None))
            if float in types:
                types += (int,)  # an int is a valid float (2 for 2.0)
            _HINTS[name] = (types, type(None) in args)
    return _HINTS


def field_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}


def options_with(role: str) -> tuple[str, ...]:
    """The options whose field declares ``role`` (IDENTITY, PLACE, SESSION or TRAINING), in field order."""
    return tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata["role"] == role)


IDENTITY_OPTIONS = options_with(IDENTITY)
PLACE_OPTIONS = options_with(PLACE)
SESSION_OPTIONS = options_with(SESSION)
# Options that may name a file (made absolute when a run starts, see train.resume.absolute_paths).
PATH_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("path"))

# Option groups of `tierlab train --help`, in the README's order; every option is in one.
OPTION_GROUPS = {
    "model": ("model", "model_args", "objective", "causal_mask", "pool"),
    "data": ("data", "text_field", "label_field", "tokenizer", "val_fraction"),
    "precision and device": ("precision", "fp8_layers", "strict_precision", "device", "compile", "compile_mode", "chunked_loss",
                             "attention_backend", "loss_scale_init",
                             "loss_scale_growth_interval"),
    "several processes (torchrun)": ("fsdp", "dist_timeout"),
    "length and batch": ("max_steps", "epochs", "early_stop", "early_stop_delta", "batch_size", "grad_accum",
                         "global_batch_size",
                         "seq_len"),
    "optimizer and schedule": ("lr", "min_lr", "warmup_steps", "weight_decay", "beta1", "beta2", "clip_grad"),
    "checkpoints and faults": ("ckpt_every", "keep_ckpts", "resume", "allow_config_change", "init_from", "on_nonfinite",
                               "rollback_lr_factor", "max_rollbacks", "max_consecutive_skips", "min_loss_scale"),
    "trackers and plots": ("tensorboard", "wandb", "wandb_entity", "wandb_mode", "tracker_timeout", "no_plots"),
    "observation and output": ("log_every", "eval_every", "eval_batches", "out", "name", "seed", "quiet"),
}
