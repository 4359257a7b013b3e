"""The ``tierlab`` command line: parses arguments, sets up what a person sees, maps errors to exit codes.

Exit codes: 0 success, 2 a user error (one plain line, no traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any, Iterator, NoReturn, Sequence

from . import __version__
from .config import (
    OPTION_GROUPS,
    WANDB_MODES,
    TrainConfig,
    _type_hints,
    field_help,
    load_config_file,
    parse_model_arg,
)
from .errors import UserError
from .precisions import NAMES, PORTABLE_NAMES
from .run_files import DASHBOARD, METRICS

log = logging.getLogger("tierlab")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # also after SIGTERM: the run was checkpointed and can be resumed


_TEXT_FIELD_HELP = "with .jsonl/.csv/.tsv/.parquet --data: the field or column holding the text (default text)"
_RUN_MODEL_HELP = ("the model file to load the run's weights into, built with the run's --model-arg values "
                   "(default: the one the run recorded; for when that file moved)")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        extra = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments: ") else []
        if extra and all(os.path.exists(x) for x in extra):
            # `--data data/train-*.parquet` unquoted: the shell turned the pattern into several files.
            message += (f" -- {len(extra) + 1} files where one --data was expected (a pattern the shell expanded?). "
                        "Fix: quote the pattern, --data 'data/train-*.parquet', or pass their folder")
        sys.stderr.write(f"tierlab: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tierlab", description="Check a hand-built PyTorch transformer and train it fast "
                                                 "and safely in mixed precision.")
    parser.add_argument("--version", action="version", version=f"tierlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    train = sub.add_parser("train", help="train a model (the built-in tiny GPT on built-in data by default)",
                           description="Train a causal language model in mixed precision. Any option can also "
                                       "come from --config FILE (TOML or JSON); command-line values win.")
    train.add_argument("--config", metavar="FILE", help="TOML or JSON file of options (e.g. a run's config.json)")
    _add_config_options(train)
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
    sample.add_argument("--model", default=None, metavar="PATH.py[:factory]", help=_RUN_MODEL_HELP)
    sample.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    val = sub.add_parser("validate", help="check that a model is wired correctly and which precision is safe",
                         description="Tier 1 checks (shapes, causality, gradient flow, numerics, initialisation, "
                                     "memory, speed, determinism) and the precision doctor. Exit code 1 when a "
                                     "check fails.")
    val.add_argument("--model", default="tiny-gpt", help="tiny-gpt or PATH.py[:factory]")
    val.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE")
    val.add_argument("--vocab-size", type=int, default=256, metavar="N",
                     help="passed to a factory with a vocab_size argument (default 256)")
    val.add_argument("--batch-size", type=int, default=4, metavar="N")
    val.add_argument("--seq-len", type=int, default=64, metavar="N")
    val.add_argument("--max-len", type=int, default=None, metavar="N",
                     help="the model's maximum length, when it does not publish one")
    val.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    val.add_argument("--precision", default="fp32", choices=list(PORTABLE_NAMES),
                     help="autocast precision of the speed check (default fp32)")
    val.add_argument("--no-doctor", action="store_true", help="skip the precision doctor")
    val.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    report = sub.add_parser("report", help="write dashboard.png for one or several runs and print a summary table",
                            description="Plot loss, learning rate, gradient norm, loss scale (with skipped steps), "
                                        "throughput and validation accuracy; several runs are overlaid.")
    report.add_argument("runs", nargs="+", help="run directories")
    report.add_argument("--out", default=None, metavar="PNG",
                        help="where to write the image (default: RUN/dashboard.png for one run, ./dashboard.png "
                             "for several)")
    bench = sub.add_parser("bench", help="benchmarks on your model and machine (bench precision)",
                           description="Benchmarks run on your own model and machine.")
    bench_sub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=_Parser)
    prec = bench_sub.add_parser(
        "precision", help="time fp32, tf32, bf16 and fp16 training steps side by side",
        description="Train one copy of the model per precision from the same weights on the same batches, "
                    "interleaved, and report median step time, tokens/s, speed-up over fp32, peak memory, MFU "
                    "and the validation loss after the same steps.")
    prec.add_argument("--config", metavar="FILE", help="a train config (TOML or JSON) to take the model, data, "
                                                       "batch and sequence length from")
    _add_model_and_data_options(prec)
    prec.add_argument("--batch-size", type=int, metavar="N", help="sequences per step (default 8)")
    prec.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence (default 256)")
    prec.add_argument("--lr", type=float, metavar="X", help="peak learning rate (default 3e-4)")
    prec.add_argument("--steps", type=int, default=20, metavar="N", help="timed steps per precision (default 20)")
    prec.add_argument("--warmup-steps", type=int, default=3, metavar="N",
                      help="untimed steps per precision first (default 3)")
    prec.add_argument("--chunk", type=int, default=5, metavar="N",
                      help="steps each precision runs per interleaved round (default 5)")
    prec.add_argument("--precisions", default=",".join(NAMES), metavar="LIST",
                      help=f"comma-separated subset of {','.join(NAMES)} (default all)")
    prec.add_argument("--compile", action="store_true", help="torch.compile each copy (compile time reported apart)")
    prec.add_argument("--compile-mode", metavar="MODE",
                      help="torch.compile mode: default, max-autotune-no-cudagraphs, max-autotune or reduce-overhead")
    prec.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    prec.add_argument("--seed", type=int, metavar="S", help="seed for the weights and the batches")
    prec.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    prec.add_argument("--png", default="bench-precision.png", metavar="PATH",
                      help="bar chart of the figures (default bench-precision.png; \"\" for none)")
    prec.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    prec.add_argument("--quiet", action="store_true", help="print only the table")
    search = sub.add_parser(
        "search", help="Optuna hyperparameter search whose trials are real training runs",
        description="Find a good learning rate, warm-up, weight decay and batch size (or any options, with "
                    "--space) with Optuna: each trial is a tierlab training run, bad trials are pruned early, the "
                    "study lives in a database (SQLite in --out by default) so re-running resumes it and several "
                    "workers can share it. Writes best.toml, trials.csv and plots to --out.")
    search.add_argument("--config", metavar="FILE", help="a train config (TOML or JSON) for everything not searched")
    _add_model_and_data_options(search)
    for flag, kind, text in (("--precision", str, "precision of every trial (default auto)"),
                             ("--device", str, "device of every trial (default auto)"),
                             ("--seq-len", int, "tokens per sequence (default 128)"),
                             ("--eval-batches", int, "validation batches per evaluation (default 20)")):
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
    search.add_argument("--quiet", action="store_true", help="print only the summary")
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
    ana.add_argument("run_dir", nargs="?", default=None, metavar="RUN",
                     help="a run directory, as in `tierlab sample RUN` (the same as --run RUN)")
    ana.add_argument("--run", default=None, metavar="RUN", help="a run directory: analyse its trained weights on its "
                                                              "own validation data")
    ana.add_argument("--data", default="demo", help="corpus for an untrained model (default demo)")
    ana.add_argument("--text-field", default="text", metavar="FIELD", help=_TEXT_FIELD_HELP)
    ana.add_argument("--tokenizer", default="byte", help="tokenizer for --data (default byte)")
    ana.add_argument("--batch-size", type=int, default=8, metavar="N")
    ana.add_argument("--seq-len", type=int, default=None, metavar="N",
                     help="tokens per sequence (default: the run's, else min(128, the model's positions))")
    ana.add_argument("--batches", type=int, default=2, metavar="N", help="validation batches analysed (default 2)")
    ana.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ana.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random replacements")
    ana.add_argument("--png", default="attention.png", metavar="PATH",
                     help="attention heatmaps (default attention.png; \"\" for none)")
    ana.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    export = sub.add_parser("export", help="export a trained run as safetensors, TorchScript or ONNX, with a parity "
                                           "check", description="Write the run's model in a deployable form, with "
                            "its tokenizer and a README on loading it, after checking that the export's logits match "
                            "the model's on real validation batches of the run's data (exit 2, nothing written, when "
                            "they do not or the model cannot be exported).")
    export.add_argument("run", help="run directory, e.g. runs/NAME")
    export.add_argument("--format", required=True, choices=["safetensors", "torchscript", "onnx"])
    export.add_argument("--model", default=None, metavar="PATH.py[:factory]", help=_RUN_MODEL_HELP)
    export.add_argument("--out", default=None, metavar="DIR", help="where to write it (default RUN/export-FORMAT)")
    export.add_argument("--batches", type=int, default=4, metavar="N",
                        help="validation batches the parity check compares (default 4)")
    export.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")
    sync = sub.add_parser("sync", help="replay a run's local records into a tracker (e.g. after an outage)",
                          description="Send every record of metrics.jsonl and events.jsonl to W&B or TensorBoard.")
    sync.add_argument("run", help="run directory")
    sync.add_argument("--to", required=True, choices=["wandb", "tensorboard"])
    sync.add_argument("--wandb", dest="project", default=None, metavar="PROJECT",
                      help="W&B project (default: the run's --wandb, else tierlab)")
    sync.add_argument("--wandb-entity", default=None)
    sync.add_argument("--wandb-mode", default=None, choices=WANDB_MODES)
    return parser


def _add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """The model and data options `bench precision` and `search` take (no defaults: --config may set them)."""
    parser.add_argument("--model", help="tiny-gpt (default), gpt2-small or PATH.py[:factory]")
    parser.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                        help="argument for the model factory (repeatable)")
    parser.add_argument("--data", help="demo (default); a .txt, .jsonl, .csv, .tsv or .parquet file (also .gz/.bz2/.xz), "
                                          "or a directory of them")
    parser.add_argument("--text-field", dest="text_field", metavar="FIELD", help=_TEXT_FIELD_HELP)
    parser.add_argument("--tokenizer", help="byte (default), bpe:VOCAB or PATH/tokenizer.json")


# Train options `tierlab bench precision` passes on, and its own defaults for them.
_BENCH_TRAIN_OPTIONS = ("model", "data", "text_field", "tokenizer", "batch_size", "seq_len", "lr", "device", "seed",
                        "compile", "compile_mode")
_BENCH_DEFAULTS = {"batch_size": 8, "seq_len": 256, "lr": 3e-4}

def _add_config_options(parser: argparse.ArgumentParser) -> None:
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
            kind = float if float in types else types[0]
            metavar = {int: "N", float: "X"}.get(kind, name.upper())
            default_text = f" (default: {f.default})" if f.default is not None else ""
            group.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, metavar=metavar,
                               help=helps[name] + default_text.replace("%", "%%"))


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The checkpoint's config when resuming, then the file's values, then the command line's."""
    given: dict[str, Any] = {k: v for k, v in vars(ns).items() if k not in ("command", "config")}
    file_values = load_config_file(ns.config) if ns.config else {}
    items = given.pop("model_args", [])
    if given.get("resume", file_values.get("resume")):
        from .train.resume import layered

        values = layered(file_values, given)
    else:
        values = {**file_values, **given}
    return TrainConfig.from_mapping(_with_model_args(values, items), ns.config or "the command line")


def _with_model_args(values: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """``values`` with the command line's --model-arg KEY=VALUE items laid over its model_args."""
    model_args = dict(values.get("model_args") or {})
    model_args.update(parse_model_arg(item) for item in items)
    return {**values, "model_args": model_args}


def main(argv: Sequence[str] | None = None) -> int:
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        # Under torchrun: an unexpected exception is also written where torchrun reads it,
        # so its failure report shows this rank's error, not "To enable traceback see ...".
        from torch.distributed.elastic.multiprocessing.errors import record

        code = record(_main)(argv)
        if code:
            _leave_job(code)
        return code
    return _main(argv)


def _leave_job(code: int) -> NoReturn:
    """End a torchrun worker that stops with an error (exit 2, 3 or 130) without the interpreter's teardown.

    After an error the ranks leave at different moments, and the process group's
    background threads, torn down by a normal exit, can abort the process ("terminate
    called without an active exception", SIGABRT): torchrun then reports a crash instead
    of tierlab's exit code (4 in 36 runs of a two-rank user error on a busy machine).
    Everything tierlab writes is closed by now (the run's ``finally``); the streams and
    log handlers are flushed here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None) -> int:
    from .launch import torchrun_rank

    rank = torchrun_rank()
    who = f"tierlab (rank {rank})" if rank else "tierlab"
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    from .train.guards import Diverged

    if ns.command in ("bench", "search") and rank is not None:
        sys.stderr.write(f"{who}: error: tierlab {ns.command} runs in one process, not under torchrun. Fix: run "
                         f"`tierlab {ns.command} ...` directly (on a GPU machine it uses one GPU).\n")
        return EXIT_USER_ERROR
    commands = {"train": _train, "sample": _sample, "validate": _validate, "report": _report, "sync": _sync,
                "bench": _bench, "search": _search, "export": _export,
                "analyze": _analyze}
    try:
        return commands[ns.command](ns)
    except UserError as err:
        sys.stderr.write(f"{who}: error: {err}\n")
        return EXIT_USER_ERROR
    except Diverged as err:
        sys.stderr.write(f"{who}: {err}\n")
        return Diverged.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"{who}: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _train(ns: argparse.Namespace) -> int:
    from .launch import torchrun_rank
    from .progress import console  # imports tqdm only when needed
    from .train import train
    from .train.api import Interrupted
    from .train.checkpoint import latest_checkpoint

    cfg = config_from_args(ns)
    try:
        with console(quiet=cfg.quiet) as progress:
            run = train(None, None, cfg, progress=progress)
    except Interrupted as stop:
        if latest_checkpoint(stop.run_dir) is not None and not torchrun_rank():
            sys.stderr.write(f"stopped at step {stop.step}; continue with: tierlab train --resume {stop.run_dir}\n")
        raise
    if not cfg.quiet and not torchrun_rank():
        s = run.summary
        val = f"{s['final_val_loss']:.4f}" if s["final_val_loss"] is not None else "n/a"
        loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "n/a"
        tps = f"{s['median_tokens_per_s']:.0f}" if s["median_tokens_per_s"] else "n/a"
        print(f"done: {run.dir}  steps {s['steps']}  loss {loss}  val_loss {val}  precision {s['precision']}  "
              f"skipped {s['skipped_steps']}  {tps} tokens/s")
    return 0


def _sample(ns: argparse.Namespace) -> int:
    from .sample import generate, load
    from .train.device import resolve_device

    with _recorded_model_for("tierlab sample"):
        model, tokenizer = load(ns.run, ns.checkpoint, device=str(resolve_device(ns.device)), model=ns.model)
    text = generate(model, tokenizer, ns.prompt, ns.max_new_tokens, ns.temperature, ns.top_k, ns.seed)
    print(text)
    return 0


@contextlib.contextmanager
def _recorded_model_for(command: str) -> Iterator[None]:
    """A run's recorded model file that moved: the error's fix names ``command``'s --model option."""
    from .sample import RecordedModelMissing

    try:
        yield
    except RecordedModelMissing as err:
        raise err.for_command(command) from None


def _run_dirs(paths: Sequence[str]) -> list:
    from pathlib import Path

    dirs = [Path(p) for p in paths]
    for d in dirs:
        if not (d / METRICS).is_file():
            raise UserError(f"{str(d)!r} is not a tierlab run directory (no metrics.jsonl).",
                            "pass directories made by tierlab train, e.g. runs/NAME.")
    return dirs


def _report(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .track.plots import save_dashboard, summary_table

    dirs = _run_dirs(ns.runs)
    if ns.out:
        out = _image_path(ns.out, DASHBOARD, "--out")
    else:
        out = dirs[0] / DASHBOARD if len(dirs) == 1 else Path(DASHBOARD)
    save_dashboard(dirs, out)
    print(summary_table(dirs))
    print(f"dashboard: {out}")
    return 0


def _folder_exists(value: str | None, fix: str = "create the folder or pick another path.") -> None:
    """An output PATH whose folder does not exist is a user error now, before any work is done."""
    from pathlib import Path

    if value and not Path(value).resolve().parent.is_dir():
        raise UserError(f"Cannot write {value!r}: its folder does not exist.", fix)


def _image_path(value: str, name: str, option: str) -> Path:
    """Where an image option's PATH writes: FOLDER/``name`` for a folder (one that exists, or a path ending in /,
    created here), else PATH itself, with .png added when it has no extension (as matplotlib adds it)."""
    from pathlib import Path

    path = Path(value)
    if value.endswith(("/", os.sep)) or path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the folder {value!r} given to {option}: {exc.strerror}.",
                            "pass a folder that can be created, or a file path such as plot.png.") from None
        return path / name
    _folder_exists(value, "create the folder, end the path with / to have it created, or pick another path.")
    path = path if path.suffix else path.with_name(path.name + ".png")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise UserError(f"{option} {value!r}: matplotlib cannot write {path.suffix!r} images.",
                        f"end the name with one of {', '.join('.' + f for f in sorted(formats))} (or give a folder).")
    return path


def _analyze(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .analyze import analyze
    from .train.device import resolve_device

    if ns.run_dir is not None:  # `tierlab analyze runs/x`, like sample and export
        if ns.run is not None and Path(ns.run).resolve() != Path(ns.run_dir).resolve():
            raise UserError(f"Two runs given: {ns.run_dir!r} and --run {ns.run!r}.", "name one run.")
        ns.run = ns.run_dir
    if ns.run is not None:
        _run_dirs([ns.run])
    _folder_exists(ns.json)
    png = _image_path(ns.png, "attention.png", "--png") if ns.png else None
    model_args = dict(parse_model_arg(item) for item in ns.model_args)
    with _recorded_model_for("tierlab analyze"):
        report = analyze(ns.model, ns.run, model_args=model_args, data=ns.data, tokenizer=ns.tokenizer,
                         text_field=ns.text_field,
                         batch_size=ns.batch_size, seq_len=ns.seq_len, batches=ns.batches, seed=ns.seed,
                         device=str(resolve_device(ns.device)))
    print(report.text())
    if png is not None:
        written = report.save_heatmaps(png)
        if written is not None:
            print(f"heatmaps: {written}")
    if ns.json:
        Path(ns.json).write_text(report.to_json() + "\n")
    return 0


def _export(ns: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from .export import export_run

    if ns.batches < 1:
        raise UserError("--batches must be at least 1.", "pass e.g. --batches 4.")
    (run_dir,) = _run_dirs([ns.run])
    with _recorded_model_for("tierlab export"):
        result = export_run(run_dir, ns.format, ns.out, ns.batches, model=ns.model)
    print(result.text())
    if ns.json:
        Path(ns.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


def _sync(ns: argparse.Namespace) -> int:
    from .track.sync import sync_run

    (run_dir,) = _run_dirs([ns.run])
    count = sync_run(run_dir, ns.to, ns.project, ns.wandb_entity, ns.wandb_mode)
    print(f"synced {count['metrics']} metric records and {count['events']} events of {run_dir} to {ns.to}")
    return 0


def _validate(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .train.device import resolve_device
    from .validate import validate

    for name in ("batch_size", "seq_len", "vocab_size"):
        if getattr(ns, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1.", "pass a positive number.")
    model_args = dict(parse_model_arg(item) for item in ns.model_args)
    report = validate(ns.model, model_args=model_args, vocab_size=ns.vocab_size, batch_size=ns.batch_size,
                      seq_len=ns.seq_len, max_len=ns.max_len, device=str(resolve_device(ns.device)),
                      doctor=not ns.no_doctor, precision=ns.precision)
    print(report.text())
    if ns.json:
        Path(ns.json).write_text(report.to_json() + "\n")
    return 0 if report.ok else 1


def _options_config(ns: argparse.Namespace, names: tuple[str, ...], defaults: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from --config FILE, then the given options; shared by bench and search."""
    values: dict[str, Any] = dict(defaults)
    if ns.config:
        values.update(load_config_file(ns.config))
    values.update({k: getattr(ns, k) for k in names
                   if getattr(ns, k, None) is not None and getattr(ns, k) is not False})  # given on the command line
    return TrainConfig.from_mapping(_with_model_args(values, ns.model_args), ns.config or "the command line")


_SEARCH_TRAIN_OPTIONS = ("model", "data", "text_field", "tokenizer", "precision", "device", "seq_len", "eval_batches")


def _search(ns: argparse.Namespace) -> int:
    from .progress import console, quieted
    from .search import SearchConfig, load_space, run_search
    from .search.outputs import summary_text
    from .search.space import DEFAULT_SPACE

    base = _options_config(ns, _SEARCH_TRAIN_OPTIONS, {})
    space = load_space(ns.space) if ns.space else DEFAULT_SPACE
    cfg = SearchConfig(base=base, trials=ns.trials, steps_per_trial=ns.steps_per_trial, out=ns.out,
                       storage=ns.storage, study=ns.study, pruner=ns.pruner, seed=ns.seed, space=space,
                       heartbeat=ns.heartbeat)
    # One line per trial from the search; the trials' own training lines are in their run directories.
    with console(quiet=ns.quiet, stream=sys.stderr), quieted("tierlab.train", "tierlab.metrics", "tierlab.data",
                                                              "tierlab.models"):
        result = run_search(cfg)
    print(summary_text(result))
    return 0


def _bench(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench import bench_precision
    from .bench.output import markdown, table, write_json, write_png
    from .progress import console

    if ns.bench is None:
        raise UserError("tierlab bench needs a benchmark name.", "run `tierlab bench precision --help`.")
    cfg = _options_config(ns, _BENCH_TRAIN_OPTIONS, _BENCH_DEFAULTS)
    precisions = tuple(p.strip() for p in ns.precisions.split(",") if p.strip())
    for path in (ns.json, ns.png):  # fail before minutes of benchmarking, not after
        _folder_exists(path)
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
