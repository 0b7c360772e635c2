"""O(3)-steerable convolution kernels for point clouds: the standard one and the implicit one of Zhdanov, Hoffmann,
Cesa (Implicit Convolutional Kernels for Steerable CNNs, NeurIPS 2023, arXiv 2212.06096).

A steerable kernel maps the features of atom j (a direct sum of O(3) irreps, ``irreps_in``) to a message for atom i
(``irreps_out``) as a matrix K(r) of the relative position r = x_j - x_i, and is steerable when

    K(R r) = D_out(R) K(r) D_in(R)^T   for every rotation or reflection R in O(3),

so that the convolution sum_j K(r_ij) f_j is equivariant. Both kernels here build K from Clebsch-Gordan (CG)
coefficients, which map a pair of irreps (l_in, l_k) into l_out equivariantly; they differ in what multiplies them.

**Standard** (:class:`StandardKernel`; Tensor Field Networks / NequIP, the analytic basis of escnn): for every
path l_in x l_k -> l_out and every input channel u,

    K(r) f_u = R_{path,u}(|r|) CG(f_u, Y_{l_k}(r / |r|)),

the angular part fixed to the spherical harmonics Y of the direction, the radial profiles R learned as an MLP of a
Gaussian basis of |r| (and of the invariant edge attributes, when the network is given any), then an equivariant
linear map mixes channels. The kernel basis is analytic; only radial profiles are learned.

**Implicit** (:class:`ImplicitKernel`; the paper's method). The steerability constraint says exactly that r -> K(r)
is an equivariant map into Hom(rho_in, rho_out) = rho_in* x rho_out; so (the paper's lemma) if phi is a
G-equivariant MLP from the representation of r (and of invariant or steerable edge attributes z) to that
representation, K(r) = unvec(phi(r, z)) is G-steerable. Here phi is an e3nn equivariant MLP whose input is the
irreps Y_0..Y_L(r / |r|) together with scalars (the Gaussian basis of |r| and the edge attributes z), whose layers
are equivariant linear maps (``o3.Linear``) followed by gated nonlinearities (``e3nn.nn.Gate``: SiLU on scalars,
each l > 0 channel multiplied by a sigmoid of its own scalar gate), and whose last linear layer gives ``channels``
copies of each irrep l_k = 0..L (the parity (-1)^l of a function of one vector). Decomposing Hom(rho_in, rho_out)
into irreps by CG, its coefficient for the path (u in l_in) x l_k -> (w in l_out) is an equivariant linear function
of phi, sum_v W_{path,u,v,w} phi_v; so

    K(r) f = sum_paths sum_{u,v,w} W_{path,u,v,w} CG(f_u, phi_v(r, z)) -> channel w,

which is e3nn's ``FullyConnectedTensorProduct(irreps_in, irreps_phi, irreps_out)`` with shared weights W: the CG
change of basis from the irreps of Hom(rho_in, rho_out) to the kernel's (l_out, l_in) blocks, with the MLP's final
Hom-valued layer factored through ``channels`` hidden irreps (a low-rank final layer; K is never materialised).

For one relative position, an O(3)-equivariant function into irrep l with parity (-1)^l is g(|r|, z) Y_l(r / |r|)
(and into the other parity it is zero), so both kernels span the same space of kernels as functions of r; what the
implicit kernel changes is how the profiles g are parametrised: one MLP for every block of K, nonlinear in the
edge attributes jointly with |r|, with profiles shared across paths and channels, instead of one learned radial
profile per path and channel. Both kernels are multiplied by a smooth cutoff envelope of |r|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn


@dataclass
class EdgeInputs:
    """What a kernel sees of each edge (computed once per forward, shared by every block)."""

    sh: torch.Tensor  # (E, (L+1)^2) spherical harmonics Y_0..Y_L of r / |r| (component normalisation)
    scalars: torch.Tensor  # (E, k) invariants: a radial basis of |r| and the edge attributes
    envelope: torch.Tensor  # (E,) smooth cutoff of |r|


def spherical_harmonics(lmax: int, vec: torch.Tensor) -> torch.Tensor:
    """(E, 3) -> (E, (lmax+1)^2): Y_0..Y_lmax of the direction of ``vec`` (e3nn order and component normalisation)."""
    return o3.spherical_harmonics(o3.Irreps.spherical_harmonics(lmax), vec, normalize=True, normalization="component")


def gated_irreps(irreps: o3.Irreps) -> Gate:
    """The gated nonlinearity whose output is ``irreps`` (scalars 0e and l > 0 irreps): SiLU on the scalars, and
    each l > 0 channel times the sigmoid of one extra 0e gate. Its ``irreps_in`` is what a layer must produce."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps if ir.l > 0])
    if any(ir.p != 1 for _, ir in scalars):
        raise ValueError("only even scalars (0e) are supported in gated features")
    gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, [nn.functional.silu] * len(scalars), gates, [torch.sigmoid] * len(gates), gated)


class StandardKernel(nn.Module):
    """K(r) f = Linear( sum_paths R_{path,u}(|r|, z) CG(f_u, Y(r / |r|)) ) (see the module doc).

    ``forward`` gives each edge's message before the channel-mixing linear map, which :meth:`finish` applies after
    the messages are summed (it commutes with the sum)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh_lmax: int, n_scalars: int, hidden: int,
                 layers: int) -> None:
        super().__init__()
        irreps_sh = o3.Irreps.spherical_harmonics(sh_lmax)
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in irreps_out:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid, perm, _ = o3.Irreps(mid).sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                   internal_weights=False)
        sizes = [n_scalars] + [hidden] * layers
        mlp: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            mlp += [nn.Linear(a, b), nn.SiLU()]
        mlp.append(nn.Linear(sizes[-1], self.tp.weight_numel))
        self.radial = nn.Sequential(*mlp)
        self.linear = o3.Linear(irreps_mid, irreps_out)

    def forward(self, h_src: torch.Tensor, e: EdgeInputs) -> torch.Tensor:
        return self.tp(h_src, e.sh, self.radial(e.scalars)) * e.envelope[:, None]

    def finish(self, aggregated: torch.Tensor) -> torch.Tensor:
        return self.linear(aggregated)


class ImplicitKernel(nn.Module):
    """K(r) f = CG-contraction of f with phi(r, z), phi an equivariant gated MLP (see the module doc)."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, sh_lmax: int, n_scalars: int, hidden: int,
                 channels: int, layers: int) -> None:
        super().__init__()
        natural = [o3.Irrep(ell, (-1) ** ell) for ell in range(1, sh_lmax + 1)]
        irreps_hidden = o3.Irreps([(hidden, "0e")] + [(channels, ir) for ir in natural])
        irreps_phi = o3.Irreps([(channels, "0e")] + [(channels, ir) for ir in natural])
        previous = (o3.Irreps(f"{n_scalars}x0e") if n_scalars else o3.Irreps("")) + o3.Irreps.spherical_harmonics(
            sh_lmax)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            gate = gated_irreps(irreps_hidden)
            self.layers.append(nn.Sequential(o3.Linear(previous, gate.irreps_in), gate))
            previous = gate.irreps_out
        self.to_phi = o3.Linear(previous, irreps_phi)
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_phi, irreps_out)

    def phi(self, e: EdgeInputs) -> torch.Tensor:
        """(E, dim phi): the kernel MLP's output, in ``channels`` copies of each irrep 0..L."""
        x = torch.cat([e.scalars, e.sh], dim=-1)
        for layer in self.layers:
            x = layer(x)
        return self.to_phi(x) * e.envelope[:, None]

    def forward(self, h_src: torch.Tensor, e: EdgeInputs) -> torch.Tensor:
        return self.tp(h_src, self.phi(e))

    def finish(self, aggregated: torch.Tensor) -> torch.Tensor:
        return aggregated


Kernel = StandardKernel | ImplicitKernel


def kernel_matrix(kernel: Kernel, e: EdgeInputs, dim_in: int) -> torch.Tensor:
    """(E, dim_out, dim_in): the kernel K(r) of every edge as a matrix, column a being K(r) applied to the a-th
    basis vector (for tests; the network never materialises it)."""
    n = len(e.envelope)
    eye = torch.eye(dim_in, dtype=e.sh.dtype, device=e.sh.device)
    rep = EdgeInputs(e.sh.repeat_interleave(dim_in, 0), e.scalars.repeat_interleave(dim_in, 0),
                     e.envelope.repeat_interleave(dim_in, 0))
    cols = kernel.finish(kernel(eye.repeat(n, 1), rep))  # (n * dim_in, dim_out)
    return cols.reshape(n, dim_in, -1).transpose(1, 2)
