"""tierlab search: a real Optuna study on SQLite (and PostgreSQL when CI provides one)."""

import csv
import os
import subprocess
import sys

import pytest

from helpers import GREEDY_MODEL, TINY_MODEL, SilentServer, assert_user_error, fast_config, run_cli, write_model
from tierlab.errors import ConfigError, DataError

optuna = pytest.importorskip("optuna")

from tierlab.search import SearchConfig, load_space, run_search  # noqa: E402
from tierlab.search.space import DEFAULT_SPACE, apply_params  # noqa: E402

MODEL_ARGS = [arg for k, v in TINY_MODEL.items() for arg in ("--model-arg", f"{k}={v}")]
COMMON = [*MODEL_ARGS, "--seq-len", "32", "--eval-batches", "2", "--precision", "fp32"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _space(tmp_path, text):
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, fragments", [
    ("[learning_rate]\ntype = 'float'\nlow = 1e-4\nhigh = 1e-2\n", ["'learning_rate'", "not a train option"]),
    ("[out]\ntype = 'categorical'\nchoices = ['a']\n", ["'out'", "cannot be searched"]),
    ("[lr]\ntype = 'gaussian'\nlow = 1\nhigh = 2\n", ["'lr'", "'gaussian'"]),
    ("[lr]\ntype = 'float'\nlow = 0.1\nhigh = 0.01\n", ["'lr'", "smaller than high"]),
    ("[lr]\ntype = 'float'\nlow = 0.0\nhigh = 0.01\nlog = true\n", ["'lr'", "log scale needs low > 0"]),
    ("[batch_size]\ntype = 'categorical'\nchoices = []\n", ["'batch_size'", "non-empty list"]),
    ("[batch_size]\ntype = 'categorical'\nchoices = [8, 0]\n", ["'batch_size'", "value 0 is not valid"]),
    ("[n_layer]\ntype = 'int'\nlow = 1\nhigh = 2.5\n", ["'n_layer'", "not a train option"]),
    ("[model_args.n_layer]\ntype = 'int'\nlow = 1\nhigh = 2.5\n", ["'model_args.n_layer'", "whole numbers"]),
    ("[lr]\ntype = 'float'\nlow = 1e-4\nhigh = 1e-2\nstep = 2\n", ["'lr'", "unknown key(s) step"]),
    ("lr = [", ["not valid TOML"]),
])
def test_invalid_spaces_name_the_key(tmp_path, text, fragments):
    with pytest.raises(ConfigError) as err:
        load_space(_space(tmp_path, text))
    for fragment in fragments:
        assert fragment in str(err.value)


def test_a_user_space_over_train_options_and_model_args(tmp_path):
    space = load_space(_space(tmp_path, """
        [clip_grad]
        type = "float"
        low = 0.5
        high = 2.0
        [model_args]
        n_layer = {type = "int", low = 1, high = 3}
        """.replace("        ", "")))
    assert [(d.name, d.kind) for d in space] == [("clip_grad", "float"), ("model_args.n_layer", "int")]
    cfg = apply_params(fast_config(tmp_path), {"clip_grad": 0.7, "model_args.n_layer": 3, "warmup_fraction": 0.1},
                       steps=50)
    assert cfg.clip_grad == 0.7 and cfg.model_args["n_layer"] == 3 and cfg.warmup_steps == 5
    high_lr = apply_params(fast_config(tmp_path, lr=1e-3), {"lr": 0.5}, steps=50)
    assert high_lr.min_lr is None and high_lr.final_lr == 0.05  # the default lr/10 follows the trial's own lr


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    where = tmp_path_factory.mktemp("search")
    result = run_cli("search", *COMMON, "--trials", "3", "--steps-per-trial", "12", "--out", "s", "--seed", "0",
                     cwd=where)
    assert result.returncode == 0, result.stderr
    return where, result


def test_a_study_writes_best_toml_csv_plots_and_a_summary(study):
    where, result = study
    out = where / "s"
    rows = _rows(out / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1", "2"]
    assert {"param_lr", "param_warmup_fraction", "param_weight_decay", "param_batch_size"} <= set(rows[0])
    completed = [r for r in rows if r["state"] == "complete"]
    assert completed and all(float(r["val_loss"]) > 0 for r in completed)
    for r in rows:  # every trial is a real run directory with its metrics
        assert (where / r["run_dir"] / "metrics.jsonl").is_file() if not os.path.isabs(r["run_dir"]) else \
            (os.path.isfile(os.path.join(r["run_dir"], "metrics.jsonl")))
    best = min(completed, key=lambda r: float(r["val_loss"]))
    text = (out / "best.toml").read_text()
    assert f"# trial {best['number']}:" in text and "max_steps = 12" in text
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert f"best: trial {best['number']}" in result.stdout and "3 completed" in result.stdout
    # Optuna's notes on heartbeats outside study.optimize (by design here) stay off the terminal.
    assert "Warning" not in result.stderr and "optuna_warn" not in result.stderr, result.stderr


def test_best_toml_trains_and_rerunning_adds_trials(study):
    where, _ = study
    trained = run_cli("train", "--config", "s/best.toml", "--out", "runs", "--name", "best", "--quiet", cwd=where)
    assert trained.returncode == 0, trained.stderr
    assert (where / "runs" / "best" / "summary.json").is_file()

    more = run_cli("search", *COMMON, "--trials", "5", "--steps-per-trial", "12", "--out", "s", "--seed", "0",
                   cwd=where)
    assert more.returncode == 0, more.stderr
    rows = _rows(where / "s" / "trials.csv")
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]  # resumed: two more, not five new
    assert len({r["run_dir"] for r in rows}) == 5


def test_a_diverging_region_prunes_trials_and_the_study_goes_on(tmp_path):
    space = _space(tmp_path, "[lr]\ntype = 'float'\nlow = 50.0\nhigh = 500.0\nlog = true\n"
                             "[clip_grad]\ntype = 'categorical'\nchoices = [0.0]\n")
    cfg = SearchConfig(base=fast_config(tmp_path, precision="fp32"), trials=3, steps_per_trial=10,
                       out=str(tmp_path / "s"), pruner="hyperband", seed=1, space=load_space(space))
    result = run_search(cfg)
    states = [t.state.name for t in result.study.trials]
    assert len(states) == 3  # every trial ran to a verdict
    bad = [t for t in result.study.trials if t.state.name in ("PRUNED", "FAIL")]
    assert bad, states
    assert all(t.user_attrs.get("reason") for t in bad)  # each with its reason
    rows = _rows(tmp_path / "s" / "trials.csv")
    assert any("diverged" in r["reason"] or "val_loss is" in r["reason"] for r in rows), rows


def _two_workers(tmp_path, storage, trials=4):
    args = [sys.executable, "-m", "tierlab", "search", *COMMON, "--trials", str(trials), "--steps-per-trial", "8",
            "--out", str(tmp_path / "s"), "--study", "shared", "--quiet"]
    if storage:
        args += ["--storage", storage]
    workers = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    study = optuna.load_study(study_name="shared", storage=storage or f"sqlite:///{tmp_path / 's' / 'study.db'}")
    real = [t for t in study.trials if not str(t.user_attrs.get("reason", "")).startswith("surplus")]
    assert sorted(t.number for t in real) == list(range(trials))  # N trials, each number exactly once
    run_dirs = [t.user_attrs["run_dir"] for t in real]
    assert len(set(run_dirs)) == trials and all(os.path.isdir(d) for d in run_dirs)
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in real)


def test_two_workers_share_one_sqlite_study(tmp_path):
    _two_workers(tmp_path, None)


def test_two_workers_share_one_postgresql_study(tmp_path):
    url = os.environ.get("TIERLAB_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: .ci/run starts one and sets TIERLAB_TEST_POSTGRES")
    pytest.importorskip("psycopg")
    import uuid

    _two_workers(tmp_path, url.rstrip("/") + "?application_name=tierlab-" + uuid.uuid4().hex[:8])


def test_search_mistakes_are_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="--trials must be at least 1"):
        SearchConfig(base=fast_config(tmp_path), trials=0)
    with pytest.raises(ConfigError, match="missing.toml' does not exist"):
        load_space(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="--pruner 'random'"):
        SearchConfig(base=fast_config(tmp_path), pruner="random")
    rows = tmp_path / "r.csv"
    rows.write_text("review,label\nhi,pos\nho,neg\n")
    storage = tmp_path / "s.db"  # a data mistake is said before any study (or failed trial) is recorded
    with pytest.raises(DataError, match="has no column \"text\""):
        run_search(SearchConfig(base=fast_config(tmp_path, objective="classify", data=str(rows)), trials=1,
                                storage=f"sqlite:///{storage}", out=str(tmp_path / "s")))
    assert not storage.exists()
    with pytest.raises(ConfigError, match="--pool first reads the model's first position"):  # nor a model mistake
        run_search(SearchConfig(base=fast_config(tmp_path, objective="classify", data=str(rows), text_field="review",
                                                 pool="first", val_fraction=0.5), trials=1, storage=f"sqlite:///{storage}",
                                out=str(tmp_path / "s")))
    assert not storage.exists()


def test_an_unreachable_storage_exits_2_with_one_line(tmp_path):
    result = run_cli("search", *COMMON, "--storage", "postgresql://nobody@127.0.0.1:1/none", "--out", "s",
                     cwd=tmp_path)
    assert_user_error(result, "Cannot open the study storage", "database server is running")


def test_a_database_server_that_never_answers_is_given_up_on_and_its_password_never_shown(tmp_path):
    pytest.importorskip("psycopg")
    with SilentServer() as port:
        result = run_cli("search", *COMMON, "--storage", f"postgresql+psycopg://alice:s3cret-pw@127.0.0.1:{port}/db",
                         "--storage-timeout", "2", "--out", "s", cwd=tmp_path, timeout=120)  # (a hang fails here)
    assert_user_error(result, "Cannot open the study storage 'postgresql+psycopg://alice:***@127.0.0.1",
                      "--storage-timeout, 2 s")
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_storage_urls_are_shown_without_their_password(tmp_path):
    from tierlab.search.study import masked_url

    assert masked_url("postgresql://bob:hunter2@db.example:5432/studies") == "postgresql://bob:***@db.example:5432/studies"
    assert masked_url("mysql+pymysql://a:p%40ss@h/d") == "mysql+pymysql://a:***@h/d"
    assert masked_url("sqlite:////tmp/study.db") == "sqlite:////tmp/study.db"
    assert masked_url("postgresql+psycopg://u@h/db?password=hunter2") == "postgresql+psycopg://u@h/db?password=***"
    assert "hunter2" not in masked_url("postgresql+psycopg:/u:hunter2@h/db")  # a slash short: not a URL SQLAlchemy reads
    cfg = SearchConfig(base=fast_config(tmp_path), storage="postgresql://bob:hunter2@h/db")
    assert "hunter2" not in cfg.storage_shown
    with pytest.raises(ConfigError, match="--storage-timeout must be a positive number"):
        SearchConfig(base=fast_config(tmp_path), storage_timeout=0)


def test_default_space_is_the_documented_one():
    assert [d.describe() for d in DEFAULT_SPACE] == [
        "lr float [0.0001, 0.01] log", "warmup_fraction float [0, 0.2]",
        "weight_decay float [0.001, 0.3] log", "batch_size in [8, 16, 32]"]


def test_a_pruned_trial_stops_its_run_with_status_pruned(tmp_path):
    """The pruner's verdict reaches the training loop at the evaluation that triggered it."""
    import tierlab
    from tierlab.search.study import _TrialReporter
    from tierlab.train.api import StopTraining

    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))  # prunes any val loss > 1
    reporter = _TrialReporter(study.ask())
    cfg = fast_config(tmp_path, max_steps=20, eval_every=5, ckpt_every=0)
    with pytest.raises(StopTraining, match="pruned at step 5"):
        tierlab.train(config=cfg, progress=reporter)
    run = tierlab.Run.load(tmp_path / "runs" / "run")
    assert run.summary["status"] == "pruned" and run.summary["steps"] == 5
    (stopped,) = run.events("stopped")
    assert stopped["status"] == "pruned" and stopped["step"] == 5


def test_a_killed_workers_trial_is_failed_by_heartbeat_and_replaced(tmp_path):
    """SIGKILL leaves no chance to tell the study anything: the trial stays RUNNING until the
    next worker finds its heartbeat stale, fails it, and runs a replacement."""
    import signal
    import time

    from helpers import wait_for

    args = [sys.executable, "-m", "tierlab", "search", *COMMON, "--trials", "2", "--out", str(tmp_path / "s"),
            "--heartbeat", "1", "--pruner", "none", "--quiet"]
    worker = subprocess.Popen([*args, "--steps-per-trial", "100000"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "s" / "trials" / "trial-0000" / "metrics.jsonl"
    try:
        wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 0)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=60)
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    (trial,) = optuna.load_study(study_name="tierlab", storage=storage).trials
    assert trial.state.name == "RUNNING"  # nobody told the study

    time.sleep(3)  # past the grace period (2 heartbeats)
    result = subprocess.run([*args, "--steps-per-trial", "8"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="tierlab", storage=storage).trials
    assert [t.state.name for t in trials][0] == "FAIL"
    assert [t.number for t in trials if t.state.name in ("COMPLETE", "PRUNED")] == [1, 2]  # two real trials
    rows = {r["number"]: r for r in _rows(tmp_path / "s" / "trials.csv")}
    assert "no heartbeat" in rows["0"]["reason"] and rows["1"]["reason"] == ""


def test_the_searched_files_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("some text\n" * 50)
    monkeypatch.chdir(tmp_path)
    cfg = SearchConfig(base=fast_config(tmp_path, data="corpus.txt"), out=str(tmp_path / "s"))
    # best.toml and every trial's config.json then name the corpus from any directory.
    assert cfg.base.data == str(tmp_path / "corpus.txt") and cfg.base.model == "tiny-gpt"


def test_a_trial_out_of_memory_fails_alone_and_the_study_goes_on(tmp_path):
    model = write_model(tmp_path, GREEDY_MODEL)
    space = _space(tmp_path, "[batch_size]\ntype = 'categorical'\nchoices = [16]\n")
    cfg = SearchConfig(base=fast_config(tmp_path, model=str(model), model_args={}), trials=2, steps_per_trial=4,
                       out=str(tmp_path / "s"), pruner="none", seed=0, space=load_space(space))
    result = run_search(cfg)  # returns: one trial's batch not fitting is not a mistake of the whole search
    assert [t.state.name for t in result.study.trials] == ["FAIL", "FAIL"]
    assert all(t.user_attrs["reason"].startswith("out of memory: Out of memory at step 1 with batch 16")
               for t in result.study.trials)


def test_trials_stop_early_when_asked_and_still_count(tmp_path):
    base = fast_config(tmp_path, early_stop=1, early_stop_delta=10.0, log_every=4)  # the 2nd evaluation stops it
    result = run_search(SearchConfig(base=base, trials=1, steps_per_trial=20, evals_per_trial=5, pruner="none",
                                     out=str(tmp_path / "s")))
    (trial,) = result.study.trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["steps"] == 8
    summary = (tmp_path / "s" / "trials" / "trial-0000" / "summary.json").read_text()
    assert '"status": "early_stopped"' in summary
