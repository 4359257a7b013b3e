"""tierlab: check a hand-built PyTorch transformer, then train it fast and safely in mixed precision."""

from .config import TrainConfig
from .errors import UserError
from .sample import generate, load
from .train import Diverged, Run, resume, train
from .validate import Report, validate

__all__ = ["Diverged", "Report", "Run", "TrainConfig", "UserError", "generate", "load", "resume", "train",
           "validate"]
__version__ = "0.1.0"
