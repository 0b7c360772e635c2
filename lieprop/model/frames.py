"""Weighted frames that make predictions exactly invariant *and* continuous in the coordinates.

A T(3) LieConv network is only translation-equivariant, and SE(3) lifts are equivariant only in
distribution. lieprop therefore evaluates the network on the molecule expressed in frames computed from
the molecule itself and takes a weighted average of the outputs (frame averaging, Puny et al. 2022; with
weights, Dym, Lawrence and Siegel 2024). The weighted set of frames is O(3)-equivariant, so the average is
exactly invariant to rotation, reflection, translation and atom order. Every weight is a continuous
function of the coordinates that reaches zero *before* its frame becomes ill-defined, so the average is
also continuous: there is no threshold at which a prediction jumps.

The frames start from the principal axes of the Z-weighted covariance of the positions, with eigenvalues
l0 <= l1 <= l2 and relative gaps g01 = (l1 - l0) / l2, g12 = (l2 - l1) / l2. Let a(g) = ramp((g - GAP_TOL)
/ GAP_TOL): 0 below GAP_TOL, 1 above twice that, smooth in between. Four families share the weight:

* ``a(g01) a(g12)``, distinct moments (almost every molecule): the three eigenvectors.
* ``(1 - a(g01)) a(g12)`` and ``a(g01) (1 - a(g12))``, symmetric tops (benzene, NH3, CO2): the unique
  eigenvector is one axis; the in-plane axis points to an atom farthest from that axis (atoms within
  ATOM_TOL Å of the farthest share the weight by :func:`_farthest`), the third axis is the cross product.
* ``(1 - a(g01)) (1 - a(g12))``, spherical tops (CH4, neopentane, cubane): the first axis points to an atom
  farthest from the centre, the second to an atom farthest from the first axis, the third is the cross product.

Every axis a frame still has free is given a sign by the skewness s = sum_i Z_i t_i (t_i^2 + |x_i|^2),
t_i = x_i . v, divided by sum_i Z_i l2^1.5: weight ramp((s / SKEW_TOL + 1) / 2) for +v and the rest for -v, so
molecules with a clearly skewed axis get one sign and (near-)mirror-symmetric ones both, blended smoothly.
(The |x_i|^2 term, a dipole of Z |x|^2, leaves a small |s| on any axis for 16% of QM9 molecules where the plain
third moment leaves 24%: fewer frames for the same smoothness.) With ``fix_signs=False`` both signs always
get half the weight (plain O(3) frame averaging).

Frames of an exactly symmetric molecule that put its atoms at the same coordinates give the same output;
:meth:`Frames.distinct` merges them (water costs one network evaluation, not four). Symmetric molecules pay for
their symmetry otherwise: methane 24 evaluations, cubane 96; the QM9 average is about 1.2. All of this runs in
float64 on the CPU (a 3x3 problem per molecule); the network then runs on whatever device it lives on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Relative eigenvalue gap at which two principal moments count as equal: eigenvector frames get weight 0 below
#: GAP_TOL and full weight above 2 * GAP_TOL.
GAP_TOL = 5e-3
#: Normalised skewness over which an axis' sign blends from - to + (weight 1/2 each at 0).
SKEW_TOL = 2e-3
#: Atoms within this many Å of the farthest one share the weight of defining an axis direction.
ATOM_TOL = 0.05
#: Directions from atoms closer than this (Å) to an axis or the centre are phased in linearly from 0.
AXIS_EPS = 0.05
#: Frames whose weight falls below this are dropped (the rest renormalised): a change of at most 1e-9 of the
#: spread between frame outputs, far below float32 resolution.
MIN_WEIGHT = 1e-9
#: Frames whose canonical coordinates agree to this many Å are one frame (:meth:`Frames.distinct`). At float32
#: resolution of coordinates, so that merging changes a prediction by no more than the network's gradient times 1e-6 Å.
#: (QM9's symmetric geometries are symmetric only to 1e-4 - 1e-3 Å, so their frames are mostly not merged.)
SAME_COORDINATES = 1e-6

_GENERIC_DIRECTION = np.array([1.0, np.sqrt(2.0), np.sqrt(3.0)]) / np.sqrt(6.0)


def ramp(t: np.ndarray | float) -> np.ndarray:
    """The smoothstep 3t^2 - 2t^3 on [0, 1], 0 below and 1 above: a C1 switch."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@dataclass(frozen=True)
class Frames:
    """``k`` weighted frames of one molecule: canonical coordinates are ``(x - center) @ axes[f].T``."""

    center: np.ndarray  # (3,)
    axes: np.ndarray  # (k, 3, 3), rows are the frame's axes
    weights: np.ndarray  # (k,), positive, summing to 1

    def __len__(self) -> int:
        return int(self.axes.shape[0])

    def coordinates(self, positions: np.ndarray) -> np.ndarray:
        """(n, 3) positions -> (k, n, 3) coordinates in each frame."""
        return np.einsum("fij,nj->fni", self.axes, np.asarray(positions, np.float64) - self.center)

    def distinct(self, numbers: np.ndarray, positions: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                             np.ndarray]:
        """The molecule in each frame, atoms in a canonical order, with frames that give the same coordinates
        merged: (atomic numbers per frame, coordinates per frame, summed weights).

        The canonical order (by a generic projection of the frame coordinates) makes the atom order of the
        input irrelevant, which also keeps per-position SE(3)/SO(3) lift samples deterministic and invariant.
        """
        z = np.asarray(numbers)
        coords = self.coordinates(positions)  # (k, n, 3)
        orders = np.argsort(coords @ _GENERIC_DIRECTION, axis=1, kind="stable")  # (k, n)
        coords = np.take_along_axis(coords, orders[:, :, None], axis=1)
        elements = z[orders]
        kept: list[int] = []  # frame index of each distinct frame, in order of first appearance
        ws: list[float] = []
        for f, w in enumerate(self.weights):
            if kept:  # the first kept frame with the same atoms at the same coordinates, compared all at once
                same = ((elements[kept] == elements[f]).all(axis=1)
                        & (np.abs(coords[kept] - coords[f]).max(axis=(1, 2)) <= SAME_COORDINATES))
                if same.any():
                    ws[int(np.argmax(same))] += float(w)
                    continue
            kept.append(f)
            ws.append(float(w))
        return [elements[f] for f in kept], [coords[f] for f in kept], np.asarray(ws)


def _signs(x: np.ndarray, w: np.ndarray, r2: np.ndarray, v: np.ndarray, norm: float, fix: bool
           ) -> list[tuple[np.ndarray, float]]:
    """[(v, p), (-v, 1 - p)] without zero weights; p blends from 0 to 1 as the skewness along v crosses 0."""
    if fix:
        t = x @ v
        skew = float(np.sum(w * t * (t * t + r2))) / norm
        p = float(ramp((skew / SKEW_TOL + 1.0) / 2.0))
    else:
        p = 0.5
    return [(s, q) for s, q in ((v, p), (-v, 1.0 - p)) if q > 0.0]


def _farthest(vectors: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Unit directions of the vectors farthest from the origin, each with a weight (summing to 1).

    Vector j gets ramp(1 - (r_max - r_j) / ATOM_TOL) * min(1, r_j / AXIS_EPS), renormalised: continuous in the
    vectors, zero for vectors more than ATOM_TOL shorter than the longest, and fading out as a vector's direction
    becomes undefined. Short directions only get a large share when every vector is short, and then the choice
    hardly matters (every atom is near the axis, so all frames give nearly the same coordinates). All-zero vectors
    (a linear molecule seen along its axis) give no direction: an empty list.
    """
    r = np.linalg.norm(vectors, axis=1)
    r_max = float(r.max(initial=0.0))
    if r_max <= 1e-12:
        return []
    omega = ramp(1.0 - (r_max - r) / ATOM_TOL) * np.minimum(1.0, r / AXIS_EPS)
    keep = np.flatnonzero(omega > 0)
    total = float(omega[keep].sum())
    return [(vectors[j] / r[j], float(omega[j]) / total) for j in keep]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _perpendicular(u: np.ndarray) -> np.ndarray:
    """Some unit vector perpendicular to ``u`` (only used where every atom lies on the axis ``u``)."""
    ref = np.eye(3)[int(np.argmin(np.abs(u)))]
    p = np.cross(u, ref)
    return p / np.linalg.norm(p)


def _top_frames(u: np.ndarray, xc: np.ndarray, sign, unique_first: bool) -> list[tuple[np.ndarray, float]]:
    """Frames of a symmetric top with unique axis ``u``: in-plane axis towards the atoms farthest from the axis."""
    proj = xc - np.outer(xc @ u, u)
    in_plane = _farthest(proj) or [(_perpendicular(u), 1.0)]
    u_signs = sign(u)
    out = []
    for ea, wa in in_plane:
        ea = _unit(ea - (ea @ u) * u)  # exactly perpendicular even when the atom is within rounding of the axis
        for eb, wb in sign(np.cross(u, ea)):
            for us, wu in u_signs:
                out.append((np.stack([us, ea, eb] if unique_first else [ea, eb, us]), wa * wb * wu))
    return out


def _sphere_frames(xc: np.ndarray, sign) -> list[tuple[np.ndarray, float]]:
    """Frames of a spherical top: first axis to the atoms farthest from the centre, second to those farthest from
    the first axis, third by cross product."""
    out = []
    for e1, w1 in _farthest(xc) or [(np.eye(3)[0], 1.0)]:
        proj = xc - np.outer(xc @ e1, e1)
        for e2, w2 in _farthest(proj) or [(_perpendicular(e1), 1.0)]:
            e2 = _unit(e2 - (e2 @ e1) * e1)
            for e3, w3 in sign(np.cross(e1, e2)):
                out.append((np.stack([e1, e2, e3]), w1 * w2 * w3))
    return out


@dataclass(frozen=True)
class _Moments:
    """What every frame of a molecule starts from: centred positions, principal axes, family gates, axis signs."""

    xc: np.ndarray
    vec: np.ndarray  # columns are the principal axes, ascending moments
    a01: float  # gate of distinct l0, l1
    a12: float  # gate of distinct l1, l2
    sign: Callable[[np.ndarray], list[tuple[np.ndarray, float]]]  # v -> [(+-v, weight)]: an axis' sign blend


def _moments(numbers: np.ndarray, positions: np.ndarray, fix_signs: bool) -> tuple[np.ndarray, _Moments | None]:
    """The centre, and the principal axes and family gates (None for a single atom or a molecule without extent,
    which has one frame)."""
    z = np.asarray(numbers, dtype=np.float64)
    x = np.asarray(positions, dtype=np.float64)
    w = np.maximum(z, 1.0)
    center = (w[:, None] * x).sum(0) / w.sum()
    xc = x - center
    cov = (w[:, None] * xc).T @ xc / w.sum()
    lam, vec = np.linalg.eigh(cov)  # ascending; columns are eigenvectors
    scale = float(lam[-1])
    if len(x) < 2 or scale < 1e-10:
        return center, None
    norm = float(w.sum()) * scale**1.5

    r2 = np.einsum("ij,ij->i", xc, xc)  # |x_i|^2, shared by every axis' skewness

    def sign(v: np.ndarray) -> list[tuple[np.ndarray, float]]:
        return _signs(xc, w, r2, v, norm, fix_signs)

    a01 = float(ramp(((lam[1] - lam[0]) / scale - GAP_TOL) / GAP_TOL))
    a12 = float(ramp(((lam[2] - lam[1]) / scale - GAP_TOL) / GAP_TOL))
    return center, _Moments(xc, vec, a01, a12, sign)


def frame_count_bound(numbers: np.ndarray, positions: np.ndarray, fix_signs: bool = True) -> int:
    """An upper bound on ``len(molecule_frames(numbers, positions, fix_signs))``, without building the frames: the
    same families and farthest-atom choices, with both signs counted for every cross-product axis of a (spherical)
    top. Exact for molecules with distinct moments (almost all); well under a millisecond even for a cage whose
    frames take tens of milliseconds (:mod:`lieprop.model.cost` uses it before any model work)."""
    _, m = _moments(numbers, positions, fix_signs)
    if m is None:
        return 1
    xc, vec, sign = m.xc, m.vec, m.sign
    count = 0
    if m.a01 * m.a12 > 0:
        count += int(np.prod([len(sign(vec[:, k])) for k in range(3)]))
    for gate, u in (((1 - m.a01) * m.a12, vec[:, 2]), (m.a01 * (1 - m.a12), vec[:, 0])):
        if gate > 0:
            in_plane = len(_farthest(xc - np.outer(xc @ u, u))) or 1
            count += in_plane * 2 * len(sign(u))
    if (1 - m.a01) * (1 - m.a12) > 0:
        for e1, _ in _farthest(xc) or [(np.eye(3)[0], 1.0)]:
            count += (len(_farthest(xc - np.outer(xc @ e1, e1))) or 1) * 2
    return count


def molecule_frames(numbers: np.ndarray, positions: np.ndarray, fix_signs: bool = True) -> Frames:
    """The weighted frames of one molecule (see the module docstring)."""
    center, m = _moments(numbers, positions, fix_signs)
    if m is None:
        return Frames(center, np.eye(3)[None], np.ones(1))
    xc, vec, a01, a12, sign = m.xc, m.vec, m.a01, m.a12, m.sign
    families: list[tuple[float, list[tuple[np.ndarray, float]]]] = []
    if a01 * a12 > 0:
        s0, s1, s2 = (sign(vec[:, k]) for k in range(3))
        eig = [(np.stack([a, b, c]), wa * wb * wc) for a, wa in s0 for b, wb in s1 for c, wc in s2]
        families.append((a01 * a12, eig))
    if (1 - a01) * a12 > 0:  # l0 ~ l1: unique axis is the last eigenvector
        families.append(((1 - a01) * a12, _top_frames(vec[:, 2], xc, sign, unique_first=False)))
    if a01 * (1 - a12) > 0:  # l1 ~ l2: unique axis is the first eigenvector
        families.append((a01 * (1 - a12), _top_frames(vec[:, 0], xc, sign, unique_first=True)))
    if (1 - a01) * (1 - a12) > 0:
        families.append(((1 - a01) * (1 - a12), _sphere_frames(xc, sign)))
    axes = [f for _, frames in families for f, _ in frames]
    weights = np.array([fw * wf for fw, frames in families for _, wf in frames])
    keep = weights >= MIN_WEIGHT * weights.max()
    weights = weights[keep] / weights[keep].sum()
    return Frames(center, np.stack(axes)[keep], weights)
