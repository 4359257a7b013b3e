"""Every precision tierlab knows, in one table that the config, CLI, bench, FLOPS table, validate and doctor read.

Adding a precision is one :class:`Precision` entry here (and its tests); the policy in
:mod:`tierlab.train.precision` runs any entry from its fields.  This module imports
nothing heavy (no torch), so ``tierlab --help`` and config validation can read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Precision:
    name: str  # the --precision value
    summary: str  # what it is, for --help and the README
    requested: str  # the reason recorded when it was asked for by name
    autocast: str | None = None  # torch dtype that autocast runs the maths in (None: no autocast)
    matmul: str | None = None  # torch.set_float32_matmul_precision while it runs (None: left as it is)
    loss_scaling: bool = False  # a GradScaler scales the loss (and skips steps whose gradients overflow)
    cuda_compute: tuple[int, int] | None = None  # needs an NVIDIA GPU of at least this compute capability
    cuda_feature: str = ""  # the hardware behind ``cuda_compute``: "GPU X has no <cuda_feature>"
    not_on_cpu: str = ""  # why a CPU cannot run it: "<not_on_cpu>; it does not exist on a CPU"
    peak_as: str | None = None  # whose column of the peak-FLOPS table its matmuls run at (default: its own)
    linear_fp8: bool = False  # linear layers that gain run as fp8 matmuls (torchao), see tierlab.train.fp8

    @property
    def peak_column(self) -> str:
        return self.peak_as or self.name


PRECISIONS: dict[str, Precision] = {p.name: p for p in (
    Precision("fp32", "strict IEEE fp32: no autocast, matmuls at the highest precision", "fp32 was requested",
              matmul="highest"),
    Precision("tf32", "fp32 weights and activations, matrix multiplies on the TF32 tensor cores (CUDA)",
              "tf32 was requested: fp32 weights and activations, matrix multiplies on the TF32 tensor cores",
              matmul="high", cuda_compute=(8, 0), cuda_feature="TF32 tensor cores (Ampere or newer needed)",
              not_on_cpu="TF32 is a mode of NVIDIA tensor cores (Ampere or newer)"),
    Precision("bf16", "bf16 autocast over fp32 weights: fp32's range, no loss scaling", "bf16 was requested",
              autocast="bfloat16"),
    Precision("fp16", "fp16 autocast over fp32 weights, with a GradScaler", "fp16 with a GradScaler was requested",
              autocast="float16", loss_scaling=True),
    # MFU is counted against the bf16 peak: most of a model's work stays bf16, and a speed-up
    # from fp8 then shows as a higher MFU, comparable with bf16's.
    Precision("fp8", "fp8 matmuls (torchao float8 training) in the linear layers whose shapes gain, bf16 autocast for "
              "the rest, no loss scaling (CUDA, compute capability 8.9+)",
              "fp8 was requested: fp8 matmuls in the linear layers whose shapes gain, bf16 autocast for the rest",
              autocast="bfloat16", cuda_compute=(8, 9), cuda_feature="fp8 tensor cores (Ada, Hopper or newer needed)",
              not_on_cpu="fp8 matmuls need the fp8 tensor cores of an NVIDIA GPU (Ada, Hopper or newer)",
              peak_as="bf16", linear_fp8=True),
)}

NAMES = tuple(PRECISIONS)  # most accurate first
CHOICES = ("auto", *NAMES)  # what --precision accepts
# What validate's speed check and the doctor can run on any device: fp32 and the autocast ones.
AUTOCAST_NAMES = tuple(n for n, p in PRECISIONS.items() if p.autocast and p.cuda_compute is None)
PORTABLE_NAMES = tuple(n for n, p in PRECISIONS.items() if p.cuda_compute is None)


def get(name: str) -> Precision:
    return PRECISIONS[name]
