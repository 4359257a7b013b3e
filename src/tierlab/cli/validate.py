"""``tierlab validate``: Tier 1 checks and the precision doctor (exit 1 when a check fails).

Its --batch-size 4 and --seq-len 64 are an inspection's shape, not a training run's: the
checks walk every position and run the model a few dozen times, so they stay small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import OBJECTIVES, POOLS
from ..precisions import PORTABLE_NAMES
from .common import add_device_option, model_args_of, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    val = sub.add_parser("validate", help="check that a model is wired correctly and which precision is safe",
                         description="Tier 1 checks (shapes, causality, gradient flow, numerics, initialisation, "
                                     "memory, speed, determinism) and the precision doctor. Exit code 1 when a "
                                     "check fails.")
    val.add_argument("--model", default="tiny-gpt", help="tiny-gpt, PATH.py[:factory] or a Transformer Builder "
                                                         "export's folder (model.py + config.json)")
    val.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE")
    val.add_argument("--causal-mask", action="store_true",
                     help="check the model as `tierlab train --causal-mask` trains it (a causal mask for every "
                          "nn.MultiheadAttention / nn.TransformerEncoder(Layer) it calls without one)")
    val.add_argument("--objective", default="clm", choices=list(OBJECTIVES),
                     help="check the model for this objective (classify: class scores [B, C] or [B, T, C] for "
                          "--num-classes, a padding token added; mlm: a mask token is added, and a masked position must "
                          "read the tokens on both sides instead of only those before it)")
    val.add_argument("--num-classes", type=int, default=2, metavar="C",
                     help="--objective classify: the classes the model must score (passed to a factory with "
                          "num_classes/num_labels/n_classes; default 2)")
    val.add_argument("--pool", default="mean", choices=list(POOLS),
                     help="--objective classify: how [B, T, C] outputs are pooled (as train --pool)")
    val.add_argument("--vocab-size", type=int, default=256, metavar="N",
                     help="passed to a factory with a vocab_size argument (default 256)")
    val.add_argument("--batch-size", type=int, default=4, metavar="N")
    val.add_argument("--seq-len", type=int, default=64, metavar="N")
    val.add_argument("--max-len", type=int, default=None, metavar="N",
                     help="the model's maximum length, when it does not publish one")
    add_device_option(val)
    val.add_argument("--precision", default="fp32", choices=list(PORTABLE_NAMES),
                     help="autocast precision of the speed check (default fp32)")
    val.add_argument("--no-doctor", action="store_true", help="skip the precision doctor (and the fp8 plan)")
    val.add_argument("--fp8-tokens", type=int, default=16 * 1024, metavar="N",
                     help="tokens per micro-batch (batch x seq len) of your training run, for the doctor's plan of "
                          "which linear layers --precision fp8 would convert (default 16384 = 16 x 1024)")
    val.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")


def run(ns: argparse.Namespace) -> int:
    from ..train.device import resolve_device
    from ..validate import validate

    positive(ns, "batch_size", "seq_len", "vocab_size", "num_classes", "fp8_tokens")
    report = validate(ns.model, model_args=model_args_of(ns), vocab_size=ns.vocab_size, batch_size=ns.batch_size,
                      seq_len=ns.seq_len, max_len=ns.max_len, device=str(resolve_device(ns.device)),
                      doctor=not ns.no_doctor, precision=ns.precision, causal_mask=ns.causal_mask,
                      objective=ns.objective, classes=ns.num_classes, pool=ns.pool, fp8_tokens=ns.fp8_tokens)
    print(report.text())
    if ns.json:
        Path(ns.json).write_text(report.to_json() + "\n")
    return 0 if report.ok else 1
