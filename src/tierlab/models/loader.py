"""Loading a user's model file and reading logits from whatever the model returns."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import os
import sys
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ModelError
from . import gist
from .builder import find_class, find_export
from .gist import is_gist
from .causal_mask import add_causal_mask

log = logging.getLogger(__name__)

BUILTIN = "tiny-gpt"
# Built-in models: name -> arguments (``--model-arg`` still overrides); TinyGPT sizes, and the Llama-style one.
CLASS_ARGUMENTS = ("num_classes", "num_labels", "n_classes")  # a factory's argument for the number of classes
PRESETS: dict[str, dict[str, Any]] = {
    "tiny-gpt": {},
    # GPT-2 small: 12 layers x 12 heads x 768, 1024 positions, GPT-2's 50,257-token vocabulary
    # rounded up to 50,304 (a multiple of 64, as nanoGPT does for faster matmuls): 124 M parameters.
    "gpt2-small": {"n_layer": 12, "n_head": 12, "d_model": 768, "max_seq_len": 1024, "vocab_size": 50304},
    # Another architecture, the baseline of `tierlab compare --baseline llama`: RMSNorm, rotary positions, SwiGLU.
    "llama": {},
}
# What load_model knew about each model it built (see vocab_fix): where from, whether its factory takes a
# vocab_size argument, and the vocab_size it was given.
_BUILT: "weakref.WeakKeyDictionary[nn.Module, tuple[str, bool, Any]]" = weakref.WeakKeyDictionary()
# The sequence length a Builder export's config.json declares for the model built from it.
_DECLARED_MAX_LEN: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
# Attribute names under which models (and Hugging Face configs) publish their context length.
_MAX_LEN_ATTRS = ("max_seq_len", "block_size", "max_len", "max_position_embeddings", "n_positions",
                  "n_ctx", "context_length", "seq_len")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``path.py[:factory]`` (or an export's ``DIR[:Class]``) -> (path, factory or None)."""
    if ":" in spec:
        left, right = spec.rsplit(":", 1)
        if right.isidentifier() and (left.endswith(".py") or Path(left).is_dir()):
            return Path(left), right
    return Path(spec), None


def absolute_spec(spec: str) -> str:
    """``spec`` with an existing model file's path made absolute (``/abs/path.py[:factory]``), a gist pinned to its
    revision (``gist:ID@REVISION``); anything else as given."""
    if is_gist(spec):
        from ..data.cache import default_cache_dir

        return gist.pinned(spec, default_cache_dir())
    path, factory = split_spec(spec)
    if (path.suffix == ".py" and path.is_file()) or (spec not in PRESETS and path.is_dir()):  # (a Builder export)
        return os.path.abspath(path) + (f":{factory}" if factory else "")
    return spec


def load_model(spec: str, model_args: dict[str, Any], vocab_size: int, causal_mask: bool = False,
               classes: int | None = None) -> nn.Module:
    """Build the model named by ``spec`` with ``model_args``.

    ``vocab_size`` (the tokenizer's) is passed to a factory that accepts a ``vocab_size``
    argument the user did not set, so a model sized for the data needs no extra flag.  A
    Transformer Builder export (a folder, or a model.py with its config.json beside it) is
    built from its config's values first.  ``causal_mask``: see :mod:`.causal_mask`.
    ``classes`` (``--objective classify``) is passed the same way, as the factory's
    ``num_classes``, ``num_labels`` or ``n_classes``.
    """
    preset: dict[str, Any] = {}
    export = None
    if spec in PRESETS:
        from .llama import Llama
        from .tiny_gpt import TinyGPT
        factory: Callable[..., Any] = Llama if spec == "llama" else TinyGPT
        where = f"the built-in {spec}"
        preset = PRESETS[spec]
    else:
        path, name = (gist_folder(spec), None) if is_gist(spec) else split_spec(spec)
        export = find_export(path)  # a Transformer Builder export: model.py and its config.json
        if export is not None:
            path = export.model_file
        if path.suffix != ".py":
            raise ModelError(f"--model {spec!r} is neither a built-in model ({', '.join(PRESETS)}), a Python file nor "
                             "a folder holding model.py.",
                             "pass tiny-gpt, the path of a .py file that defines build_model() or Model, or a "
                             "Transformer Builder export's folder (model.py + config.json).")
        if not path.is_file():
            raise ModelError(f"Model file {str(path)!r} does not exist.", "check the path given to --model.")
        module = _import_file(path)
        if export is not None and name is None and (export.model_name or not _has_default_factory(module)):
            factory = find_class(module, export)
        else:
            factory = _find_factory(module, path, name)
        where = f"{path}:{getattr(factory, '__name__', name)}"
    accepted = _accepted_kwargs(factory)
    from_config = export.arguments_for(accepted) if export is not None else {}
    if from_config:
        log.info("building %s with %s from %s", where, ", ".join(sorted(from_config)), export.config_file)
    kwargs = {**preset, **from_config, **model_args}
    if "vocab_size" not in kwargs and accepted is not None and "vocab_size" in accepted:
        kwargs["vocab_size"] = vocab_size
        log.info("passing vocab_size=%d (the tokenizer's) to %s", vocab_size, where)
    if classes is not None and accepted is not None:
        name = next((n for n in CLASS_ARGUMENTS if n in accepted), None)
        if name is not None and not any(n in kwargs for n in CLASS_ARGUMENTS):
            kwargs[name] = classes
            log.info("passing %s=%d (the data's classes) to %s", name, classes, where)
    if accepted is not None:
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise ModelError(f"{where} does not accept the argument(s) {', '.join(unknown)}.",
                             f"it accepts: {', '.join(sorted(accepted)) or 'no arguments'}.")
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code failed: say where, without our traceback
        raise ModelError(f"Building the model with {where}({_fmt_kwargs(kwargs)}) raised "
                         f"{type(exc).__name__}: {exc}{_user_frame(exc)}.",
                         "fix the model code or the --model-arg values.") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{where} returned {type(model).__name__}, not a torch.nn.Module.",
                         "make the factory return the model instance.")
    adapt(model, causal_mask)
    with contextlib.suppress(TypeError):  # (a module class with __eq__ and no __hash__ cannot be a key)
        _BUILT[model] = (where, accepted is None or "vocab_size" in accepted, kwargs.get("vocab_size"))
        if export is not None and export.max_len is not None:
            _DECLARED_MAX_LEN[model] = export.max_len
    return model


def adapt(model: nn.Module, causal_mask: bool = False) -> nn.Module:
    """What every command does to a model before using it: its forward checked, every position's logits, a mask."""
    check_forward_signature(model)
    every_position(model)
    if causal_mask:
        add_causal_mask(model)
    return model


def check_forward_signature(model: nn.Module) -> None:
    """Refuse a forward that needs more than the token ids: tierlab calls ``model(input_ids)``.

    Some Transformer Builder exports have such a forward -- ``forward(self, input_0_tokens,
    mhsa_0_output, residual_0_output)``, intermediate outputs turned into parameters -- which
    no caller can satisfy; said here, before a probe fails with a bare TypeError.
    """
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    required = [p.name for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                              p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if len(required) <= 1:
        return
    extra = required[1:]
    raise ModelError(f"{type(model).__name__}.forward({', '.join(required)}) requires {len(extra)} argument(s) besides "
                     f"the token ids: {', '.join(extra)}; tierlab calls model(input_ids) with the token ids alone.",
                     f"compute {', '.join(extra)} inside forward from the layers before them (they are intermediate "
                     f"outputs: a known bug of some Transformer Builder exports), or give them a default "
                     f"({extra[0]}=None) if forward can do without them.")


def vocab_fix(model: nn.Module, vocab_size: int) -> str:
    """The fix for a model with fewer outputs than the tokenizer's ``vocab_size`` tokens (no final period).

    ``--model-arg vocab_size=N`` only where the model's factory takes a ``vocab_size``
    argument; for any other model (a factory without one, an in-memory module) what must
    change is the model itself.
    """
    try:
        where, takes_vocab, given = _BUILT.get(model, (None, False, None))
    except TypeError:
        where, takes_vocab, given = None, False, None
    if takes_vocab and (given is None or given < vocab_size):
        return (f"build the model with vocab_size >= {vocab_size} (e.g. --model-arg vocab_size={vocab_size}) "
                "or use a smaller tokenizer")
    if takes_vocab:  # it was given a large enough vocab_size and still returns fewer outputs
        return (f"{where} was given vocab_size={given} but its output is narrower: make its output layer (and "
                f"token embedding) vocab_size wide, at least {vocab_size}, or use a smaller tokenizer")
    factory = f" ({where} takes no vocab_size argument)" if where else ""
    return (f"make the model's output layer and its token embedding at least {vocab_size} wide (the tokenizer's "
            f"vocabulary size){factory}, or use a smaller tokenizer")


def every_position(model: nn.Module) -> bool:
    """Make ``model(input_ids)`` return every position's logits for a nanoGPT-style model; True if it had to.

    nanoGPT's ``forward(idx, targets=None)`` returns only the last position's logits when no
    targets are given (a shortcut for generation) and every position's with targets. Such a
    model gets a forward pre-hook that passes ``targets`` (zeros) when the caller gives none:
    every tierlab command then sees [B, T, V] (the model's own loss is computed and ignored),
    and the module itself -- its class, parameter names, checkpoints -- is unchanged. A
    model without a ``targets`` parameter costs nothing here: no forward is run.
    """
    if getattr(model, "_tierlab_every_position", None) is not None:
        return True
    try:
        if "targets" not in inspect.signature(model.forward).parameters:
            return False
    except (TypeError, ValueError):
        return False
    if _positions_returned(model) != 1:
        return False
    handle = model.register_forward_pre_hook(_pass_targets, with_kwargs=True)
    if _positions_returned(model) != 2:  # targets did not bring the positions back: leave the model as it was
        handle.remove()
        return False
    model._tierlab_every_position = handle  # remove() it to give the model back its own behaviour
    log.info("%s returns only the last position's logits without targets (nanoGPT's generation shortcut): "
             "tierlab passes targets to get every position's", type(model).__name__)
    return True


def _pass_targets(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if len(args) == 1 and "targets" not in kwargs:
        # Any valid ids do (the model's loss is ignored); contiguous, as nanoGPT's targets.view(-1) needs.
        return args, {**kwargs, "targets": torch.zeros_like(args[0], memory_format=torch.contiguous_format)}
    return None


def _positions_returned(model: nn.Module) -> int | None:
    """How many positions of a [1, 2] input the model returns logits for (None when the forward fails)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with eval_mode(model), torch.no_grad():
            logits = extract_logits(model(torch.zeros(1, 2, dtype=torch.long, device=device)))
    except Exception:  # noqa: BLE001 - the set-up probe of each command reports a failing forward properly
        return None
    return logits.shape[1] if logits.dim() == 3 else None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off) for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _import_file(path: Path) -> Any:
    module_name = f"tierlab_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"Cannot import {str(path)!r} as Python.", "check that it is a Python source file.")
    module = importlib.util.module_from_spec(spec)
    # Let the model file import its sibling modules, as it would when run from its folder.
    sys.path.insert(0, str(path.resolve().parent))
    try:
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        raise ModelError(f"Importing {str(path)!r} raised {type(exc).__name__}: {exc}{_user_frame(exc)}.",
                         "fix the model file so that `python " + str(path) + "` runs.") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def gist_folder(spec: str) -> Path:
    """The local folder of ``gist:ID[@REVISION]`` (fetched into the cache once)."""
    from ..data.cache import default_cache_dir

    return gist.fetch(spec, default_cache_dir())


def _has_default_factory(module: Any) -> bool:
    return any(callable(getattr(module, candidate, None)) for candidate in ("build_model", "Model"))


def _find_factory(module: Any, path: Path, name: str | None) -> Callable[..., Any]:
    if name is not None:
        factory = getattr(module, name, None)
        if not callable(factory):
            raise ModelError(f"{str(path)!r} has no callable named {name!r}.",
                             f"define {name}() in the file or name another factory after the colon.")
        return factory
    for candidate in ("build_model", "Model"):
        factory = getattr(module, candidate, None)
        if callable(factory):
            return factory
    # The file's own functions and nn.Module classes are the likely factories: name them in the fix.
    own = [n for n, obj in vars(module).items() if not n.startswith("_") and getattr(obj, "__module__", None) ==
           module.__name__ and (inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, nn.Module)))]
    hint = (f"name the factory after a colon, e.g. --model {path}:{own[0]} (the file defines "
            f"{', '.join(own[:6])}{', ...' if len(own) > 6 else ''})" if own
            else f"add one of them, or name the factory: --model {path}:make_my_model")
    raise ModelError(f"{str(path)!r} defines neither build_model() nor a class Model.", hint + ".")


def _accepted_kwargs(factory: Callable[..., Any]) -> set[str] | None:
    """Keyword names the factory accepts, or None when it takes **kwargs (anything goes)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    return names


def _fmt_kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _user_frame(exc: BaseException) -> str:
    """' (at file.py:LINE)' for the innermost frame outside tierlab and torch, if any."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "tierlab" not in frame.filename and "/torch/" not in frame.filename:
            return f" (at {frame.filename}:{frame.lineno})"
    return ""


def extract_logits(output: Any) -> torch.Tensor:
    """Logits from a tensor, a tuple/list (first element), a dict with "logits", or ``.logits``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ModelError(f"The model returned {type(output).__name__}, which holds no logits tensor.",
                     "return logits [B, T, V] as a tensor, a tuple (logits first), a dict with "
                     "'logits' or an object with .logits.")


# What a model that ends in softmax is told: the wiring mistake and its fix, shared by train and validate.
PROBABILITIES_FIX = ("return the raw scores (drop the final softmax): cross-entropy applies log-softmax itself, and "
                     "on probabilities the loss barely moves")


def refuse_non_logits(logits: torch.Tensor, what: str = "logits", unit: str = "position") -> None:
    """A ModelError for outputs that cannot be raw scores: integers, or probabilities (a softmax at the end).

    ``what``/``unit``: how messages name them ("logits" per "position"; a classifier's "scores" per "row").
    """
    if not logits.is_floating_point():
        raise ModelError(f"The model returned {logits.dtype} {what}.", "return floating-point logits.")
    if looks_like_probabilities(logits):
        raise ModelError(f"The model returns probabilities, not {what}: every {unit}'s {logits.size(-1)} outputs "
                         "lie in [0, 1] and sum to 1.", PROBABILITIES_FIX + ".")


def looks_like_probabilities(logits: torch.Tensor) -> bool:
    """True when every position's outputs lie in [0, 1] and sum to 1: a softmax, not logits.

    Cross-entropy on probabilities squashes the gradient (a second softmax over values in
    [0, 1] is near-uniform), so such a model trains far slower with no error anywhere. Raw
    logits of V >= 2 classes never pass this by chance; log-probabilities (log_softmax) do
    not either, and they are fine: log-softmax leaves them unchanged.
    """
    if logits.size(-1) < 2 or logits.numel() == 0:
        return False
    x = logits.detach().float()
    in_unit = bool(((x >= 0) & (x <= 1)).all())
    return in_unit and bool(((x.sum(-1) - 1).abs() <= 1e-3).all())


# What a model whose earlier positions see later tokens is told, by train and validate.
CAUSAL_FIX = ("apply a causal mask (is_causal=True, or mask scores where key > query), or train the model as it is "
              "with --causal-mask, which masks every nn.MultiheadAttention / nn.TransformerEncoder(Layer) it calls "
              "without a mask (a Transformer Builder export, an encoder)")


def future_leak(logits_of, ids: torch.Tensor, position: int, vocab: int,
                base: torch.Tensor | None = None) -> float | None:
    """How far the logits before ``position`` move when token ``position`` changes; None within float noise.

    ``logits_of(ids) -> [B, T, V]`` runs the model (in eval mode, without gradients). A causal
    model's logits at t < position cannot depend on token ``position`` at all, so anything
    beyond rounding (1e-4 of the largest logit) is a position seeing the future. ``base``:
    the logits of ``ids`` from a forward known to repeat; without it, two forwards must agree
    first -- a model whose output changes from call to call (dropout left on, state) says
    nothing about causality, and validate's determinism check is the one to report it.
    """
    if base is None:
        base = repeatable_logits(logits_of, ids)
        if base is None:
            return None
    changed = ids.clone()
    changed[:, position] = (changed[:, position] + 1) % vocab
    return _moved(base[:, :position], logits_of(changed).float()[:, :position], base)


def repeatable_logits(logits_of, ids: torch.Tensor) -> torch.Tensor | None:
    """The float logits of ``ids`` when two forwards agree (to 1e-4 of the largest), else None."""
    base = logits_of(ids).float()
    return base if _moved(base, logits_of(ids).float(), base) is None else None


def _moved(before: torch.Tensor, after: torch.Tensor, scale: torch.Tensor) -> float | None:
    """The largest change from ``before`` to ``after`` when beyond rounding (1e-4 of ``scale``'s largest), else None."""
    diff = (after - before).abs().amax().item()
    return diff if diff > 1e-4 * max(1.0, scale.abs().amax().item()) else None


def max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model supports, where it publishes one (or its export's config.json declares it)."""
    with contextlib.suppress(TypeError):
        if model in _DECLARED_MAX_LEN:
            return _DECLARED_MAX_LEN[model]
    for owner in (model, getattr(model, "config", None)):
        if owner is None:
            continue
        for attr in _MAX_LEN_ATTRS:
            value = getattr(owner, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
