"""Does ``--precision auto`` pick what ``tierlab bench precision`` measures fastest, run after run?

For each model and batch shape of issue 17's table: one ``bench_precision`` (fp32 against
bf16, interleaved, ``--steps`` timed steps each), then ``--repeats`` fresh ``auto`` decisions
(the cache emptied before each, so every one really measures) for a 400-step run -- the
quick start's length.  Prints the bench figure, each decision with its figures, and whether
each decision is the fastest or within auto's 5% margin of it.

    python benchmarks/auto_precision.py              # the whole table (a few minutes on 2 cores)
    python benchmarks/auto_precision.py --rows 0,1   # some rows

On a CPU without native bf16 ``auto`` decides fp32 without measuring; run with
TIERLAB_CPU_NATIVE_BF16=1 to make it measure anyway.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from tierlab import TrainConfig
from tierlab.bench import bench_precision
from tierlab.data import prepare_data
from tierlab.models import load_model
from tierlab.train.setup import first_block
from tierlab.train.auto_precision import MARGIN, AutoProbe
from tierlab.train.device import cpu_native_bf16


def small_llama(vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512))


ROWS = [  # (label, model args for tiny-gpt or None for the Llama, batch, length)
    ("tiny-gpt", {}, 4, 64),
    ("tiny-gpt", {}, 16, 128),
    ("tiny-gpt", {}, 8, 256),
    ("HF Llama 2x64", None, 8, 64),
    ("tiny-gpt 512x4", {"d_model": 512, "n_layer": 4, "n_head": 8}, 8, 256),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(str(i) for i in range(len(ROWS))))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    flag = cpu_native_bf16()
    if flag is None:
        raise SystemExit("this CPU has no native bf16: auto decides fp32 without measuring "
                         "(TIERLAB_CPU_NATIVE_BF16=1 makes it measure)")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"CPU: {cpu} ({flag}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| model | batch | bench bf16 / fp32 | bench fastest | auto (bf16 / fp32 measured) | ok |")
    print("|---|---|---|---|---|---|")
    cache = Path(tempfile.mkdtemp(prefix="tierlab-autobench-"))
    try:
        for i in map(int, args.rows.split(",")):
            label, model_args, batch, length = ROWS[i]
            cfg = TrainConfig(model="tiny-gpt", model_args=model_args or {}, batch_size=batch, seq_len=length,
                              quiet=True, precision="auto")
            tokens = prepare_data("demo", "byte", cfg.val_fraction, cache)
            model = (small_llama(tokens.tokenizer.vocab_size) if model_args is None else
                     load_model("tiny-gpt", model_args, tokens.tokenizer.vocab_size))
            result = bench_precision(cfg, steps=args.steps, warmup_steps=3, precisions=("fp32", "bf16"), chunk=2,
                                     cache_dir=cache, model=model)
            rows = {r.precision: r for r in result.rows}
            bench_ratio = rows["bf16"].speedup_vs_fp32
            fastest_ms = min(r.median_step_ms for r in rows.values())
            picks = []
            for _ in range(args.repeats):
                shutil.rmtree(cache / "precision", ignore_errors=True)  # measure for real every time
                probe = AutoProbe(model, first_block(tokens, cfg), torch.device("cpu"), 400, cache)
                decision = probe(flag)
                ok = rows[decision.used].median_step_ms <= fastest_ms * MARGIN
                ratio = decision.measured["speedup_vs_fp32"]["bf16"]
                picks.append((decision.used, ratio, ok))
            fastest = min(rows, key=lambda p: rows[p].median_step_ms)
            said = ", ".join(f"{used} ({ratio:.2f}x)" for used, ratio, _ in picks)
            print(f"| {label} | {batch} x {length} | {bench_ratio:.2f}x | {fastest} | {said} | "
                  f"{'yes' if all(ok for *_, ok in picks) else 'NO'} |", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
