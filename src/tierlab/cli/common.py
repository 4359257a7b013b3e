"""What several subcommands share: the parser class, common options and their defaults, run-directory and path checks."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..config import OBJECTIVES, POOLS, TrainConfig, load_config_file, parse_model_arg
from ..data.formats import field_suffixes, suffix_list
from ..errors import UserError
from ..run_files import METRICS

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # also after SIGTERM: the run was checkpointed and can be resumed

# One default for every subcommand's --device: the same choice `tierlab train` makes (a CUDA GPU when
# there is one, else the CPU), so sample, validate and analyze run where training ran.
DEVICE_HELP = "auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda or cuda:N"
TEXT_FIELD_HELP = f"with {field_suffixes()} --data: the field or column holding the text (default text)"
RUN_MODEL_HELP = ("the model file to load the run's weights into, built with the run's --model-arg values "
                  "(default: the one the run recorded; for when that file moved)")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage dump
        extra = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments: ") else []
        if extra and all(os.path.exists(x) for x in extra):
            # `--data data/train-*.parquet` unquoted: the shell turned the pattern into several files.
            message += (f" -- {len(extra) + 1} files where one --data was expected (a pattern the shell expanded?). "
                        "Fix: quote the pattern, --data 'data/train-*.parquet', or pass their folder")
        sys.stderr.write(f"tierlab: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USER_ERROR)


def add_device_option(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    parser.add_argument("--device", default=default, help=DEVICE_HELP)


CAUSAL_MASK_HELP = ("a causal mask for every nn.MultiheadAttention / nn.TransformerEncoder(Layer) the model calls "
                    "without one (a bidirectional model trained as a causal LM)")


def add_model_and_data_options(parser: argparse.ArgumentParser) -> None:
    """The model and data options `bench precision` and `search` take (no defaults: --config may set them)."""
    parser.add_argument("--model", help="tiny-gpt (default), gpt2-small, PATH.py[:factory] or a Transformer Builder "
                                        "export's folder")
    parser.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                        help="argument for the model factory (repeatable)")
    parser.add_argument("--causal-mask", action="store_true", help=CAUSAL_MASK_HELP)
    parser.add_argument("--objective", choices=list(OBJECTIVES),
                        help="clm (next token, default), mlm (masked tokens) or classify (a label per row)")
    parser.add_argument("--pool", choices=list(POOLS), help="--objective classify: how [B, T, C] outputs are pooled "
                                                            "(mean, the default; last; first)")
    parser.add_argument("--data", help=f"demo (default); a {suffix_list()} file (also .gz/.bz2/.xz), "
                                       "or a directory of them")
    parser.add_argument("--text-field", dest="text_field", metavar="FIELD", help=TEXT_FIELD_HELP)
    parser.add_argument("--label-field", dest="label_field", metavar="FIELD",
                        help="--objective classify: the field or column holding each row's label (default label)")
    parser.add_argument("--tokenizer", help="byte (default), bpe:VOCAB or PATH/tokenizer.json")


def with_model_args(values: dict[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """``values`` with the command line's --model-arg KEY=VALUE items laid over its model_args."""
    model_args = dict(values.get("model_args") or {})
    model_args.update(parse_model_arg(item) for item in items)
    return {**values, "model_args": model_args}


def model_args_of(ns: argparse.Namespace) -> dict[str, Any]:
    return dict(parse_model_arg(item) for item in ns.model_args)


def options_config(ns: argparse.Namespace, names: tuple[str, ...], defaults: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from --config FILE, then the given options; shared by bench and search."""
    values: dict[str, Any] = dict(defaults)
    if ns.config:
        values.update(load_config_file(ns.config))
    values.update({k: getattr(ns, k) for k in names
                   if getattr(ns, k, None) is not None and getattr(ns, k) is not False})  # given on the command line
    return TrainConfig.from_mapping(with_model_args(values, ns.model_args), ns.config or "the command line")


def run_dirs(paths: Sequence[str]) -> list[Path]:
    dirs = [Path(p) for p in paths]
    for d in dirs:
        if not (d / METRICS).is_file():
            raise UserError(f"{str(d)!r} is not a tierlab run directory (no metrics.jsonl).",
                            "pass directories made by tierlab train, e.g. runs/NAME.")
    return dirs


@contextlib.contextmanager
def recorded_model_for(command: str) -> Iterator[None]:
    """A run's recorded model file that moved: the error's fix names ``command``'s --model option."""
    from ..run_reader import RecordedModelMissing

    try:
        yield
    except RecordedModelMissing as err:
        raise err.for_command(command) from None


def folder_exists(value: str | None, fix: str = "create the folder or pick another path.") -> None:
    """An output PATH whose folder does not exist is a user error now, before any work is done."""
    if value and not Path(value).resolve().parent.is_dir():
        raise UserError(f"Cannot write {value!r}: its folder does not exist.", fix)


def image_path(value: str, name: str, option: str) -> Path:
    """Where an image option's PATH writes: FOLDER/``name`` for a folder (one that exists, or a path ending in /,
    created here), else PATH itself, with .png added when it has no extension (as matplotlib adds it)."""
    path = Path(value)
    if value.endswith(("/", os.sep)) or path.is_dir():
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"Cannot create the folder {value!r} given to {option}: {exc.strerror}.",
                            "pass a folder that can be created, or a file path such as plot.png.") from None
        return path / name
    folder_exists(value, "create the folder, end the path with / to have it created, or pick another path.")
    path = path if path.suffix else path.with_name(path.name + ".png")
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise UserError(f"{option} {value!r}: matplotlib cannot write {path.suffix!r} images.",
                        f"end the name with one of {', '.join('.' + f for f in sorted(formats))} (or give a folder).")
    return path


def positive(ns: argparse.Namespace, *names: str) -> None:
    """Integer options that must be at least 1: one plain error naming the first that is not."""
    for name in names:
        if getattr(ns, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(ns, name)}.",
                            "pass a positive number.")
