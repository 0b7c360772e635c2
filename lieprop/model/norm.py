"""Normalisation layers for (B, M, C) atom (or (B, M, K, C) pair) features with a padding mask.

``NORMS`` maps a config name to a layer; every layer has the signature ``norm(x, mask)``:

* ``"layer"``: LayerNorm over the channels of each atom (or pair) on its own. A prediction never depends on what
  else shares the batch, in training or inference, so size-bucketed batches are safe.
* ``"affine"``: a learned per-channel scale and shift, no statistics at all. It is exactly what a batch norm is in
  eval mode, which lets a batch-norm network be converted (:func:`fold_batch_norm`) and fine-tuned without one.
* ``"batch"``: masked batch norm, the LieConv paper's choice. Training normalises with each batch's statistics and
  inference with running averages; with batches of one molecule size the two disagree for small and large molecules
  (water's HOMO came out +963 eV), so it is kept only to load the first bundles.
"""

from __future__ import annotations

import torch
from torch import nn

#: The epsilon of every batch norm lieprop has saved (fold_batch_norm relies on it).
BATCH_NORM_EPS = 1e-5


class MaskedBatchNorm(nn.Module):
    """BatchNorm over the last dimension of (..., C) tensors, with statistics taken over ``mask`` only.

    Padded entries are left as they are (they are masked again downstream). In eval mode the running
    statistics are used, so one molecule alone or in a batch gives the same result.
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = BATCH_NORM_EPS):
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


class AtomLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each entry; the mask is not needed (no statistics cross entries)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return super().forward(x)


class ChannelAffine(nn.Module):
    """x * weight + bias per channel: a normalisation layer without statistics."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return torch.addcmul(self.bias, x, self.weight)


NORMS: dict[str, type[nn.Module]] = {"layer": AtomLayerNorm, "affine": ChannelAffine, "batch": MaskedBatchNorm}


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation layer named ``kind`` (a key of :data:`NORMS`) for ``channels`` channels."""
    try:
        return NORMS[kind](channels)
    except KeyError:
        raise ValueError(f"unknown norm {kind!r}; known: {sorted(NORMS)}") from None


@torch.no_grad()
def fold_batch_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch-norm network's state dict -> the same eval-mode function with ``"affine"`` norms.

    Every ``X.running_mean`` / ``X.running_var`` / ``X.weight`` / ``X.bias`` quadruple becomes ``X.weight`` and
    ``X.bias`` of a :class:`ChannelAffine`; other entries are kept.
    """
    out = dict(state)
    for key in [k for k in state if k.endswith(".running_mean")]:
        prefix = key[: -len("running_mean")]
        weight, bias = state[prefix + "weight"], state[prefix + "bias"]
        mean, var = state[prefix + "running_mean"].to(weight.dtype), state[prefix + "running_var"].to(weight.dtype)
        scale = weight * torch.rsqrt(var + BATCH_NORM_EPS)  # what MaskedBatchNorm computes in eval mode
        out[prefix + "weight"], out[prefix + "bias"] = scale, bias - mean * scale
        del out[prefix + "running_mean"], out[prefix + "running_var"]
    return out
