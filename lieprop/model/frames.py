"""Frames that make predictions exactly invariant to rotation, reflection, translation and atom order.

A T(3) LieConv network is only translation-equivariant, and SE(3) lifts are equivariant only in
distribution. lieprop therefore evaluates the network on the molecule expressed in a small set of
*frames* computed from the molecule itself and averages the outputs (frame averaging, Puny et al. 2022).
The set of frames is O(3)-equivariant as a set, so the average is exactly invariant.

The frames are the principal axes of the Z-weighted covariance of the positions:

* Distinct eigenvalues (almost all molecules): each axis is fixed up to sign. The sign is fixed by the
  skewness sum_i Z_i (x_i . v)^3 when that is clearly non-zero, otherwise both signs are kept. With
  ``fix_signs=False`` all 8 sign choices are kept (plain O(3) frame averaging).
* Two equal eigenvalues (symmetric tops: benzene, NH3, CO2): the unique axis is kept (sign as above);
  the in-plane axis points to each atom of the *first shell* (the heaviest element off the axis, at the
  smallest distance from it, within ``shell_tol`` Å), one frame per such atom.
* Three equal eigenvalues (spherical tops: CH4, neopentane): first axis through each atom of the first
  shell, second axis through each first-shell atom of the remaining directions, third by cross product.

Atoms of a first shell related by the molecule's symmetry give frames in which the molecule has the
same coordinates, so these extra frames cost time, never accuracy. Linear molecules need no in-plane
axis at all (every atom sits on the axis). All of this runs in float64 on the CPU (a 3x3 problem per
molecule); the network then runs on whatever device it lives on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

#: Relative eigenvalue gap under which two principal moments count as equal.
EIG_TOL = 1e-4
#: Relative skewness under which an axis' sign counts as undetermined.
SKEW_TOL = 1e-6
#: Atoms within this many Å of the nearest one form the first shell.
SHELL_TOL = 1e-3
#: Atoms closer than this (Å) to an axis or to the centre do not define directions.
AXIS_EPS = 1e-4


@dataclass(frozen=True)
class Frames:
    """``k`` frames of one molecule: canonical coordinates are ``(x - center) @ axes[f].T``."""

    center: np.ndarray  # (3,)
    axes: np.ndarray  # (k, 3, 3), rows are the frame's axes

    def __len__(self) -> int:
        return int(self.axes.shape[0])

    def coordinates(self, positions: np.ndarray) -> np.ndarray:
        """(n, 3) positions -> (k, n, 3) coordinates in each frame."""
        return np.einsum("fij,nj->fni", self.axes, np.asarray(positions, np.float64) - self.center)


def _sign_options(x: np.ndarray, w: np.ndarray, v: np.ndarray, scale: float, fix: bool) -> list[np.ndarray]:
    if fix:
        skew = float(np.sum(w * (x @ v) ** 3))
        if abs(skew) > SKEW_TOL * float(w.sum()) * scale**1.5:
            return [v if skew > 0 else -v]
    return [v, -v]


def _first_shell(dirs: np.ndarray, lengths: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Indices of the heaviest atoms with a usable direction, nearest first (within SHELL_TOL)."""
    ok = lengths > AXIS_EPS
    if not ok.any():
        return np.zeros(0, dtype=np.int64)
    z_max = numbers[ok].max()
    cand = np.flatnonzero(ok & (numbers == z_max))
    r_min = lengths[cand].min()
    return cand[lengths[cand] <= r_min + SHELL_TOL]


def molecule_frames(numbers: np.ndarray, positions: np.ndarray, fix_signs: bool = True) -> Frames:
    """The frames of one molecule (see the module docstring)."""
    z = np.asarray(numbers, dtype=np.float64)
    x = np.asarray(positions, dtype=np.float64)
    w = np.maximum(z, 1.0)
    center = (w[:, None] * x).sum(0) / w.sum()
    xc = x - center
    cov = (w[:, None] * xc).T @ xc / w.sum()
    lam, vec = np.linalg.eigh(cov)  # ascending; columns are eigenvectors
    scale = max(float(lam[-1]), 1e-12)
    if len(x) < 2 or lam[-1] < 1e-10:
        return Frames(center, np.eye(3)[None])
    deg01 = (lam[1] - lam[0]) / scale < EIG_TOL
    deg12 = (lam[2] - lam[1]) / scale < EIG_TOL
    opts = lambda v: _sign_options(xc, w, v, scale, fix_signs)  # noqa: E731
    frames: list[np.ndarray] = []
    if not deg01 and not deg12:
        for a, b, c in itertools.product(opts(vec[:, 0]), opts(vec[:, 1]), opts(vec[:, 2])):
            frames.append(np.stack([a, b, c]))
    elif deg01 != deg12:
        u = vec[:, 2] if deg01 else vec[:, 0]
        proj = xc - np.outer(xc @ u, u)
        lengths = np.linalg.norm(proj, axis=1)
        shell = _first_shell(proj, lengths, z)
        in_plane = ([proj[s] / lengths[s] for s in shell] if len(shell)
                    else [vec[:, 0] if deg01 else vec[:, 1]])  # linear: every atom on the axis
        for ea in in_plane:
            for eb in opts(np.cross(u, ea)):
                for us in opts(u):
                    frames.append(np.stack([ea, eb, us] if deg01 else [us, ea, eb]))
    else:
        lengths = np.linalg.norm(xc, axis=1)
        for s in _first_shell(xc, lengths, z):
            e1 = xc[s] / lengths[s]
            proj = xc - np.outer(xc @ e1, e1)
            plen = np.linalg.norm(proj, axis=1)
            second = _first_shell(proj, plen, z)
            if not len(second):  # every atom on one line through the centre
                ref = np.eye(3)[np.argmin(np.abs(e1))]
                second_dirs = [np.cross(e1, ref) / np.linalg.norm(np.cross(e1, ref))]
            else:
                second_dirs = [proj[t] / plen[t] for t in second]
            for e2 in second_dirs:
                for e3 in opts(np.cross(e1, e2)):
                    frames.append(np.stack([e1, e2, e3]))
        if not frames:
            frames.append(np.eye(3))
    return Frames(center, np.stack(frames))
