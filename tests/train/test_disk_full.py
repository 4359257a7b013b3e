"""A disk that fills up during a run, for real: a small tmpfs, filled at a chosen step.

Each test mounts its own tmpfs (root can here; elsewhere the tests are skipped, saying
why) and fills it from a progress callback, so the write that fails is a real one: inside
``torch.save`` (where torch turns the OSError into a RuntimeError), a record, the final
weights.  What must hold every time: one plain error naming the file and the free space,
no event for a file not written, no temporary file left, no torn record, the last good
checkpoint intact, and a resume that finishes the run as if nothing happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tierlab
from tierlab.disk import WriteFailed
from tierlab.errors import UserError
from tierlab.train.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from helpers import assert_user_error, assert_written_once, fast_config, run_cli, write_corpus


@pytest.fixture
def disk(tmp_path):
    """A 2 MiB tmpfs of this test's own."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}): a full disk is tested only where one can be mounted")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk's free space."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with filler.open("ab") as fh:
        fh.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


class FillAt:
    """A progress callback that fills the disk when the run's records reach ``step``."""

    def __init__(self, disk: Path, step: int, leave: int, before=None):
        self.disk, self.step, self.leave, self.before = disk, step, leave, before
        self.filler: Path | None = None

    def start(self, total_steps: int) -> None:
        pass

    def update(self, record: dict) -> None:
        if self.filler is None and record["step"] >= self.step:
            if self.before:
                self.before()
            self.filler = fill(self.disk, self.leave)


def leftovers(run_dir: Path) -> list[str]:
    return [p.name for folder in (run_dir, run_dir / "checkpoints") for p in folder.iterdir() if ".tmp" in p.name]


def checkpoint_events(run_dir: Path) -> list[int]:
    return [e["step"] for e in tierlab.Run.load(run_dir).events("checkpoint")]


def test_a_disk_full_inside_torch_save_is_one_plain_error_and_the_run_resumes(disk):
    cfg = fast_config(disk, max_steps=30, ckpt_every=10, eval_every=0, keep_ckpts=1)
    run_dir = disk / "runs" / "run"
    progress = FillAt(disk, step=12, leave=60_000)  # the step-20 checkpoint (~300 KB) stops half-way
    with pytest.raises(CheckpointError) as err:
        tierlab.train(config=cfg, progress=progress)
    message = str(err.value)
    assert f"Writing {run_dir / 'checkpoints' / 'step-00000020.pt'} failed: the disk is full (" in message
    assert f"free on {disk}" in message and "step-00000010.pt is intact" in message
    assert "unexpected pos" not in message  # torch's own words for it
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000010.pt"]
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 10
    assert checkpoint_events(run_dir) == [10]  # no event for the file that was never written
    assert leftovers(run_dir) == []

    progress.filler.unlink()
    run = tierlab.resume(run_dir)
    assert run.summary["status"] == "completed" and run.summary["steps"] == 30
    assert checkpoint_events(run_dir) == [10, 20, 30]
    assert_written_once(run_dir)


def test_a_record_the_disk_refuses_is_cut_off_whole(disk):
    # With rollback on, the run checkpoints step 0 first; then none until the end, while the records fill
    # the last free page of the disk until one is refused.
    cfg = fast_config(disk, max_steps=200, log_every=1, ckpt_every=0, eval_every=0, on_nonfinite="rollback")
    run_dir = disk / "runs" / "run"
    progress = FillAt(disk, step=2, leave=0)
    with pytest.raises(WriteFailed) as err:
        tierlab.train(config=cfg, progress=progress)
    assert "jsonl failed: the disk is full (0 B free on" in str(err.value)
    assert "the records before this one are intact" in str(err.value)
    for name in ("metrics.jsonl", "events.jsonl"):
        text = (run_dir / name).read_bytes()
        assert text.endswith(b"\n")
        assert all(json.loads(line) for line in text.splitlines())  # no torn line
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 0

    progress.filler.unlink()
    run = tierlab.resume(run_dir)
    assert run.summary["status"] == "completed" and run.summary["steps"] == 200
    assert_written_once(run_dir)


def test_the_final_weights_on_a_full_disk_fail_plainly_and_a_resume_finishes_the_run(disk):
    cfg = fast_config(disk, max_steps=30, ckpt_every=10, eval_every=0, keep_ckpts=1)
    run_dir = disk / "runs" / "run"
    progress = FillAt(disk, step=30, leave=0)

    def leave_room_for_one_checkpoint():
        # Hard links keep the pruned checkpoint's blocks in use, so the step-30 checkpoint takes the
        # room left for it and its pruning frees nothing for the weights that follow.
        (disk / "kept").mkdir()
        for path in (run_dir / "checkpoints").iterdir():
            os.link(path, disk / "kept" / path.name)
        progress.leave = (run_dir / "checkpoints" / "step-00000020.pt").stat().st_size + 16_384

    progress.before = leave_room_for_one_checkpoint
    with pytest.raises(WriteFailed) as err:
        tierlab.train(config=cfg, progress=progress)
    message = str(err.value)
    assert f"Writing {run_dir / 'model.safetensors'} failed: the disk is full (" in message
    assert "the last checkpoint" in message and "step-00000030.pt is intact" in message
    assert "tierlab train --resume" in message
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"  # not "completed" without its weights
    assert not (run_dir / "model.safetensors").exists() and leftovers(run_dir) == []

    progress.filler.unlink()
    run = tierlab.resume(run_dir)
    assert run.summary["status"] == "completed" and run.summary["steps"] == 30
    final = load_checkpoint(latest_checkpoint(run_dir))["model"]
    from safetensors.torch import load_file

    weights = load_file(str(run_dir / "model.safetensors"))
    assert all(weights[k].equal(final[k]) for k in weights)


def test_the_command_says_it_in_one_line_with_exit_code_2(disk):
    fill(disk, 900_000)  # room for two checkpoints of the tiny model (~300 KB each), not three
    args = ("train", "--data", "demo", "--precision", "fp32", "--model-arg", "n_layer=1", "--model-arg", "d_model=32",
            "--model-arg", "n_head=2", "--batch-size", "4", "--seq-len", "32", "--max-steps", "60",
            "--log-every", "5", "--eval-every", "20", "--ckpt-every", "10", "--keep-ckpts", "5", "--no-plots",
            "--out", str(disk / "runs"), "--name", "x")
    result = run_cli(*args, cwd=disk.parent)
    assert_user_error(result, "failed: the disk is full (", f"free on {disk}", "is intact",
                      f"tierlab train --resume {disk / 'runs' / 'x'}")
    assert leftovers(disk / "runs" / "x") == []


def test_a_half_written_checkpoint_of_a_killed_process_is_removed_on_the_next_start(tmp_path):
    first = run_cli("train", "--data", "demo", "--precision", "fp32", "--model-arg", "n_layer=1",
                    "--model-arg", "d_model=32", "--model-arg", "n_head=2", "--batch-size", "4", "--seq-len", "32",
                    "--max-steps", "10", "--ckpt-every", "5", "--no-plots", "--name", "r", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "r"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [run_dir / "checkpoints" / f".step-00000015.tmp{dead.stdout.strip()}.pt",
             run_dir / f".summary.tmp{dead.stdout.strip()}.json"]
    for path in stale:
        path.write_bytes(b"PK\x03\x04 half of a checkpoint")
    resumed = run_cli("train", "--resume", "runs/r", "--max-steps", "15", "--allow-config-change", "--no-plots",
                      cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(path.exists() for path in stale)
    assert "removed 2 temporary file(s) left by a write that was cut short" in resumed.stdout + resumed.stderr


@pytest.mark.parametrize("data", ["demo", "file"])
def test_a_token_cache_on_a_full_disk_is_a_plain_error_and_no_run_is_made(disk, tmp_path, data):
    fill(disk, 8192)
    cfg = fast_config(tmp_path, max_steps=5, data="demo" if data == "demo" else str(write_corpus(tmp_path / "c.txt")))
    with pytest.raises(UserError) as err:
        tierlab.train(config=cfg, cache_dir=disk / "cache")
    message = str(err.value)
    assert f"tierlab's cache in {str(disk / 'cache')!r}: the disk is full" in message or (
        f"Writing {disk / 'cache'}" in message and "failed: the disk is full (" in message), message
    assert "free on" in message and "TIERLAB_CACHE" in message
    assert not (tmp_path / "runs" / "run").exists()
    assert not [p for p in (disk / "cache").rglob("*") if p.is_file() and ".tmp" in p.name]  # nothing half-written


def test_a_run_whose_first_checkpoint_fails_is_told_to_start_again_and_can(disk):
    cfg = fast_config(disk, max_steps=20, ckpt_every=10, eval_every=0)
    progress = FillAt(disk, step=5, leave=0)
    with pytest.raises(CheckpointError) as err:
        tierlab.train(config=cfg, progress=progress)
    assert "no earlier checkpoint exists" in str(err.value) and "with `--resume auto`" in str(err.value)
    progress.filler.unlink()
    run = tierlab.train(config=cfg.replace(resume="auto"))  # what the message says: the same command, --resume auto
    assert run.summary["status"] == "completed" and run.summary["steps"] == 20
    names = sorted(p.name for p in (disk / "runs").iterdir())
    assert names[0] == "run" and names[1].startswith("run.incomplete-") and len(names) == 2  # the old one kept aside


def test_a_dashboard_the_disk_cannot_take_is_said_unless_the_run_failed_already(disk):
    from tierlab.train.run import write_dashboard

    run = tierlab.train(config=fast_config(disk, max_steps=10, no_plots=True))
    fill(disk, 0)
    with pytest.raises(WriteFailed, match=r"dashboard.png failed: the disk is full .*tierlab report"):
        write_dashboard(run.dir)
    write_dashboard(run.dir, failed=True)  # the run's own error stays the one reported: a warning only
    assert not (run.dir / "dashboard.png").exists() and leftovers(run.dir) == []
    report = run_cli("report", run.dir, "--out", disk / "d.png", cwd=disk.parent)
    assert_user_error(report, f"Writing {disk / 'd.png'} failed: the disk is full", "the runs are untouched")


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors"])
def test_an_export_to_a_full_disk_is_one_plain_line_and_leaves_nothing(disk, tmp_path, fmt):
    run = tierlab.train(config=fast_config(tmp_path, max_steps=5, eval_every=0))
    fill(disk, 20_000)  # less than the tiny model's weights
    result = run_cli("export", run.dir, "--format", fmt, "--out", disk / "m", cwd=tmp_path)
    assert_user_error(result, f"Writing {disk / 'm'} failed: the disk is full", "nothing was exported")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # no staging folder left
