"""tierlab: check a hand-built PyTorch transformer, then train it fast and safely in mixed precision.

The names below are imported when first used (PEP 562), so that ``import tierlab`` -- and
every ``tierlab`` command's start, ``--help`` included -- does not pay for torch until a
command needs it; a Ctrl-C while torch loads is then an ordinary interrupted command.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "AnalysisReport": ".analyze", "analyze": ".analyze",
    "TrainConfig": ".config",
    "UserError": ".errors",
    "ExportResult": ".export", "export_run": ".export",
    "load": ".run_reader",
    "generate": ".sample",
    "Diverged": ".train", "Run": ".train", "resume": ".train", "train": ".train",
    "Report": ".validate", "validate": ".validate",
}
__all__ = ['AnalysisReport', 'Diverged', 'ExportResult', 'Report', 'Run', 'TrainConfig', 'UserError', 'analyze', 'export_run', 'generate', 'load', 'resume', 'train', 'validate']

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .analyze import AnalysisReport, analyze
    from .config import TrainConfig
    from .errors import UserError
    from .export import ExportResult, export_run
    from .run_reader import load
    from .sample import generate
    from .train import Diverged, Run, resume, train
    from .validate import Report, validate


class _Package(types.ModuleType):
    """``tierlab.train``, ``tierlab.analyze`` and ``tierlab.validate`` stay the functions, as they always were.

    Importing a subpackage of the same name (``tierlab.train.checkpoint``, say) makes Python
    set the package attribute to the subpackage; that assignment is dropped here, so the
    attribute keeps resolving to the function (through ``__getattr__`` below).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'tierlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
