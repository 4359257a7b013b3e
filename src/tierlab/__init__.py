"""tierlab: check a hand-built PyTorch transformer, then train it fast and safely in mixed precision."""

from .config import TrainConfig
from .errors import UserError
from .train import Run, train

__all__ = ["Run", "TrainConfig", "UserError", "train"]
__version__ = "0.1.0"
