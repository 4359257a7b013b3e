"""Mutation pass over the training loop's invariants: each mutant is applied to a fresh clone of HEAD, the
train tests run against it (-x), and the mutant is "killed" when they fail.

    .venv/bin/python tools/mutate.py            # every mutant (about an hour on 2 cores)
    .venv/bin/python tools/mutate.py 5,12       # some, by index

The clone is imported through PYTHONPATH (the CLI subprocesses inherit it), so the working tree is
never touched. A surviving mutant that changes behaviour needs a test.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
ROOT = Path(tempfile.mkdtemp(prefix="tierlab-mutants-")) / "clone"
subprocess.run(["git", "clone", "-q", str(HERE), str(ROOT)], check=True)
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
MUTANTS = [
 ("schedule: skips not counted", "src/tierlab/train/loop.py", "        self.skips.add_(row.skipped)\n", "        pass\n"),
 ("schedule: lr lookup one step late", "src/tierlab/train/loop.py", "start = max(0, len(self.lr_reversed) - 1 - self.state.step)", "start = max(0, len(self.lr_reversed) - self.state.step)"),
 ("schedule: real_steps recorded as all steps", "src/tierlab/train/loop.py", '"real_steps": (self.state.step - self.skips.to(torch.int64)).cpu()', '"real_steps": torch.tensor(self.state.step)'),
 ("schedule: cosine ignores warm-up offset", "src/tierlab/train/schedule.py", "progress = ((s - self.warmup_steps) / decay_steps)", "progress = (s / decay_steps)"),
 ("accumulation: micro-batch loss not divided", "src/tierlab/train/loop.py", "policy.backward(loss / cfg.grad_accum if cfg.grad_accum > 1 else loss)", "policy.backward(loss)"),
 ("accumulation: logged loss not averaged", "src/tierlab/train/loop.py", "            row.loss.div_(cfg.grad_accum)\n", "            pass\n"),
 ("clipping: coefficient may scale up", "src/tierlab/train/loop.py", "max=1.0)", "max=10.0)"),
 ("clipping: L1 norm instead of L2", "src/tierlab/train/loop.py", "torch.linalg.vector_norm(per_param, out=total)", "torch.linalg.vector_norm(per_param, ord=1, out=total)"),
 ("skips: non-finite fp32 grads not flagged", "src/tierlab/train/precision.py", "torch.nan_to_num(norm.float() * 0, nan=1.0, out=out)", "torch.nan_to_num(norm.float() * 0, nan=0.0, out=out)"),
 ("skips: scaler's skip flag dropped", "src/tierlab/train/precision.py", "return skipped_out.copy_(skipped) if skipped_out is not None else skipped", "return skipped_out.zero_() if skipped_out is not None else skipped * 0"),
 ("scaler: state not restored on resume", "src/tierlab/train/loop.py", '        self.policy.load_state_dict(state["precision"])\n', "        pass\n"),
 ("scaler: update() not called", "src/tierlab/train/precision.py", "        self.scaler.update()\n", "        pass\n"),
 ("rng: random streams not restored", "src/tierlab/train/loop.py", '        set_rng_state(part["rng"])\n', "        pass\n"),
 ("sampler: position not restored", "src/tierlab/train/loop.py", '        self.batches.load_state_dict(part["sampler"])\n', "        pass\n"),
 ("records: metrics not cut back on resume", "src/tierlab/train/run.py", '        metrics.truncate(resume_state["records"]["metrics"])\n', "        pass\n"),
 ("records: events not cut back on resume", "src/tierlab/train/run.py", '        events.truncate(resume_state["records"]["events"])\n', "        pass\n"),
 ("records: unread rows not restored", "src/tierlab/train/step_buffer.py", "        self.rows[: self.filled, : rows.shape[1]] = rows.to(self.rows.device)\n", "        pass\n"),
 ("guard: consecutive-skip limit off by one", "src/tierlab/train/guards.py", "if self.state.consecutive_skips >= self.max_consecutive_skips:", "if self.state.consecutive_skips > self.max_consecutive_skips:"),
 ("rollback: lr not lowered", "src/tierlab/train/loop.py", "rollbacks, lr_scale = guard.rollbacks + 1, guard.lr_scale * self.cfg.rollback_lr_factor", "rollbacks, lr_scale = guard.rollbacks + 1, guard.lr_scale"),
 ("zero_grad dropped (grads accumulate across steps)", "src/tierlab/train/loop.py", "        self.optimizer.zero_grad(set_to_none=True)\n        self.skips", "        self.skips"),
]
TESTS = ["tests/train", "tests/test_cli.py", "tests/test_helpers.py"]
only = set(map(int, sys.argv[1].split(","))) if len(sys.argv) > 1 else None
results = []
for i, (name, path, old, new) in enumerate(MUTANTS):
    if only is not None and i not in only:
        continue
    f = ROOT / path
    text = f.read_text()
    assert text.count(old) == 1, (name, text.count(old))
    f.write_text(text.replace(old, new))
    t = time.time()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", *TESTS, "-x", "-q", "-p", "no:cacheprovider",
                            "--ignore", "tests/train/test_auto_precision.py"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
        out = r.stdout.strip().splitlines()
        killed = r.returncode != 0
        first = next((l for l in out if l.startswith("FAILED")), "")
    finally:
        f.write_text(text)
    results.append({"mutant": name, "killed": killed, "by": first, "s": round(time.time() - t)})
    print(json.dumps(results[-1]), flush=True)
print(f"killed {sum(r['killed'] for r in results)}/{len(results)}")
