"""Launching tierlab under the real torchrun (2 processes, gloo on the CPU), for the distributed tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this torch build has no gloo backend")

MODEL = ["--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
         "--model-arg", "max_seq_len=64"]
COMMON = ["--seq-len", "32", "--eval-batches", "2", "--lr", "0.01", "--max-steps", "40", "--log-every", "5",
          "--eval-every", "10", "--ckpt-every", "10", "--device", "cpu", "--quiet",
          "--precision", "fp16", "--loss-scale-init", "1048576", "--loss-scale-growth-interval", "4"]


def job_env(**extra: str) -> dict[str, str]:
    """The environment of every run here, read when the run starts (so the suite's token cache applies).

    One thread per process: torchrun sets it for its workers, and a single-process reference
    must compute with the same kernels to be comparable.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def torchrun(cwd: Path, *args: str, env_extra: dict | None = None) -> subprocess.Popen:
    """``torchrun --standalone --nproc_per_node 2 -m tierlab train ARGS`` in its own process group."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "tierlab", "train", *args]
    return subprocess.Popen(command, cwd=cwd, env=job_env(**(env_extra or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers at once, as when the machine is lost.

    torchrun starts each worker in a session of its own, so killing torchrun's process
    group would leave the workers running: they are found by their parent pid instead.
    """
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == proc.pid:  # the field after the state is the parent pid
            workers.append(int(stat.parent.name))
    for pid in [proc.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate()


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        raise
    return proc.returncode, err
