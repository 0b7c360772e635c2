"""The LieConv layer (Finzi et al. 2020): a continuous convolution over a Lie group.

For lifted points u_i with values v_i, LieConv computes

    h_i = W vec( (1 / |N(i)|) sum_{j in N(i)} v_j (x) g(a_ij) ),   a_ij = log(u_j^-1 u_i) (+ orbit ids),

where g is a small MLP (the kernel) evaluated on the pair embedding. With ``aggregation="sum"`` the
1/|N(i)| becomes a constant 1/SUM_SCALE, so an atom's message does not shrink as its molecule grows.
Applying W to the values and contracting with the kernel outputs afterwards (the PointConv trick, in
the order that suits a CPU) never materialises a per-pair weight matrix. Neighbourhoods are shared by
all layers of a network and chosen once per forward pass by :func:`neighbourhood`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lieprop.model.norm import ChannelAffine, make_norm


@dataclass
class Neighbourhood:
    """Pair embeddings and masks for every output point's neighbours.

    ``index`` is None when every point is every point's neighbour (the embedding is then the full
    (B, M, M, d) grid); otherwise ``index[b, i, k]`` is the k-th neighbour of point i.
    """

    embedding: torch.Tensor  # (B, M, K, d)
    mask: torch.Tensor  # (B, M, K) valid pairs
    index: torch.Tensor | None  # (B, M, K) or None


def neighbourhood(embedding: torch.Tensor, distance: torch.Tensor, mask: torch.Tensor,
                  nbhd: int, fill: float) -> Neighbourhood:
    """Each point's neighbours: the ``ceil(fill * n)`` nearest (by group distance) of its molecule's ``n``
    points, at most ``nbhd``. This is the adaptive ball of LieConv with the radius set exactly by the
    fill fraction, deterministic instead of sampled. With ``fill >= 1`` and ``nbhd`` covering the largest
    molecule, every point is a neighbour and nothing is gathered.
    """
    b, m = mask.shape
    pair_mask = mask[:, :, None] & mask[:, None, :]
    if fill >= 1.0 and nbhd >= m:
        return Neighbourhood(embedding, pair_mask, None)
    k = min(nbhd, m)
    d = distance.masked_fill(~pair_mask, math.inf)
    dist_k, index = torch.topk(d, k, dim=-1, largest=False, sorted=True)
    n_valid = mask.sum(1, keepdim=True)  # (B, 1)
    keep = torch.clamp(torch.ceil(fill * n_valid.to(distance.dtype)), min=1).to(torch.long)  # (B, 1)
    rank = torch.arange(k, device=mask.device)[None, None, :]
    nbr_mask = (rank < keep[:, :, None]) & torch.isfinite(dist_k) & mask[:, :, None]
    emb = torch.gather(embedding, 2, index[..., None].expand(*index.shape, embedding.shape[-1]))
    return Neighbourhood(emb, nbr_mask, index)


#: The attributes where layers without gradients keep weights derived from their parameters.
CACHES = ("_cached_values_weight", "_folded")


def forget_caches(module: nn.Module) -> None:
    """Drop the derived weights that the layers of ``module`` keep for inference (needed only after writing to
    parameters through ``.data``, which no version counter sees)."""
    for m in module.modules():
        for name in CACHES:
            m.__dict__.pop(name, None)


class KernelMLP(nn.Module):
    """g: pair embedding (d) -> ``cmco`` kernel channels, Linear-norm-Swish twice then Linear.

    ``norm`` names the normalisation (:mod:`lieprop.model.norm`), or is None for none. Without gradients (inference)
    a per-channel affine norm is folded into the Linear before it, and Swish works in place: the same function with
    two passes fewer over the (B, M, K, hidden) pair tensors, which dominate the layer's cost. The folded weights are
    kept until a parameter changes, as :meth:`LieConv._values_weight` says."""

    def __init__(self, d_in: int, hidden: int = 32, out: int = 16, norm: str | None = "layer"):
        super().__init__()
        self.lin1, self.lin2, self.lin3 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, out)
        self.bn1 = make_norm(norm, hidden) if norm else None
        self.bn2 = make_norm(norm, hidden) if norm else None
        self.act = nn.SiLU()

    def forward(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            h = nn.functional.silu(self._linear_norm(self.lin1, self.bn1, a, mask), inplace=True)
            h = nn.functional.silu(self._linear_norm(self.lin2, self.bn2, h, mask), inplace=True)
            return self.lin3(h)
        h = self.lin1(a)
        h = self.act(self.bn1(h, mask) if self.bn1 is not None else h)
        h = self.lin2(h)
        h = self.act(self.bn2(h, mask) if self.bn2 is not None else h)
        return self.lin3(h)

    def _linear_norm(self, lin: nn.Linear, norm: nn.Module | None, x: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        """norm(lin(x)) without gradients, as one Linear when ``norm`` is a :class:`ChannelAffine`."""
        if not isinstance(norm, ChannelAffine):
            h = lin(x)
            return norm(h, mask) if norm is not None else h
        params = (lin.weight, lin.bias, norm.weight, norm.bias)
        if any(t.is_inference() for t in params):  # no version counter to follow: fold anew (a few hundred numbers)
            return nn.functional.linear(x, lin.weight * norm.weight[:, None], lin.bias * norm.weight + norm.bias)
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in params)
        cache: dict = self.__dict__.setdefault("_folded", {})
        folded = cache.get(id(lin))
        if folded is None or folded[0] != key:  # y = (W x + b) * s + t = (s W) x + (s b + t)
            folded = (key, lin.weight * norm.weight[:, None], lin.bias * norm.weight + norm.bias)
            cache[id(lin)] = folded
        return nn.functional.linear(x, folded[1], folded[2])


SUM_SCALE = 16.0  # ~ the mean neighbourhood size of QM9 molecules (18 atoms), keeps sums at the scale of means


class LieConv(nn.Module):
    """One LieConv layer: (B, M, c_in) values -> (B, M, c_out), given a :class:`Neighbourhood`."""

    def __init__(self, c_in: int, c_out: int, d_embed: int, kernel_hidden: int = 32, kernel_out: int = 16,
                 kernel_norm: str | None = "layer", aggregation: str = "mean"):
        super().__init__()
        if aggregation not in ("mean", "sum"):
            raise ValueError(f"aggregation must be 'mean' or 'sum', got {aggregation!r}")
        self.aggregation = aggregation
        self.kernel = KernelMLP(d_embed, kernel_hidden, kernel_out, kernel_norm)
        self.linear = nn.Linear(c_in * kernel_out, c_out)
        self.kernel_out = kernel_out

    def forward(self, values: torch.Tensor, nb: Neighbourhood) -> torch.Tensor:
        bsz, m, c = values.shape
        g = self.kernel(nb.embedding, nb.mask) * nb.mask[..., None].to(values.dtype)  # (B, M, K, cm)
        mean = self.aggregation == "mean"
        count = nb.mask.sum(-1, keepdim=True).clamp_min(1).to(values.dtype) if mean else SUM_SCALE  # (B, M, 1)
        cm, c_out = self.kernel_out, self.linear.out_features
        if nb.index is None:
            # W (sum_j v_j (x) g_ij) = sum_j (g_ij . (W v_j)): apply W to every value first, as one
            # (B*M, c) @ (c, cm*c_out) product, then contract over neighbours and kernel channels with one
            # (B, M, M*cm) @ (B, M*cm, c_out) product. The same sums as the formula above in another order, with
            # no permuted copy of g and long inner dimensions (fast on a CPU); the 1/|N(i)| comes last, on c_out.
            # t[b, j*cm + k, o] = (W_k v_j)_o
            t = (values.reshape(bsz * m, c) @ self._values_weight()).view(bsz, m * cm, c_out)
            out = torch.bmm(g.reshape(bsz, m, m * cm), t)
        else:
            k = nb.index.shape[-1]
            v = torch.gather(values[:, None].expand(bsz, m, m, c), 2,
                             nb.index[..., None].expand(bsz, m, k, c))  # (B, M, K, c)
            s = torch.matmul(g.transpose(-1, -2), v)  # (B, M, cm, c)
            out = nn.functional.linear(s.reshape(bsz, m, cm * c), self.linear.weight)
        return out / count + self.linear.bias

    def _values_weight(self) -> torch.Tensor:
        """W as a (c, cm * c_out) matrix acting on values: ``[v, k * c_out + o] = W[o, k * c + v]``. Without
        gradients it is kept until W changes (the permuted copy costs more than the layer at batch 1): a change is
        seen by its storage or version counter, which every optimiser step, ``load_state_dict``, ``.to`` and in-place
        update of the parameter moves; writes through ``weight.data`` are not seen (call :func:`forget_caches`)."""
        w = self.linear.weight
        c_out, cm = self.linear.out_features, self.kernel_out
        if torch.is_grad_enabled() or w.is_inference():  # inference tensors have no version counter
            return w.view(c_out, cm, -1).permute(2, 1, 0).reshape(-1, cm * c_out)
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        cached = self.__dict__.get("_cached_values_weight")
        if cached is None or cached[0] != key:
            cached = (key, w.view(c_out, cm, -1).permute(2, 1, 0).reshape(-1, cm * c_out).contiguous())
            self.__dict__["_cached_values_weight"] = cached
        return cached[1]
