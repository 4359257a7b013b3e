"""The built-in llama baseline: a causal decoder that passes every check, its rotary tables left out of checkpoints."""

import torch

import tierlab
from tierlab.models import load_model


def test_the_llama_baseline_passes_validate_and_keeps_its_rotary_tables_out_of_the_weights():
    args = {"n_layer": 2, "d_model": 32, "n_head": 2, "max_seq_len": 64}
    report = tierlab.validate("llama", model_args=args, seq_len=32, doctor=False)
    assert report.ok and report["causality"].status == "pass", report.text()
    model = load_model("llama", args, 256)
    assert not any("rope" in name for name in model.state_dict())  # rebuilt from the size, never stored
    logits = model(torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256) and model.head.weight is not model.tok_emb.weight  # untied
