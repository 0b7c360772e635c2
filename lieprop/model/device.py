"""Where the model runs: chosen at run time, so the same code serves on a GPU and on a CPU."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; any other name is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device


def bf16_autocast(device: torch.device | str, enabled: bool = True) -> AbstractContextManager:
    """bfloat16 autocast on a CUDA ``device`` when ``enabled``; on any other device nothing (a no-op context): on a
    CPU, bfloat16 matmuls are slower than float32 ones on most chips, and the CPU path must stay bit-stable."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def uses_bf16_autocast(device: torch.device | str, enabled: bool) -> bool:
    """Whether :func:`bf16_autocast` turns autocast on for ``device`` (for logs and run records)."""
    return bool(enabled) and torch.device(device).type == "cuda"


def full_precision(device: torch.device | str) -> AbstractContextManager:
    """Autocast switched off on ``device`` (inside an autocast region: this part runs in its inputs' dtype);
    a no-op on devices without autocast (``meta``)."""
    kind = torch.device(device).type
    if torch.amp.is_autocast_available(kind):
        return torch.autocast(kind, enabled=False)
    return nullcontext()
