"""What a person sees: a progress bar on a terminal, plain lines otherwise (real pseudo-terminal)."""

import os
import pty
import subprocess
import sys

from helpers import run_cli

ARGS = ["train", "--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
        "--model-arg", "max_seq_len=64", "--seq-len", "32", "--batch-size", "8", "--max-steps", "20",
        "--log-every", "5", "--eval-every", "10", "--eval-batches", "2", "--precision", "fp16", "--no-plots"]


def test_terminal_gets_a_progress_bar_with_loss_tokens_and_scale(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tierlab", *ARGS, "--name", "tty"], cwd=tmp_path,
                            stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=dict(os.environ))
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", errors="replace")
    assert proc.returncode == 0, screen
    assert "20/20" in screen and "step/s" in screen  # tqdm's bar, counting optimizer steps
    assert "loss=" in screen and "tok/s=" in screen and "scale=" in screen
    assert "step 5/20 | loss" not in screen  # the bar replaces the per-step lines
    assert "val_loss" in screen  # evaluations are printed above the bar


def test_pipe_gets_plain_lines(tmp_path):
    result = run_cli(*ARGS, "--name", "pipe", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "step/s" not in result.stdout and "\r" not in result.stdout
    assert [l.split(" |")[0] for l in result.stdout.splitlines() if "| loss" in l] == [
        f"step {s}/20" for s in (5, 10, 15, 20)]
