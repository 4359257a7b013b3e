"""``tierlab search``: an Optuna study whose trials are real tierlab training runs."""

from __future__ import annotations

import argparse
import sys

from ..config import TrainConfig
from .common import add_model_and_data_options, options_config

# Train options `tierlab search` passes on to every trial.
SEARCH_TRAIN_OPTIONS = ("model", "causal_mask", "objective", "pool", "data", "text_field", "label_field", "tokenizer", "precision", "device", "seq_len",
                        "eval_batches", "early_stop", "early_stop_delta")


def add_parser(sub: argparse._SubParsersAction) -> None:
    search = sub.add_parser(
        "search", help="Optuna hyperparameter search whose trials are real training runs",
        description="Find a good learning rate, warm-up, weight decay and batch size (or any options, with "
                    "--space) with Optuna: each trial is a tierlab training run, bad trials are pruned early, the "
                    "study lives in a database (SQLite in --out by default) so re-running resumes it and several "
                    "workers can share it. Writes best.toml, trials.csv and plots to --out.")
    search.add_argument("--config", metavar="FILE", help="a train config (TOML or JSON) for everything not searched")
    add_model_and_data_options(search)
    for flag, kind, text in (("--precision", str, f"precision of every trial (default {TrainConfig.precision})"),
                             ("--device", str, f"device of every trial (default {TrainConfig.device})"),
                             ("--seq-len", int, f"tokens per sequence (default {TrainConfig.seq_len})"),
                             ("--eval-batches", int,
                              f"validation batches per evaluation (default {TrainConfig.eval_batches})"),
                             ("--early-stop", int, "stop a trial after this many of its evaluations without "
                                                   "improvement (see tierlab train --early-stop; default off)"),
                             ("--early-stop-delta", float, "--early-stop: the least fall of val_loss that counts as "
                                                           "an improvement (default 0)")):
        search.add_argument(flag, type=kind, help=text)
    search.add_argument("--trials", type=int, default=30, metavar="N",
                        help="trials the study should hold in all (default 30); re-running adds the missing ones")
    search.add_argument("--steps-per-trial", type=int, default=500, metavar="N", help="training steps per trial")
    search.add_argument("--space", metavar="FILE", help="search space in TOML (default: lr, warmup_fraction, "
                                                        "weight_decay, batch_size)")
    search.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                        help="stop unpromising trials early (default median)")
    search.add_argument("--out", default="search", metavar="DIR", help="search directory (default ./search)")
    search.add_argument("--storage", metavar="URL", help="Optuna storage URL (default sqlite:///DIR/study.db); "
                                                         "e.g. postgresql://user:pw@host/db for several machines")
    search.add_argument("--study", default="tierlab", metavar="NAME", help="study name in the storage")
    search.add_argument("--seed", type=int, metavar="S", help="makes the sampler's suggestions repeatable")
    search.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                        help="a running trial's worker records that it is alive this often (default 60); a trial "
                             "silent for twice that (worker killed, machine lost) is failed and replaced")
    search.add_argument("--storage-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="seconds to connect to a database server (--storage URL) before giving up with an error "
                             "(default 10)")
    search.add_argument("--quiet", action="store_true", help="print only the summary")


def run(ns: argparse.Namespace) -> int:
    from ..progress import console, quieted
    from ..search import SearchConfig, load_space, run_search
    from ..search.outputs import summary_text
    from ..search.space import DEFAULT_SPACE

    base = options_config(ns, SEARCH_TRAIN_OPTIONS, {})
    space = load_space(ns.space) if ns.space else DEFAULT_SPACE
    cfg = SearchConfig(base=base, trials=ns.trials, steps_per_trial=ns.steps_per_trial, out=ns.out,
                       storage=ns.storage, study=ns.study, pruner=ns.pruner, seed=ns.seed, space=space,
                       heartbeat=ns.heartbeat, storage_timeout=ns.storage_timeout)
    # One line per trial from the search; the trials' own training lines are in their run directories.
    with console(quiet=ns.quiet, stream=sys.stderr), quieted("tierlab.train", "tierlab.metrics", "tierlab.data",
                                                              "tierlab.models"):
        result = run_search(cfg)
    print(summary_text(result))
    return 0
