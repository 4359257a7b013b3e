"""``tierlab analyze``: attention patterns and robustness to token noise (Tier 2).

Its --batch-size 8 and 2 batches are an inspection's inputs, not a training batch: the
attention maps of every head are kept whole, so they stay small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from .common import CAUSAL_MASK_HELP, TEXT_FIELD_HELP, add_device_option, folder_exists, image_path, model_args_of, \
    recorded_model_for, run_dirs


def add_parser(sub: argparse._SubParsersAction) -> None:
    ana = sub.add_parser("analyze", help="attention patterns and robustness to token noise of a fresh or trained model",
                         description="Tier 2: per layer and head, attention entropy and the share on the previous "
                                     "token, the first token (attention sinks) and the diagonal, with collapsed heads "
                                     "flagged and heatmaps; then how far the next-token predictions move (KL, top-1 "
                                     "flips, loss) when k input tokens are replaced at random. Inputs are real "
                                     "validation blocks: the run's data with --run, else --data.")
    ana.add_argument("--model", default=None, help="tiny-gpt, gpt2-small or PATH.py[:factory]; with --run, the run's "
                                                   "weights are loaded into it (default: the run's model, else "
                                                   "tiny-gpt)")
    ana.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE")
    ana.add_argument("--causal-mask", action="store_true", help=CAUSAL_MASK_HELP + "; with --run, as the run recorded")
    ana.add_argument("run_dir", nargs="?", default=None, metavar="RUN",
                     help="a run directory, as in `tierlab sample RUN` (the same as --run RUN)")
    ana.add_argument("--run", default=None, metavar="RUN", help="a run directory: analyse its trained weights on its "
                                                              "own validation data")
    ana.add_argument("--data", default="demo", help="corpus for an untrained model (default demo)")
    ana.add_argument("--text-field", default="text", metavar="FIELD", help=TEXT_FIELD_HELP)
    ana.add_argument("--tokenizer", default="byte", help="tokenizer for --data (default byte)")
    ana.add_argument("--batch-size", type=int, default=8, metavar="N")
    ana.add_argument("--seq-len", type=int, default=None, metavar="N",
                     help="tokens per sequence (default: the run's, else min(128, the model's positions))")
    ana.add_argument("--batches", type=int, default=2, metavar="N", help="validation batches analysed (default 2)")
    add_device_option(ana)
    ana.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random replacements")
    ana.add_argument("--png", default="attention.png", metavar="PATH",
                     help="attention heatmaps (default attention.png; \"\" for none)")
    ana.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")


def run(ns: argparse.Namespace) -> int:
    from ..analyze import analyze
    from ..train.device import resolve_device

    if ns.run_dir is not None:  # `tierlab analyze runs/x`, like sample and export
        if ns.run is not None and Path(ns.run).resolve() != Path(ns.run_dir).resolve():
            raise UserError(f"Two runs given: {ns.run_dir!r} and --run {ns.run!r}.", "name one run.")
        ns.run = ns.run_dir
    if ns.run is not None:
        run_dirs([ns.run])
    folder_exists(ns.json)
    png = image_path(ns.png, "attention.png", "--png") if ns.png else None
    with recorded_model_for("tierlab analyze"):
        report = analyze(ns.model, ns.run, model_args=model_args_of(ns), data=ns.data, tokenizer=ns.tokenizer,
                         text_field=ns.text_field, batch_size=ns.batch_size, seq_len=ns.seq_len, batches=ns.batches,
                         seed=ns.seed, device=str(resolve_device(ns.device)), causal_mask=ns.causal_mask)
    print(report.text())
    if png is not None:
        written = report.save_heatmaps(png)
        if written is not None:
            print(f"heatmaps: {written}")
    if ns.json:
        Path(ns.json).write_text(report.to_json() + "\n")
    return 0
