"""Choosing the device and reading what the hardware can do natively."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec} was asked for, but this torch build sees no CUDA device.",
                              "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine.")
        device = torch.device(spec)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) exist.",
                              f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
        return device
    if spec != "cpu":
        raise ConfigError(f"--device {spec!r} is not a device tierlab runs on.", "use auto, cpu, cuda or cuda:N.")
    return torch.device("cpu")


@lru_cache(maxsize=1)
def _cpuinfo_text() -> str:
    """/proc/cpuinfo, read once per process (empty where it does not exist)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line's value in /proc/cpuinfo (None where the file or the field does not exist)."""
    for line in _cpuinfo_text().splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where it does not exist)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo or, elsewhere, platform."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


# Testing aid: "1" makes tierlab treat the CPU as one with native bf16 (so ``auto`` measures),
# "0" as one without (so ``auto`` is fp32 at once), whatever /proc/cpuinfo says; unset reads it.
NATIVE_BF16_ENV = "TIERLAB_CPU_NATIVE_BF16"


def cpu_native_bf16() -> str | None:
    """The flag that gives this CPU fast bf16 matmuls (AMX or AVX-512 BF16), or None.

    ``TIERLAB_CPU_NATIVE_BF16=1`` / ``=0`` overrides the answer: a test can then take both
    branches on any machine, and a suite passes or fails the same on every kind of CPU.
    """
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced:
        if forced not in ("0", "1"):
            raise ConfigError(f"{NATIVE_BF16_ENV}={forced!r} is neither 0 nor 1.",
                              "set it to 1 (treat this CPU as having native bf16), 0 (as not having it), "
                              "or unset it to read /proc/cpuinfo.")
        return f"{NATIVE_BF16_ENV}=1" if forced == "1" else None
    flags = cpu_flags()
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return None


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 natively (a bf16-capable GPU, or a CPU with AMX / AVX-512 BF16)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_native_bf16() is not None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing, compile warm-up); a no-op on a CPU, which never queues."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
