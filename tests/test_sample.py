"""tierlab sample / tierlab.load: using what was trained."""

import pytest
import torch

import tierlab
from helpers import assert_user_error, fast_config, run_cli, write_corpus, write_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    corpus = write_corpus(out / "corpus.txt", sentences=1500)
    run = tierlab.train(config=fast_config(out, data=str(corpus), tokenizer="bpe:300", max_steps=40,
                                           eval_every=0, ckpt_every=20, keep_ckpts=5))
    return run.dir


def test_load_returns_the_trained_model_and_its_tokenizer(run_dir):
    model, tokenizer = tierlab.load(run_dir)
    assert tokenizer.vocab_size == 300 and not model.training
    saved = tierlab.Run.load(run_dir)
    ids = tokenizer.encode("The cat sat on the mat.")
    assert tokenizer.decode(ids) == "The cat sat on the mat."
    early, _ = tierlab.load(run_dir, checkpoint=run_dir / "checkpoints" / "step-00000020.pt")
    assert not all((a == b).all() for a, b in zip(early.parameters(), model.parameters()))
    assert saved.summary["steps"] == 40


def test_cli_sample_continues_the_prompt_repeatably(run_dir):
    args = ["sample", run_dir, "--prompt", "The dog", "--max-new-tokens", "12", "--seed", "3", "--top-k", "20"]
    first, second = run_cli(*args, cwd=run_dir), run_cli(*args, cwd=run_dir)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("The dog") and len(first.stdout.strip()) > len("The dog")
    assert first.stdout == second.stdout
    greedy = run_cli("sample", run_dir, "--prompt", "The dog", "--max-new-tokens", "5", "--temperature", "0",
                     cwd=run_dir)
    assert greedy.returncode == 0 and greedy.stdout.startswith("The dog")


def test_sample_mistakes_exit_2(run_dir, tmp_path):
    assert_user_error(run_cli("sample", tmp_path, "--prompt", "x", cwd=tmp_path), "not a tierlab run directory")
    assert_user_error(run_cli("sample", run_dir, "--prompt", "x", "--checkpoint", tmp_path / "none.pt",
                              cwd=tmp_path), "does not exist")
    assert_user_error(run_cli("sample", run_dir, "--prompt", "x", "--temperature", "-1", cwd=tmp_path),
                      "--temperature")


TINY_FILE = """
    from tierlab.models.tiny_gpt import TinyGPT

    def build(vocab_size, d_model=32):
        return TinyGPT(vocab_size=vocab_size, n_layer=1, n_head=2, d_model=d_model, max_seq_len=64)
    """


def test_a_run_whose_model_file_moved_is_loaded_with_model(tmp_path):
    write_model(tmp_path / "models", TINY_FILE)
    run = tierlab.train(config=fast_config(tmp_path, model=str(tmp_path / "models" / "my_model.py:build"),
                                           model_args={}, max_steps=4, eval_every=0))
    args = ["sample", run.dir, "--prompt", "1+2=", "--max-new-tokens", "8", "--temperature", "0"]
    before = run_cli(*args, cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    (tmp_path / "models").rename(tmp_path / "moved")
    moved = run_cli(*args, cwd=tmp_path)
    assert_user_error(moved, f"was trained with the model file '{tmp_path / 'models' / 'my_model.py'}', which no "
                      "longer exists", "pass its new place to `tierlab sample`: --model NEW/PLACE/my_model.py:build")
    assert "check the path given to --model" not in moved.stderr
    again = run_cli(*args, "--model", "moved/my_model.py:build", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == before.stdout  # the same weights in the same model
    # In Python: the error says model=, and a model file is accepted there.
    with pytest.raises(tierlab.UserError, match=r"pass its new place: model='NEW/PLACE/my_model\.py:build'"):
        tierlab.load(run.dir)
    model, _ = tierlab.load(run.dir, model=str(tmp_path / "moved" / "my_model.py:build"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run.model.state_dict().values()))
    # Another architecture: the mismatches named in whole, not cut mid-word.
    write_model(tmp_path / "moved", TINY_FILE.replace("d_model=32", "d_model=16"), name="other.py")
    wrong = run_cli(*args, "--model", "moved/other.py:build", cwd=tmp_path)
    assert_user_error(wrong, "do not fit this model: ", " size mismatches: ", "(64x32 in the weights, 64x16 in the "
                      "model)", " more.")


def test_a_damaged_final_weights_file_is_a_plain_error(tmp_path):
    """Issue 19.12: sample, export and --init-from name the damaged model.safetensors instead of a SafetensorError."""
    import shutil

    run = tierlab.train(config=fast_config(tmp_path, max_steps=10, no_plots=True))
    broken = tmp_path / "broken"
    shutil.copytree(run.dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    assert_user_error(run_cli("sample", broken, "--prompt", "the", cwd=tmp_path), "is damaged")
    assert_user_error(run_cli("export", broken, "--format", "safetensors", cwd=tmp_path), "is damaged")
    assert_user_error(run_cli("train", "--init-from", broken / "model.safetensors", "--max-steps", "2",
                              "--name", "again", cwd=tmp_path), "is damaged")
