"""tierlab: check a hand-built PyTorch transformer, then train it fast and safely in mixed precision."""

from .analyze import AnalysisReport, analyze
from .config import TrainConfig
from .errors import UserError
from .export import ExportResult, export_run
from .run_reader import load
from .sample import generate
from .train import Diverged, Run, resume, train
from .validate import Report, validate

__all__ = ["AnalysisReport", "Diverged", "ExportResult", "Report", "Run", "TrainConfig", "UserError", "analyze",
           "export_run", "generate", "load", "resume", "train", "validate"]
__version__ = "0.1.0"
