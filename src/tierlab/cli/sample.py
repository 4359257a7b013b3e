"""``tierlab sample``: a continuation of a prompt from a trained run."""

from __future__ import annotations

import argparse

from .common import RUN_MODEL_HELP, add_device_option, recorded_model_for


def add_parser(sub: argparse._SubParsersAction) -> None:
    sample = sub.add_parser("sample", help="print a continuation of a prompt from a trained run",
                            description="Load a run's final weights (or a checkpoint) and its tokenizer, and "
                                        "sample a continuation of --prompt.")
    sample.add_argument("run", help="run directory, e.g. runs/NAME")
    sample.add_argument("--prompt", required=True, help="text to continue")
    sample.add_argument("--max-new-tokens", type=int, default=100, metavar="N")
    sample.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 picks the likeliest token")
    sample.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens")
    sample.add_argument("--seed", type=int, default=None, metavar="S", help="makes sampling repeatable")
    sample.add_argument("--checkpoint", default=None, metavar="PATH", help="use this checkpoint's weights")
    sample.add_argument("--model", default=None, metavar="PATH.py[:factory]", help=RUN_MODEL_HELP)
    add_device_option(sample)


def run(ns: argparse.Namespace) -> int:
    from ..run_reader import load
    from ..sample import generate
    from ..train.device import resolve_device

    with recorded_model_for("tierlab sample"):
        model, tokenizer = load(ns.run, ns.checkpoint, device=str(resolve_device(ns.device)), model=ns.model)
    print(generate(model, tokenizer, ns.prompt, ns.max_new_tokens, ns.temperature, ns.top_k, ns.seed))
    return 0
