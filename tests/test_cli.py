"""The real `tierlab` command in a subprocess: success paths, user errors (exit 2), interruption (130)."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import GREEDY_MODEL, NARROW_MODEL, assert_user_error, run_cli, write_corpus, write_model

TINY = ["--model-arg", "n_layer=1", "--model-arg", "d_model=32", "--model-arg", "n_head=2",
        "--model-arg", "max_seq_len=64"]
SHAPE = ["--seq-len", "32", "--batch-size", "8", "--eval-batches", "2", "--lr", "0.01"]
FAST = TINY + SHAPE

NANOGPT_STYLE = """
import torch
import torch.nn.functional as F
from torch import nn

class GPT(nn.Module):
    '''nanoGPT's calling convention: forward(idx, targets=None) -> (logits, loss), and without
    targets only the last position's logits (its generation shortcut).'''
    def __init__(self, vocab_size, block_size=64, n_embd=32):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.attn = nn.MultiheadAttention(n_embd, 2, batch_first=True)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=idx.device), 1)
        x = x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)

def make_gpt(vocab_size, n_embd=32):
    return GPT(vocab_size, n_embd=n_embd)
"""


def test_train_from_a_config_file_with_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('max_steps = 10\nlog_every = 5\neval_every = 10\nseq_len = 16\n'
                                       'batch_size = 8\nlr = 0.01\neval_batches = 2\n'
                                       '[model_args]\nn_layer = 1\nd_model = 32\nn_head = 2\nmax_seq_len = 64\n')
    result = run_cli("train", "--config", "run.toml", "--seq-len", "32", "--name", "a", "--model-arg", "n_head=4",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "runs" / "a" / "config.json").read_text())
    assert config["seq_len"] == 32 and config["max_steps"] == 10  # command line wins, file fills the rest
    assert config["model_args"] == {"n_layer": 1, "d_model": 32, "n_head": 4, "max_seq_len": 64}
    # Not a terminal: plain log lines, one per log step, and a closing summary line.
    assert "precision: fp32" in result.stdout
    assert result.stdout.count("step 5/10 | loss") == 1
    assert "done: runs/a" in result.stdout

    # The run's own config.json reproduces its settings.
    again = run_cli("train", "--config", "runs/a/config.json", "--name", "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    config_b = json.loads((tmp_path / "runs" / "b" / "config.json").read_text())
    assert {**config_b, "name": "a"} == config


def test_quiet_prints_nothing_and_module_entry_point_works(tmp_path):
    result = run_cli("train", *FAST, "--max-steps", "4", "--eval-every", "0", "--quiet", "--precision", "fp16",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("run-") and (run_dir / "summary.json").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["final_loss_scale"] == 65536.0
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tierlab ")


def test_third_party_model_file_with_a_named_factory(tmp_path):
    model = write_model(tmp_path, NANOGPT_STYLE)
    corpus = write_corpus(tmp_path / "corpus.txt", sentences=1500)
    result = run_cli("train", "--model", f"{model}:make_gpt", "--model-arg", "n_embd=48", "--data", corpus,
                     "--seq-len", "32", "--max-steps", "30", "--eval-every", "30", "--eval-batches", "2",
                     "--lr", "0.01", "--name", "nano", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "runs" / "nano" / "summary.json").read_text())
    assert summary["final_val_loss"] < 3.0


# ~25 s: a Hugging Face model also trains in-suite through test_classify (a sequence classifier) and
# test_objective (BertForMaskedLM); this one, a GPT-2 with a BPE tokenizer in bf16, runs with -m slow.
@pytest.mark.slow
def test_hugging_face_model(tmp_path):
    pytest.importorskip("transformers")
    model = write_model(tmp_path, """
        from transformers import GPT2Config, GPT2LMHeadModel

        def build_model(vocab_size, n_layer=1, n_embd=32):
            config = GPT2Config(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=2, n_positions=64,
                                bos_token_id=0, eos_token_id=0)
            return GPT2LMHeadModel(config)
        """, name="hf_gpt2.py")
    corpus = write_corpus(tmp_path / "corpus.txt", sentences=1500)
    too_long = run_cli("train", "--model", model, "--data", corpus, "--seq-len", "128", cwd=tmp_path)
    assert_user_error(too_long, "--seq-len 128 is longer than the model's 64 positions")
    result = run_cli("train", "--model", model, "--data", corpus, "--tokenizer", "bpe:300", "--seq-len", "32",
                     "--max-steps", "20", "--eval-every", "20", "--eval-batches", "2", "--lr", "0.005",
                     "--precision", "bf16", "--name", "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = tmp_path / "runs" / "hf"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["final_val_loss"] < 5.0  # from ln(300) = 5.7
    start = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    assert start["vocab_size"] == 300


def test_hugging_face_dataset_folder_of_parquet_shards(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    lines = write_corpus(tmp_path / "corpus.txt", sentences=1200).read_text().splitlines()
    shards = tmp_path / "my_dataset" / "data"
    shards.mkdir(parents=True)
    for i in range(2):
        part = lines[i::2]
        pq.write_table(pa.table({"id": list(range(len(part))), "content": part}),
                       shards / f"train-0000{i}-of-00002.parquet")
    (tmp_path / "my_dataset" / "README.md").write_text("---\nlicense: cc0\n---\n")
    result = run_cli("train", *TINY, *SHAPE, "--data", "my_dataset", "--text-field", "content", "--max-steps", "6",
                     "--eval-every", "6", "--eval-batches", "2", "--name", "pq", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "runs" / "pq" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_val_loss"] < 5.5  # ln 256 = 5.55 untrained
    config = json.loads((tmp_path / "runs" / "pq" / "config.json").read_text())
    assert config["text_field"] == "content" and config["data"] == str(tmp_path / "my_dataset")


BAD_MODEL = """
import torch
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.e = torch.nn.Embedding(256, 16)
    def forward(self, input_ids):
        return self.e(input_ids)[:, -1]     # forgot the per-position logits
"""


@pytest.mark.parametrize("args, fragments", [
    (["--data", "missing.txt"], ["'missing.txt' does not exist"]),
    (["--data", "empty.txt"], ["is empty"]),
    (["--data", "latin1.txt"], ["not valid UTF-8", "offset 9"]),
    (["--data", "cut.txt.gz"], ["is not a complete gzip file", "gzip -t FILE"]),
    (["--data", "table.csv"], ['has no column "text" (its columns: id, body)', "--text-field id"]),
    (["--data", "empty.txt", "latin1.txt"], ["2 files where one --data was expected", "quote the pattern"]),
    (["--model", "bad_model.py"], ["returned logits of shape [2, 16]", "[B, T, V]"]),
    (["--model", "no_such_model.py"], ["does not exist"]),
    (["--model-arg", "vocab_size=40"], ["token id", "only 40 outputs", "vocab_size"]),
    (["--seq-len", "100"], ["longer than the model's 64 positions"]),
    (["--precision", "int4"], ["--precision 'int4'", "auto, fp32, tf32, bf16, fp16, fp8"]),
    (["--max-steps", "many"], ["--max-steps", "invalid int value"]),
    (["--bogus-option"], ["unrecognized arguments: --bogus-option"]),
    (["--config", "typo.toml"], ["Unknown option 'batch_sise'", "did you mean 'batch_size'"]),
    (["--device", "cuda"], ["sees no CUDA device"]),
    (["--tokenizer", "nope/tokenizer.json"], ["does not exist"]),
])
def test_user_errors_exit_2_with_one_plain_message(tmp_path, args, fragments):
    if "cuda" in args:
        pytest.importorskip("torch")
        import torch
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xc3\xa9 caf\xe9\n")
    (tmp_path / "typo.toml").write_text("batch_sise = 4\n")
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(os.urandom(4000))[:1000])
    (tmp_path / "table.csv").write_text("id,body\n1,some text\n")
    write_model(tmp_path, BAD_MODEL, name="bad_model.py")
    model_args = [] if "--model" in args else TINY
    result = run_cli("train", *model_args, *SHAPE, "--max-steps", "2", *args, cwd=tmp_path)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "runs").exists()


def test_user_error_never_touches_an_existing_run(tmp_path):
    first = run_cli("train", *FAST, "--max-steps", "3", "--eval-every", "0", "--name", "keep", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "runs" / "keep"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_cli("train", *FAST, "--max-steps", "3", "--name", "keep", cwd=tmp_path)
    assert_user_error(again, "already exists")
    bad = run_cli("train", *FAST, "--name", "keep", "--data", "missing.txt", "--precision", "fp16", cwd=tmp_path)
    assert_user_error(bad, "already exists")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_ctrl_c_exits_130_and_closes_the_run(tmp_path):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "tierlab", "train", *FAST, "--max-steps", "100000",
                             "--log-every", "5", "--eval-every", "0", "--name", "stop"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "runs" / "stop" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    run_dir = tmp_path / "runs" / "stop"
    assert f"continue with: tierlab train --resume {Path('runs') / 'stop'}" in err  # how to go on
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] >= 10
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "interrupted"
    assert (run_dir / "model.safetensors").is_file()


def test_out_of_memory_is_one_plain_line_with_the_batch_that_fits(tmp_path):
    write_model(tmp_path, GREEDY_MODEL)
    result = run_cli("train", "--model", "my_model.py", "--batch-size", "16", "--seq-len", "32", "--max-steps", "5",
                     "--eval-every", "0", "--name", "big", cwd=tmp_path)
    assert_user_error(result, "Out of memory at step 1 with batch 16 x seq 32 on cpu",
                      "--batch-size 8 --grad-accum 2 (the same global batch", "runs/big keeps the failed start")
    assert json.loads((tmp_path / "runs" / "big" / "summary.json").read_text())["status"] == "failed"
    fits = run_cli("train", "--model", "my_model.py", "--batch-size", "8", "--grad-accum", "2", "--seq-len", "32",
                   "--max-steps", "2", "--eval-every", "0", "--name", "fits", "--quiet", cwd=tmp_path)
    assert fits.returncode == 0, fits.stderr


def test_too_few_outputs_suggest_vocab_size_only_to_a_factory_that_takes_it(tmp_path):
    write_model(tmp_path, NARROW_MODEL, name="narrow.py")
    result = run_cli("train", "--model", "narrow.py:fixed", *SHAPE, "--max-steps", "2", cwd=tmp_path)
    assert_user_error(result, "only 40 outputs", "make the model's output layer and its token embedding at least "
                      "256 wide", "narrow.py:fixed takes no vocab_size argument")
    assert "vocab_size=" not in result.stderr
    sized = run_cli("train", *TINY, *SHAPE, "--max-steps", "2", "--model-arg", "vocab_size=40", cwd=tmp_path)
    assert_user_error(sized, "only 40 outputs", "(e.g. --model-arg vocab_size=256)")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_while_torch_loads_is_a_plain_interrupt(tmp_path):
    """The first second of a command is torch's import: a Ctrl-C there exits 130 without a traceback (issue 19.16).

    (Raised inside numpy's import, a KeyboardInterrupt came out as an ImportError with a
    traceback, or was swallowed: tierlab holds the signal until the import is done.)
    """
    for delay in (0.5, 0.9, 1.4):
        # (A test worker may run with SIGINT ignored or blocked, which a child inherits: give it a terminal's.)
        proc = subprocess.Popen([sys.executable, "-m", "tierlab", "train", "--max-steps", "3", "--quiet"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode == 130, (delay, err)
        assert err.strip().splitlines()[-1] == "tierlab: interrupted"


def test_help_and_the_parser_do_not_import_torch():
    code = ("import sys, tierlab, tierlab.cli; tierlab.cli.build_parser().parse_args(['train', '--lr', '1e-3']); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr
    # The public names still resolve (lazily), and the functions keep their subpackage names.
    code = ("import tierlab, tierlab.train.api, tierlab.validate.checks; "
            "print(callable(tierlab.train), callable(tierlab.validate), tierlab.TrainConfig.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True", "True", "TrainConfig"], result.stderr
