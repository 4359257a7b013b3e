from types import SimpleNamespace

import pytest
import torch

from helpers import write_model
from tierlab.errors import ModelError
from tierlab.models import every_position, extract_logits, load_model, max_positions
from tierlab.models.tiny_gpt import TinyGPT

MODEL_FILE = """
import torch
from torch import nn

class Model(nn.Module):
    def __init__(self, vocab_size=256, width=16):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, width)
        self.out = nn.Linear(width, vocab_size)
    def forward(self, input_ids):
        return self.out(self.emb(input_ids))

def make(vocab_size, width=8):
    return Model(vocab_size, width)

def not_a_model():
    return 42
"""


@pytest.mark.parametrize("output", [
    "tensor", "tuple", "list", "dict", "object",
])
def test_every_output_style_yields_the_logits(output):
    logits = torch.randn(2, 3, 5)
    wrapped = {"tensor": logits, "tuple": (logits, torch.tensor(1.0)), "list": [logits],
               "dict": {"logits": logits, "loss": None}, "object": SimpleNamespace(logits=logits, loss=None)}[output]
    assert extract_logits(wrapped) is logits


def test_output_without_logits_is_a_model_error():
    with pytest.raises(ModelError, match="holds no logits"):
        extract_logits({"hidden": torch.zeros(1)})


def test_class_model_is_found_and_vocab_size_is_passed(tmp_path):
    path = write_model(tmp_path, MODEL_FILE)
    model = load_model(str(path), {}, vocab_size=300)
    assert model.emb.num_embeddings == 300 and model.emb.embedding_dim == 16


def test_named_factory_and_model_args(tmp_path):
    path = write_model(tmp_path, MODEL_FILE)
    model = load_model(f"{path}:make", {"width": 4}, vocab_size=50)
    assert model.emb.embedding_dim == 4 and model.out.out_features == 50


def test_explicit_vocab_size_wins_over_the_tokenizers(tmp_path):
    path = write_model(tmp_path, MODEL_FILE)
    assert load_model(str(path), {"vocab_size": 512}, vocab_size=256).emb.num_embeddings == 512


def test_model_file_can_import_its_siblings(tmp_path):
    write_model(tmp_path, "WIDTH = 12\n", name="layers.py")
    path = write_model(tmp_path, MODEL_FILE.replace("width=16", "width=None") + """
import layers
_orig = Model.__init__
def build_model(vocab_size=256):
    return Model(vocab_size, layers.WIDTH)
""")
    assert load_model(str(path), {}, 10).emb.embedding_dim == 12


@pytest.mark.parametrize("spec, args, fragment", [
    ("missing.py", {}, "does not exist"),
    ("model.txt", {}, "neither a built-in model (tiny-gpt, gpt2-small, llama), a Python file nor a folder holding model.py"),
    ("{path}:nothing", {}, "no callable named 'nothing'"),
    ("{path}:not_a_model", {}, "returned int, not a torch.nn.Module"),
    ("{path}", {"depth": 3}, "does not accept the argument(s) depth"),
])
def test_loading_mistakes_are_model_errors(tmp_path, spec, args, fragment):
    path = write_model(tmp_path, MODEL_FILE)
    with pytest.raises(ModelError) as err:
        load_model(spec.format(path=path) if "{path}" in spec else str(tmp_path / spec), args, 256)
    assert fragment in str(err.value)


def test_import_error_names_the_users_line(tmp_path):
    path = write_model(tmp_path, "import torch\n\nx = undefined_name\n")
    with pytest.raises(ModelError) as err:
        load_model(str(path), {}, 256)
    assert "NameError" in str(err.value) and f"{path}:3" in str(err.value)


def test_file_without_factory_is_explained(tmp_path):
    path = write_model(tmp_path, "X = 1\n")
    with pytest.raises(ModelError, match="neither build_model\\(\\) nor a class Model"):
        load_model(str(path), {}, 256)


def test_file_without_a_default_factory_names_its_own_candidates(tmp_path):
    path = write_model(tmp_path, "import torch\nfrom torch.nn import Linear\n\n"
                                 "class Decoder(torch.nn.Module):\n    pass\n\n"
                                 "def make(vocab_size):\n    return Decoder()\n\n"
                                 "def _private():\n    pass\n")
    with pytest.raises(ModelError) as err:
        load_model(str(path), {}, 256)
    # Its own class and function, not the imported Linear nor the private helper.
    assert f"--model {path}:Decoder (the file defines Decoder, make)" in str(err.value)


def test_builtin_tiny_gpt_and_its_max_positions():
    model = load_model("tiny-gpt", {"n_layer": 1, "d_model": 16, "n_head": 2, "max_seq_len": 48}, vocab_size=99)
    assert isinstance(model, TinyGPT)
    assert max_positions(model) == 48
    logits = model(torch.zeros(2, 5, dtype=torch.long))
    assert logits.shape == (2, 5, 99)


def test_max_positions_reads_hugging_face_style_configs():
    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(max_position_embeddings=1024)
    assert max_positions(model) == 1024
    assert max_positions(torch.nn.Linear(2, 2)) is None


def test_tiny_gpt_is_causal():
    torch.manual_seed(0)
    model = TinyGPT(vocab_size=20, n_layer=2, n_head=2, d_model=16, max_seq_len=16).eval()
    x = torch.randint(0, 20, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 1) % 20
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[0, :6], b[0, :6], atol=1e-6)
    assert not torch.allclose(a[0, 6:], b[0, 6:])


NANOGPT_GENERATION_SHORTCUT = '''
import torch
import torch.nn.functional as F
from torch import nn


class GPT(nn.Module):
    """nanoGPT's calling convention: every position's logits with targets, only the last one's without."""
    def __init__(self, vocab_size=256, n_embd=16, block_size=64):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        if targets is not None:
            logits = self.lm_head(x)
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return self.lm_head(x[:, [-1], :]), None


class AlwaysAll(GPT):
    def forward(self, idx, targets=None):
        return self.lm_head(self.wte(idx)), None


def build_model(vocab_size=256):
    return GPT(vocab_size)
'''


def test_a_nanogpt_style_model_gives_every_positions_logits(tmp_path):
    path = write_model(tmp_path, NANOGPT_GENERATION_SHORTCUT, name="nano.py")
    model = load_model(str(path), {}, 256)
    ids = torch.randint(0, 256, (3, 40))[:, 1:]  # a non-contiguous view, as training's inputs are
    logits, _ = model(ids)
    assert logits.shape == (3, 39, 256)
    with torch.no_grad():  # the same logits the model gives with real targets
        assert torch.equal(logits, model(ids, targets=ids.contiguous())[0])
    assert set(model.state_dict()) == {"wte.weight", "wpe.weight", "lm_head.weight"}  # the module is unchanged
    model._tierlab_every_position.remove()  # and the model's own behaviour comes back
    assert model(ids)[0].shape == (3, 1, 256)
    # A model that always returns every position is left alone, and so is one without targets.
    always = load_model(f"{path}:AlwaysAll", {}, 256)
    assert getattr(always, "_tierlab_every_position", None) is None and not always._forward_pre_hooks
    plain = TinyGPT(vocab_size=256, n_layer=1, n_head=2, d_model=16, max_seq_len=32)
    assert not every_position(plain) and not plain._forward_pre_hooks


def test_sampling_keeps_the_nanogpt_shortcut(tmp_path):
    from tierlab.data.tokenizer import ByteTokenizer
    from tierlab.sample import generate

    model = load_model(str(write_model(tmp_path, NANOGPT_GENERATION_SHORTCUT, name="nano.py")), {}, 256)
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out[0].shape[1]))
    text = generate(model, ByteTokenizer(), "ab", max_new_tokens=3, temperature=0)
    assert len(text.encode()) >= 3 and seen == [1, 1, 1]  # one position per step, no loss computed
