"""One live writer per run directory (issue 19, ownership): a second train, resume or --resume auto is refused."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_user_error, run_cli, wait_for
from tierlab.train.run_lock import RunInUse, RunLock

TINY = ("--precision", "fp32", "--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
        "--batch-size", "4", "--seq-len", "32", "--log-every", "5", "--eval-every", "0", "--no-plots", "--quiet")


def _live_run(tmp_path: Path, ckpt_every: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tierlab", "train", *TINY, "--max-steps", "100000",
                             "--ckpt-every", str(ckpt_every), "--name", "X"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_resume_of_a_live_run_is_refused_and_writes_nothing(tmp_path):
    proc = _live_run(tmp_path, ckpt_every=5)
    run = tmp_path / "runs" / "X"
    try:
        wait_for(lambda: (run / "checkpoints" / "latest").is_file())
        for args in (("--resume", str(run)), ("--resume", "auto", "--name", "X")):
            result = run_cli("train", *TINY, "--max-steps", "100000", "--ckpt-every", "5", *args, cwd=tmp_path)
            assert_user_error(result, "is in use by another tierlab process", f"pid {proc.pid} on host")
        assert proc.poll() is None  # the live run goes on, untouched
        assert not list(tmp_path.glob("runs/X.incomplete-*"))
        events = (run / "events.jsonl").read_text()
        assert events.count('"event": "run_start"') == 1 and '"resume"' not in events
    finally:
        _stop(proc)
    # SIGKILL took the lock with the process: the run resumes now (a few steps past its checkpoint).
    step = int((run / "checkpoints" / "latest").read_text().strip()[5:13])
    result = run_cli("train", *TINY, "--ckpt-every", "5", "--resume", str(run), "--max-steps", str(step + 5),
                     "--warmup-steps", "0", "--allow-config-change", cwd=tmp_path)  # (its warm-up was 100 steps)
    assert result.returncode == 0, result.stderr


def test_resume_auto_never_sets_a_live_run_aside(tmp_path):
    """Before its first checkpoint a run has nothing to resume; while it is live, it is not set aside either."""
    proc = _live_run(tmp_path, ckpt_every=0)
    run = tmp_path / "runs" / "X"
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0)
        result = run_cli("train", *TINY, "--max-steps", "10", "--resume", "auto", "--name", "X", cwd=tmp_path)
        assert_user_error(result, "is in use by another tierlab process")
        assert run.is_dir() and not list(tmp_path.glob("runs/X.incomplete-*"))
        assert proc.poll() is None
    finally:
        _stop(proc)
    # Dead, with no checkpoint: now --resume auto sets it aside and starts fresh, as documented.
    result = run_cli("train", *TINY, "--max-steps", "10", "--resume", "auto", "--name", "X", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(tmp_path.glob("runs/X.incomplete-*"))) == 1


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunInUse, match=f"pid {os.getpid()} on host"):
        second.acquire()
    first.release()
    second.acquire()  # free again
    assert second.held
    second.release()
