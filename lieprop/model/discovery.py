"""Symmetry discovery: which one-parameter transformations relate pairs of configurations (``lieprop discover``).

Given pairs (X_p, Y_p) of the same atoms in the same order, find K affine generators (A_k, b_k) and per-pair
coefficients t_pk with

    Y_p ~ exp(sum_k t_pk (A_k, b_k)) X_p        (the exponential of the 4x4 affine matrix [[A, b], [0, 0]])

after centring both frames of a pair on the first frame's centroid (so a relative translation stays visible). Three
steps, all in float64:

1. *Per pair, linear*: the midpoint regression Y - X = A (X + Y) / 2 + b gives each pair's algebra element in closed
   form (least squares, a small ridge for planar or linear molecules). It is exact for rotations (A is the Cayley
   parameter, antisymmetric), uniform scalings (a multiple of I) and translations.
2. *Shared span*: the top-K principal directions of those per-pair elements start the K generators.
3. *Joint fit*: coefficients and generators (unit norm) are refined by alternating Levenberg-Marquardt steps on the
   mean squared residual of the exponential model, with exact derivatives of the matrix exponential.

Generators live in a 12-dimensional space of affine maps u = (vec A, b / rho), rho the RMS distance of the atoms
from their centroid (so a translation and a linear map that move atoms equally far weigh the same). The report's
``generators`` are an orthonormal basis of the learned span ordered by how much of the pairs' motion each carries
(``weights``); the discovered algebra is spanned by those carrying at least :data:`RANK_THRESHOLD` of it. It is
compared with named algebras (:data:`NAMED_ALGEBRAS`) by principal-angle cosines, and the fit with the best of two
baselines: the identity (no motion) and K random generators fitted the same way. When the learned generators do not
bring the residual below :data:`SYMMETRY_RATIO` times the baseline's, the verdict is "no symmetry".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lieprop.data.elements import SYMBOLS
from lieprop.model.lconv import so3_basis

#: A generator carrying at least this fraction of the pairs' motion (squared) belongs to the discovered algebra.
RANK_THRESHOLD = 0.01
#: Symmetry found when the residual is below this fraction of the baseline residual.
SYMMETRY_RATIO = 0.5
#: A named algebra "matches" when its similarity (see :func:`compare`) is at least this.
MATCH_SIMILARITY = 0.9
#: A first frame is flat (planar or linear) when its centred positions' smallest singular value is below this
#: fraction of the largest: it cannot tell some generators apart, and is left out of the span analysis.
FLAT_RATIO = 0.05
#: Dimension of the space of affine generators (vec A, b / rho).
AFFINE_DIM = 12

Frame = tuple[np.ndarray, np.ndarray]  # (numbers (n,), positions (n, 3) Å)
Progress = Callable[[int], None]  # called with the number of optimisation iterations just done


def _affine(a: np.ndarray | None = None, b: np.ndarray | None = None) -> np.ndarray:
    u = np.zeros(AFFINE_DIM)
    if a is not None:
        u[:9] = np.asarray(a, dtype=np.float64).reshape(9)
    if b is not None:
        u[9:] = b
    return u


def _named_algebras() -> dict[str, tuple[str, np.ndarray]]:
    so3 = so3_basis(torch.float64).numpy()
    shear = []  # traceless symmetric: volume-preserving strains
    for i, j in ((0, 1), (0, 2), (1, 2)):
        m = np.zeros((3, 3))
        m[i, j] = m[j, i] = 1.0
        shear.append(m)
    shear += [np.diag([1.0, -1.0, 0.0]), np.diag([1.0, 1.0, -2.0])]
    translations = [_affine(b=e) for e in np.eye(3)]
    return {
        "so3": ("rotations so(3): the antisymmetric matrices", np.stack([_affine(a) for a in so3])),
        "rotation_x": ("rotations about the x axis", _affine(so3[0])[None]),
        "rotation_y": ("rotations about the y axis", _affine(so3[1])[None]),
        "rotation_z": ("rotations about the z axis", _affine(so3[2])[None]),
        "scaling": ("uniform scaling: the identity matrix", _affine(np.eye(3))[None]),
        "shear": ("shears: the traceless symmetric matrices (volume-preserving strains)",
                  np.stack([_affine(m) for m in shear])),
        "translations": ("translations", np.stack(translations)),
        "se3": ("rigid motions se(3): so(3) and the translations",
                np.concatenate([np.stack([_affine(a) for a in so3]), np.stack(translations)])),
    }


#: name -> (description, (d, 12) spanning vectors in the affine space (vec A, b / rho)).
NAMED_ALGEBRAS: dict[str, tuple[str, np.ndarray]] = _named_algebras()


def orthonormal_basis(vectors: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """(r, D): an orthonormal basis of the span of the rows of ``vectors`` (rank by singular values above tol)."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    _, s, vt = np.linalg.svd(vectors, full_matrices=False)
    rank = int((s > tol * max(1.0, s.max(initial=0.0))).sum())
    return vt[:rank]


def principal_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the spans of the rows of ``a`` and of ``b`` (Frobenius inner product
    on the flattened matrices), largest first; min(rank a, rank b) of them."""
    qa, qb = orthonormal_basis(a), orthonormal_basis(b)
    if not len(qa) or not len(qb):
        return np.zeros(0)
    return np.clip(np.linalg.svd(qa @ qb.T, compute_uv=False), 0.0, 1.0)


def compare(learned: np.ndarray, named: np.ndarray) -> dict[str, Any]:
    """How a learned span (rows) compares with a named one: the principal-angle ``cosines`` and a ``similarity``,
    sum(cos^2) / max(dim learned, dim named): 1 exactly when the spans are equal, 1/3 for one axis of so(3) against
    so(3), 0 when they are orthogonal."""
    cos = principal_cosines(learned, named)
    r, d = len(orthonormal_basis(learned)), len(orthonormal_basis(named))
    similarity = float((cos**2).sum() / max(r, d, 1))
    return {"dimension": d, "cosines": [round(float(c), 6) for c in cos], "similarity": round(similarity, 6)}


#: The synthetic cases of :func:`example_pairs` (docs/SYMMETRY.md, tests/test_discover.py).
EXAMPLE_CASES = ("rotation", "rotation_z", "scaling", "translation", "jitter")


def example_pairs(molecules: Sequence[Frame], case: str, seed: int = 0, size: float = 0.5) -> list[Frame]:
    """Frames for ``lieprop discover``: each molecule, then the same molecule moved (about its centroid) by
    ``"rotation"`` (a random axis, an angle uniform in [-size, size] rad), ``"rotation_z"`` (the z axis),
    ``"scaling"`` (a factor exp(u), u uniform in [-size / 2, size / 2]), ``"translation"`` (a Gaussian shift of
    ``size`` Å per coordinate) or ``"jitter"`` (every atom independently by ``size`` / 5 Å per coordinate: no
    symmetry)."""
    if case not in EXAMPLE_CASES:
        raise ValueError(f"unknown case {case!r}; known: {', '.join(EXAMPLE_CASES)}")
    rng = np.random.default_rng(seed)
    frames: list[Frame] = []
    for z, x in molecules:
        x = np.asarray(x, dtype=np.float64)
        c = x.mean(0)
        if case in ("rotation", "rotation_z"):
            axis = rng.normal(size=3) if case == "rotation" else np.array([0.0, 0.0, 1.0])
            omega = axis / np.linalg.norm(axis) * rng.uniform(-size, size)
            rot = torch.linalg.matrix_exp(torch.einsum("k,kij->ij", torch.from_numpy(omega),
                                                       so3_basis(torch.float64))).numpy()
            moved = (x - c) @ rot.T + c
        elif case == "scaling":
            moved = (x - c) * np.exp(rng.uniform(-size / 2, size / 2)) + c
        elif case == "translation":
            moved = x + rng.normal(scale=size, size=3)
        else:
            moved = x + rng.normal(scale=size / 5, size=x.shape)
        frames += [(np.asarray(z), x), (np.asarray(z), moved)]
    return frames


def make_pairs(frames: Sequence[Frame]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Frames 2i and 2i+1 as pairs of positions; ``ValueError`` naming the problem when the frames do not pair up:
    fewer than 2, an odd number, or a pair whose atoms differ in number, element or order."""
    if len(frames) < 2:
        raise ValueError(f"need at least 2 frames (one pair: frames 0 and 1), got {len(frames)}")
    if len(frames) % 2:
        raise ValueError(f"odd number of frames ({len(frames)}): frames 2i and 2i+1 form a pair, so frame "
                         f"{len(frames) - 1} has no partner")
    pairs = []
    for p in range(len(frames) // 2):
        (za, xa), (zb, xb) = frames[2 * p], frames[2 * p + 1]
        where = f"pair {p} (frames {2 * p} and {2 * p + 1})"
        if len(za) != len(zb):
            raise ValueError(f"{where}: {len(za)} atoms against {len(zb)}; a pair must hold the same atoms in the "
                             "same order")
        if len(za) == 0:
            raise ValueError(f"{where}: no atoms")
        differ = np.flatnonzero(np.asarray(za) != np.asarray(zb))
        if differ.size:
            i = int(differ[0])
            raise ValueError(f"{where}: atom {i} is {SYMBOLS[int(za[i])]} in frame {2 * p} and "
                             f"{SYMBOLS[int(zb[i])]} in frame {2 * p + 1}; a pair must hold the same atoms in the "
                             "same order")
        pairs.append((np.asarray(xa, dtype=np.float64), np.asarray(xb, dtype=np.float64)))
    return pairs


@dataclass
class _Padded:
    x: torch.Tensor  # (P, N, 3) first frames, centred on their centroid
    y: torch.Tensor  # (P, N, 3) second frames, same centre
    mask: torch.Tensor  # (P, N)
    rho: float  # RMS distance of the first frames' atoms from their centroid (Å)

    @property
    def n_atoms(self) -> float:
        return float(self.mask.sum())


def _pad(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> _Padded:
    n = max(len(x) for x, _ in pairs)
    x = np.zeros((len(pairs), n, 3))
    y = np.zeros_like(x)
    mask = np.zeros((len(pairs), n), dtype=bool)
    for p, (a, b) in enumerate(pairs):
        c = a.mean(0)
        x[p, : len(a)], y[p, : len(a)], mask[p, : len(a)] = a - c, b - c, True
    rho = float(np.sqrt((x[mask] ** 2).sum(1).mean()))
    if not rho > 1e-8:
        raise ValueError("every first frame is a single point (all atoms at their centroid): nothing to compare")
    return _Padded(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), rho)


def _to_matrices(u: torch.Tensor, rho: float) -> torch.Tensor:
    """(..., 12) affine vectors -> (..., 4, 4) matrices [[A, rho b], [0, 0]]."""
    m = u.new_zeros(*u.shape[:-1], 4, 4)
    m[..., :3, :3] = u[..., :9].reshape(*u.shape[:-1], 3, 3)
    m[..., :3, 3] = rho * u[..., 9:]
    return m


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Affine 4x4 maps (P, ..., 4, 4) applied to points x (P, N, 3): (P, ..., N, 3)."""
    xs = x.reshape(x.shape[0], *([1] * (m.ndim - 3)), *x.shape[1:])
    return xs @ m[..., :3, :3].transpose(-1, -2) + m[..., None, :3, 3]


def _residuals(omega: torch.Tensor, data: _Padded) -> torch.Tensor:
    """(P, N, 3): exp(omega_p) x - y on real atoms (zero on padding), omega (P, 12)."""
    g = torch.linalg.matrix_exp(_to_matrices(omega, data.rho))
    return (_apply(g, data.x) - data.y) * data.mask[..., None]


def _residual_sq(omega: torch.Tensor, data: _Padded) -> float:
    """Mean over atoms of |exp(omega_p) x - y|^2 (Å^2)."""
    return float((_residuals(omega, data) ** 2).sum()) / data.n_atoms


def _derivatives(omega: torch.Tensor, data: _Padded, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram matrices M (P, 12, 12) of the atoms' motions d/du_j exp(omega_p) x along each basis direction j of the
    affine space, and their products c (P, 12) with the residuals. Derivatives of the exponential are Fréchet
    derivatives, read off the exponential of the block matrix [[W, E], [0, W]] (top right block)."""
    p = omega.shape[0]
    w = _to_matrices(omega, data.rho)
    e = _to_matrices(torch.eye(AFFINE_DIM, dtype=omega.dtype)[:dims], data.rho)  # (dims, 4, 4)
    big = omega.new_zeros(p, dims, 8, 8)
    big[..., :4, :4] = w[:, None]
    big[..., 4:, 4:] = w[:, None]
    big[..., :4, 4:] = e[None]
    ex = torch.linalg.matrix_exp(big)
    frechet = ex[..., :4, 4:]  # (P, dims, 4, 4)
    motions = _apply(frechet, data.x) * data.mask[:, None, :, None]  # (P, dims, N, 3)
    r = (_apply(ex[:, 0, :4, :4], data.x) - data.y) * data.mask[..., None]
    m = torch.einsum("pjna,pina->pji", motions, motions)
    c = torch.einsum("pjna,pna->pj", motions, r)
    pad = AFFINE_DIM - dims
    if pad:
        m = torch.nn.functional.pad(m, (0, pad, 0, pad))
        c = torch.nn.functional.pad(c, (0, pad))
    return m, c


def _fit(data: _Padded, basis: torch.Tensor, coef: torch.Tensor, *, learn_basis: bool, dims: int, iterations: int,
         progress: Progress | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Alternating Levenberg-Marquardt on the exponential model: per pair, the K coefficients; then the K
    generators together (kept at unit norm, their scale moved into the coefficients). Starts from (basis (K, 12),
    coef (P, K)); returns the basis, the coefficients and the RMS residual (Å). Exact derivatives, so a start that
    already fits stays put (a first-order optimiser with normalised steps, like Adam, would wander off it)."""
    u, t = basis.clone(), coef.clone()
    k = u.shape[0]
    loss = _residual_sq(t @ u, data)
    damping = {"t": 1e-3, "u": 1e-3}
    for _ in range(iterations):
        m, c = _derivatives(t @ u, data, dims)
        # coefficients: per pair, H = U M U^T, g = U c
        h = torch.einsum("kj,pji,li->pkl", u, m, u)
        g = torch.einsum("kj,pj->pk", u, c)
        loss, t = _lm_step(data, loss, damping, "t", h, g, _shift_coef, t, u)[:2]
        if learn_basis:
            m, c = _derivatives(t @ u, data, dims)
            h = torch.einsum("pk,pji,pl->kjli", t, m, t).reshape(k * AFFINE_DIM, k * AFFINE_DIM)
            g = torch.einsum("pk,pj->kj", t, c).reshape(-1)
            loss, t, u = _lm_step(data, loss, damping, "u", h[None], g[None],
                                  _shift_basis, t, u)
        if progress is not None:
            progress(1)
    return u, t, math.sqrt(loss)


def _shift_coef(d: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return t + d.reshape(t.shape), u


def _shift_basis(d: torch.Tensor, t: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """u + d, each generator rescaled to unit norm and its coefficients by the inverse (same elements t @ u)."""
    u = u + d.reshape(u.shape)
    norm = u.norm(dim=1).clamp_min(1e-12)
    return t * norm, u / norm[:, None]


def _lm_step(data: _Padded, loss: float, damping: dict[str, float], key: str, h: torch.Tensor, g: torch.Tensor,
             update: Callable[..., tuple[torch.Tensor, torch.Tensor]], t: torch.Tensor, u: torch.Tensor
             ) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One damped Gauss-Newton step (H + mu diag(H) + mu' I) d = -g for the block ``key``; tried with growing damping
    until the loss does not increase (at most 8 tries), else nothing changes."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    for _ in range(8):
        mu = damping[key]
        lhs = h + mu * (torch.diag_embed(diag) + diag.mean(-1)[..., None, None].clamp_min(1e-30) * eye)
        d = -torch.linalg.solve(lhs, g[..., None])[..., 0]
        t_new, u_new = update(d, t, u)
        new = _residual_sq(t_new @ u_new, data)
        if new <= loss:
            damping[key] = max(mu / 3, 1e-9)
            return new, t_new, u_new
        damping[key] = mu * 4
    return loss, t, u


def per_pair_elements(data: _Padded, translations: bool, ridge: float = 1e-4) -> np.ndarray:
    """(P, 12): each pair's algebra element from the midpoint regression Y - X = A (X + Y)/2 + b (module doc)."""
    mid, diff, mask = (data.x + data.y) / 2, data.y - data.x, data.mask[..., None].to(data.x.dtype)
    cols = [mid / data.rho] + ([mask.expand_as(mid)] if translations else [])
    design = torch.cat(cols, dim=-1) * mask  # (P, N, 3 or 4): one row per atom, shared by the 3 output coordinates
    lhs = design.transpose(1, 2) @ design
    lhs = lhs + ridge * lhs.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(lhs.shape[-1],
                                                                                          dtype=lhs.dtype)
    coef = torch.linalg.solve(lhs, design.transpose(1, 2) @ (diff * mask))  # (P, 3 or 4, 3)
    u = torch.zeros(len(coef), AFFINE_DIM, dtype=coef.dtype)
    u[:, :9] = (coef[:, :3].transpose(1, 2) / data.rho).reshape(-1, 9)  # coef[:, j, i] = rho A_ij (mid / rho)
    if translations:
        u[:, 9:] = coef[:, 3] / data.rho
    return u.numpy()


@dataclass
class Discovery:
    """The outcome of :func:`discover` (``report()`` is the JSON of ``lieprop discover``)."""

    generators: np.ndarray  # (K, 3, 3): orthonormal basis of the learned span, by weight
    translations: np.ndarray | None  # (K, 3) Å per unit coefficient, or None when translations were not learned
    weights: np.ndarray  # (K,): fraction of the pairs' squared motion each generator carries
    rank: int  # how many generators carry at least RANK_THRESHOLD of it: the discovered algebra's dimension
    residual: float  # RMS residual of the learned generators (Å)
    baselines: dict[str, float]  # "identity" and "random_generators" RMS residuals (Å)
    matches: dict[str, dict[str, Any]]
    n_pairs: int
    n_atoms: int
    rho: float
    n_solid: int  # pairs whose first frame is not flat: the span analysis uses them

    @property
    def baseline_residual(self) -> float:
        return min(self.baselines.values())

    @property
    def found(self) -> bool:
        return self.residual < SYMMETRY_RATIO * self.baseline_residual

    @property
    def best_match(self) -> str:
        return max(self.matches, key=lambda name: self.matches[name]["similarity"])

    def learned_span(self) -> np.ndarray:
        """(rank, 12) affine vectors (vec A, b / rho) spanning the discovered algebra."""
        b = np.zeros((len(self.generators), 3)) if self.translations is None else self.translations / self.rho
        return np.concatenate([self.generators.reshape(-1, 9), b], axis=1)[: self.rank]

    def verdict(self) -> str:
        """One plain sentence: symmetry or not, and which."""
        if self.baseline_residual < 1e-12:
            return "no motion: the two frames of every pair are the same"
        ratio = self.residual / self.baseline_residual
        if not self.found:
            return (f"no symmetry: the {len(self.generators)} learned generators leave a residual of "
                    f"{self.residual:.4g} Å, {ratio:.2f} of the baseline's {self.baseline_residual:.4g} Å "
                    f"(identity or random generators); they explain the pairs no better than chance")
        best = self.best_match
        similarity = self.matches[best]["similarity"]
        head = (f"symmetry found: a {self.rank}-dimensional algebra (residual {self.residual:.3g} Å, "
                f"{ratio:.3f} of the baseline's {self.baseline_residual:.3g} Å)")
        if similarity >= MATCH_SIMILARITY:
            return f"{head}, matching {best} ({NAMED_ALGEBRAS[best][0]}; similarity {similarity:.4f})"
        return f"{head}, not one of the named algebras (closest: {best}, similarity {similarity:.3f})"

    def report(self) -> dict[str, Any]:
        """The JSON report: generators, translations, residuals, matches and the verdict."""
        translations = ([None] * len(self.generators) if self.translations is None
                        else [[round(float(v), 8) for v in b] for b in self.translations])
        return {
            "generators": [[[round(float(v), 8) for v in row] for row in a] for a in self.generators],
            "translations": translations,
            "weights": [round(float(w), 8) for w in self.weights],
            "rank": self.rank,
            "residual": self.residual,
            "baseline_residual": self.baseline_residual,
            "baselines": self.baselines,
            "symmetry": self.found,
            "verdict": self.verdict(),
            "best_match": self.best_match if self.found else None,
            "matches": self.matches,
            "n_pairs": self.n_pairs,
            "n_pairs_in_span_analysis": self.n_solid,
            "n_atoms": self.n_atoms,
            "length_scale": self.rho,
            "notes": "generators: an orthonormal basis of the learned span (Frobenius norm of (A, b / length_scale) "
                     "is 1), ordered by weight, the fraction of the pairs' squared motion each carries; the "
                     "discovered algebra is the first `rank` of them (weights and span from the pairs whose first "
                     "frame is not flat or linear). matches: principal-angle cosines between that span and each "
                     "named algebra, and similarity = sum(cos^2) / max(dimensions).",
        }


def discover(frames: Sequence[Frame], k: int, *, translations: bool = True, iterations: int = 30, seed: int = 0,
             progress: Progress | None = None) -> Discovery:
    """Learn ``k`` generators relating frames 2i and 2i+1 (module doc). ``progress`` is called with step counts
    (2 * ``iterations`` in all: the fit and the random baseline). ``ValueError`` for frames that do not pair up
    (:func:`make_pairs`) or a ``k`` outside 1..12 (1..9 without translations)."""
    dim = AFFINE_DIM if translations else 9
    if not 1 <= k <= dim:
        raise ValueError(f"--generators must be between 1 and {dim}{'' if translations else ' without translations'}"
                         f", got {k}")
    if iterations < 1:
        raise ValueError(f"iterations must be positive, got {iterations}")
    data = _pad(make_pairs(frames))
    elements = per_pair_elements(data, translations)  # (P, 12)
    solid = _solid_pairs(data)
    _, _, vt = np.linalg.svd(elements[solid], full_matrices=True)
    basis = torch.from_numpy(vt[:k].copy())
    if not translations:
        basis[:, 9:] = 0.0
    # without translations a completion direction may have been a pure translation: replace it by a random one
    rng = np.random.default_rng(seed)
    for i in range(k):
        if float(basis[i].norm()) < 0.5:
            v = rng.normal(size=AFFINE_DIM) * (np.arange(AFFINE_DIM) < dim)
            basis[i] = torch.from_numpy(v)
    basis = basis / basis.norm(dim=1, keepdim=True)
    coef = torch.from_numpy(elements) @ basis.T
    u, t, residual = _fit(data, basis, coef, learn_basis=True, dims=dim, iterations=iterations, progress=progress)

    random_basis = torch.from_numpy(rng.normal(size=(k, AFFINE_DIM)) * (np.arange(AFFINE_DIM) < dim))
    random_basis = random_basis / random_basis.norm(dim=1, keepdim=True)
    random_coef = torch.linalg.lstsq(random_basis.T, torch.from_numpy(elements).T).solution.T
    *_, random_residual = _fit(data, random_basis, random_coef, learn_basis=False, dims=dim,
                               iterations=iterations, progress=progress)
    identity = math.sqrt(float(((data.y - data.x) ** 2).sum(-1)[data.mask].mean()))

    # the learned span, reorganised: principal directions of the per-pair elements t_p @ u, over the pairs that
    # determine them (a flat or linear molecule is blind to some generators, so its element is not unique)
    omega = (t @ u).numpy()[solid]
    _, s, vt = np.linalg.svd(omega, full_matrices=True)
    s = np.concatenate([s, np.zeros(max(0, k - len(s)))])[:k]
    directions = vt[:k] if len(s) else u.numpy()
    # keep the basis inside the learned span even when some directions carry nothing
    directions = _within_span(directions, u.numpy(), s)
    weights = s**2 / max(float((s**2).sum()), 1e-300)
    rank = int((weights >= RANK_THRESHOLD).sum())
    learned = directions[:rank]
    matches = {name: {"description": desc, **compare(learned, vectors)}
               for name, (desc, vectors) in NAMED_ALGEBRAS.items()}
    gens = directions[:, :9].reshape(k, 3, 3)
    trans = directions[:, 9:] * data.rho if translations else None
    return Discovery(gens, trans, weights, rank, residual,
                     {"identity": identity, "random_generators": random_residual}, matches,
                     len(data.x), int(data.n_atoms), data.rho, int(solid.sum()))


def _solid_pairs(data: _Padded) -> np.ndarray:
    """(P,) bool: pairs whose first frame extends in three dimensions (smallest to largest singular value of the
    centred positions at least :data:`FLAT_RATIO`); every pair when none does."""
    x = data.x.numpy()
    ratios = np.array([(lambda s: s[-1] / s[0] if s[0] > 0 else 0.0)(np.linalg.svd(x[p][m], compute_uv=False))
                       if m.sum() >= 3 else 0.0 for p, m in enumerate(data.mask.numpy())])
    solid = ratios >= FLAT_RATIO
    return solid if solid.any() else np.ones(len(x), dtype=bool)


def _within_span(directions: np.ndarray, span: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``directions`` (k, 12) whose leading rows carry motion (s > 0), completed by an orthonormal basis of the rest
    of ``span`` (k, 12), so that all k rows are an orthonormal basis of the learned span."""
    q = orthonormal_basis(span)
    used = [d for d, sv in zip(directions, s, strict=False) if sv > 1e-12 * max(float(s.max(initial=0.0)), 1e-300)]
    out = list(used)
    for v in q:
        w = v - sum(np.dot(v, o) * o for o in out) if out else v
        if np.linalg.norm(w) > 1e-8 and len(out) < len(directions):
            out.append(w / np.linalg.norm(w))
    while len(out) < len(directions):  # a degenerate learned span (two generators converged to one)
        out.append(np.zeros(AFFINE_DIM))
    return np.stack(out)
