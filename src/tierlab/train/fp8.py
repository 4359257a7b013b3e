"""``--precision fp8``: torchao's float8 training for the linear layers whose shapes gain, bf16 autocast for the rest.

fp8 halves a matrix multiply's time on the tensor cores, but every fp8 matmul first
reads its bf16 operands, finds their absolute maximum and writes them again in fp8
(dynamic tensorwise scaling, for the input, the weight and -- in the backward pass --
the output gradient).  That casting is memory-bound work that fp8 does not speed up, so
a small matmul *loses* (torchao's own table: 0.80x at M, K, N = 1024, 2048, 1024) and a
large one wins (1.39x at 4096, 8192, 16384).  :func:`plan` decides per layer from its
shapes with a roofline model of the three matmuls of a linear layer (forward, input
gradient, weight gradient) against the casts they need, on an H100 SXM (989 TFLOP/s
bf16, 1,979 fp8, 3.35 TB/s): it gives 0.82x and 1.60x for those two shapes, the order
and the side of 1 that the measurements have.  Layers with an expected gain under
:data:`MIN_GAIN`, or with a size that is not a multiple of 16 (the fp8 kernels need
it), stay bf16.  The plan is said per layer at start-up and by ``tierlab validate``.

Loss scaling is not needed: the scales are per tensor and dynamic (e4m3 for the forward
operands, e5m2 for gradients), and the rest of the model runs in bf16.

fp8 needs tensor cores that have it (compute capability 8.9: Ada, Hopper and newer) and
the ``torchao`` package (``pip install 'tierlab[fp8]'``).  Elsewhere ``--precision fp8``
falls back to fp32 with the reason, or fails with ``--strict-precision``, as every
precision does.  :data:`EMULATE_ENV` lets a CPU run it through torch's CPU fp8 kernels --
the same conversion, scales and rounding, at emulation speed -- which is how the test
suite checks it without a GPU.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass

from torch import nn

log = logging.getLogger(__name__)

EMULATE_ENV = "TIERLAB_FP8_EMULATE"  # "1": let a CPU run fp8 through torch's CPU kernels (tests, checks)
MIN_GAIN = 1.05  # below this expected speed-up a layer stays bf16 (the model's error bars, not a measured edge)
# The reference GPU of the plan: H100 SXM dense peaks and memory bandwidth.
BF16_FLOPS, FP8_FLOPS, BYTES_PER_S = 989e12, 1979e12, 3.35e12
REFERENCE = "H100 SXM"


@dataclass(frozen=True)
class LayerPlan:
    name: str
    m: int  # rows: tokens per micro-batch
    k: int  # in_features
    n: int  # out_features
    gain: float  # expected speed-up of the layer's three matmuls, fp8 (with casts) over bf16
    convert: bool
    why: str

    def as_dict(self) -> dict:
        return asdict(self)


def expected_gain(m: int, k: int, n: int) -> float:
    """bf16 time over fp8 time (casts included) of a [m, k] x [k, n] linear layer's forward and backward."""
    flops = 3 * 2 * m * k * n  # forward, input gradient, weight gradient
    bf16 = flops / BF16_FLOPS
    # Each of the input, weight and output gradient is read (2 bytes) and scanned for its
    # amax, read again and written in fp8 (2 + 1), and its fp8 copy read once more for the
    # transposed layout of a backward matmul (1): 6 bytes per element.
    casts = 6 * (m * k + k * n + m * n) / BYTES_PER_S
    return bf16 / (flops / FP8_FLOPS + casts)


def plan(model: nn.Module, tokens_per_batch: int, layers: str = "auto") -> list[LayerPlan]:
    """Every ``nn.Linear`` of ``model``: whether fp8 pays for it at ``tokens_per_batch`` rows, and why.

    ``layers="all"`` (``--fp8-layers all``) converts every layer the kernels can take, gain or not.
    """
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        k, n = module.in_features, module.out_features
        gain = expected_gain(tokens_per_batch, k, n)
        if k % 16 or n % 16:
            convert, why = False, f"{k} x {n} is not a multiple of 16 (the fp8 kernels need it)"
        elif layers == "all":
            convert, why = True, f"--fp8-layers all ({gain:.2f}x expected on an {REFERENCE})"
        elif gain < MIN_GAIN:
            convert, why = False, f"too small to gain: {gain:.2f}x expected, the casts cost what the matmul saves"
        else:
            convert, why = True, f"{gain:.2f}x expected on an {REFERENCE}"
        rows.append(LayerPlan(name, tokens_per_batch, k, n, round(gain, 3), convert, why))
    return rows


def describe(rows: list[LayerPlan]) -> str:
    converted = [r for r in rows if r.convert]
    return (f"fp8: {len(converted)} of {len(rows)} linear layer(s) converted (the rest stay bf16), "
            f"decided from their shapes at {rows[0].m if rows else 0} tokens per micro-batch")


def said_per_layer(rows: list[LayerPlan]) -> list[str]:
    """One line per kind of layer: the layers of one shape and verdict (blocks.*.mlp.0 for the same one in every block)."""
    groups: dict[tuple, list[str]] = {}
    for r in rows:
        pattern = re.sub(r"\.\d+\.", ".*.", f".{r.name}.", count=1).strip(".")  # the block index
        groups.setdefault((r.convert, pattern, r.k, r.n, r.why), []).append(r.name)
    lines = []
    for (convert, pattern, k, n, why), names in groups.items():
        which = names[0] if len(names) == 1 else f"{pattern} ({len(names)} layers)"
        lines.append(f"fp8 {'convert' if convert else 'keep'} {which or '(the model)'} [{k} x {n}]: {why}")
    return lines


def doctor_summary(rows: list[LayerPlan]) -> str:
    """What ``--precision fp8`` would do, in one line for ``tierlab validate``."""
    if not rows:
        return "the model has no nn.Linear layers: --precision fp8 would change nothing"
    kinds: dict[tuple[bool, str], list[LayerPlan]] = {}
    for r in rows:
        kinds.setdefault((r.convert, re.sub(r"\.\d+\.", ".*.", f".{r.name}.", count=1).strip(".")), []).append(r)

    def listed(convert: bool) -> str:
        return ", ".join(f"{name} ({group[0].gain:.2f}x)" for (c, name), group in kinds.items() if c == convert)

    converted = [r for r in rows if r.convert]
    head = (f"at {rows[0].m:,} tokens per micro-batch on an {REFERENCE}, {len(converted)} of {len(rows)} linear "
            "layer(s) would run in fp8")
    if converted:
        head += f": {listed(True)}"
    return head + (f"; kept bf16: {listed(False)}" if len(converted) < len(rows) else "")


def torchao_problem() -> str | None:
    """Why torchao's float8 training cannot be imported, or None when it can."""
    try:
        _import_float8()
    except ImportError as exc:
        return f"torchao is not installed ({exc}); pip install 'tierlab[fp8]'"
    return None


def emulated() -> bool:
    return os.environ.get(EMULATE_ENV) == "1"


def convert(model: nn.Module, tokens_per_batch: int, layers: str = "auto") -> list[LayerPlan]:
    """Swap the layers :func:`plan` picks for torchao's Float8Linear, in place; the plan is logged per layer.

    The swapped layers keep their parameters (fp32 master weights, the same names in the
    state dict), so checkpoints, resume, export and sampling see the model they always did.
    """
    rows = plan(model, tokens_per_batch, layers)
    chosen = {r.name for r in rows if r.convert}
    for line in said_per_layer(rows):
        log.info("%s", line)
    log.info("%s", describe(rows))
    if chosen:
        to_float8, config = _import_float8()
        to_float8(model, config=config(), module_filter_fn=lambda module, fqn: fqn in chosen)
    return rows


def _import_float8():
    # torchao's import says which of its GPU kernels it could not load (there are none on a
    # CPU build), as warnings and log lines that would read as errors: they are not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
    return convert_to_float8_training, Float8LinearConfig
