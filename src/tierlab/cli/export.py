"""``tierlab export``: a trained run as safetensors, TorchScript or ONNX, after a parity check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import RUN_MODEL_HELP, positive, recorded_model_for, run_dirs


def add_parser(sub: argparse._SubParsersAction) -> None:
    export = sub.add_parser("export", help="export a trained run as safetensors, TorchScript, ONNX or a bundle that "
                                           "runs anywhere with pip, with a parity check",
                            description="Write the run's model in a deployable form, with "
                            "its tokenizer and a README on loading it, after checking that the export's logits match "
                            "the model's on real validation batches of the run's data (exit 2, nothing written, when "
                            "they do not or the model cannot be exported).")
    export.add_argument("run", help="run directory, e.g. runs/NAME")
    export.add_argument("--format", required=True, choices=["safetensors", "torchscript", "onnx", "bundle"],
                        help="bundle: weights, model source, tokenizer, predict.py, requirements.txt and a model "
                             "card, runnable on another machine with nothing of tierlab installed")
    export.add_argument("--model", default=None, metavar="PATH.py[:factory]", help=RUN_MODEL_HELP)
    export.add_argument("--out", default=None, metavar="DIR", help="where to write it (default RUN/export-FORMAT)")
    export.add_argument("--batches", type=int, default=4, metavar="N",
                        help="validation batches the parity check compares (default 4)")
    export.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")


def run(ns: argparse.Namespace) -> int:
    from ..export import export_run

    positive(ns, "batches")
    (run_dir,) = run_dirs([ns.run])
    with recorded_model_for("tierlab export"):
        result = export_run(run_dir, ns.format, ns.out, ns.batches, model=ns.model)
    print(result.text())
    if ns.json:
        Path(ns.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
