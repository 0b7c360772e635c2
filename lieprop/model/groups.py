"""Lie groups for LieConv: exp, log, lift of points to group elements, and the pair embedding.

LieConv needs only a group's exp and log maps (and a way to lift points of the input space to group
elements). A group here is a small object with those maps; :meth:`Group.pair_embedding` is written once
in terms of them, so adding a group means writing ``exp``, ``log``, ``mul``, ``inv`` and ``lift``.

Element representations: T(3) elements are translation vectors (..., 3); SO(3) elements are rotation
matrices (..., 3, 3); SE(3) elements are homogeneous matrices (..., 4, 4). Lie algebra elements are
vectors (..., lie_dim). All maps are batched, differentiable and safe in float32 and float64: near
theta = 0 they use Taylor series, near theta = pi the rotation log reads the axis from the symmetric part.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------------- so(3)
def hat(w: Tensor) -> Tensor:
    """(..., 3) -> (..., 3, 3) skew-symmetric matrix K with K v = w x v."""
    x, y, z = w.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([o, -z, y, z, o, -x, -y, x, o], dim=-1).unflatten(-1, (3, 3))


def vee(k: Tensor) -> Tensor:
    """Inverse of :func:`hat` on the skew part: (..., 3, 3) -> (..., 3)."""
    return 0.5 * torch.stack([k[..., 2, 1] - k[..., 1, 2], k[..., 0, 2] - k[..., 2, 0],
                              k[..., 1, 0] - k[..., 0, 1]], dim=-1)


def _small(theta: Tensor) -> Tensor:
    return theta < (1e-2 if theta.dtype == torch.float64 else 3e-2)


def _series(theta: Tensor) -> Tensor:
    """Where the coefficients that cancel catastrophically ((t - sin t)/t^3, the V^-1 coefficient) use their
    Taylor series. float32: up to theta = 1, where the first dropped term is 1e-8 of the value (below float32's
    resolution) and the closed form has lost at most a factor 10 of its precision (it lost 72% at theta = 0.03);
    float64: below 1e-2, where the closed form still keeps 1e-12."""
    return theta < (1e-2 if theta.dtype == torch.float64 else 1.0)


def _safe(theta: Tensor, small: Tensor | None = None) -> Tensor:
    return torch.where(_small(theta) if small is None else small, torch.ones_like(theta), theta)


def _sinc(theta: Tensor) -> Tensor:
    """sin(t)/t."""
    t2 = theta * theta
    ts = _safe(theta)
    return torch.where(_small(theta), 1 - t2 / 6 + t2 * t2 / 120 - t2**3 / 5040, torch.sin(ts) / ts)


def _cosc(theta: Tensor) -> Tensor:
    """(1 - cos t)/t^2, as sinc(t/2)^2 / 2 (1 - cos t = 2 sin^2(t/2) has no cancellation)."""
    return 0.5 * _sinc(theta / 2) ** 2


def _sinc3(theta: Tensor) -> Tensor:
    """(t - sin t)/t^3."""
    t2 = theta * theta
    small = _series(theta)
    ts = _safe(theta, small)
    return torch.where(small, 1 / 6 - t2 / 120 + t2 * t2 / 5040 - t2**3 / 362880 + t2**4 / 39916800,
                       (ts - torch.sin(ts)) / ts**3)


def _vinv_coef(theta: Tensor) -> Tensor:
    """(1 - sinc/(2 cosc))/t^2 = (1 - (t/2) cot(t/2))/t^2, the K^2 coefficient of the inverse of SE(3)'s V matrix."""
    t2 = theta * theta
    small = _series(theta)
    ts = _safe(theta, small)
    exact = (1 - _sinc(ts) / (2 * _cosc(ts))) / ts**2
    return torch.where(small, 1 / 12 + t2 / 720 + t2 * t2 / 30240 + t2**3 / 1209600 + t2**4 / 47900160, exact)


def so3_exp(w: Tensor) -> Tensor:
    """Rodrigues' formula: axis-angle vector (..., 3) -> rotation matrix (..., 3, 3)."""
    theta = w.norm(dim=-1)[..., None, None]
    k = hat(w)
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + _sinc(theta) * k + _cosc(theta) * (k @ k)


def so3_log(r: Tensor) -> Tensor:
    """Rotation matrix (..., 3, 3) -> axis-angle vector (..., 3) with angle in [0, pi].

    The angle comes from atan2(|skew|, (tr - 1)/2), accurate everywhere. Near theta = pi the skew part
    vanishes, so the axis is read from the symmetric part (R + R^T)/2 - cos(theta) I = (1 - cos) n n^T
    (its largest column), and its sign from the skew part.
    """
    s = vee(r)  # sin(theta) * n
    sin_t = s.norm(dim=-1)
    cos_t = ((r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]) - 1) / 2
    theta = torch.atan2(sin_t, cos_t)
    # Generic branch: theta / sin(theta) * s.
    w_generic = (1 / _sinc(theta))[..., None] * s
    # Near pi: axis from the symmetric part.
    eye = torch.eye(3, dtype=r.dtype, device=r.device)
    b = (r + r.transpose(-1, -2)) / 2 - cos_t[..., None, None] * eye
    diag = torch.diagonal(b, dim1=-2, dim2=-1)
    k = diag.argmax(-1, keepdim=True)
    col = torch.gather(b, -1, k[..., None, :].expand(*b.shape[:-1], 1)).squeeze(-1)
    n = col / torch.gather(diag, -1, k).clamp_min(1e-30).sqrt()
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    sign = torch.where((n * s).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(r.dtype)
    w_pi = sign * n * theta[..., None]
    near_pi = (theta > math.pi - 0.1)[..., None]
    return torch.where(near_pi, w_pi, w_generic)


def draw_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device | None:
    """Where a random draw with ``generator`` must happen: the generator's own device (torch refuses to fill a tensor
    on another device with it), else ``device``. Callers move the draw to ``device`` afterwards."""
    return generator.device if generator is not None else (torch.device(device) if device is not None else None)


def random_rotations(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """``n`` rotations drawn from the Haar measure on SO(3) (normalised Gaussian quaternions)."""
    # drawn where the generator lives (a CUDA generator cannot fill a CPU tensor), then moved to ``device``
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=draw_device(generator, device))
    q = q / q.norm(dim=-1, keepdim=True)
    a, b, c, d = q.unbind(-1)
    r = torch.stack([
        a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c),
        2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b),
        2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d,
    ], dim=-1).unflatten(-1, (3, 3))
    return r.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------------- groups
class Group:
    """A matrix Lie group acting on R^3, as LieConv uses it.

    ``lie_dim`` is the dimension of the Lie algebra, ``orbit_dim`` the size of the orbit identifier a
    lifted point carries (0 when the group acts transitively), ``lift_samples`` the default number of
    group elements per point (the size of the stabiliser sample).
    """

    name: str = "group"
    lie_dim: int = 0
    orbit_dim: int = 0
    lift_samples: int = 1

    def exp(self, a: Tensor) -> Tensor:
        raise NotImplementedError

    def log(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def mul(self, g: Tensor, h: Tensor) -> Tensor:
        return g @ h

    def inv(self, g: Tensor) -> Tensor:
        raise NotImplementedError

    def lift(self, x: Tensor, n_samples: int, generator: torch.Generator | None = None,
             per_position: bool = False) -> tuple[Tensor, Tensor]:
        """Points (..., N, 3) -> (elements (..., N * n_samples, *elem_shape), orbits (..., N * n_samples, orbit_dim)).

        Point ``i`` becomes elements ``i * n_samples ... (i + 1) * n_samples - 1``: group elements that
        move the origin of its orbit to ``x_i`` (the stabiliser sampled ``n_samples`` times). With
        ``per_position`` the stabiliser samples depend only on the point's index ``i`` (shared along
        leading batch dimensions), so a seeded generator gives the same lift for a molecule in any batch.
        """
        raise NotImplementedError

    def pair_embedding(self, g: Tensor, orbits: Tensor) -> Tensor:
        """a_ij = [log(g_j^-1 g_i), orbit_i, orbit_j]: (..., N, *elem) -> (..., N, N, lie_dim + 2 orbit_dim).

        Index order is (i, j): row ``i`` is the output point, column ``j`` its neighbour.
        """
        n = g.shape[-1 - self._elem_rank()]
        gi = self._expand(g, n, at=-1)  # (..., N_i, N_j, *elem), varying over i
        gj = self._expand(g, n, at=-2)  # varying over j
        a = self.log(self.mul(self.inv(gj), gi))
        if self.orbit_dim == 0:
            return a
        oi = orbits[..., :, None, :].expand(*orbits.shape[:-2], n, n, self.orbit_dim)
        oj = orbits[..., None, :, :].expand(*orbits.shape[:-2], n, n, self.orbit_dim)
        return torch.cat([a, oi, oj], dim=-1)

    def distance(self, a: Tensor) -> Tensor:
        """A norm on the Lie algebra, used to pick neighbourhoods: (..., lie_dim) -> (...)."""
        return a[..., : self.lie_dim].norm(dim=-1)

    # helpers -------------------------------------------------------------------------------------------
    def _elem_rank(self) -> int:
        return 1

    def _expand(self, g: Tensor, n: int, at: int) -> Tensor:
        r = self._elem_rank()
        elem = g.shape[g.dim() - r:]
        lead = g.shape[: g.dim() - r - 1]
        # at == -1: varies over i, (..., N_i, 1, *elem); at == -2: varies over j, (..., 1, N_j, *elem)
        out = g.unsqueeze(g.dim() - r) if at == -1 else g.unsqueeze(g.dim() - r - 1)
        return out.expand(*lead, n, n, *elem)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Trivial(Group):
    """The trivial group: no symmetry. Every point is its own orbit; the embedding is (x_i, x_j)."""

    name = "trivial"
    lie_dim = 0
    orbit_dim = 3

    def exp(self, a: Tensor) -> Tensor:
        return a.new_zeros(*a.shape[:-1], 1)

    def log(self, g: Tensor) -> Tensor:
        return g.new_zeros(*g.shape[:-1], 0)

    def mul(self, g: Tensor, h: Tensor) -> Tensor:
        return g + h

    def inv(self, g: Tensor) -> Tensor:
        return -g

    def lift(self, x, n_samples=1, generator=None, per_position=False):
        return x.new_zeros(*x.shape[:-1], 1), x

    def distance(self, a: Tensor) -> Tensor:
        return (a[..., 0:3] - a[..., 3:6]).norm(dim=-1)


class T3(Group):
    """Translations of R^3. Elements are vectors; exp and log are the identity; a_ij = x_i - x_j."""

    name = "T3"
    lie_dim = 3

    def exp(self, a: Tensor) -> Tensor:
        return a

    def log(self, g: Tensor) -> Tensor:
        return g

    def mul(self, g: Tensor, h: Tensor) -> Tensor:
        return g + h

    def inv(self, g: Tensor) -> Tensor:
        return -g

    def lift(self, x, n_samples=1, generator=None, per_position=False):
        return x, x.new_zeros(*x.shape[:-1], 0)

    def pair_embedding(self, g: Tensor, orbits: Tensor) -> Tensor:
        return g[..., :, None, :] - g[..., None, :, :]  # same as the generic rule, without the copies


class SO3(Group):
    """Rotations about the origin. Orbits are spheres: a point x lifts to rotations taking |x| e_z to x,
    the stabiliser (rotations about e_z) sampled uniformly; the orbit id is |x|."""

    name = "SO3"
    lie_dim = 3
    orbit_dim = 1
    lift_samples = 4

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha  # weight of the rotation part in the distance (as SE3, LieConv's 0.2 / 0.8)

    def exp(self, a: Tensor) -> Tensor:
        return so3_exp(a)

    def log(self, g: Tensor) -> Tensor:
        return so3_log(g)

    def inv(self, g: Tensor) -> Tensor:
        return g.transpose(-1, -2)

    def _elem_rank(self) -> int:
        return 2

    def lift(self, x, n_samples=4, generator=None, per_position=False):
        r = x.norm(dim=-1, keepdim=True)
        ez = torch.zeros_like(x)
        ez[..., 2] = 1
        d = torch.where(r > 1e-9, x / r.clamp_min(1e-12), ez)
        # Rotation taking e_z to d: about axis e_z x d by angle acos(d_z) (axis e_x when d = -e_z).
        axis = torch.stack([-d[..., 1], d[..., 0], torch.zeros_like(d[..., 0])], dim=-1)
        s = axis.norm(dim=-1, keepdim=True)
        ang = torch.atan2(s, d[..., 2:3])
        unit = torch.where(s > 1e-9, axis / s.clamp_min(1e-12), torch.zeros_like(axis) + ez.roll(-2, -1))
        base = so3_exp(unit * ang)  # (..., N, 3, 3)
        shape = (x.shape[-2], n_samples) if per_position else (*x.shape[:-1], n_samples)
        # drawn where the generator lives (a CUDA generator cannot fill a CPU tensor, nor a CPU one a CUDA tensor)
        phi = torch.rand(*shape, generator=generator, dtype=x.dtype, device=draw_device(generator, x.device))
        phi = phi.to(x.device).expand(*x.shape[:-1], n_samples)
        stab = so3_exp(torch.stack([torch.zeros_like(phi), torch.zeros_like(phi), 2 * math.pi * phi - math.pi], -1))
        g = base[..., None, :, :] @ stab  # (..., N, L, 3, 3)
        return g.flatten(-4, -3), r.repeat_interleave(n_samples, dim=-2)

    def distance(self, a: Tensor) -> Tensor:
        """LieConv's SO(3) distance: ``alpha |log(g_j^-1 g_i)| + (1 - alpha) |orbit_i - orbit_j|``. Without the orbit
        term two atoms at the same angle but different radii would count as neighbours at distance 0."""
        return self.alpha * a[..., :3].norm(dim=-1) + (1 - self.alpha) * (a[..., 3] - a[..., 4]).abs()


class SE3(Group):
    """Rigid motions. Lie algebra vectors are (omega, u): rotation then translation part; elements are
    4x4 homogeneous matrices. SE(3) acts transitively on R^3: a point lifts to (R, x) with the
    stabiliser R drawn from the Haar measure on SO(3)."""

    name = "SE3"
    lie_dim = 6
    lift_samples = 4

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha  # weight of the rotation part in the distance (LieConv: 0.2 |omega| + 0.8 |u|)

    def _elem_rank(self) -> int:
        return 2

    def exp(self, a: Tensor) -> Tensor:
        w, u = a[..., :3], a[..., 3:]
        theta = w.norm(dim=-1)[..., None, None]
        k = hat(w)
        eye = torch.eye(3, dtype=a.dtype, device=a.device)
        kk = k @ k
        r = eye + _sinc(theta) * k + _cosc(theta) * kk
        v = eye + _cosc(theta) * k + _sinc3(theta) * kk
        t = (v @ u[..., None])[..., 0]
        return self._compose(r, t)

    def log(self, g: Tensor) -> Tensor:
        r, t = g[..., :3, :3], g[..., :3, 3]
        w = so3_log(r)
        theta = w.norm(dim=-1)[..., None, None]
        k = hat(w)
        eye = torch.eye(3, dtype=g.dtype, device=g.device)
        vinv = eye - 0.5 * k + _vinv_coef(theta) * (k @ k)
        return torch.cat([w, (vinv @ t[..., None])[..., 0]], dim=-1)

    def inv(self, g: Tensor) -> Tensor:
        rt = g[..., :3, :3].transpose(-1, -2)
        return self._compose(rt, -(rt @ g[..., :3, 3:4])[..., 0])

    def lift(self, x, n_samples=4, generator=None, per_position=False):
        lead = x.shape[-2:-1] if per_position else x.shape[:-1]
        r = random_rotations(lead.numel() * n_samples, generator, x.dtype, x.device).reshape(*lead, n_samples, 3, 3)
        r = r.expand(*x.shape[:-1], n_samples, 3, 3)
        t = x[..., None, :].expand(*x.shape[:-1], n_samples, 3)
        g = self._compose(r, t)
        return g.flatten(-4, -3), x.new_zeros(*x.shape[:-2], x.shape[-2] * n_samples, 0)

    def distance(self, a: Tensor) -> Tensor:
        return self.alpha * a[..., :3].norm(dim=-1) + (1 - self.alpha) * a[..., 3:6].norm(dim=-1)

    @staticmethod
    def _compose(r: Tensor, t: Tensor) -> Tensor:
        top = torch.cat([r, t[..., None]], dim=-1)
        bottom = torch.zeros(*r.shape[:-2], 1, 4, dtype=r.dtype, device=r.device)
        bottom[..., 0, 3] = 1
        return torch.cat([top, bottom], dim=-2)


GROUPS: dict[str, type[Group]] = {"trivial": Trivial, "T3": T3, "SO3": SO3, "SE3": SE3}


def get_group(name: str) -> Group:
    """A group by name: ``trivial``, ``T3``, ``SO3`` or ``SE3`` (case-insensitive)."""
    for key, cls in GROUPS.items():
        if key.lower() == name.lower():
            return cls()
    raise ValueError(f"unknown group {name!r}; known: {list(GROUPS)}")
