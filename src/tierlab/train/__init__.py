"""Training: the precision policy, schedule, loop and run directory."""

from .api import train
from .precision import PrecisionDecision, PrecisionPolicy, decide_precision
from .run import Run

__all__ = ["PrecisionDecision", "PrecisionPolicy", "Run", "decide_precision", "train"]
