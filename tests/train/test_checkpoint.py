"""Checkpoint files: atomic writes, pruning, weights_only loading, damaged and tampered files, disk full."""

import errno
import os
import pickle

import pytest
import torch

import tierlab
from helpers import as_written_by_earlier_tierlab, fast_config
from tierlab.train.checkpoint import (CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint,
                                      rng_state, save_checkpoint, set_rng_state)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = fast_config(tmp_path_factory.mktemp("ckpt"), max_steps=20, ckpt_every=5, keep_ckpts=2)
    return tierlab.train(config=cfg)


def test_periodic_and_final_checkpoints_keep_the_newest(run):
    assert [p.name for p in list_checkpoints(run.dir)] == ["step-00000015.pt", "step-00000020.pt"]
    assert latest_checkpoint(run.dir).name == "step-00000020.pt"
    assert (run.dir / "checkpoints" / "latest").read_text() == "step-00000020.pt"
    assert [e["step"] for e in run.events("checkpoint")] == [5, 10, 15, 20]
    assert not [p for p in (run.dir / "checkpoints").iterdir() if ".tmp" in p.name]


def test_checkpoint_holds_everything_a_resume_needs(run):
    state = load_checkpoint(latest_checkpoint(run.dir))
    assert {"model", "optimizer", "schedule", "precision", "ranks", "world_size", "loop", "guard", "records",
            "config", "tokenizer", "corpus_sha256", "model_fingerprint", "step", "tokens", "real_steps"} <= set(state)
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    assert {"rng", "sampler", "window"} == set(state["ranks"][0])
    assert state["step"] == 20 and state["tokens"] == 20 * 8 * 32 and int(state["real_steps"]) == 20
    assert state["tokenizer"] == "byte" and state["config"]["max_steps"] == 20
    assert {"python", "numpy", "torch"} <= set(state["ranks"][0]["rng"])
    assert state["loop"]["best_val_loss"] == run.summary["best_val_loss"]
    assert torch.equal(state["model"]["head.weight"], run.model.head.weight.detach())


def test_rng_state_round_trips():
    import random

    import numpy as np

    state = rng_state(torch.device("cpu"))
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.random(), np.random.rand(), torch.rand(1)
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_tampered_checkpoint_is_refused_and_runs_no_code(run, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = run.dir / "checkpoints" / "step-00000099.pt"
    torch.save({"format": 1, "model": Payload()}, path)
    try:
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
    finally:
        path.unlink()
    assert "refused" in str(err.value) and "not plain data" in str(err.value)
    assert not marker.exists()
    # A raw pickle (not a torch zip file) with the same payload is refused too.
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_truncated_checkpoint_names_the_file_and_offers_the_previous(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.dir, copy)
    newest = latest_checkpoint(copy)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    for mmap in (False, True):  # a resume's first look (the config, memory-mapped) refuses it just as plainly
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(newest, mmap=mmap)
        message = str(err.value)
        assert str(newest) in message and "damaged or truncated" in message
        assert "--resume" in message and "step-00000015.pt" in message


def test_the_config_look_maps_the_checkpoint_and_reads_the_same(run):
    from tierlab.train.resume import base_config

    newest = latest_checkpoint(run.dir)
    full = load_checkpoint(newest)
    assert base_config(str(run.dir), "runs", None) == full["config"]
    mapped = load_checkpoint(newest, mmap=True)
    assert all(torch.equal(mapped["model"][k], v) for k, v in full["model"].items())


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while the step-10 checkpoint is flushed; the step-5 one was written
        if ".step-00000010" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = fast_config(tmp_path, max_steps=20, ckpt_every=5, eval_every=0)
    with pytest.raises(CheckpointError) as err:
        tierlab.train(config=cfg)
    monkeypatch.setattr(os, "fsync", real_fsync)
    run_dir = tmp_path / "runs" / "run"
    assert "disk is full" in str(err.value) and "step-00000005.pt is intact" in str(err.value)
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000005.pt"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp" in p.name]
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == 5
    assert tierlab.Run.load(run_dir).summary["status"] == "failed"


def test_save_and_prune_directly(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003.pt", "step-00000004.pt"]
    (tmp_path / "checkpoints" / "latest").unlink()  # a missing pointer falls back to the newest file
    assert latest_checkpoint(tmp_path).name == "step-00000004.pt"


def test_a_checkpoint_of_an_earlier_tierlab_still_resumes_exactly(tmp_path):
    """Before the per-parameter norms moved into the step rows, a checkpoint's unread window held
    5-column rows plus the first skipped step's norms apart; such a checkpoint resumes to the same run."""
    import shutil

    from helpers import train_records

    cfg = fast_config(tmp_path, max_steps=16, log_every=4, ckpt_every=6, keep_ckpts=5, eval_every=8, warmup_steps=1,
                      precision="fp16", loss_scale_init=2.0**24, loss_scale_growth_interval=3)
    whole = tierlab.train(config=cfg.replace(name="whole"))
    assert whole.summary["skipped_steps"] >= 1  # the window's skip flags are part of what resumes
    shutil.copytree(whole.dir, tmp_path / "runs" / "old")
    path = tmp_path / "runs" / "old" / "checkpoints" / "step-00000006.pt"
    state = load_checkpoint(path)
    window = state["ranks"][0]["window"]
    assert window["rows"].shape[0] == 2  # steps 5 and 6 were not logged yet
    params = window["rows"].shape[1] - 5
    state["ranks"][0]["window"] = {"rows": window["rows"][:, :5], "have_bad": torch.tensor(False),
                                   "first_bad_norms": torch.zeros(params)}
    torch.save(state, path)
    as_written_by_earlier_tierlab(tmp_path / "runs" / "old")
    resumed = tierlab.train(config=cfg.replace(name="old", resume=str(path)))
    assert resumed.summary["status"] == "completed"
    assert train_records(whole.dir) == train_records(resumed.dir)
    assert torch.equal(whole.model.head.weight, resumed.model.head.weight)

    def events(run):  # (event, step) pairs, without the resume's own
        return [(e["event"], e.get("step")) for e in run.events() if e["event"] not in ("resume", "precision")]
    assert events(whole) == events(resumed)


def test_a_file_of_random_bytes_is_called_not_a_checkpoint(tmp_path):
    """Issue 19.15: not a security risk, not 'damaged': not a checkpoint at all."""
    path = tmp_path / "step-00000010.pt"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(CheckpointError, match="is not a checkpoint: a PyTorch checkpoint is a zip archive"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="it is empty"):
        load_checkpoint(path)
