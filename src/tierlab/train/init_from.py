"""``--init-from``: a new run that starts from trained weights (fine-tuning, continued pre-training).

Only the weights are taken. The optimizer, the learning-rate schedule, the step count and
the data position start afresh -- unlike ``--resume``, which continues one run exactly --
so the new run may use other data, another length or another learning rate. The weights
must fit the model as built (names and shapes), and where their source records the
tokenizer it must be this run's: the same token ids meaning other things would make the
weights noise.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..run_files import TOKENIZER, WEIGHTS
from .checkpoint import latest_checkpoint, load_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightSource:
    path: Path  # model.safetensors or a checkpoint .pt
    tokenizer: str | None  # the identity the weights were trained with, where recorded
    tokenizer_file: Path | None  # the run's tokenizer.json, to name in a fix
    weights: dict[str, Any] | None = None  # a checkpoint's model state, read once
    run_dir: Path | None = None  # the run the weights come from, where they are a run's


def find_weights(spec: str) -> WeightSource:
    """Resolve ``--init-from``: a run directory (its final weights, else its latest checkpoint), a .pt or a .safetensors."""
    p = Path(spec)
    if not p.exists():
        raise ConfigError(f"--init-from {spec!r} does not exist.",
                          "pass a run directory, a checkpoint (RUN/checkpoints/step-....pt) or a .safetensors file.")
    if p.is_dir():
        weights = p / WEIGHTS if (p / WEIGHTS).is_file() else latest_checkpoint(p)
        if weights is None:
            raise ConfigError(f"--init-from {spec!r} holds neither {WEIGHTS} nor a checkpoint.",
                              "pass a finished run, a run with checkpoints, or the weights file itself.")
        run_dir = p
    elif p.suffix in (".pt", ".safetensors"):
        weights = p
        run_dir = p.parent.parent if p.suffix == ".pt" else p.parent  # RUN/checkpoints/x.pt, RUN/model.safetensors
    else:
        raise ConfigError(f"--init-from {spec!r} is neither a run directory, a checkpoint (.pt) nor a .safetensors "
                          "file.", "pass one of those.")
    state = load_checkpoint(weights) if weights.suffix == ".pt" else None
    tokenizer = state.get("tokenizer") if state is not None else _run_tokenizer(run_dir)
    tokenizer_file = run_dir / TOKENIZER
    return WeightSource(weights, tokenizer, tokenizer_file if tokenizer_file.is_file() else None,
                        state["model"] if state is not None else None, run_dir)


def load_initial_weights(model: nn.Module, spec: str, tokenizer_identity: str,
                         labels: list[str] | None = None) -> WeightSource:
    """Load the weights ``spec`` names into ``model`` (strictly), after checking the tokenizer they were trained with.

    ``labels`` (``--objective classify``: the class names): a language model's weights start a classifier
    (fine-tuning): see :func:`_load_into_classifier`.
    """
    source = find_weights(spec)
    if source.tokenizer is not None and source.tokenizer != tokenizer_identity:
        fix = (f"--tokenizer {source.tokenizer_file}" if source.tokenizer_file else
               "--tokenizer byte" if source.tokenizer == "byte" else "the tokenizer the weights were trained with")
        raise ConfigError(f"--init-from {spec}: those weights were trained with tokenizer {source.tokenizer}, this "
                          f"run's is {tokenizer_identity}; the same token ids would mean other things.",
                          f"train with theirs: {fix}.")
    from safetensors import SafetensorError

    try:
        if labels is not None:
            _load_into_classifier(model, source, spec, labels)
        elif source.path.suffix == ".safetensors":
            from safetensors.torch import load_model as load_safetensors

            load_safetensors(model, str(source.path))  # strict; knows tied weights
        else:
            model.load_state_dict(source.weights)
    except SafetensorError as exc:
        raise ConfigError(f"--init-from {spec}: {source.path} is damaged: not a readable safetensors file ({exc}).",
                          "start from one of its run's checkpoints instead: --init-from RUN/checkpoints/step-....pt."
                          ) from None
    except RuntimeError as exc:
        raise ConfigError(f"The weights in {source.path} do not fit this model: {describe_load_error(exc)}.",
                          "build the model they were trained with (the same model file, factory and --model-arg "
                          "values).") from None
    log.info("starting from the weights in %s (a new run: optimizer, schedule and data from the start)", source.path)
    return source


def _load_into_classifier(model: nn.Module, source: WeightSource, spec: str, labels: list[str]) -> None:
    """A classifier from a language model's weights: every tensor that fits is taken, the head stays new.

    Tensors of the same name and shape are copied; a table with fewer rows in the weights
    (the token embedding, which gained the padding token) gets its first rows copied;
    the rest -- the class head, which has no counterpart in a language model -- keeps its
    fresh initialisation, and says so.  Weights that fit almost nothing are refused, as a
    strict load would refuse them.
    """
    import torch

    weights = dict(source.weights) if source.weights is not None else _safetensors_with_aliases(source.path)
    own = model.state_dict()
    taken, grown, fresh = [], [], []
    with torch.no_grad():
        for name, tensor in own.items():
            given = weights.get(name)
            if given is not None and given.shape == tensor.shape:
                tensor.copy_(given)
                taken.append(name)
            elif (given is not None and given.dim() == tensor.dim() >= 1 and given.shape[1:] == tensor.shape[1:]
                  and given.shape[0] < tensor.shape[0]):
                tensor[:given.shape[0]].copy_(given)
                grown.append(f"{name} (its first {given.shape[0]} rows)")
            else:
                fresh.append(name)
    model_size = sum(t.numel() for t in own.values())
    fresh_size = sum(own[n].numel() for n in fresh)
    if not taken or fresh_size > model_size / 2:
        raise ConfigError(f"The weights in {source.path} do not fit this classifier: {len(fresh)} of its {len(own)} "
                          f"tensors ({_first(fresh, 3)}) have no counterpart of their shape there.",
                          "start from a run of the same model (file, factory and --model-arg values).")
    log.info("classifier from %s: %d tensors taken, %s; new (no tensor of that name and shape in the weights, "
             "so freshly initialised): %s", spec, len(taken), ", ".join(grown) if grown else "none grown",
             _first(fresh, 6) if fresh else "none")
    _say_other_labels(source, labels, whole_head=not fresh)


def _say_other_labels(source: WeightSource, labels: list[str], whole_head: bool) -> None:
    """Warn when the weights are a classifier of other labels whose head was taken as it is."""
    from ..data.rows import read_labels

    if source.run_dir is None or not whole_head:
        return
    record = read_labels(source.run_dir)
    theirs = record["labels"] if record else _run_start(source.run_dir).get("labels")  # (labels.json deleted)
    if not isinstance(theirs, list) or theirs == labels:
        return
    pairs = ", ".join(f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(theirs, labels)))
    log.warning("--init-from %s is a classifier of other labels, and its class head was taken as it is: class %s. "
                "If the new names mean other things than the old ones at the same id, the classifier starts from "
                "the wrong answers: rename the labels in your data to the old names where they mean the same, or "
                "start from a language-model run (its head is then new)", source.run_dir, pairs)


def _safetensors_with_aliases(path: Path) -> dict[str, Any]:
    """A safetensors file's tensors under every name the model had: a tied weight is stored once, its other names
    in the file's metadata (what safetensors' save_model writes)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    for removed, kept in metadata.items():
        if kept in tensors and removed not in tensors:
            tensors[removed] = tensors[kept]
    return tensors


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                            r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)")


def describe_load_error(exc: BaseException, shown: int = 3) -> str:
    """What torch's (or safetensors') load_state_dict error says, in whole items: the first ``shown`` of each kind.

    The error lists every size mismatch and every missing or unexpected key, often hundreds
    of them; a cut at a character count ends mid-word. Here each kind is counted, its first
    few are named in full, and the rest are "N more".
    """
    parts, sizes = [], []
    for line in str(exc).splitlines()[1:]:
        line = line.strip()
        size = _SIZE_MISMATCH.match(line)
        keys = _KEYS.match(line)
        if size:
            sizes.append(f"{size[1]} ({_shape(size[2])} in the weights, {_shape(size[3])} in the model)")
        elif keys:
            names = re.findall(r'"([^"]+)"', keys[2])
            what = ("parameters of the model missing from the weights" if keys[1] == "Missing"
                    else "parameters in the weights that the model does not have")
            parts.append(f"{len(names)} {what}: {_first(names, shown)}")
    if sizes:
        parts.insert(0, f"{len(sizes)} size mismatch{'es' if len(sizes) > 1 else ''}: {_first(sizes, shown)}")
    if parts:
        return "; ".join(parts)
    return textwrap.shorten(" ".join(str(exc).split()), 300, placeholder=" ...")  # another error: whole words


def _first(items: list[str], shown: int) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _shape(text: str) -> str:
    """'[256, 32]' -> '256x32' ('[]': a scalar)."""
    return "x".join(text.strip("[]").replace(" ", "").split(",")) or "scalar"


def _run_tokenizer(run_dir: Path) -> str | None:
    """The tokenizer identity a run recorded in its run_start event, or None (not a tierlab run)."""
    return _run_start(run_dir).get("tokenizer")


def _run_start(run_dir: Path) -> dict[str, Any]:
    from ..run_reader import run_start_event

    return run_start_event(run_dir)
