"""tierlab sync: a run made offline (or during an outage) replayed into a tracker, nothing missing."""

import pytest

import tierlab
from helpers import fast_config, run_cli, wandb_history_and_config


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    return tierlab.train(config=fast_config(out, precision="fp16", max_steps=20, log_every=5, eval_every=10,
                                            loss_scale_init=2.0**20, no_plots=True))


def test_sync_to_tensorboard_round_trips_every_record(plain_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_cli("sync", plain_run.dir, "--to", "tensorboard", cwd=plain_run.dir)
    assert result.returncode == 0, result.stderr
    assert f"synced {len(plain_run.metrics())} metric records" in result.stdout
    acc = EventAccumulator(str(plain_run.dir / "tensorboard"))
    acc.Reload()
    for record in plain_run.metrics():
        for key, value in record.items():
            if key not in ("kind", "step") and value is not None:
                points = [e.value for e in acc.Scalars(f"{record['kind']}/{key}") if e.step == record["step"]]
                assert points == [pytest.approx(value, rel=1e-6)]
    from collections import Counter

    written = Counter(e["event"] for e in plain_run.events())
    synced = {t.split("/")[1]: len(acc.Tensors(t)) for t in acc.Tags()["tensors"] if t.startswith("events/")}
    assert synced == dict(written)


def test_sync_to_offline_wandb_round_trips_every_record(plain_run, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    result = run_cli("sync", plain_run.dir, "--to", "wandb", "--wandb", "tierlab-sync", "--wandb-mode", "offline",
                     cwd=plain_run.dir)
    assert result.returncode == 0, result.stderr
    history, config = wandb_history_and_config(plain_run.dir)
    by_step = {}
    for row in history:
        by_step.setdefault(row.get("_step"), {}).update(row)
    for record in plain_run.metrics():
        logged = by_step[record["step"]]
        for key, value in record.items():
            if key not in ("kind", "step") and value is not None:
                assert logged[key] == pytest.approx(value, rel=1e-6), (record["step"], key)
    assert config["max_steps"] == 20 and config["precision"] == "fp16"
    tables = list(plain_run.dir.glob("wandb/offline-run-*/files/media/table/events_*.table.json"))
    assert len(tables) == 1
    import json

    rows = json.loads(tables[0].read_text())["data"]
    assert [r[1] for r in rows] == [e["event"] for e in plain_run.events()]


def test_a_second_sync_to_tensorboard_replaces_the_first(plain_run, tmp_path):
    """Issue 19.12: syncing twice used to double every point."""
    pytest.importorskip("tensorboard")
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    shutil.copytree(plain_run.dir, run)
    for _ in range(2):
        assert run_cli("sync", run, "--to", "tensorboard", cwd=tmp_path).returncode == 0
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    train = [r for r in plain_run.metrics() if r["kind"] == "train"]
    assert [e.step for e in acc.Scalars("train/loss")] == [r["step"] for r in train]


def test_report_and_sync_skip_a_line_that_is_not_utf8(plain_run, tmp_path):
    """Issue 19.12: a stray byte in metrics.jsonl (an editor, a bad disk) loses that line, not the command."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(plain_run.dir, run)
    lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:10] + b"\xff" + lines[1][10:]
    (run / "metrics.jsonl").write_bytes(b"".join(lines))
    report = run_cli("report", run, "--out", tmp_path / "d.png", cwd=tmp_path)
    assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
    assert "1 unreadable line(s) skipped" in report.stderr
    synced = run_cli("sync", run, "--to", "tensorboard", cwd=tmp_path)
    assert synced.returncode == 0, synced.stderr
    assert f"synced {len(plain_run.metrics()) - 1} metric records" in synced.stdout
