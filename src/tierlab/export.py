"""``tierlab export``: a trained run's model in the form a deployment wants, checked against the original.

Three formats:

* ``safetensors``: the weights (no code can run when they are loaded) plus the config that
  rebuilds the model from its factory;
* ``torchscript``: ``torch.jit.trace`` of the model, loadable with ``torch.jit.load``
  without the model's Python source;
* ``onnx``: ``torch.onnx.export`` (the ``torch.export`` based exporter, with the batch and
  sequence dimensions dynamic), checked with onnxruntime when it is installed.

Every export is compared with the original model on real validation batches of the run's
own data: the largest absolute difference between the logits must be within the format's
stated tolerance, or the export is refused with the reason and nothing is left behind.
The export is built in a temporary directory and moved into place only when it passed,
and an existing directory is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .disk import is_storage_error, write_failed
from .errors import ModelError, UserError
from .models import extract_logits, max_positions
from .models.loader import absolute_spec
from .run_files import LABELS, WEIGHTS
from .atomic import follow_umask

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "torchscript", "onnx", "bundle")
# Largest |logit difference| accepted on the validation batches, per format, relative to the
# logits' scale: the tolerance is TOLERANCE[fmt] * max(1, largest |logit|), since fp32 rounding
# grows with the values.  safetensors stores the same numbers; TorchScript runs the same
# kernels; ONNX Runtime runs its own kernels, which sum in another order.
TOLERANCE = {"safetensors": 0.0, "torchscript": 1e-5, "onnx": 1e-4, "bundle": 0.0}


@dataclass
class ExportResult:
    format: str
    out: Path
    files: list[str]
    max_abs_diff: float | None  # None when the check could not run (onnxruntime missing)
    tolerance: float
    batches: int
    shape: list[int]
    notes: list[str] = field(default_factory=list)

    @property
    def checked(self) -> bool:
        return self.max_abs_diff is not None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out": str(self.out), "checked": self.checked}

    def text(self) -> str:
        parity = (f"parity on {self.batches} validation batch(es) of {self.shape}: max |logit diff| "
                  f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g})" if self.checked
                  else "parity: not checked")
        lines = [f"exported {self.format} to {self.out}", f"  {parity}"]
        lines += [f"  files: {', '.join(self.files)}"] + [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class _LogitsOnly(nn.Module):
    """``input_ids [B, T] -> logits [B, T, V]`` whatever the model returns (a tuple, a Hugging Face output)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return extract_logits(self.model(input_ids)).float()


def export_run(run: str | Path, fmt: str, out: str | Path | None = None, batches: int = 4,
               model: nn.Module | str | None = None, cache_dir: str | Path | None = None) -> ExportResult:
    """Export run ``run`` as ``fmt`` into ``out`` (default ``RUN/export-FMT``); see the module doc.

    ``model``: a module, or a model file ``path.py[:factory]`` (e.g. the run's, moved since),
    to load the run's weights into instead of the model the run recorded.
    """
    from .run_reader import built_vocab, run_labels, run_model

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not an export format.", f"use one of {', '.join(FORMATS)}.")
    run_dir = Path(run)
    target = Path(out) if out is not None else run_dir / f"export-{fmt}"
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{str(target)!r} already exists and is not empty.",
                        "pass another --out DIR, or delete that directory first.")
    spec = model if isinstance(model, str) else None
    model, tokenizer, config = run_model(run_dir, model)  # a module given: the run's weights loaded into it
    if spec is not None:  # a model file given: the safetensors check rebuilds from it, and the README names it
        config = {**config, "model": absolute_spec(spec)}
    model = model.cpu().float().eval()
    labels = run_labels(run_dir, config, tokenizer)  # a classifier's: its names travel with the export

    # Real validation batches of the run's own data, as training evaluated them.
    inputs = _validation_inputs(config, Path(cache_dir) if cache_dir else None, batches)
    wrapped = _LogitsOnly(model).eval()
    with torch.no_grad():
        expected = [wrapped(x) for x in inputs]
    tolerance = TOLERANCE[fmt] * max(1.0, max(float(e.abs().max()) for e in expected))

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent if target.parent.is_dir() else None))
    try:
        follow_umask(staging)  # mkdtemp's 0700 would become the export folder's mode
        notes: list[str] = []
        exporter = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx, "bundle": _bundle}[fmt]
        built = {"vocab_size": built_vocab(config, tokenizer), **_class_spec(labels, config)}
        run_exported = exporter(wrapped, model, config, inputs[0], staging, notes, built)
        diff = None
        if run_exported is not None:
            with torch.no_grad():
                diff = max(float((run_exported(x) - e).abs().max()) for x, e in zip(inputs, expected))
                notes += _other_shape(run_exported, wrapped, inputs[0], tolerance)
            if not diff <= tolerance:
                raise ModelError(f"The {fmt} export does not compute what the model computes: the largest logit "
                                 f"difference on {len(inputs)} validation batches is {diff:.3g} (tolerance "
                                 f"{tolerance:.3g}). Tracing records one path through forward(); "
                                 "Python control flow that depends on the input values, or values read back "
                                 "to Python (.item(), .tolist()), do not survive it.",
                                 "keep forward() free of data-dependent Python branches, or export as "
                                 "safetensors (the weights) and run the model from its source.")
        tokenizer.save(staging)
        if labels is not None:
            shutil.copyfile(run_dir / LABELS, staging / LABELS)
        result = ExportResult(fmt, target, [], diff, tolerance, len(inputs), list(inputs[0].shape), notes)
        if fmt == "bundle":  # a model card: what the model is, how it was trained, how it came out
            from .bundle import model_card, write_bundle

            write_bundle(staging, run_dir, config, built["model"], model, tokenizer.identity)
            files = sorted([p.name for p in staging.iterdir()] + ["README.md"])
            readme = model_card(run_dir, config, model, _parity_text(result), files, built["model"])
        else:
            readme = _readme(result, config, labels, tokenizer.identity, tokenizer.vocab_size)
        (staging / "README.md").write_text(readme, encoding="utf-8")
        result.files = sorted(p.name for p in staging.iterdir())
        if target.exists():
            target.rmdir()  # empty (checked above)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A rename when the staging directory sits beside the target; a copy when --out's
        # folder did not exist yet and staging had to go to the temporary directory.
        shutil.move(str(staging), str(target))
    except Exception as exc:
        if is_storage_error(exc):  # a full disk while writing the export (safetensors' Rust error included)
            raise write_failed(target, exc, "nothing was exported (the run is untouched)",
                               "free space (or choose another --out) and export again.") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s", result.text())
    return result


def _validation_inputs(config: dict[str, Any], cache_dir: Path | None, batches: int) -> list[torch.Tensor]:
    """Input batches [B, T] of the run's held-out data: token blocks, or a classification's padded rows."""
    from .data import default_cache_dir, eval_starts, prepare_data, prepare_rows
    from .data.sampler import blocks_at

    seq_len, batch = int(config["seq_len"]), min(int(config["batch_size"]), 8)
    if (config.get("objective") or "clm") == "classify":
        rows = prepare_rows(config["data"], config["tokenizer"], config["val_fraction"], seq_len,
                            cache_dir or default_cache_dir(), config.get("text_field", "text"),
                            config.get("label_field", "label")).val
        if not len(rows):
            raise UserError("The run holds out no rows to compare the export on.",
                            "export a run trained with a validation split (--val-fraction).")
        return [torch.from_numpy(rows[start:start + batch, :-1].astype("int64"))
                for start in range(0, min(len(rows), batch * batches), batch)]
    tokens = prepare_data(config["data"], config["tokenizer"], config["val_fraction"], cache_dir,
                          config.get("text_field", "text"))
    if len(tokens.val) < seq_len + 1:
        raise UserError(f"The run's validation split has {len(tokens.val)} tokens, fewer than one block of "
                        f"{seq_len + 1}.", "export a run trained with a validation split.")
    return [blocks_at(tokens.val, starts, seq_len)[0] for starts in eval_starts(len(tokens.val), seq_len, batch,
                                                                              batches)]


def _bundle(wrapped, model, config, example, staging, notes, built):
    """The safetensors export, rebuilt from the bundle's own copy of the model source for the parity check."""
    from .bundle import bundle_source

    from .models.loader import PRESETS

    built["model"] = bundle_source(config, staging)  # bundle-relative, or the name of a built-in model
    source = built["model"] if built["model"] in PRESETS else str(staging / built["model"])
    return _safetensors(wrapped, model, {**config, "model": source}, example, staging, notes,
                        {k: v for k, v in built.items() if k != "model"})


def _safetensors(wrapped, model, config, example, staging, notes, built):
    from safetensors.torch import load_model as load_safetensors
    from safetensors.torch import save_model

    from .models import load_model

    save_model(model, str(staging / WEIGHTS))
    follow_umask(staging / WEIGHTS)  # safetensors writes 0600
    (staging / "model_config.json").write_text(json.dumps(
        {"model": config["model"], "model_args": config.get("model_args", {}),
         "causal_mask": bool(config.get("causal_mask")), "objective": config.get("objective") or "clm",
         **built}, indent=2) + "\n")
    if str(config["model"]).startswith("<in-memory"):
        notes.append("the model was an in-memory module: rebuild it yourself, then load model.safetensors")
        return None
    rebuilt = load_model(config["model"], config.get("model_args", {}), built["vocab_size"],
                         bool(config.get("causal_mask")), built.get("num_classes"))
    load_safetensors(rebuilt, str(staging / WEIGHTS))
    return _LogitsOnly(rebuilt.eval()).eval()


def _torchscript(wrapped, model, config, example, staging, notes, built):
    path = staging / "model.pt"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        except Exception as exc:  # noqa: BLE001 - the tracer's failures are many; say it in one line
            raise _cannot("torch.jit.trace", exc) from None
    # The first sentence of each (a period followed by a space ends it: "torch.tensor results ..." must stay whole).
    seen = {re.split(r"\.\s", str(w.message).strip(), maxsplit=1)[0].rstrip(".")
            for w in caught if issubclass(w.category, torch.jit.TracerWarning)}
    notes += [f"tracer warning: {m}" for m in sorted(seen)[:5]]
    notes.append("TorchScript is deprecated by PyTorch (torch.jit); it still loads in torch.jit.load, but prefer onnx "
                 "or safetensors for new deployments")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # said once, in the note above
        # Into memory first, then to disk from Python: torch.jit.save writing a file itself aborts the
        # process (a C++ exception in a destructor) when the disk fills up; here it is an OSError.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        path.write_bytes(buffer.getbuffer())
        del buffer
        loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


def _onnx(wrapped, model, config, example, staging, notes, built):
    try:
        import onnxscript  # noqa: F401 - the torch.export based exporter needs it
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxscript packages.",
                        "pip install 'tierlab[onnx]' (onnx, onnxscript and onnxruntime).") from None
    path = staging / "model.onnx"
    limit = max_positions(model)
    dims = {0: torch.export.Dim("batch", min=1), 1: torch.export.Dim("seq", min=2, max=limit or 2**16)}
    # The exporter prints its progress, and torch.export logs graph dumps when it gives up:
    # kept out of the user's terminal (at debug level in tierlab's log instead).
    chatter = io.StringIO()
    try:
        logging.disable(logging.WARNING)
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (example,), str(path), dynamo=True, input_names=["input_ids"],
                              output_names=["logits"], dynamic_shapes=({0: dims[0], 1: dims[1]},),
                              verbose=False)
    except Exception as exc:  # noqa: BLE001
        if is_storage_error(exc):
            raise  # a full disk, not the model: said as such by export()
        raise _cannot("torch.onnx.export", exc) from None
    finally:
        logging.disable(logging.NOTSET)
        log.debug("torch.onnx.export said: %s", chatter.getvalue())
    try:
        import onnxruntime
    except ImportError:
        notes.append("onnxruntime is not installed, so the export was not run: pip install onnxruntime")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(np.asarray(session.run(["logits"], {"input_ids": x.numpy()})[0]))


def _other_shape(run_exported, wrapped, example: torch.Tensor, tolerance: float) -> list[str]:
    """A note when the export computes right only at the shape it was exported with."""
    other = example[:1, : max(2, example.size(1) // 2)]
    try:
        diff = float((run_exported(other) - wrapped(other)).abs().max())
    except Exception as exc:  # noqa: BLE001 - a shape-specialised graph may refuse the input
        return [f"works only for input shape {list(example.shape)}: on {list(other.shape)} it fails "
                f"({type(exc).__name__})"]
    if not diff <= max(tolerance, 1e-6) * 10:
        return [f"works only for input shape {list(example.shape)}: on {list(other.shape)} its logits differ "
                f"by {diff:.3g}"]
    return []


def _cannot(tool: str, exc: Exception) -> ModelError:
    root = exc
    while root.__cause__ is not None:  # the exporters wrap the error that says what went wrong
        root = root.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(root))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return ModelError(f"{tool} cannot export this model: {type(root).__name__}: {first[:300]}",
                      "keep forward(input_ids) to tensor operations (no Python loops over values, no .item() or "
                      "numpy), or export as safetensors (the weights) and run the model from its source.")


def _class_spec(labels: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any]:
    """A classification run's labels, padding id and pooling, for model_config.json (empty for a language model)."""
    if labels is None:
        return {}
    return {"num_classes": len(labels["labels"]), "labels": labels["labels"], "pad_token_id": labels["pad_token_id"],
            "pool": config.get("pool") or "mean"}


def _scores(config: dict[str, Any], labels: dict[str, Any] | None, tokenizer_size: int) -> str:
    """What the exported logits are, in words, by the run's objective."""
    if labels is not None:
        names = ", ".join(f"{i} = {name}" for i, name in enumerate(labels["labels"][:20]))
        return (f"a classifier's scores for {len(labels['labels'])} classes ({names}{', ...' if len(labels['labels']) > 20 else ''}): "
                f"`[batch, classes]`, or `[batch, tokens, classes]` to pool over the text's positions as training did "
                f"(--pool {config.get('pool') or 'mean'}); pad each row on the right to {config['seq_len']} tokens "
                f"with id {labels['pad_token_id']}, as training did. The classes are in `labels.json`")
    if (config.get("objective") or "clm") == "mlm":
        return (f"a masked language model: put the mask token, id {tokenizer_size}, where a token is to be "
                "predicted; the logits at that position score it")
    causal = " (the model is made causal by --causal-mask hooks, part of the export)" if config.get("causal_mask") \
        else ""
    return f"the next-token scores at each position{causal}"


def _parity_text(result: ExportResult) -> str:
    """The parity check's outcome in words, for the README of an export."""
    if not result.checked:
        return "not checked (" + "; ".join(result.notes) + ")"
    return (f"largest absolute logit difference {result.max_abs_diff:.3g} on {result.batches} validation batches of "
            f"shape {result.shape} (tolerance {result.tolerance:.3g})")


def _readme(result: ExportResult, config: dict[str, Any], labels: dict[str, Any] | None, tokenizer: str,
            tokenizer_size: int) -> str:
    shape = "[B, classes] or [B, T, classes]" if labels is not None else "[B, T, V]"
    load = {
        "safetensors": ("```python\nimport json\n\nfrom safetensors.torch import load_model\n"
                        "from tierlab.models import load_model as build\n\n"
                        "spec = json.load(open(\"model_config.json\"))\n"
                        "model = build(spec[\"model\"], spec[\"model_args\"], spec[\"vocab_size\"], "
                        "causal_mask=spec[\"causal_mask\"],\n              classes=spec.get(\"num_classes\"))"
                        "  # or build your model yourself\n"
                        "load_model(model, \"model.safetensors\")\nmodel.eval()\n```"),
        "torchscript": "```python\nimport torch\n\nmodel = torch.jit.load(\"model.pt\")  # no Python source needed\n"
                       "logits = model(input_ids)  # input_ids: int64 [B, T]\n```",
        "onnx": "```python\nimport onnxruntime\n\nsession = onnxruntime.InferenceSession(\"model.onnx\")\n"
                f"logits = session.run([\"logits\"], {{\"input_ids\": input_ids}})[0]  # int64 [B, T] -> float32 {shape}\n"
                "```",
    }[result.format]
    tok = ("byte-level: token id = UTF-8 byte (0-255); `list(text.encode())` encodes, "
           "`bytes(ids).decode(errors='replace')` decodes" if tokenizer == "byte"
           else "`tokenizer.json` (Hugging Face tokenizers): `tokenizers.Tokenizer.from_file(\"tokenizer.json\")`")
    parity = _parity_text(result)
    return (f"# {result.format} export of a tierlab run\n\nModel: `{config['model']}` with "
            f"`{json.dumps(config.get('model_args', {}))}`, trained on `{config['data']}`.\n\n"
            f"Input: `input_ids`, int64 `[batch, tokens]`; output: `logits`, float32 "
            f"{'class scores' if labels is not None else '`[batch, tokens, vocab]`'} "
            f"({_scores(config, labels, tokenizer_size)}).\n\n## Loading\n\n{load}\n\n## Tokenizer\n\n{tok}\n\n"
            f"## Parity with the trained model\n\n{parity[0].upper() + parity[1:]}.\n")
