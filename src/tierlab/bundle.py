"""``tierlab export RUN --format bundle``: a folder that runs a trained model on another machine with pip alone.

What goes in (see :func:`write_bundle`):

* ``model.safetensors`` (and ``best.safetensors`` after ``--early-stop``), ``model_config.json``;
* the model's source: the run's model file (or the Builder export's ``model.py`` + ``config.json``)
  under ``model/``; the built-in model needs none;
* the tokenizer (``tokenizer.json``, or nothing for the byte tokenizer) and ``labels.json`` of
  a classifier;
* ``predict.py``: generate (clm), fill ``[MASK]`` (mlm) or classify, with ``--help``;
* ``vendor/tierlab``: this package's own code, so that the bundle builds the model, pads a row,
  masks or samples exactly as training did (the same loader, hooks and pooling), with
  nothing of tierlab installed;
* ``requirements.txt``: the packages that code imports, at the versions used here;
* ``README.md``: a model card, and the dashboard image.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .models.builder import CONFIG_FILE, MODEL_FILE, find_export
from .models.loader import PRESETS, split_spec
from .run_files import BEST_WEIGHTS, DASHBOARD, EVENTS, SUMMARY, TOKENIZER, WEIGHTS

PREDICT = "predict.py"
SOURCE_DIR = "model"
VENDOR_DIR = "vendor"


def bundle_source(config: dict[str, Any], staging: Path) -> str:
    """Copy the model's source into ``staging/model`` and return the spec that builds it there (bundle-relative)."""
    spec = str(config["model"])
    if spec in PRESETS:
        return spec  # built into the vendored tierlab
    if spec.startswith("<in-memory"):
        raise UserError("The run trained an in-memory model: there is no model file to put in a bundle.",
                        "export --format safetensors and rebuild the model yourself, or train from a model file "
                        "(--model PATH.py) to bundle it.")
    if spec.startswith("gist:"):
        from .models.loader import gist_folder

        path, name = gist_folder(spec), None
    else:
        path, name = split_spec(spec)
    export = find_export(path)
    target = staging / SOURCE_DIR
    target.mkdir()
    if export is not None:  # a Builder export: model.py and its config.json, as a folder
        shutil.copyfile(export.model_file, target / MODEL_FILE)
        if export.config_file.is_file():
            shutil.copyfile(export.config_file, target / CONFIG_FILE)
        _copy_local_imports(export.model_file, target)
        return SOURCE_DIR + (f":{name}" if name else "")
    shutil.copyfile(path, target / path.name)
    _copy_local_imports(path, target)
    return f"{SOURCE_DIR}/{path.name}" + (f":{name}" if name else "")


def _copy_local_imports(source: Path, target: Path, seen: set[str] | None = None) -> None:
    """Copy the modules of its own folder that ``source`` imports (``from layers import Block``), and theirs.

    Needed on another machine, and not caught by the parity check here: this process has
    imported them already, from their own folder.
    """
    seen = set() if seen is None else seen
    for name in sorted(_imported_names(source) - seen):
        seen.add(name)
        module, package = source.parent / f"{name}.py", source.parent / name
        if module.is_file():
            shutil.copyfile(module, target / module.name)
            _copy_local_imports(module, target, seen)
        elif (package / "__init__.py").is_file():
            shutil.copytree(package, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _imported_names(source: Path) -> set[str]:
    """The top-level names of the absolute imports in a Python file (``import a.b`` and ``from a import c``: a)."""
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def write_bundle(staging: Path, run_dir: Path, config: dict[str, Any], source: str, model: torch.nn.Module,
                 tokenizer_name: str) -> None:
    """The bundle's own files beside the weights and tokenizer: predict.py, vendored code, requirements, card."""
    package = Path(__file__).resolve().parent
    shutil.copytree(package, staging / VENDOR_DIR / "tierlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (staging / PREDICT).write_text(_predict_script(config.get("objective") or "clm"), encoding="utf-8")
    sources = sorted((staging / SOURCE_DIR).rglob("*.py")) if (staging / SOURCE_DIR).is_dir() else []
    (staging / "requirements.txt").write_text(requirements(model, tokenizer_name != "byte", sources),
                                              encoding="utf-8")
    spec = json.loads((staging / "model_config.json").read_text())
    spec.update({"model": source, "seq_len": int(config["seq_len"]), "tokenizer": tokenizer_name})
    (staging / "model_config.json").write_text(json.dumps(spec, indent=2) + "\n")
    if (run_dir / BEST_WEIGHTS).is_file():
        shutil.copyfile(run_dir / BEST_WEIGHTS, staging / BEST_WEIGHTS)
    if (run_dir / DASHBOARD).is_file():
        shutil.copyfile(run_dir / DASHBOARD, staging / DASHBOARD)


def requirements(model: torch.nn.Module, hf_tokenizer: bool, sources: list[Path] = ()) -> str:
    """requirements.txt: what the vendored code and the model import, pinned to the versions installed here.

    The model's own imports are read from its bundled source files (``sources``): every module
    that is neither the standard library's nor one of those files is a distribution to install.
    """
    names = ["torch", "numpy", "safetensors", "tqdm"]
    if hf_tokenizer:
        names.append("tokenizers")
    if any(type(m).__module__.startswith("transformers") for m in model.modules()):
        names.append("transformers")
    local = {f.stem for f in sources} | {f.parent.name for f in sources}
    imported = sorted(set().union(*(_imported_names(f) for f in sources)) - local - set(sys.stdlib_module_names)
                      - {"tierlab"}) if sources else []
    distributions = metadata.packages_distributions()
    unknown = []
    for module in imported:
        found = distributions.get(module)
        if found:
            names += [d for d in found if d not in names]
        else:
            unknown.append(module)
    lines = ["# The versions this bundle was exported and checked with.",
             f"# torch build here: {torch.__version__} (for a GPU build, install torch as pytorch.org says for your "
             "CUDA, at this version)"]
    lines += [f"# {m}: imported by the model, but no installed distribution provides it here" for m in unknown]
    for name in names:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            lines.append(name)
            continue
        lines.append(f"{name}=={version.split('+')[0]}")  # (a local build tag such as +cpu is not on PyPI)
    lines.append("tomli>=2.0; python_version < '3.11'")
    return "\n".join(lines) + "\n"


def model_card(run_dir: Path, config: dict[str, Any], model: torch.nn.Module, parity: str, files: list[str],
               source: str | None = None) -> str:
    """README.md of a bundle: what the model is, what it was trained on and how, and how it came out."""
    from .track.records import read_jsonl

    events = read_jsonl(run_dir / EVENTS) if (run_dir / EVENTS).is_file() else []
    start = next((e for e in events if e.get("event") == "run_start"), {})
    precision = next((e for e in reversed(events) if e.get("event") == "precision"), {})
    summary = json.loads((run_dir / SUMMARY).read_text()) if (run_dir / SUMMARY).is_file() else {}
    from .compare.sizing import model_depth

    total = sum(p.numel() for p in model.parameters())
    depth = model_depth(model)
    width = next((getattr(owner, a) for owner in (model, getattr(model, "config", None)) for a in
                  ("d_model", "n_embd", "hidden_size", "dim") if isinstance(getattr(owner, a, None), int)), None)
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    scales = [e for e in events if e.get("event") == "loss_scale_change"]
    scale_line = (" → ".join([f"{scales[0].get('from')}"] + [f"{e.get('to')} (step {e.get('step')})"
                                                             for e in scales[:12]])
                  + (f" → ... ({len(scales)} changes; final {summary.get('final_loss_scale')})" if len(scales) > 12
                     else "")) if scales else "no changes (or no fp16 loss scaling)"
    objective = config.get("objective") or "clm"
    usage = {"clm": 'python predict.py "ROMEO:" --max-new-tokens 200 --temperature 0.8 --seed 0',
             "mlm": 'python predict.py "the [MASK] sat on the mat"',
             "classify": 'python predict.py "a good movie"          # or: python predict.py - < texts.txt'}[objective]
    options = {k: v for k, v in config.items() if not k.startswith("_") and v not in (None, False, {}, "")}

    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))

    lines = [
        f"# {run_dir.resolve().name}: a model trained with tierlab", "",
        "## Use it", "", "```bash", "python -m venv .venv && . .venv/bin/activate", "pip install -r requirements.txt",
        usage, "python predict.py --help", "```", "",
        "Nothing of tierlab needs to be installed: `vendor/tierlab` holds the code that builds the model "
        "and runs it exactly as training did.", "",
        "## Model", "",
        f"- `{source or config['model']}` with `{json.dumps(config.get('model_args', {}))}`"
        + (f" (trained from `{config['model']}`)" if source and source != config["model"] else "")
        + (" (made causal by --causal-mask hooks)" if config.get("causal_mask") else ""),
        f"- objective: {objective}" + (f", {start.get('classes')} classes, pooled by --pool "
                                       f"{config.get('pool') or 'mean'}" if objective == "classify" else ""),
        f"- `{type(model).__name__}`" + (f", {depth} layers" if depth else "") + (f" of width {width}" if width else "")
        + f"; parameters: {total:,} ({embedding:,} in embeddings, {total - embedding:,} others)", "",
        "## Data", "",
        f"- `{config['data']}`" + (f", {Path(config['data']).stat().st_size:,} bytes" if Path(config["data"]).is_file()
                                   else "") + (f" (text field `{config.get('text_field')}`)" if config.get("text_field") not in
                                   (None, "text") else ""),
        f"- sha256 {start.get('corpus_sha256', '-')}; {fmt(start.get('train_tokens'))} training and "
        f"{fmt(start.get('val_tokens'))} held-out tokens" + (f" ({start.get('train_rows')} / {start.get('val_rows')} "
                                                             "rows)" if "train_rows" in start else ""),
        f"- tokenizer: {start.get('tokenizer', config.get('tokenizer'))}", "",
        "## Training", "",
        f"- status {summary.get('status', '-')}, {fmt(summary.get('steps'))} steps, {fmt(summary.get('tokens'))} "
        f"tokens, {fmt(summary.get('wall_seconds'))} s of wall time in its last session on "
        f"{start.get('device', '-')} (torch {start.get('torch', '-')})",
        f"- precision {summary.get('precision', precision.get('used', '-'))}: "
        f"{summary.get('precision_reason', precision.get('reason', '-'))}",
        f"- final val loss {fmt(summary.get('final_val_loss'))}, best {fmt(summary.get('best_val_loss'))}"
        + (f" (step {summary['best_step']}, weights in best.safetensors)" if summary.get("best_step") else "")
        + (f"; val accuracy {fmt(summary.get('final_val_acc'))}, macro-F1 {fmt(summary.get('final_val_f1'))}"
           if "final_val_f1" in summary else ""),
        f"- skipped steps: {fmt(summary.get('skipped_steps'))}; loss scale: {scale_line}",
        "- options: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(options.items())), "",
        "## Export", "", f"- parity with the trained model: {parity}",
        f"- files: {', '.join(files)}", ""]
    if DASHBOARD in files:
        lines += ["## Training curves", "", f"![dashboard]({DASHBOARD})", ""]
    return "\n".join(lines)


def _predict_script(objective: str) -> str:
    return f'''"""Run the bundled model: {"generate text" if objective == "clm" else "fill [MASK] tokens" if objective == "mlm"
                                else "label a text"}. `python predict.py --help` for the options."""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "{VENDOR_DIR}"))  # the tierlab code the model was trained with, before any installed

import torch  # noqa: E402
from safetensors.torch import load_model as load_weights  # noqa: E402

from tierlab.data.tokenizer import ByteTokenizer, load_tokenizer_file  # noqa: E402
from tierlab.models import load_model  # noqa: E402
from tierlab.sample import classify, fill_masks, generate  # noqa: E402

OBJECTIVE = "{objective}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("text", help="the prompt (clm), a text with [MASK] (mlm), or a text to label (classify); "
                                     "- reads one text per line from stdin")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="clm: tokens to generate (default 100)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 picks the likeliest token (default: 1 for clm, 0 for mlm)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the K likeliest tokens")
    parser.add_argument("--seed", type=int, default=None, help="makes sampling repeatable")
    parser.add_argument("--weights", default="{WEIGHTS}", help="{WEIGHTS} (final, default) or {BEST_WEIGHTS}")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps")
    ns = parser.parse_args()

    spec = json.loads((HERE / "model_config.json").read_text())
    source = spec["model"] if spec["model"] in {sorted(PRESETS)!r} else str(HERE / spec["model"])
    model = load_model(source, spec["model_args"], spec["vocab_size"], causal_mask=spec["causal_mask"],
                       classes=spec.get("num_classes"))
    load_weights(model, str(HERE / ns.weights))
    model = model.to(ns.device).eval()
    tokenizer = load_tokenizer_file(str(HERE / "{TOKENIZER}")) if (HERE / "{TOKENIZER}").is_file() else ByteTokenizer()
    texts = [t for t in sys.stdin.read().splitlines() if t.strip()] if ns.text == "-" else [ns.text]
    with torch.no_grad():
        for text in texts:
            if OBJECTIVE == "classify":
                scores = classify(model, tokenizer, text, spec["labels"], spec["seq_len"], spec["pool"])
                shown = "  ".join(f"{{label}} {{p:.3f}}" for label, p in scores[:10])
                print(f"{{scores[0][0]}}\\t{{shown}}" + ("\\t" + text if len(texts) > 1 else ""))
            elif OBJECTIVE == "mlm":
                print(fill_masks(model, tokenizer, text, 0.0 if ns.temperature is None else ns.temperature,
                                 ns.top_k, ns.seed))
            else:
                print(generate(model, tokenizer, text, ns.max_new_tokens,
                               1.0 if ns.temperature is None else ns.temperature, ns.top_k, ns.seed))
    return 0


if __name__ == "__main__":
    from tierlab.errors import UserError  # noqa: E402

    try:
        sys.exit(main())
    except (UserError, OSError, ValueError, RuntimeError) as err:  # a mistake of the input: one line, no traceback
        sys.stderr.write(f"predict.py: error: {{err}}\\n")
        sys.exit(2)
'''
