"""Reading a finished run back: its config, tokenizer, model and final weights (or a checkpoint's).

The one loader ``tierlab sample``, ``export``, ``analyze`` and :func:`tierlab.load` use; the
file names come from :mod:`tierlab.run_files`, the writing side is :mod:`tierlab.train.run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from .data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer_file
from .errors import DataError, ModelError, UserError
from .models import load_model
from .models.loader import PRESETS, split_spec
from .run_files import CONFIG, EVENTS, LABELS, TOKENIZER, WEIGHTS
from .train.checkpoint import load_checkpoint


class RecordedModelMissing(ModelError):
    """The model file a run recorded in its config.json is gone (moved, renamed, or the run was copied here)."""

    def __init__(self, run_dir: Path, spec: str, how: str | None = None):
        path, factory = split_spec(spec)
        self.run_dir, self.spec = run_dir, spec
        self.new_spec = f"NEW/PLACE/{path.name}" + (f":{factory}" if factory else "")
        super().__init__(f"Run {str(run_dir)!r} was trained with the model file {str(path)!r}, which no longer "
                         "exists.", f"if it moved, {how or f'pass its new place: model={self.new_spec!r}'} (the "
                         "run's weights are loaded into the model it builds, with the run's model arguments).")

    def for_command(self, command: str) -> "RecordedModelMissing":
        """The same error, its fix naming ``command``'s --model option."""
        return RecordedModelMissing(self.run_dir, self.spec, f"pass its new place to `{command}`: --model "
                                    f"{self.new_spec}")


def load(run: str | Path, checkpoint: str | Path | None = None, device: str = "cpu", *,
         model: nn.Module | str | None = None) -> tuple[nn.Module, Tokenizer]:
    """The model (final weights, or ``checkpoint``'s) and tokenizer of a run directory.

    The model is rebuilt from the run's config, or is ``model`` with the weights loaded into
    it: a freshly built module of the same architecture (e.g. for a run trained on an
    in-memory module), or a model file ``path.py[:factory]`` (e.g. the run's, moved since),
    built with the run's model arguments.
    """
    run_dir = Path(run)
    config = run_config(run_dir)
    tokenizer = run_tokenizer(run_dir)
    if model is None and str(config["model"]).startswith("<in-memory"):
        raise UserError(f"Run {str(run_dir)!r} trained an in-memory model, which tierlab cannot rebuild.",
                        "build the model yourself and pass it: tierlab.load(run, model=my_model) (or load "
                        f"{run_dir / WEIGHTS} with safetensors.torch.load_model).")
    if model is None:
        recorded_model_file(run_dir, config)
        from .train.identity import check_recorded_source

        check_recorded_source(run_dir, str(config["model"]))
        model = load_model(config["model"], config.get("model_args", {}), built_vocab(config, tokenizer),
                           bool(config.get("causal_mask")), built_classes(run_dir, config, tokenizer))
    elif isinstance(model, str):
        model = load_model(model, config.get("model_args", {}), built_vocab(config, tokenizer),
                           bool(config.get("causal_mask")), built_classes(run_dir, config, tokenizer))
    if checkpoint is not None and Path(checkpoint).suffix == ".safetensors":  # e.g. --early-stop's best weights
        load_run_weights(model, run_dir, Path(checkpoint))
    elif checkpoint is not None:
        model.load_state_dict(load_checkpoint(Path(checkpoint))["model"])
    else:
        load_run_weights(model, run_dir)
    return model.to(device).eval(), tokenizer


def built_vocab(config: dict[str, Any], tokenizer: Tokenizer) -> int:
    """The vocabulary a run's model was built for: the tokenizer's, plus the mask token of an mlm run."""
    from .train.objective import model_vocab

    return model_vocab(str(config.get("objective") or "clm"), tokenizer.vocab_size)


def built_classes(run_dir: Path, config: dict[str, Any], tokenizer: Tokenizer) -> int | None:
    """The number of classes a classification run's model was built for (None for a language model)."""
    labels = run_labels(run_dir, config, tokenizer)
    return len(labels["labels"]) if labels else None


def run_labels(run_dir: Path, config: dict[str, Any], tokenizer: Tokenizer | None = None) -> dict[str, Any] | None:
    """A classification run's labels.json, checked against the rest of the run (None for a language model's run).

    A classifier's model is built for as many classes as the file names, and pads with its
    ``pad_token_id``: a file deleted or edited since would otherwise surface as a mismatch
    blamed on the model, or as quietly wrong pooling.
    """
    from .data.rows import read_labels

    if (config.get("objective") or "clm") != "classify":
        return None
    labels = read_labels(run_dir)
    fix = f"restore {LABELS} from a copy of the run (tierlab writes it when the run starts)."
    if labels is None:
        raise DataError(f"{str(run_dir)!r} is a classification run, but its {LABELS} (the class names, and how many "
                        "classes the model has) is missing.", fix)
    if tokenizer is not None and labels["pad_token_id"] != tokenizer.vocab_size:
        raise DataError(f"{str(run_dir / LABELS)!r} says the padding token is id {labels['pad_token_id']}, but the "
                        f"run's tokenizer puts it at {tokenizer.vocab_size}.", fix)
    start = run_start_event(run_dir)
    trained, names = start.get("classes"), start.get("labels")
    if isinstance(trained, int) and trained != len(labels["labels"]):
        raise DataError(f"{str(run_dir / LABELS)!r} names {len(labels['labels'])} classes, but the run trained "
                        f"{trained}.", fix)
    if isinstance(names, list) and names != labels["labels"]:  # renamed or reordered: every label would be wrong
        raise DataError(f"{str(run_dir / LABELS)!r} names the classes {_first(labels['labels'])}, but the run "
                        f"trained {_first(names)} (its run_start event).", fix)
    return labels


def run_start_event(run_dir: Path) -> dict[str, Any]:
    """A run's run_start event (empty when there is none: not a tierlab run)."""
    from .track.records import read_jsonl

    if not (run_dir / EVENTS).is_file():
        return {}
    return next((e for e in read_jsonl(run_dir / EVENTS) if e.get("event") == "run_start"), {})


def _first(names: list[Any], shown: int = 8) -> str:
    return repr(list(names[:shown]))[:-1] + (", ...]" if len(names) > shown else "]")


def recorded_model_file(run_dir: Path, config: dict[str, Any]) -> None:
    """Raise :class:`RecordedModelMissing` when the model file a run recorded no longer exists."""
    spec = str(config["model"])
    if spec in PRESETS or spec.startswith("<in-memory") or spec.startswith("gist:"):  # (a gist: its cache, or fetched)
        return
    path, _ = split_spec(spec)
    if path.suffix == ".py" and not path.is_file():
        raise RecordedModelMissing(run_dir, spec)


def run_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json, with a plain error when the directory is not a run."""
    path = run_dir / CONFIG
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} is not a tierlab run directory (no {CONFIG}).",
                        "pass a directory made by tierlab train, e.g. runs/NAME.")
    return json.loads(path.read_text())


def run_model(run_dir: Path, model: nn.Module | str | None = None,
              model_args: dict[str, Any] | None = None) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """(trained model, tokenizer, config) of a run.

    The model is rebuilt from the run's config, or is ``model`` with the run's weights
    loaded into it: a module (e.g. for a run trained on an in-memory module), or a model
    file built with ``model_args`` (default: the run's).
    """
    config = run_config(run_dir)
    if model is None:
        built, tokenizer = load(run_dir)
        return built, tokenizer, config
    tokenizer = run_tokenizer(run_dir)
    if isinstance(model, str):
        model = load_model(model, dict(model_args or config.get("model_args", {})), built_vocab(config, tokenizer),
                           bool(config.get("causal_mask")), built_classes(run_dir, config, tokenizer))
    return load_run_weights(model, run_dir), tokenizer, config


def run_tokenizer(run_dir: Path) -> Tokenizer:
    """The tokenizer a run trained with (its tokenizer.json, or the byte tokenizer, which has no file)."""
    path = run_dir / TOKENIZER
    return load_tokenizer_file(str(path)) if path.is_file() else ByteTokenizer()


def load_run_weights(model: nn.Module, run_dir: Path, weights: Path | None = None) -> nn.Module:
    """Load a run's final weights (model.safetensors, or ``weights``) into ``model``, with a plain error when missing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model as load_safetensors

    weights = weights if weights is not None else run_dir / WEIGHTS
    if not weights.is_file():
        raise UserError(f"Run {str(run_dir)!r} has no {weights.name} (it may still be running or was killed).",
                        f"use a finished run, or a checkpoint: {run_dir}/checkpoints/step-....pt")
    try:
        load_safetensors(model, str(weights))
    except SafetensorError as exc:
        raise UserError(f"{weights} is damaged: it is not a readable safetensors file ({exc}).",
                        f"use a checkpoint of the run instead (--checkpoint {run_dir}/checkpoints/step-....pt), or "
                        "train again.") from None
    except RuntimeError as exc:
        from .train.init_from import describe_load_error

        raise UserError(f"The weights in {weights} do not fit this model: {describe_load_error(exc)}.",
                        "build the same model (file, factory and --model-arg values) the run trained.") from None
    return model
