"""``tierlab search``: an Optuna study whose trials are real tierlab training runs.

Each trial samples the space, trains with :func:`tierlab.train` (same loop, precision
policy, metrics and run directory, under ``<out>/trials/trial-NNNN``), reports the val
loss of every evaluation to Optuna and stops early when the pruner says so.  A trial that
diverges (non-finite values; trials run with ``--on-nonfinite raise``) is pruned with the
diagnosis as its reason; one that runs out of memory is marked failed; the study goes on.

The study lives in an Optuna RDB storage: by default a SQLite file in the search
directory, or any ``--storage`` URL (PostgreSQL for several machines).  Trials are
counted in the storage, so re-running the command resumes the study and several workers
on one storage run ``--trials`` trials between them, each trial number exactly once.
While a trial runs, its worker records a heartbeat in the storage every ``--heartbeat``
seconds; a trial whose worker fell silent for twice that (killed with SIGKILL, its machine
lost) is marked failed by the next worker that looks, and replaced like an interrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..config import TrainConfig
from ..errors import ConfigError, OutOfMemory, UserError
from ..train.api import StopTraining, train
from ..train.guards import Diverged
from ..train.memory import is_out_of_memory
from ..train.resume import absolute_paths
from .space import DEFAULT_SPACE, Dimension, apply_params, fmt_param

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
# Each objective's trial score and its direction: a language model's validation loss, a classifier's macro-F1.
METRICS = {"clm": ("val_loss", "minimize"), "mlm": ("val_loss", "minimize"), "classify": ("val_f1", "maximize")}
_OPEN_ATTEMPTS = 4
SURPLUS = "surplus: the study already had its trials"
INTERRUPTED = "interrupted (Ctrl-C or SIGTERM): run again to replace it"
LOST = "worker lost: no heartbeat (killed, or its machine went away); replaced by the next run"


def _real_trials(study: Any) -> list:
    """Every trial of the study except surplus ones (a worker's extra ask at the very end)."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("reason") != SURPLUS]


def _counted_trials(study: Any) -> list:
    """The trials that count towards --trials: interrupted and lost ones are replaced when the search runs again."""
    return [t for t in _real_trials(study) if t.user_attrs.get("reason") != INTERRUPTED and not lost(t)]


def lost(trial: Any) -> bool:
    """Whether Optuna failed ``trial`` because its worker stopped sending heartbeats.

    A finished trial's attributes cannot be changed any more, so this is read from what is
    missing: tierlab gives every trial it ends itself a reason or a step count.
    """
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and not {"reason", "steps"} & set(trial.user_attrs)


def reason(trial: Any) -> str:
    return trial.user_attrs.get("reason") or (LOST if lost(trial) else "")


@dataclass
class SearchConfig:
    base: TrainConfig
    trials: int = 30
    steps_per_trial: int = 500
    out: str = "search"
    storage: str | None = None  # default: sqlite:///<out>/study.db
    study: str = "tierlab"
    pruner: str = "median"
    seed: int | None = None
    space: tuple[Dimension, ...] = DEFAULT_SPACE
    evals_per_trial: int = 5
    heartbeat: int = 60  # seconds between a running trial's heartbeats in the storage
    storage_timeout: float = 10.0  # seconds to connect to a database server before giving up

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}.", "pass e.g. --trials 30.")
        if self.steps_per_trial < 2:
            raise ConfigError(f"--steps-per-trial must be at least 2, got {self.steps_per_trial}.",
                              "pass e.g. --steps-per-trial 500.")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner!r} is not a pruner.", f"use one of {', '.join(PRUNERS)}.")
        if self.heartbeat < 1:
            raise ConfigError(f"--heartbeat must be at least 1 second, got {self.heartbeat}.",
                              "pass e.g. --heartbeat 60.")
        if not (math.isfinite(self.storage_timeout) and self.storage_timeout > 0):
            raise ConfigError(f"--storage-timeout must be a positive number of seconds, got {self.storage_timeout}.",
                              "pass e.g. --storage-timeout 10.")
        if not self.study.strip():
            raise ConfigError("--study needs a name.", "pass e.g. --study my-study.")
        self.base = absolute_paths(self.base)  # best.toml then trains from any directory

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(Path(self.out) / 'study.db').resolve()}"

    @property
    def storage_shown(self) -> str:
        """The storage URL as messages and logs show it: any password replaced by ***."""
        return masked_url(self.storage_url)

    @property
    def metric(self) -> str:
        """What a trial is scored by: the objective's own figure (val_loss; macro-F1 for a classifier)."""
        return METRICS[self.base.objective][0]

    @property
    def direction(self) -> str:
        return METRICS[self.base.objective][1]

    @property
    def eval_every(self) -> int:
        return max(1, self.steps_per_trial // self.evals_per_trial)


@dataclass
class SearchResult:
    study: Any
    out: Path
    best_config: Path | None
    best: Any = None  # the best completed trial (an Optuna FrozenTrial), None when none completed
    counts: dict[str, int] = field(default_factory=dict)
    steps_spent: int = 0
    metric: str = "val_loss"  # what the trials were scored by


class _TrialReporter:
    """A ``progress`` for :func:`train` that reports each evaluation to Optuna and prunes."""

    def __init__(self, trial: Any, metric: str = "val_loss", direction: str = "minimize"):
        self.trial, self.metric, self.direction = trial, metric, direction
        self.steps = 0
        self.best: float | None = None  # the best value of any evaluation so far

    def start(self, total_steps: int) -> None:
        pass

    def update(self, record: dict[str, Any]) -> None:
        self.steps = record["step"]
        if record["kind"] != "eval":
            return
        value, name = record[self.metric], self.metric
        if not math.isfinite(value):
            raise StopTraining("pruned", f"{name} is {value} at step {record['step']}")
        if self.best is None or (value < self.best if self.direction == "minimize" else value > self.best):
            self.best = value
        self.trial.report(value, record["step"])
        if self.trial.should_prune():
            raise StopTraining("pruned", f"pruned at step {record['step']} ({name} {value:.4f})")


def open_study(cfg: SearchConfig):
    """Create or load the study (the same name in the same storage continues it)."""
    try:
        import optuna
    except ImportError:
        raise UserError("tierlab search needs Optuna, which is not installed.",
                        "pip install 'tierlab[search]' (or pip install optuna).") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # tierlab says what happens, once per trial
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed)
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=cfg.eval_every),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=cfg.eval_every,
                                                                  max_resource=cfg.steps_per_trial),
              "none": optuna.pruners.NopPruner}[cfg.pruner]()
    shown = cfg.storage_shown
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            with _heartbeat_warnings_off():
                storage = optuna.storages.RDBStorage(cfg.storage_url, heartbeat_interval=cfg.heartbeat,
                                                     engine_kwargs=_engine_options(cfg.storage_url,
                                                                                   cfg.storage_timeout))
            study = optuna.create_study(study_name=cfg.study, storage=storage, direction=cfg.direction,
                                        sampler=sampler, pruner=pruner, load_if_exists=True)
            if study.direction.name.lower() != cfg.direction:  # a study made for another objective's score
                raise UserError(f"Study {cfg.study!r} in {shown!r} was created to {study.direction.name.lower()} its "
                                f"score, and --objective {cfg.base.objective} is scored by {cfg.metric} "
                                f"({cfg.direction}).", "start another study: pass --study NEW-NAME (or another "
                                "--out / --storage).")
            return study
        except UserError:
            raise
        except ImportError as exc:  # e.g. a postgresql:// URL without its driver
            raise UserError(f"--storage {shown!r} needs a database driver that is not installed: {exc}.",
                            "install it (for PostgreSQL: pip install 'psycopg[binary]', or pip install "
                            "'tierlab[postgres]').") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy's many connection errors, said in one line
            # Workers started together race to create the schema (one gets "already exists"):
            # the loser waits a moment and finds the tables there.  A server that cannot be
            # reached (refused, timed out) is said at once: waiting would not change that.
            if attempt + 1 < _OPEN_ATTEMPTS and not _unreachable(exc):
                time.sleep(0.5 + random.random())
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"Cannot open the study storage {shown!r}: {_without_password(first, cfg.storage_url)}",
                            "check the URL, that the database server is running and reachable (a server that does "
                            f"not answer within --storage-timeout, {cfg.storage_timeout:g} s, counts as "
                            "unreachable), and the credentials.") from None
    raise AssertionError("unreachable")


def masked_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``, or ``?password=...``) replaced by ``***``."""
    return _without_password(url, url)


def _without_password(text: str, url: str) -> str:
    """``text`` (a message, or the URL itself) with every form of the URL's password taken out."""
    for secret in sorted(_passwords(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _passwords(url: str) -> set[str]:
    """The password ``url`` holds, as written and as SQLAlchemy decodes it, however the URL is (mis)spelled."""
    from urllib.parse import unquote

    found = {m.group(1) for m in re.finditer(r"^[^:/?#]+:/*[^/@?#:]*:([^@/?#]*)@", url)}  # user:PASSWORD@ (any slashes)
    found |= {m.group(1) for m in re.finditer(r"[?&]password=([^&#]*)", url)}
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        found |= {p for p in (parsed.password, parsed.query.get("password")) if isinstance(p, str)}
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: the patterns above still apply
        pass
    found |= {unquote(p) for p in found}
    return {p for p in found if p}


def _engine_options(url: str, timeout: float) -> dict[str, Any]:
    """A bounded connect for network databases: a server that accepts and never answers would otherwise hang."""
    if url.startswith(("postgresql", "mysql", "mariadb")):
        return {"connect_args": {"connect_timeout": max(1, math.ceil(timeout))}, "pool_pre_ping": True}
    return {}


def _unreachable(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("timeout", "timed out", "connection refused", "could not connect",
                                         "name or service not known", "could not translate host name"))


def run_search(cfg: SearchConfig, cache_dir: str | Path | None = None) -> SearchResult:
    """Run trials until the study holds ``cfg.trials`` of them; then write the outputs."""
    import torch

    from ..train.setup import prepare

    # A mistake of the data or the model (a missing column, a model with the wrong output, --pool
    # first on a causal model) would fail every trial: said before a study or a trial is recorded.
    # The model is built and probed once on the CPU; the tokenized data is cached for the trials.
    prepare(None, cfg.base.replace(max_steps=cfg.steps_per_trial, epochs=None, warmup_steps=None),
            torch.device("cpu"), cache_dir=Path(cache_dir) if cache_dir else None)
    study = open_study(cfg)
    from optuna.trial import TrialState

    out = Path(cfg.out)
    log.info("study %r in %s: %s", cfg.study, cfg.storage_shown, "; ".join(d.describe() for d in cfg.space))
    while True:
        _fail_stale_trials(study)  # a lost worker's trial stops counting, so this loop replaces it
        if len(_counted_trials(study)) >= cfg.trials:
            break
        with _heartbeat_warnings_off():
            trial = study.ask()
        earlier = [t for t in _counted_trials(study) if t.number < trial.number]
        if len(earlier) >= cfg.trials:
            # Another worker asked for the last trial a moment before this one: this one is
            # surplus, recorded as such (so counts stay exact) and never trained.
            trial.set_user_attr("reason", SURPLUS)
            study.tell(trial, state=TrialState.FAIL)
            break
        _run_trial(cfg, study, trial, out, cache_dir)
    from .outputs import write_outputs

    return write_outputs(cfg, study, out)


def _fail_stale_trials(study: Any) -> None:
    """Mark failed the running trials whose worker stopped sending heartbeats."""
    import optuna

    with _heartbeat_warnings_off():
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def _heartbeat_warnings_off() -> Iterator[None]:
    """Silence what Optuna says about heartbeats used outside ``study.optimize``: that is by design here.

    Optuna calls heartbeats experimental and warns, on every ``ask()``, that they are meant
    for ``optimize``; tierlab beats itself (:class:`_Heartbeat`), so both are noise on the terminal.
    """
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


class _Heartbeat:
    """Records in the storage, every ``interval`` seconds, that this worker still runs ``trial``.

    Optuna beats only inside ``study.optimize``; tierlab drives its trials with ask/tell, so
    it runs the beat itself, on a thread, for as long as the trial trains.
    """

    def __init__(self, study: Any, trial: Any, interval: float):
        self.storage, self.trial_id, self.interval = study._storage, trial._trial_id, interval  # noqa: SLF001
        self.stopped = threading.Event()
        self.storage.record_heartbeat(self.trial_id)
        self.thread = threading.Thread(target=self._beat, name=f"tierlab-heartbeat-{trial.number}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as exc:  # noqa: BLE001 - a database hiccup; the next beat tries again
                log.debug("heartbeat of trial %d not recorded: %s", self.trial_id, exc)

    def __enter__(self) -> _Heartbeat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def _run_trial(cfg: SearchConfig, study: Any, trial: Any, out: Path, cache_dir: str | Path | None) -> None:
    with _Heartbeat(study, trial, cfg.heartbeat):
        _train_trial(cfg, study, trial, out, cache_dir)


def _train_trial(cfg: SearchConfig, study: Any, trial: Any, out: Path, cache_dir: str | Path | None) -> None:
    from optuna.trial import TrialState

    params = {d.name: d.suggest(trial) for d in cfg.space}
    name = f"trial-{trial.number:04d}"
    trial_cfg = apply_params(cfg.base, params, cfg.steps_per_trial).replace(
        max_steps=cfg.steps_per_trial, epochs=None, out=str(out / "trials"), name=name, quiet=True,
        eval_every=cfg.eval_every, on_nonfinite="raise", resume=None, no_plots=True,
        ckpt_every=0, keep_ckpts=1)
    trial.set_user_attr("run_dir", str(out / "trials" / name))
    reporter = _TrialReporter(trial, cfg.metric, cfg.direction)
    started = time.perf_counter()
    log.info("trial %d: %s", trial.number, ", ".join(f"{k}={fmt_param(v)}" for k, v in params.items()))
    state, value, why = TrialState.COMPLETE, None, ""
    try:
        run = train(None, None, trial_cfg, progress=reporter, cache_dir=cache_dir)
        value = run.summary["best_val_loss"] if cfg.metric == "val_loss" else reporter.best
        reporter.steps = run.summary["steps"]
        if value is None or not math.isfinite(value):
            state, why = TrialState.PRUNED, f"no finite {cfg.metric}"
    except StopTraining as stop:
        state, why = TrialState.PRUNED, stop.reason
    except Diverged as err:
        state, why = TrialState.PRUNED, "diverged: " + str(err).splitlines()[0]
    except OutOfMemory as err:  # this trial's batch size (say) did not fit: the others may
        state, why = TrialState.FAIL, "out of memory: " + err.problem
    except UserError as err:
        trial.set_user_attr("reason", "user error: " + str(err).splitlines()[0])
        study.tell(trial, state=TrialState.FAIL)
        raise  # the same mistake would repeat in every trial: stop the search and say it
    except KeyboardInterrupt:  # the trial's run is checkpointed; the study records why it stopped
        trial.set_user_attr("reason", INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:  # noqa: BLE001 - other failures end this trial only
        state, why = TrialState.FAIL, ("out of memory: " if is_out_of_memory(exc) else f"{type(exc).__name__}: ") \
            + (str(exc).splitlines()[0] if str(exc) else "")
    trial.set_user_attr("steps", reporter.steps)
    trial.set_user_attr("seconds", time.perf_counter() - started)
    if why:
        trial.set_user_attr("reason", why)
    if state == TrialState.COMPLETE:
        study.tell(trial, value)
        log.info("trial %d: best %s %.4f", trial.number, cfg.metric, value)
    else:
        study.tell(trial, state=state)
        said = state.name.lower()  # "pruned at step 6 (...)" says it already: not "pruned (pruned at ...)"
        log.info("trial %d: %s", trial.number, why if why.startswith(said) else f"{said} ({why})")
