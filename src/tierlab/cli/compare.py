"""``tierlab compare``: train the model and a same-size baseline on the same tokens, and say which is better."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .train import add_config_options, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    compare = sub.add_parser(
        "compare", help="train your model and a baseline of the same size on the same tokens, and compare them",
        description="Train --model and --baseline with one config (data, tokenizer, precision, optimizer, schedule, "
                    "steps and batches), each for --seeds seeds, as ordinary run directories under OUT/NAME; print "
                    "a table (parameters, val loss and perplexity at equal tokens, val loss at equal training time, "
                    "tokens/s, peak memory, latency, skipped steps), a verdict against the seed-to-seed spread, and "
                    "write compare.json, compare.md and compare.png there. Running it again keeps finished runs and "
                    "resumes the others.")
    compare.add_argument("--baseline", required=True, metavar="gpt|llama|PATH.py[:factory]",
                         help="gpt (the built-in GPT) or llama (RMSNorm, rotary positions, SwiGLU), sized to the "
                              "model's non-embedding parameters (within 10%%); or a model file of your own")
    compare.add_argument("--baseline-arg", action="append", default=[], metavar="KEY=VALUE",
                         help="an argument for a baseline model file's factory (repeatable)")
    compare.add_argument("--seeds", type=int, default=1, metavar="N",
                         help="seeds per side (default 1; 3 or more tell a difference from noise)")
    compare.add_argument("--json", default=None, metavar="PATH", help="also write the comparison as JSON here")
    compare.add_argument("--markdown", default=None, metavar="PATH", help="also write the table as Markdown here")
    compare.add_argument("--config", metavar="FILE", help="TOML or JSON file of train options")
    add_config_options(compare)


def run(ns: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic
    from ..compare import compare
    from ..config import parse_model_arg
    from ..track.records import finite_tree
    from ..progress import console, quieted

    options = {k: v for k, v in vars(ns).items() if k not in ("baseline", "baseline_arg", "seeds", "json", "markdown")}
    cfg = config_from_args(argparse.Namespace(**options))
    baseline_args = dict(parse_model_arg(item) for item in ns.baseline_arg)
    with console(quiet=cfg.quiet, stream=sys.stderr), quieted("tierlab.data", "tierlab.models"):
        result = compare(cfg, ns.baseline, baseline_args, ns.seeds)
    table = result.markdown()
    if ns.json:  # the same document as compare.json
        write_json_atomic(Path(ns.json), finite_tree(result.to_dict()))
    if ns.markdown:
        Path(ns.markdown).write_text(table)
    print(table.rstrip())
    if result.equal_seconds and any(math.isnan(v.mean) for v in result.metrics["val_loss_equal_time"].values()):
        print(f"(no evaluation of one side fell within {result.equal_seconds:.3g} s of training: evaluate more "
              "often, --eval-every, to compare at equal time)")
    print(f"runs, compare.json, compare.md, compare.png: {result.out}")
    return 0
