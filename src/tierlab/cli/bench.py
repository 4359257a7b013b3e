"""``tierlab bench precision``: each precision's real training steps on your model and machine, side by side.

Its batch, sequence length and learning rate default to `tierlab train`'s, so that the
figures (and the ``--precision auto`` cache entry they leave) are those of the run you would
start with the same options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import COMPILE_MODES, TrainConfig
from ..errors import UserError
from ..precisions import NAMES
from .common import Parser, add_device_option, add_model_and_data_options, folder_exists, options_config

# Train options `tierlab bench precision` passes on (the rest keep TrainConfig's defaults).
BENCH_TRAIN_OPTIONS = ("model", "causal_mask", "objective", "pool", "data", "text_field", "label_field", "tokenizer", "batch_size", "seq_len", "lr", "device", "seed",
                       "compile", "compile_mode", "chunked_loss", "attention_backend")


def add_parser(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="benchmarks on your model and machine (bench precision)",
                           description="Benchmarks run on your own model and machine.")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=Parser)
    prec = bench_sub.add_parser(
        "precision", help=f"time {', '.join(NAMES[:-1])} and {NAMES[-1]} training steps side by side",
        description="Train one copy of the model per precision from the same weights on the same batches, "
                    "interleaved, and report median step time, tokens/s, speed-up over fp32, peak memory, MFU "
                    "and the validation loss after the same steps.")
    prec.add_argument("--config", metavar="FILE", help="a train config (TOML or JSON) to take the model, data, "
                                                       "batch and sequence length from")
    add_model_and_data_options(prec)
    prec.add_argument("--batch-size", type=int, metavar="N",
                      help=f"sequences per step (default {TrainConfig.batch_size}, as tierlab train)")
    prec.add_argument("--seq-len", type=int, metavar="N",
                      help=f"tokens per sequence (default {TrainConfig.seq_len}, as tierlab train)")
    prec.add_argument("--lr", type=float, metavar="X", help=f"peak learning rate (default {TrainConfig.lr:g}, as tierlab train)")
    prec.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps per precision (default 20)")
    prec.add_argument("--warmup-steps", type=int, default=3, metavar="N",
                      help="untimed steps per precision first (default 3)")
    prec.add_argument("--chunk", type=int, default=5, metavar="N",
                      help="steps each precision runs per interleaved round (default 5)")
    prec.add_argument("--precisions", default=",".join(NAMES), metavar="LIST",
                      help=f"comma-separated subset of {','.join(NAMES)} (default all)")
    prec.add_argument("--compile", action="store_true", help="torch.compile each copy (compile time reported apart)")
    prec.add_argument("--compile-mode", metavar="MODE", help=f"torch.compile mode: {', '.join(COMPILE_MODES[:-1])} "
                                                             f"or {COMPILE_MODES[-1]}")
    prec.add_argument("--chunked-loss", action="store_true", default=None,
                      help="the output layer and cross-entropy by chunks of rows, as tierlab train --chunked-loss")
    prec.add_argument("--attention-backend", metavar="KERNEL", help="auto, cudnn, flash, efficient or math, as "
                                                                    "tierlab train --attention-backend")
    add_device_option(prec, default=None)  # None: --config's, else auto
    prec.add_argument("--seed", type=int, metavar="S", help="seed for the weights and the batches")
    prec.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    prec.add_argument("--png", default="bench-precision.png", metavar="PATH",
                      help="bar chart of the figures (default bench-precision.png; \"\" for none)")
    prec.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    prec.add_argument("--quiet", action="store_true", help="print only the table")


def run(ns: argparse.Namespace) -> int:
    from ..bench import bench_precision
    from ..bench.output import markdown, table, write_json, write_png
    from ..progress import console

    if ns.bench is None:
        raise UserError("tierlab bench needs a benchmark name.", "run `tierlab bench precision --help`.")
    cfg = options_config(ns, BENCH_TRAIN_OPTIONS, {})
    precisions = tuple(p.strip() for p in ns.precisions.split(",") if p.strip())
    for path in (ns.json, ns.png):  # fail before minutes of benchmarking, not after
        folder_exists(path)
    with console(quiet=ns.quiet, stream=sys.stderr):
        result = bench_precision(cfg, steps=ns.steps, warmup_steps=ns.warmup_steps, precisions=precisions,
                                 chunk=ns.chunk)
    print(table(result))
    if ns.markdown:
        print()
        print(markdown(result))
    if ns.json:
        write_json(result, Path(ns.json))
    if ns.png:
        write_png(result, Path(ns.png))
        if not ns.quiet:
            print(f"chart: {ns.png}")
    return 0
