"""The steerable architecture (lieprop.model.steerable): steerable kernels, equivariant layers and an invariant
network in float64, the float32 served path invariant and continuous without frames, and the registry round trip
(train, save, load, predict, card)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from lieprop.data.batch import collate, featurize
from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.molecular_graph import edge_attributes, radius_edges
from lieprop.model.steerable import SteerableConfig, SteerableNet
from lieprop.model.steerable_kernels import EdgeInputs, kernel_matrix, spherical_harmonics

#: Small sizes that keep every network here quick to build (e3nn compiles its tensor products at construction).
SMALL = {"scalars": 8, "channels": 4, "depth": 2, "kernel_hidden": 8, "kernel_channels": 4}


@contextlib.contextmanager
def float64():
    """Build e3nn modules and Wigner D matrices in float64: e3nn computes Clebsch-Gordan coefficients and D(R) in
    the default dtype (float32 ones are good to about 1e-7 only)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


@pytest.fixture
def in_float64():
    with float64():
        yield


def orthogonal(seed: int, proper: bool) -> torch.Tensor:
    from helpers import random_rotation

    r = torch.from_numpy(random_rotation(seed))
    return r if proper else -r


def net64(**kw) -> SteerableNet:
    with float64():
        torch.manual_seed(1)
        return SteerableNet(SteerableConfig(**{**SMALL, "targets": list(PROPERTY_NAMES), **kw})).double().eval()


@pytest.fixture(scope="module")
def nets64():
    """One float64 network per kernel, with features and kernels up to l = 2 (built once: e3nn compiles slowly)."""
    return {kernel: net64(kernel=kernel, lmax=2, depth=1) for kernel in ("implicit", "standard")}


@pytest.fixture(scope="module")
def model32():
    """An untrained float32 12-target model with non-trivial normalisation, as lieprop serves it."""
    from lieprop.model.predictor import PropertyModel

    torch.manual_seed(0)
    model = PropertyModel(SteerableConfig(**{**SMALL, "depth": 1}, targets=list(PROPERTY_NAMES)),
                          architecture="steerable").eval()
    model.scale.uniform_(0.5, 2.0)
    return model


def batch_of(molecules, dtype=torch.float64):
    b = collate([z for z, _ in molecules], [x for _, x in molecules], dtype=dtype)
    return featurize(b.numbers).to(dtype), b.positions, b.mask


@pytest.mark.parametrize("kernel", ["implicit", "standard"])
@pytest.mark.parametrize("proper", [True, False], ids=["rotation", "improper"])
def test_the_kernel_is_steerable_to_1e8(kernel, proper, nets64, in_float64):
    """K(R r) = D_out(R) K(r) D_in(R)^T for every edge, with invariant edge attributes, in float64."""
    net = nets64[kernel]
    conv = net.blocks[0].kernel
    irreps_in, irreps_out = net.cfg.irreps, net.blocks[0].gate.irreps_in
    gen = torch.Generator().manual_seed(0)
    vec = torch.randn(7, 3, generator=gen, dtype=torch.float64) * 2
    scalars = torch.rand(7, net.cfg.n_edge_scalars, generator=gen, dtype=torch.float64)
    envelope = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5

    def k(v):
        return kernel_matrix(conv, EdgeInputs(spherical_harmonics(net.cfg.kernel_lmax, v), scalars, envelope),
                             irreps_in.dim)

    rot = orthogonal(3, proper)
    d_in, d_out = irreps_in.D_from_matrix(rot), irreps_out.D_from_matrix(rot)
    moved, expected = k(vec @ rot.T), d_out @ k(vec) @ d_in.T
    assert (moved - expected).abs().max() < 1e-8 * expected.abs().max()
    assert (moved - k(vec)).abs().max() > 1e-2 * expected.abs().max()  # K depends on the direction of r


@pytest.mark.parametrize("kernel", ["implicit", "standard"])
def test_a_block_is_equivariant_and_the_network_invariant_in_float64(kernel, qm9_head, nets64, in_float64):
    net = nets64[kernel]
    molecules = [qm9_head.molecule(i) for i in (3, 25, 60)]
    f, x, m = batch_of(molecules)
    block, irreps = net.blocks[0], net.cfg.irreps
    h = torch.randn(m.numel(), irreps.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for proper in (True, False):
        rot = orthogonal(5, proper)
        d = irreps.D_from_matrix(rot)

        def layer(pos, feats):
            edges = radius_edges(pos, m, net.cfg.cutoff)
            return block(feats, edges, net.edge_inputs(f, edges))

        expected = layer(x, h) @ d.T
        moved = layer(x @ rot.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), h @ d.T)
        assert (moved - expected).abs().max() < 1e-8 * expected.abs().max()
    with torch.no_grad():
        out = net(f, x, m)
        rng = np.random.default_rng(0)
        from helpers import random_pose

        moved = [random_pose(z, pos, rng) for z, pos in molecules]  # rotation or reflection, shift, atom order
        assert (net(*batch_of(moved)) - out).abs().max() < 1e-8 * out.abs().max()


def test_the_served_path_is_invariant_without_frames(qm9_head, model32):
    from helpers import assert_invariant

    model = model32
    molecules = [qm9_head.molecule(i) for i in range(0, 400, 20)]
    assert len(model.expand([molecules[0][0]], [molecules[0][1]]).owners) == 1  # the molecule once, no frames
    assert_invariant(model.predict, molecules, model.scale.numpy(), rtol=1e-4)


def test_predictions_are_continuous_at_symmetric_geometries(qm9_head, model32):
    """Methane (Td), ammonia (C3v), water (C2v), acetylene (Dinfh), HCN: moving every atom by 1e-5 Å changes the
    outputs by under 1e-4 of each target's scale (frames need weights for this; the steerable network is smooth),
    while a 0.1 Å move changes them by more than that."""
    model = model32
    rng = np.random.default_rng(0)
    molecules = [qm9_head.molecule(i) for i in range(5)]

    def shaken(step):
        return model.predict([z for z, _ in molecules],
                             [x + rng.normal(size=x.shape) * step / np.sqrt(3) for _, x in molecules])

    base = model.predict([z for z, _ in molecules], [x for _, x in molecules])
    scale = model.scale.numpy()
    assert (np.abs(shaken(1e-5) - base) / scale).max() < 1e-4
    assert (np.abs(shaken(1e-1) - base) / scale).max() > 3e-4  # the bound above is not vacuous


def test_bond_attributes_follow_covalent_radii(qm9_head):
    """Acetylene: C-H bonded with order about 1, C#C bonded with order about 3, H...H not bonded."""
    z, x = qm9_head.molecule(3)
    assert sorted(z.tolist()) == [1, 1, 6, 6]
    f, pos, m = batch_of([(z, x)])
    edges = radius_edges(pos, m, 5.0)
    attrs = edge_attributes("bonds", f, edges)
    by_pair: dict[tuple, list] = {}
    for i, j, d, a in zip(edges.dst.tolist(), edges.src.tolist(), edges.length.tolist(), attrs.tolist(), strict=True):
        by_pair.setdefault(tuple(sorted((int(z[i]), int(z[j])))), []).append((d, *a))
    (_, s_ch, o_ch), (_, s_cc, o_cc), (_, s_hh, _) = (min(by_pair[p]) for p in [(1, 6), (6, 6), (1, 1)])
    _, s_far, _ = max(by_pair[(1, 6)])  # H...C across the triple bond, 2.3 Å
    assert s_ch > 0.9 and s_cc > 0.9 and s_hh < 1e-3 and s_far < 1e-3
    assert 0.8 < o_ch < 1.2 and 2.5 < o_cc < 3.5
    assert edge_attributes("bonds+types", f, edges).shape == (len(edges.length), 12)
    assert edge_attributes("none", f, edges).shape == (len(edges.length), 0)


def test_bad_options_are_refused_by_name():
    from lieprop.training.config import load_config

    with pytest.raises(ValueError, match="unknown kernel 'fourier'; known: implicit, standard"):
        SteerableConfig(kernel="fourier")
    with pytest.raises(ValueError, match="lmax must be between 0 and 3, got 4"):
        SteerableConfig(lmax=4)
    with pytest.raises(ValueError, match="unknown edge_attributes 'bonds\\+charges'"):
        load_config("tiny", overrides={"architecture": "steerable", "network.edge_attributes": "bonds+charges"})
    with pytest.raises(ValueError, match="unknown network keys \\['width'\\] for architecture steerable"):
        load_config("tiny", overrides={"architecture": "steerable", "network.width": 8})


def test_steerable_trains_saves_loads_and_serves(tmp_path, qm9_head, capsys):
    import lieprop
    from lieprop.cli import main
    from lieprop.inference import model_card
    from lieprop.model.bundle import load_bundle
    from lieprop.training.config import load_config
    from lieprop.training.loop import train

    cfg = load_config("tiny", overrides={"architecture": "steerable", "network": {**SMALL, "depth": 1},
                                         "orientation": "none", "targets": ["homo", "u0"],
                                         "out_dir": str(tmp_path / "run"), "epochs": 1, "limit_train": 64,
                                         "limit_valid": 32})
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    bundle = load_bundle(tr.out / "best.pt")
    assert bundle.architecture == "steerable" and bundle.model.cfg.scalars == 8
    card = model_card(bundle)
    assert card["network"] == ("Steerable O(3) implicit kernel, 8x0e+4x1o+4x1e, depth 1, edge attributes "
                               "bonds+types") and card["targets"] == ["homo", "u0"]
    z, x = qm9_head.molecule(30)
    direct = bundle.model.predict([z], [x])[0]
    result = lieprop.predict({"numbers": z.tolist(), "positions": x.tolist()}, model=bundle)
    values = result["results"][0]["properties"]
    assert values["homo"]["value"] == pytest.approx(direct[0], rel=1e-6)
    assert main(["info", str(tr.out / "best.pt")]) == 0
    assert "steerable" in capsys.readouterr().out.lower()
