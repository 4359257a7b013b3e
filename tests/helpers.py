"""Shared helpers: a fast config, a generated corpus, model files, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tierlab import TrainConfig

TINY_MODEL = {"n_layer": 1, "n_head": 2, "d_model": 32, "max_seq_len": 64}


def fast_config(tmp_path: Path, **changes) -> TrainConfig:
    """A run that takes a second or two on one CPU core."""
    values = dict(model="tiny-gpt", model_args=dict(TINY_MODEL), data="demo", seq_len=32, batch_size=8,
                  max_steps=20, log_every=5, eval_every=10, eval_batches=2, out=str(tmp_path / "runs"),
                  name="run", quiet=True, precision="fp32", lr=1e-2)
    values.update(changes)
    return TrainConfig(**values)


_WORDS = ("the cat dog bird sat ran flew on under over a red blue green mat tree house and then "
          "quickly slowly saw heard big small").split()


def write_corpus(path: Path, sentences: int = 3000, seed: int = 0) -> Path:
    """English-like text from a small vocabulary: learnable, and different from the demo data."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 10))]
        lines.append(" ".join(words).capitalize() + ".")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_model(directory: Path, source: str, name: str = "my_model.py") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    """The real ``tierlab`` command, as a user runs it (a separate process); ``input`` is its stdin."""
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "tierlab", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, input=input)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one plain message containing ``fragments``, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("tierlab: error:"), result.stderr
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def checkpoint_pause_env(seconds: float) -> dict[str, str]:
    """Environment for a training process whose checkpoint writes pause half-way (tests/faults/sitecustomize.py)."""
    faults = str(Path(__file__).parent / "faults")
    path = os.pathsep.join(filter(None, [faults, os.environ.get("PYTHONPATH")]))
    return {"TIERLAB_TEST_CKPT_PAUSE": str(seconds), "PYTHONPATH": path}


# A model with 40 outputs, fewer than the byte tokenizer's 256 tokens: factories with and without vocab_size.
NARROW_MODEL = """
    from torch import nn

    class Narrow(nn.Module):
        '''40 outputs, fewer than the byte tokenizer's 256 tokens.'''
        def __init__(self, width=40):
            super().__init__()
            self.emb, self.head = nn.Embedding(256, 16), nn.Linear(16, width)

        def forward(self, ids):
            return self.head(self.emb(ids))

    def fixed():
        return Narrow()

    def sized(vocab_size):
        return Narrow(vocab_size)

    def ignores_it(vocab_size):
        return Narrow()
"""


# Figures that depend on the machine's speed, left out when two runs are compared.
TIMING = ("tokens_per_s", "step_ms", "mem_peak_mb", "mfu")


def as_written_by_earlier_tierlab(run_dir: Path) -> None:
    """Make a run look like one of a tierlab before run ids and checksums (no run.json, no step-N.pt.json).

    For tests that edit a checkpoint to imitate an older format: such a checkpoint never had
    a checksum, and an edited one would (rightly) be refused as damaged.
    """
    (run_dir / "run.json").unlink(missing_ok=True)
    for meta in (run_dir / "checkpoints").glob("*.pt.json"):
        meta.unlink()


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the training process"
        time.sleep(0.01)


def train_records(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0


def assert_same_run(a: Path, b: Path) -> None:
    assert train_records(a) == train_records(b)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert_written_once(b)


def assert_written_once(run_dir: Path) -> None:
    """No record written twice (a resume must cut what followed its checkpoint), and in step order."""
    records = [(e["event"], e.get("step")) for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
               if e["event"] in ("step_skipped", "loss_scale_change", "checkpoint")]
    records += [("metrics:" + m["kind"], m["step"]) for m in map(json.loads, (run_dir / "metrics.jsonl").read_text()
                                                                 .splitlines())]
    assert len(records) == len(set(records)), "a record was written twice"
    for kind in {k for k, _ in records}:
        steps = [s for k, s in records if k == kind]
        assert sorted(steps) == steps, f"{kind} records out of step order"


class SpikeAt(torch.nn.Module):
    """Wraps a model and multiplies its logits by ``factor`` on training forward number ``at``.

    ``at`` is a call number or a container of them (e.g. ``range(8, 10**9)``).
    ``factor=1e6`` overflows fp16 (max 65504); ``factor=float('nan')`` poisons any precision.
    """

    def __init__(self, inner, at: int | None, factor: float = 1e6):
        super().__init__()
        self.inner, self.at, self.factor, self.calls = inner, at, factor, 0

    def forward(self, input_ids):
        logits = self.inner(input_ids)
        if self.training:
            self.calls += 1
            if self.calls == self.at or (hasattr(self.at, "__contains__") and self.calls in self.at):
                logits = logits * self.factor
        return logits


def read_wandb_file(path: Path) -> list:
    """The records of an offline W&B run file (``run-ID.wandb``), parsed with wandb's own protobuf.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic, version), then
    32 KiB blocks of records, each ``crc32 | length | type`` + data; types FULL=1,
    FIRST=2, MIDDLE=3, LAST=4 split a record across blocks.
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunks, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    records = []
    for raw in chunks:
        record = pb.Record()
        record.ParseFromString(raw)
        records.append(record)
    return records


def wandb_history_and_config(run_dir: Path) -> tuple[list[dict], dict]:
    import json as _json

    (path,) = list(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    records = read_wandb_file(path)
    history = [{(item.key or "/".join(item.nested_key)): _json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    config = {}
    for r in records:
        if r.WhichOneof("record_type") == "run":
            config.update({u.key: _json.loads(u.value_json) for u in r.run.config.update})
    return history, config


# A model that behaves as on a GPU too small for its batch: beyond 8 sequences its forward
# raises the error torch raises then (the CPU has no such limit to hit).
GREEDY_MODEL = """
    import torch
    from tierlab.models.tiny_gpt import TinyGPT

    class Greedy(TinyGPT):
        def forward(self, ids):
            if ids.size(0) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return super().forward(ids)

    def build_model(vocab_size):
        return Greedy(vocab_size=vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
"""


class SilentServer:
    """A loopback TCP server that accepts every connection and never answers (a hung tracker or database).

    ``with SilentServer() as port:`` -- the connections it accepted are closed on exit.
    """

    def __enter__(self) -> int:
        import socket
        import threading

        self._socket = socket.create_server(("127.0.0.1", 0))
        self._held: list = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self._socket.getsockname()[1]

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by __exit__
                return
            self._held.append(connection)

    def __exit__(self, *exc) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


def silent_wandb_env(port: int) -> dict[str, str]:
    """Environment for W&B in online mode against a server that never answers (a dummy key: no login prompt)."""
    return {"WANDB_BASE_URL": f"http://127.0.0.1:{port}", "WANDB_API_KEY": "0" * 40, "WANDB_SILENT": "true",
            "WANDB_MODE": "online"}


_CUES = {"neg": ("awful", "dull", "boring"), "pos": ("great", "lovely", "superb"), "mixed": ("fine", "okay", "so-so")}


def labelled_rows(count: int = 240, seed: int = 0, classes: tuple[str, ...] = ("neg", "pos")) -> list[tuple[str, str]]:
    """(text, label) rows a small model learns: each text holds two cue words of its label among filler words.

    Sorted by label, as many labelled files are (all negatives, then all positives).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = classes[i % len(classes)]
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 8))] + [rng.choice(_CUES[label]) for _ in range(2)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return sorted(rows, key=lambda row: row[1])


def write_labelled_csv(path: Path, rows: list[tuple[str, object]] | None = None, header=("text", "label")) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(labelled_rows() if rows is None else rows)
    return path
