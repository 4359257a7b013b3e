"""A run's identity (issue 19): checkpoints carry the run id and a checksum; nothing foreign, damaged or chosen by a
checkpoint is used."""

import json
import shutil
import textwrap

import pytest
from helpers import assert_user_error, fast_config, run_cli, write_model

import tierlab
from tierlab.errors import UserError
from tierlab.train.checkpoint import list_checkpoints, sidecar


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Runs X and Y (other seed and lr), 40 steps, a checkpoint every 10."""
    root = tmp_path_factory.mktemp("identity")
    for name, seed, lr in (("X", 1, 1e-2), ("Y", 2, 2e-2)):
        tierlab.train(config=fast_config(root, name=name, seed=seed, lr=lr, max_steps=40, ckpt_every=10,
                                         keep_ckpts=4, no_plots=True))
    return root


@pytest.fixture
def runs(two_runs, tmp_path):
    shutil.copytree(two_runs / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def _resume(run, **changes):
    return tierlab.resume(run, {"max_steps": 60, "allow_config_change": True, **changes})


def _snapshot(run):
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def test_checkpoints_carry_the_run_id_and_a_checksum(runs):
    run_id = (runs / "X" / "run.json").read_text()
    for ckpt in list_checkpoints(runs / "X"):
        meta = sidecar(ckpt).read_text()
        assert '"sha256"' in meta and run_id.split('"run_id": "')[1][:32] in meta


def test_a_checkpoint_copied_from_another_run_is_refused(runs):
    x, y = runs / "X", runs / "Y"
    for with_checksum in (False, True):
        foreign = x / "checkpoints" / "step-00000070.pt"
        shutil.copy(y / "checkpoints" / "step-00000040.pt", foreign)
        if with_checksum:
            shutil.copy(sidecar(y / "checkpoints" / "step-00000040.pt"), sidecar(foreign))
        (x / "checkpoints" / "latest").write_text(foreign.name)
        before = _snapshot(x)
        expected = "belongs to another run" if with_checksum else "has no readable checksum file"
        with pytest.raises(UserError, match=expected) as err:
            _resume(x)
        assert "--resume " + str(x / "checkpoints" / "step-00000040.pt") in err.value.fix  # the newest good one
        assert _snapshot(x) == before  # config.json, records: nothing rewritten


def test_a_latest_pointer_outside_the_run_or_garbled_is_refused(runs):
    x = runs / "X"
    for content in (b"../../Y/checkpoints/step-00000040.pt", b"\xff\xfe\x00binary", b""):
        (x / "checkpoints" / "latest").write_bytes(content)
        with pytest.raises(UserError, match="must hold the name of a checkpoint"):
            _resume(x)
    (x / "checkpoints" / "latest").unlink()
    (x / "checkpoints" / "latest").mkdir()
    result = run_cli("train", "--resume", str(x), "--max-steps", "60", "--allow-config-change", cwd=runs.parent)
    assert_user_error(result, "must hold the name of a checkpoint", "not a file")


def test_a_damaged_checkpoint_is_refused_and_the_newest_good_one_offered(runs):
    x = runs / "X"
    newest = x / "checkpoints" / "step-00000040.pt"
    data = bytearray(newest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 50):  # 50 bytes inside a tensor: still loads, wrong weights
        data[i] ^= 0xFF
    newest.write_bytes(bytes(data))
    result = run_cli("train", "--resume", str(x), "--max-steps", "60", "--allow-config-change", cwd=runs.parent)
    assert_user_error(result, "is damaged", "--resume " + str(x / "checkpoints" / "step-00000030.pt"))
    assert '"resume"' not in (x / "events.jsonl").read_text()
    # The offered one resumes.
    run = tierlab.resume(x / "checkpoints" / "step-00000030.pt", {"max_steps": 60, "allow_config_change": True})
    assert run.summary["status"] == "completed" and run.summary["steps"] == 60


def test_a_checkpoint_cannot_choose_the_model_file(tmp_path):
    """A checkpoint whose config names another model.py (same name, other folder) does not get it imported."""
    source = textwrap.dedent("""
        from tierlab.models.tiny_gpt import TinyGPT
        def build(vocab_size=256):
            return TinyGPT(vocab_size, n_layer=1, n_head=2, d_model=32, max_seq_len=64)
    """)
    good = write_model(tmp_path / "good", source, "model.py")
    evil = write_model(tmp_path / "evil", source + "\nimport pathlib; pathlib.Path(__file__).with_name('RAN').touch()\n",
                       "model.py")
    cfg = fast_config(tmp_path, model=f"{good}:build", model_args={}, max_steps=20, ckpt_every=10, no_plots=True)
    tierlab.train(config=cfg)
    run = tmp_path / "runs" / "run"
    # Forge the checkpoint a resume would read, naming the other file (as a copied or edited one could).
    import torch

    ckpt = run / "checkpoints" / "step-00000020.pt"
    state = torch.load(ckpt, weights_only=True)
    state["config"]["model"] = f"{evil}:build"
    torch.save(state, ckpt)
    from tierlab.train.identity import file_sha256

    meta = json.loads(sidecar(ckpt).read_text())
    sidecar(ckpt).write_text(json.dumps({**meta, "sha256": file_sha256(ckpt), "bytes": ckpt.stat().st_size}))
    with pytest.raises(UserError, match="does not import code a checkpoint chooses"):
        tierlab.resume(run, {"max_steps": 30, "allow_config_change": True})
    assert not (evil.parent / "RAN").exists()
    # Named by the user, the file is used (with a warning): that is a choice, not the checkpoint's.
    run2 = tierlab.resume(run, {"max_steps": 30, "allow_config_change": True, "model": f"{good}:build"})
    assert run2.summary["steps"] == 30


def test_runs_from_before_run_ids_still_resume(runs):
    x = runs / "X"
    (x / "run.json").unlink()
    for meta in (x / "checkpoints").glob("*.pt.json"):
        meta.unlink()
    assert _resume(x).summary["steps"] == 60
    assert (x / "run.json").is_file()  # from now on it has an id

