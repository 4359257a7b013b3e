"""Training: the precision policy, schedule, loop and run directory."""

from .api import resume, train
from .guards import Diverged
from .precision import PrecisionDecision, PrecisionPolicy, decide_precision
from .run import Run

__all__ = ["Diverged", "PrecisionDecision", "PrecisionPolicy", "Run", "decide_precision", "resume", "train"]
