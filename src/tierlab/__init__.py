"""tierlab: check a hand-built PyTorch transformer, then train it fast and safely in mixed precision."""

from .config import TrainConfig
from .errors import UserError
from .sample import generate, load
from .train import Diverged, Run, resume, train

__all__ = ["Diverged", "Run", "TrainConfig", "UserError", "generate", "load", "resume", "train"]
__version__ = "0.1.0"
