"""Batch normalisation that ignores padding."""

from __future__ import annotations

import torch
from torch import nn


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last dimension of (..., C) tensors, with statistics taken over ``mask`` only.

    Padded entries are left as they are (they are masked again downstream). In eval mode the running
    statistics are used, so one molecule alone or in a batch gives the same result.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.training:
            # Statistics as two matrix-vector products with the mask: much cheaper than masking x.
            flat_x = x.reshape(-1, x.shape[-1])
            flat_m = mask.reshape(-1).to(x.dtype)
            count = flat_m.sum().clamp_min(1.0)
            mean = (flat_m @ flat_x) / count
            var = ((flat_m @ (flat_x * flat_x)) / count - mean * mean).clamp_min(0.0)
            with torch.no_grad():
                unbiased = var * count / (count - 1).clamp_min(1.0)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return torch.addcmul(self.bias - mean * scale, x, scale)
