"""``tierlab train``: its options come from the TrainConfig fields, grouped as config.OPTION_GROUPS says."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from ..config import OPTION_GROUPS, TrainConfig, _type_hints, field_help, load_config_file
from .common import with_model_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a model (the built-in tiny GPT on built-in data by default)",
                           description="Train a causal language model in mixed precision. Any option can also "
                                       "come from --config FILE (TOML or JSON); command-line values win.")
    train.add_argument("--config", metavar="FILE", help="TOML or JSON file of options (e.g. a run's config.json)")
    add_config_options(train)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    helps, hints = field_help(), _type_hints()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(fields) == {n for names in OPTION_GROUPS.values() for n in names}, "every option needs a help group"
    for title, names in OPTION_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            f, flag = fields[name], "--" + name.replace("_", "-")
            if name == "model_args":
                group.add_argument("--model-arg", dest="model_args", action="append", metavar="KEY=VALUE",
                                   default=argparse.SUPPRESS,
                                   help="argument for the model factory (repeatable; VALUE read as JSON when it "
                                        "parses)")
                continue
            types, _ = hints[name]
            if bool in types:
                group.add_argument(flag, dest=name, action="store_true", default=argparse.SUPPRESS, help=helps[name])
                continue
            kind = float if float in types else _whole_or_word if (int in types and str in types) else types[0]
            metavar = {int: "N", float: "X", _whole_or_word: "N|auto"}.get(kind, name.upper())
            default_text = f" (default: {f.default})" if f.default is not None else ""
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, metavar=metavar,
                               help=helps[name] + default_text.replace("%", "%%"))


def _whole_or_word(text: str) -> int | str:
    """A value that is a number or a word (``--batch-size 16`` or ``auto``): the config says which words it takes."""
    return int(text) if text.strip().lstrip("-").isdigit() else text


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The checkpoint's config when resuming, then the file's values, then the command line's."""
    given: dict[str, Any] = {k: v for k, v in vars(ns).items() if k not in ("command", "config")}
    file_values = load_config_file(ns.config) if ns.config else {}
    items = given.pop("model_args", [])
    if given.get("resume", file_values.get("resume")):
        from ..train.resume import layered

        values = layered(file_values, given)
    else:
        values = {**file_values, **given}
    return TrainConfig.from_mapping(with_model_args(values, items), ns.config or "the command line")


def run(ns: argparse.Namespace) -> int:
    from ..launch import torchrun_rank
    from ..progress import console  # imports tqdm only when needed
    from ..train import train
    from ..train.api import Interrupted
    from ..train.checkpoint import latest_checkpoint

    cfg = config_from_args(ns)
    try:
        with console(quiet=cfg.quiet) as progress:
            result = train(None, None, cfg, progress=progress)
    except Interrupted as stop:
        if latest_checkpoint(stop.run_dir) is not None and not torchrun_rank():
            sys.stderr.write(f"stopped at step {stop.step}; continue with: tierlab train --resume {stop.run_dir}\n")
        raise
    if not cfg.quiet and not torchrun_rank():
        s = result.summary
        val = f"{s['final_val_loss']:.4f}" if s["final_val_loss"] is not None else "n/a"
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "n/a"
        tps = f"{s['median_tokens_per_s']:.0f}" if s["median_tokens_per_s"] else "n/a"
        print(f"done: {result.dir}  steps {s['steps']}  loss {loss}  val_loss {val}  precision {s['precision']}  "
              f"skipped {s['skipped_steps']}  {tps} tokens/s")
    return 0
