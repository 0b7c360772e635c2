"""L-conv on point clouds: Lie-algebra convolution (Dehmamy et al., NeurIPS 2021, arXiv 2109.07103) for molecules.

L-conv works with the Lie algebra instead of the group: a layer applies K infinitesimal generators L_i to its input
and mixes the results, ``y = W_0 x + sum_i W_i (L_i x)``, so the generators can be learned. On a molecule a generator
is an affine vector field

    v_i(x) = A_i (x - x_c) + b_i          (A_i a 3x3 matrix, b_i an optional translation part, x_c the centroid)

and L_i acting on per-atom features f is the Lie derivative ``(L_i f)(x_n) = v_i(x_n) . grad f(x_n)``. The gradient
of features that live only on the atoms is a weighted least-squares fit over each atom's neighbours
(:func:`gradient_operator`): for atom n, with displacements d_nm = x_m - x_n and smooth cutoff weights w_nm,

    grad f(x_n) = argmin_g  sum_m w_nm (f_m - f_n - g . d_nm)^2 + ridge |g|^2
                = M_n^-1 sum_m w_nm d_nm (f_m - f_n),       M_n = sum_m w_nm d_nm d_nm^T + ridge I.

It is rotation-equivariant (a rotation R turns every d_nm into R d_nm, M_n into R M_n R^T, the gradient into R g),
translation-invariant and permutation-equivariant; ``ridge`` (Å^2) keeps it defined for atoms with fewer than three
non-coplanar neighbours, shrinking the unseen components of g towards zero.

:class:`LConv` is the paper's layer. :class:`InvariantLConv` is the variant for property prediction: it contracts
the Lie derivatives of two projections of the features with the inverse Gram matrix of the generators,

    q_c(x_n) = sum_ij (L_i U f)_c(x_n) (G^-1)_ij (L_j V f)_c(x_n),      G_ij = <A_i, A_j>_F + <b_i, b_j>,

and outputs ``W_0 f + W_q q``. Under an orthogonal map x -> R x + t of the molecule the Lie derivatives become those
of the conjugated generators (R^T A_i R, R^T b_i); when the span of the generators is closed under that conjugation
(so(3), translations, so(3) + translations, ...) the conjugated ones are a linear recombination C of the old ones,
G is unchanged (G = C G C^T) and so is q: the layer is exactly O(3)- and translation-invariant. For a span that is
not closed (a random one) it is not, and tests/test_lconv.py measures both. q depends only on the span, not on the
basis chosen for it.

:func:`norm_penalty` and :func:`closure_penalty` are the two regularisers the paper discusses for learned
generators: keep them from collapsing to zero (or growing without bound), and keep their span a Lie algebra (closed
under brackets).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Relative ridge added to the Gram matrix before inverting it (a near-degenerate set of learned generators).
GRAM_RIDGE = 1e-6


def so3_basis(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(3, 3, 3): the infinitesimal rotations about x, y and z (L_x e_y = e_z, cyclically)."""
    basis = torch.zeros(3, 3, 3, dtype=dtype)
    for axis, (i, j) in enumerate(((2, 1), (0, 2), (1, 0))):
        basis[axis, i, j], basis[axis, j, i] = 1.0, -1.0
    return basis


def smooth_cutoff(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / cutoff) + 1) below ``cutoff``, 0 beyond: a weight that reaches zero with zero slope."""
    inside = distance < cutoff
    return torch.where(inside, 0.5 * (torch.cos(math.pi * distance / cutoff) + 1.0), torch.zeros_like(distance))


def centroid(positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3): the mean position of each molecule's real atoms."""
    m = mask[..., None].to(positions.dtype)
    return (positions * m).sum(1) / m.sum(1).clamp_min(1.0)


def gradient_operator(positions: torch.Tensor, mask: torch.Tensor, cutoff: float = 3.0,
                      ridge: float = 0.1) -> torch.Tensor:
    """(B, N, N, 3) D with ``grad f(x_n) = sum_m D[n, m] (f_m - f_n)``: the regularised weighted least-squares
    gradient of the module doc, over the neighbours within ``cutoff`` Å. Rows and columns of padding are zero."""
    if cutoff <= 0 or ridge <= 0:
        raise ValueError(f"cutoff and ridge must be positive, got {cutoff} and {ridge}")
    d = positions[:, None, :, :] - positions[:, :, None, :]  # d[b, n, m] = x_m - x_n
    dist = torch.sqrt((d * d).sum(-1) + 1e-12)
    pair = mask[:, :, None] & mask[:, None, :]
    pair = pair & ~torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
    w = smooth_cutoff(dist, cutoff) * pair.to(positions.dtype)  # (B, N, N)
    moment = torch.einsum("bnm,bnmi,bnmj->bnij", w, d, d)
    moment = moment + ridge * torch.eye(3, dtype=positions.dtype, device=positions.device)
    return torch.linalg.solve(moment[:, :, None], (w[..., None] * d)[..., None])[..., 0]


def gradient(operator: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """(B, N, 3, C): the gradient of per-atom features f (B, N, C) with an operator of :func:`gradient_operator`."""
    return torch.einsum("bnmi,bmc->bnic", operator, f) - operator.sum(2)[..., None] * f[:, :, None, :]


def vector_fields(generators: torch.Tensor, translations: torch.Tensor | None, positions: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """(B, K, N, 3): v_k(x_n) = A_k (x_n - x_c) + b_k at every atom (zero on padding)."""
    r = (positions - centroid(positions, mask)[:, None]) * mask[..., None].to(positions.dtype)
    v = torch.einsum("kij,bnj->bkni", generators.to(positions.dtype), r)
    if translations is not None:
        v = v + translations.to(positions.dtype)[None, :, None, :]
    return v * mask[:, None, :, None].to(positions.dtype)


def lie_derivatives(fields: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """(B, K, N, C): L_k f = v_k . grad f, from :func:`vector_fields` and :func:`gradient`."""
    return torch.einsum("bkni,bnic->bknc", fields, grad)


def gram_matrix(generators: torch.Tensor, translations: torch.Tensor | None = None) -> torch.Tensor:
    """(K, K): G_ij = <A_i, A_j>_F (+ <b_i, b_j>), an inner product that conjugation by rotations preserves."""
    flat = generators.reshape(generators.shape[0], -1)
    if translations is not None:
        flat = torch.cat([flat, translations], dim=1)
    return flat @ flat.T


def inverse_gram(generators: torch.Tensor, translations: torch.Tensor | None = None) -> torch.Tensor:
    """G^-1, with a relative ridge of :data:`GRAM_RIDGE` (exact to that ridge for a non-degenerate basis)."""
    g = gram_matrix(generators, translations)
    scale = torch.diagonal(g).mean().clamp_min(torch.finfo(g.dtype).tiny)
    return torch.linalg.inv(g + GRAM_RIDGE * scale * torch.eye(g.shape[0], dtype=g.dtype, device=g.device))


def norm_penalty(generators: torch.Tensor, translations: torch.Tensor | None = None) -> torch.Tensor:
    """sum_k (|A_k|^2 + |b_k|^2 - 1)^2: keeps learned generators at unit norm, away from the trivial L = 0 (which
    makes every layer a plain per-atom map) and from blowing up."""
    sq = generators.flatten(1).pow(2).sum(1)
    if translations is not None:
        sq = sq + translations.pow(2).sum(1)
    return (sq - 1.0).pow(2).sum()


def _as_affine(generators: torch.Tensor, translations: torch.Tensor | None) -> torch.Tensor:
    """(K, 12) vectors (vec A, b) of affine generators; b = 0 without translations."""
    flat = generators.reshape(generators.shape[0], 9)
    b = translations if translations is not None else flat.new_zeros(flat.shape[0], 3)
    return torch.cat([flat, b], dim=1)


def brackets(generators: torch.Tensor, translations: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All pairwise brackets of affine generators (A, b): [(A, a), (B, b)] = (AB - BA, A b - B a), as (K, K, 3, 3)
    and (K, K, 3) (None without translations)."""
    a = generators
    comm = torch.einsum("iab,jbc->ijac", a, a) - torch.einsum("jab,ibc->ijac", a, a)
    if translations is None:
        return comm, None
    tr = torch.einsum("iab,jb->ija", a, translations) - torch.einsum("jab,ib->ija", a, translations)
    return comm, tr


def closure_penalty(generators: torch.Tensor, translations: torch.Tensor | None = None) -> torch.Tensor:
    """How far the span is from a Lie algebra: sum over pairs of |[X_i, X_j] - its projection onto the span|^2,
    each bracket measured relative to |X_i|^2 |X_j|^2 (so the penalty ignores the generators' scale). Zero for
    so(3), translations, so(3) + translations, a single generator, or any other subalgebra."""
    k = generators.shape[0]
    comm, tr = brackets(generators, translations)
    basis = _as_affine(generators, translations)  # (K, 12)
    bracket_vectors = _as_affine(comm.reshape(k * k, 3, 3), None if tr is None else tr.reshape(k * k, 3))
    gram = basis @ basis.T
    scale = torch.diagonal(gram).mean().clamp_min(torch.finfo(gram.dtype).tiny)
    coef = torch.linalg.solve(gram + GRAM_RIDGE * scale * torch.eye(k, dtype=gram.dtype, device=gram.device),
                              basis @ bracket_vectors.T)  # (K, K*K)
    residual = bracket_vectors - coef.T @ basis
    sq = basis.pow(2).sum(1)
    weight = (sq[:, None] * sq[None, :]).reshape(-1).clamp_min(torch.finfo(gram.dtype).tiny)
    return (residual.pow(2).sum(1) / weight).sum()


class Generators(nn.Module):
    """K affine generators (A_k, b_k), shared by the layers of a network. ``learn=False`` freezes them (they are
    still saved with the weights, so a bundle holds the algebra its network used)."""

    def __init__(self, generators: torch.Tensor, translations: torch.Tensor | None = None, learn: bool = False):
        super().__init__()
        if generators.ndim != 3 or generators.shape[1:] != (3, 3):
            raise ValueError(f"generators must be (K, 3, 3), got {tuple(generators.shape)}")
        if translations is not None and translations.shape != (generators.shape[0], 3):
            raise ValueError(f"translations must be (K, 3), got {tuple(translations.shape)}")
        self.A = nn.Parameter(generators.clone(), requires_grad=learn)
        self.b = None if translations is None else nn.Parameter(translations.clone(), requires_grad=learn)

    def __len__(self) -> int:
        return self.A.shape[0]

    def fields(self, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, K, N, 3) vector fields at the atoms."""
        return vector_fields(self.A, self.b, positions, mask)

    def inverse_gram(self, dtype: torch.dtype) -> torch.Tensor:
        return inverse_gram(self.A.to(dtype), None if self.b is None else self.b.to(dtype))


def named_generators(name: str, n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Generators by name: ``"so3"`` (3, no translations), ``"se3"`` (so(3) and the 3 translations, 6),
    ``"random"`` (``n`` Gaussian ones, default 6, with translation parts, from ``seed``)."""
    if name == "so3":
        return so3_basis(), None
    if name == "se3":
        a = torch.cat([so3_basis(), torch.zeros(3, 3, 3)])
        b = torch.cat([torch.zeros(3, 3), torch.eye(3)])
        return a, b
    if name == "random":
        gen = torch.Generator().manual_seed(seed)
        k = 6 if n is None else n
        a, b = torch.randn(k, 3, 3, generator=gen), torch.randn(k, 3, generator=gen)
        norm = torch.sqrt(a.flatten(1).pow(2).sum(1) + b.pow(2).sum(1))
        return a / norm[:, None, None], b / norm[:, None]
    raise ValueError(f"unknown generators {name!r}; known: so3, se3, random")


class LConv(nn.Module):
    """The paper's layer on a point cloud: ``y = W_0 f + sum_k W_k (L_k f)`` per atom, (B, N, C_in) -> (B, N, C_out).

    Equivariant in the paper's sense (it commutes with the flows of its generators to first order), not invariant:
    rotating the molecule changes its output unless the features carry a matching representation."""

    def __init__(self, c_in: int, c_out: int, generators: Generators):
        super().__init__()
        self.generators = generators
        self.mix = nn.Linear(c_in * (len(generators) + 1), c_out)

    def forward(self, f: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                operator: torch.Tensor | None = None) -> torch.Tensor:
        if operator is None:
            operator = gradient_operator(positions, mask)
        lie = lie_derivatives(self.generators.fields(positions, mask), gradient(operator, f))  # (B, K, N, C)
        stacked = torch.cat([f[:, None], lie], dim=1).permute(0, 2, 1, 3).flatten(2)  # (B, N, (K+1) C)
        return self.mix(stacked) * mask[..., None].to(f.dtype)


class InvariantLConv(nn.Module):
    """The invariant variant (module doc): ``y = W_0 f + W_q q`` with q the Gram-contracted Lie derivatives of two
    projections U f and V f (``hidden`` channels each). Exactly invariant when the generators' span is closed under
    conjugation by rotations."""

    def __init__(self, c_in: int, c_out: int, generators: Generators, hidden: int | None = None):
        super().__init__()
        hidden = c_in if hidden is None else hidden
        self.generators = generators
        self.u, self.v = nn.Linear(c_in, hidden, bias=False), nn.Linear(c_in, hidden, bias=False)
        self.w0, self.wq = nn.Linear(c_in, c_out), nn.Linear(hidden, c_out, bias=False)

    def invariants(self, f: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                   operator: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, hidden): q_c = sum_ij (L_i U f)_c (G^-1)_ij (L_j V f)_c."""
        if operator is None:
            operator = gradient_operator(positions, mask)
        fields = self.generators.fields(positions, mask)
        lu = lie_derivatives(fields, gradient(operator, self.u(f)))
        lv = lie_derivatives(fields, gradient(operator, self.v(f)))
        return torch.einsum("bknc,kl,blnc->bnc", lu, self.generators.inverse_gram(f.dtype), lv)

    def forward(self, f: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                operator: torch.Tensor | None = None) -> torch.Tensor:
        q = self.invariants(f, positions, mask, operator)
        return (self.w0(f) + self.wq(q)) * mask[..., None].to(f.dtype)
