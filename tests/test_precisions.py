"""The precision table is the one place a precision is declared: everything that lists or runs one reads it."""

import dataclasses

import pytest
import torch

from tierlab import precisions
from tierlab.cli import build_parser
from tierlab.config import PRECISIONS, TrainConfig, field_help
from tierlab.train.flops import _PEAKS_TFLOPS
from tierlab.train.precision import DTYPES, PrecisionPolicy, decide_precision


def test_config_and_help_accept_exactly_the_table():
    assert PRECISIONS == ("auto", *precisions.NAMES)
    for name in precisions.NAMES:
        assert TrainConfig(precision=name).precision == name
        assert name in field_help()["precision"]
    with pytest.raises(Exception, match="is not a precision"):
        TrainConfig(precision="int4")


def test_validate_offers_the_portable_ones():
    parser = build_parser()
    for name in precisions.PORTABLE_NAMES:
        assert parser.parse_args(["validate", "--precision", name]).precision == name
    assert "tf32" not in precisions.PORTABLE_NAMES  # it needs a CUDA GPU


def test_every_entry_is_complete():
    for name, spec in precisions.PRECISIONS.items():
        assert spec.name == name and spec.summary and spec.requested
        assert (spec.autocast is None) == (DTYPES[name] is None)
        if spec.cuda_compute is not None:
            assert spec.cuda_feature and spec.not_on_cpu  # both messages exist for a GPU-only precision
        # Every GPU with a peak for the column the precision's matmuls run at has a figure for it.
        assert any(spec.peak_column in table for _, table in _PEAKS_TFLOPS)


@pytest.mark.parametrize("name", precisions.PORTABLE_NAMES)
def test_every_portable_precision_runs_a_step_on_cpu(name):
    decision = decide_precision(name, torch.device("cpu"), strict=True)
    policy = PrecisionPolicy(decision, torch.device("cpu"))
    assert policy.scales_loss == precisions.PRECISIONS[name].loss_scaling
    layer = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(layer.parameters(), lr=torch.tensor(0.1), fused=True)
    before = layer.weight.detach().clone()
    with policy.activate(), policy.autocast():
        loss = layer(torch.ones(2, 4)).float().square().mean()
    policy.backward(loss)
    policy.unscale_(opt)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in layer.parameters()]))
    skipped = policy.step(opt, norm)
    assert float(skipped) == 0.0 and not torch.equal(before, layer.weight)


def test_a_gpu_only_precision_says_why_on_a_cpu():
    gpu_only = [p for p in precisions.PRECISIONS.values() if p.cuda_compute is not None]
    for spec in gpu_only:
        decision = decide_precision(spec.name, torch.device("cpu"))
        assert decision.used == "fp32" and decision.fallback and spec.not_on_cpu in decision.reason


def test_entries_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        precisions.PRECISIONS["fp32"].autocast = "float16"
