"""An exception from the model's own code during training, told as one plain line instead of a traceback.

"The model's code" is every file that defines the classes of the model's modules (the user's
model.py, a Hugging Face modeling file): the deepest frame in one of them is named, with the
step and what the run kept.  An exception with no such frame is not the model's and stays a
traceback (a bug to report), except autograd's "does not require grad", which only a model
that detaches its output causes.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from torch import nn

from ..errors import ModelError
from .checkpoint import latest_or_none


def model_files(model: nn.Module) -> set[str]:
    """The source files of the classes the model is built from (its own and its submodules')."""
    files = set()
    for module in model.modules():
        for cls in type(module).__mro__:
            if cls.__module__.startswith(("torch.", "builtins")) or cls.__module__ == "torch":
                continue
            path = getattr(sys.modules.get(cls.__module__), "__file__", None)
            if path:
                files.add(str(Path(path).resolve()))
    return files


def model_failure(exc: BaseException, model: nn.Module, step: int, run_dir: Path,
                  removed: bool) -> ModelError | None:
    """The plain error for ``exc`` raised in the model's code at ``step``, or None when it is not the model's."""
    files = model_files(model)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if str(Path(f.filename).resolve()) in files]
    said = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else '(no message)'}"
    if frames:
        where = frames[-1]
        problem = f"The model raised {said} at step {step}, in {where.filename}:{where.lineno} ({where.name})."
    elif isinstance(exc, RuntimeError) and "does not require grad" in str(exc):
        problem = (f"The model's output cannot be trained at step {step}: {said} -- its forward returns logits cut "
                   "off from the weights (a .detach(), torch.no_grad() or .data in forward).")
    else:
        return None
    if removed:
        kept = "nothing was trained, so the run directory was removed: run the same command again after the fix"
    else:
        ckpt = latest_or_none(run_dir)  # (a garbled `latest` must not hide the model's error)
        kept = (f"the last checkpoint is {ckpt}: after the fix, continue with `tierlab train --resume {run_dir}`"
                if ckpt is not None else f"no checkpoint was written; {run_dir} holds the records so far")
    return ModelError(problem, f"fix the model ({kept}); `tierlab validate --model ...` runs its checks in seconds")
