"""tierlab sample / tierlab.load: using what was trained."""

import pytest

import tierlab
from helpers import assert_user_error, fast_config, run_cli, write_corpus


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
