"""The names of the files in a run directory: one place, imported by everything that reads or writes them.

The names are a contract (users' scripts read them); this module imports nothing, so any
part of tierlab -- trackers, plots, data, export -- can use it without an import cycle.
"""

CONFIG = "config.json"  # the resolved config
METRICS = "metrics.jsonl"  # one record per log step and per evaluation
EVENTS = "events.jsonl"  # run_start, precision, checkpoint, ...
SUMMARY = "summary.json"  # written when the run ends
WEIGHTS = "model.safetensors"  # the final weights
BEST_WEIGHTS = "best.safetensors"  # --early-stop: the weights of the best evaluation
TOKENIZER = "tokenizer.json"  # the run's tokenizer
LABELS = "labels.json"  # --objective classify: the class names in id order, the padding id, the fields
DASHBOARD = "dashboard.png"  # the run at a glance
CKPT_DIR = "checkpoints"  # step-NNNNNNNN.pt and the `latest` pointer
LATEST = "latest"
RUN_INFO = "run.json"  # the run id and the model file's sha256 (see train/identity.py)
LOCK = ".lock"  # held by the one process writing the run (see train/run_lock.py)
