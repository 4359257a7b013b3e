import math

import pytest
import torch

from tierlab.train.schedule import WarmupCosine, default_warmup


def test_warmup_is_linear_then_cosine_reaches_min_lr():
    s = WarmupCosine(lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=14)
    assert [s.value(k) for k in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert s.value(4) == pytest.approx(1.0)
    assert s.value(9) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert s.value(14) == pytest.approx(0.1) and s.value(100) == pytest.approx(0.1)
    values = [s.value(k) for k in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_device_tensor_input_gives_the_same_values():
    s = WarmupCosine(lr=3e-4, min_lr=3e-5, warmup_steps=10, total_steps=100)
    steps = torch.arange(0, 120)
    assert s(steps).tolist() == pytest.approx([s.value(k) for k in range(120)])


def test_no_warmup_starts_at_peak():
    s = WarmupCosine(lr=1.0, min_lr=0.0, warmup_steps=0, total_steps=10)
    assert s.value(0) == pytest.approx(1.0) and s.value(10) == pytest.approx(0.0)


def test_default_warmup_is_five_percent_capped():
    assert default_warmup(400) == 20 and default_warmup(100_000) == 100
    assert default_warmup(10) == 1 and default_warmup(1) == 0


def test_the_device_table_holds_the_schedule_for_every_step_count():
    sched = WarmupCosine(1e-3, 1e-4, warmup_steps=5, total_steps=50)
    table = sched.table(torch.device("cpu"))
    assert table.dtype == torch.float32 and table.shape == (51,)
    for step in range(51):
        assert table[step].item() == pytest.approx(sched.value(step), rel=1e-6)


def test_a_warm_up_only_schedule_reaches_the_peak_on_its_last_step():
    s = WarmupCosine(1e-3, 1e-4, warmup_steps=40, total_steps=40)
    assert s.value(0) == pytest.approx(1e-3 / 40) and s.value(39) == pytest.approx(1e-3)
    assert all(s.value(i) < s.value(i + 1) for i in range(39))
