"""``tierlab sample``: a continuation of a prompt from a trained run."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import RUN_MODEL_HELP, add_device_option, recorded_model_for

log = logging.getLogger(__name__)
SHOWN_LABELS = 10  # a classify run's line: the likeliest label, then this many labels with their probability


def add_parser(sub: argparse._SubParsersAction) -> None:
    sample = sub.add_parser("sample", help="print a continuation of a prompt from a trained run",
                            description="Load a run's final weights (or a checkpoint) and its tokenizer, and "
                                        "sample a continuation of --prompt.")
    sample.add_argument("run", help="run directory, e.g. runs/NAME")
    sample.add_argument("--prompt", required=True, help="text to continue (an mlm run: text with [MASK] where a "
                                                         "token is to be filled in; a classify run: the text to "
                                                         "label, - reads one text per line from stdin)")
    sample.add_argument("--max-new-tokens", type=int, default=100, metavar="N")
    sample.add_argument("--temperature", type=float, default=None, metavar="T",
                        help="0 picks the likeliest token (default 1; an mlm run: 0)")
    sample.add_argument("--top-k", type=int, default=None, metavar="K", help="sample among the K likeliest tokens")
    sample.add_argument("--seed", type=int, default=None, metavar="S", help="makes sampling repeatable")
    sample.add_argument("--checkpoint", default=None, metavar="PATH", help="use this checkpoint's weights")
    sample.add_argument("--model", default=None, metavar="PATH.py[:factory]", help=RUN_MODEL_HELP)
    add_device_option(sample)


def run(ns: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..run_reader import load, run_config, run_labels
    from ..sample import classify, fill_masks, generate
    from ..train.device import resolve_device

    config = run_config(Path(ns.run))
    objective = config.get("objective") or "clm"
    with recorded_model_for("tierlab sample"):
        model, tokenizer = load(ns.run, ns.checkpoint, device=str(resolve_device(ns.device)), model=ns.model)
    if objective == "classify":
        if not ns.prompt.strip():
            raise UserError("--prompt is empty: a classifier labels a text, and there is none.",
                            "pass the text to label, e.g. --prompt \"a good movie\" (or --prompt - to read "
                            "one text per line from stdin).")
        ignored = [name for name, value in (("--temperature", ns.temperature), ("--top-k", ns.top_k),
                                            ("--seed", ns.seed)) if value is not None]
        if ignored:
            log.warning("%s ignored: a classification run prints every label's probability, it samples nothing",
                        ", ".join(ignored))
        labels = run_labels(Path(ns.run), config, tokenizer)["labels"]
        texts = sys.stdin.read().splitlines() if ns.prompt == "-" else [ns.prompt]
        if ns.prompt == "-":
            blank = sum(1 for t in texts if not t.strip())
            texts = [t for t in texts if t.strip()]
            if blank:
                log.warning("%d blank line(s) of stdin skipped: there is no text to label on them", blank)
            if not texts:
                raise UserError("--prompt - read no text from stdin.",
                                "pipe one text per line into it, e.g. tierlab sample RUN --prompt - < texts.txt.")
        seq_len = int(config["seq_len"])
        cut = sum(1 for t in texts if len(tokenizer.encode(t)) > seq_len)
        if cut:
            log.warning("%d text(s) longer than the run's --seq-len %d tokens: their first %d tokens are labelled, "
                        "as training cut its rows", cut, seq_len, seq_len)
        for text in texts:
            scores = classify(model, tokenizer, text, labels, seq_len, config.get("pool") or "mean")
            shown = "  ".join(f"{label} {p:.3f}" for label, p in scores[:SHOWN_LABELS])
            print(f"{scores[0][0]}\t{shown}" + ("\t" + text if len(texts) > 1 else ""))
    elif objective == "mlm":
        print(fill_masks(model, tokenizer, ns.prompt, 0.0 if ns.temperature is None else ns.temperature, ns.top_k,
                         ns.seed))
    else:
        print(generate(model, tokenizer, ns.prompt, ns.max_new_tokens, 1.0 if ns.temperature is None else
                       ns.temperature, ns.top_k, ns.seed))
    return 0
