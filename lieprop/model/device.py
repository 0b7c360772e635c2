"""Where the model runs: chosen at run time, so the same code serves on a GPU and on a CPU."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; any other name is taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return device
