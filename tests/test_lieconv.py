"""The LieConv layer and network: exact equivariance, padding and batching never change a molecule's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lieprop.data.batch import collate, featurize
from lieprop.model.groups import random_rotations
from lieprop.model.lieconv import LieConv, neighbourhood
from lieprop.model.network import LieResNet, NetworkConfig

F64 = torch.float64


def small_net(**kw) -> LieResNet:
    cfg = NetworkConfig(width=32, depth=2, targets=["homo", "u0"], pooling=["mean", "sum"], **kw)
    return LieResNet(cfg).double()


def molecules(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    zs, xs = [], []
    for _ in range(n):
        k = int(rng.integers(3, 20))
        zs.append(rng.choice([1, 6, 7, 8, 9], size=k))
        xs.append(rng.normal(size=(k, 3)) * 1.5)
    return zs, xs


def run(net, zs, xs):
    b = collate(zs, xs, dtype=F64)
    return net(featurize(b.numbers).double(), b.positions, b.mask)


def test_lieconv_layer_is_exactly_translation_equivariant():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, dtype=F64)
    v = torch.randn(2, 9, 8, dtype=F64)
    mask = torch.ones(2, 9, dtype=torch.bool)
    layer = LieConv(8, 8, d_embed=3).double()
    emb = lambda p: p[:, :, None] - p[:, None, :]  # noqa: E731
    nb1 = neighbourhood(emb(x), emb(x).norm(dim=-1), mask, 100, 1.0)
    nb2 = neighbourhood(emb(x + 5.0), emb(x + 5.0).norm(dim=-1), mask, 100, 1.0)
    assert torch.allclose(layer(v, nb1), layer(v, nb2), atol=1e-12)


@pytest.mark.parametrize("group,extra", [("T3", {}), ("SE3", {"fill": 0.5, "nbhd": 8, "lift_samples": 2}),
                                         ("SO3", {"fill": 0.5, "nbhd": 8, "lift_samples": 2}), ("trivial", {})])
def test_network_runs_for_every_group_and_is_translation_invariant_where_it_should_be(group, extra):
    net = small_net(group=group, **extra).eval()
    zs, xs = molecules(4)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    b = collate(zs, xs, dtype=F64)
    out = net(featurize(b.numbers).double(), b.positions, b.mask, generator=gen())
    assert out.shape == (4, 2) and torch.isfinite(out).all()
    if group in ("T3", "SE3"):
        shifted = net(featurize(b.numbers).double(), b.positions + 3.0 * b.mask[..., None], b.mask, generator=gen())
        assert torch.allclose(out, shifted, atol=1e-9)


def test_t3_network_is_permutation_invariant():
    net = small_net().eval()
    zs, xs = molecules(3)
    perms = [np.random.default_rng(i).permutation(len(z)) for i, z in enumerate(zs)]
    a = run(net, zs, xs)
    b = run(net, [z[p] for z, p in zip(zs, perms, strict=True)], [x[p] for x, p in zip(xs, perms, strict=True)])
    assert torch.allclose(a, b, atol=1e-10)


def test_padding_and_batch_neighbours_do_not_change_a_molecule_in_eval_mode():
    net = small_net().eval()
    zs, xs = molecules(30, seed=1)
    alone = torch.cat([run(net, [z], [x]) for z, x in zip(zs, xs, strict=True)])
    together = run(net, zs, xs)
    assert torch.allclose(alone, together, atol=1e-10)


@pytest.mark.parametrize("group,extra", [("T3", {}), ("SE3", {"fill": 0.5, "nbhd": 8, "lift_samples": 3})])
def test_sum_pooling_adds_atom_contributions_and_mean_pooling_averages_them(group, extra):
    net = small_net(group=group, **extra).eval()
    with torch.no_grad():  # every point outputs exactly 1 for both targets
        net.head.weight.zero_()
        net.head.bias.fill_(1.0)
    zs, xs = molecules(5, seed=2)
    out = run(net, zs, xs)
    sizes = torch.tensor([len(z) for z in zs], dtype=F64)
    assert torch.allclose(out[:, 0], torch.ones(5, dtype=F64))  # homo: mean
    assert torch.allclose(out[:, 1], sizes)  # u0: sum over atoms (lifted copies averaged)


def test_fill_picks_the_nearest_fraction_of_points():
    x = torch.arange(10, dtype=F64)[None, :, None].expand(1, 10, 3).contiguous()
    emb = x[:, :, None] - x[:, None, :]
    mask = torch.ones(1, 10, dtype=torch.bool)
    nb = neighbourhood(emb, emb.norm(dim=-1), mask, nbhd=10, fill=0.3)
    assert nb.index is not None
    assert nb.mask[0, 0].sum() == 3  # ceil(0.3 * 10)
    assert set(nb.index[0, 0][nb.mask[0, 0]].tolist()) == {0, 1, 2}
    assert set(nb.index[0, 5][nb.mask[0, 5]].tolist()) in ({4, 5, 6},)


def test_frame_rotation_changes_plain_t3_outputs_which_is_why_predict_averages_frames():
    net = small_net().eval()
    zs, xs = molecules(2, seed=3)
    r = random_rotations(1, dtype=F64)[0].numpy()
    a = run(net, zs, xs)
    b = run(net, zs, [x @ r.T for x in xs])
    assert not torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("fill,nbhd", [(1.0, 100), (0.5, 4)])
def test_sum_aggregation_is_the_mean_times_the_neighbour_count_over_a_constant(fill, nbhd):
    from lieprop.model.lieconv import SUM_SCALE

    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, dtype=F64)
    v = torch.randn(2, 7, 8, dtype=F64)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False  # a smaller second molecule: its atoms have fewer neighbours
    emb = x[:, :, None] - x[:, None, :]
    nb = neighbourhood(emb, emb.norm(dim=-1), mask, nbhd, fill)
    mean_layer = LieConv(8, 8, d_embed=3, aggregation="mean").double()
    sum_layer = LieConv(8, 8, d_embed=3, aggregation="sum").double()
    sum_layer.load_state_dict(mean_layer.state_dict())
    mean_layer.linear.bias.data.zero_()
    sum_layer.linear.bias.data.zero_()
    count = nb.mask.sum(-1, keepdim=True).to(F64)
    assert torch.allclose(sum_layer(v, nb), mean_layer(v, nb) * count / SUM_SCALE, atol=1e-12)
    with pytest.raises(ValueError, match="aggregation"):
        LieConv(8, 8, d_embed=3, aggregation="max")


@pytest.mark.parametrize("aggregation", ["mean", "sum"])
def test_the_fast_all_pairs_contraction_is_the_layer_formula(aggregation):
    """With every point a neighbour the layer applies W to the values first and contracts afterwards; it must equal
    h_i = W vec((1/|N(i)|) sum_j v_j (x) g(a_ij)) + b written out pair by pair, padding included."""
    from lieprop.model.lieconv import SUM_SCALE

    torch.manual_seed(0)
    x = torch.randn(3, 6, 3, dtype=F64)
    v = torch.randn(3, 6, 8, dtype=F64)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    emb = x[:, :, None] - x[:, None, :]
    nb = neighbourhood(emb, emb.norm(dim=-1), mask, 100, 1.0)
    assert nb.index is None  # the all-pairs path
    layer = LieConv(8, 5, d_embed=3, kernel_out=4, aggregation=aggregation).double()
    g = layer.kernel(nb.embedding, nb.mask)  # (B, M, M, cm)
    expected = torch.zeros(3, 6, 5, dtype=F64)
    for b in range(3):
        for i in range(6):
            js = [j for j in range(6) if mask[b, i] and mask[b, j]]
            outer = sum((torch.outer(g[b, i, j], v[b, j]) for j in js), torch.zeros(4, 8, dtype=F64))
            scale = max(len(js), 1) if aggregation == "mean" else SUM_SCALE
            expected[b, i] = layer.linear.weight @ (outer / scale).reshape(-1) + layer.linear.bias
    assert torch.allclose(layer(v, nb), expected, atol=1e-12)


def test_the_layer_without_gradients_follows_its_weights_when_they_change():
    """Inference keeps a permuted copy of W; loading other weights (in place) or a new dtype must not reuse it."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, dtype=F64)
    v = torch.randn(2, 5, 8, dtype=F64)
    emb = x[:, :, None] - x[:, None, :]
    nb = neighbourhood(emb, emb.norm(dim=-1), torch.ones(2, 5, dtype=torch.bool), 100, 1.0)
    layer, other = LieConv(8, 8, d_embed=3).double(), LieConv(8, 8, d_embed=3).double()
    with_grad = layer(v, nb)
    assert with_grad.requires_grad  # with gradients: no copy kept, W's graph is used
    with torch.inference_mode():
        assert torch.allclose(layer(v, nb), with_grad, atol=1e-12)
        layer.load_state_dict(other.state_dict())
        assert torch.allclose(layer(v, nb), other(v, nb), atol=1e-12)
    layer.float()
    with torch.no_grad():
        nb32 = neighbourhood(emb.float(), emb.float().norm(dim=-1), nb.mask.any(-1), 100, 1.0)
        assert layer(v.float(), nb32).dtype == torch.float32
        assert torch.allclose(layer(v.float(), nb32).double(), other(v, nb), atol=1e-5)


@pytest.mark.parametrize("norm", ["affine", "layer", None])
def test_the_kernel_network_computes_the_same_function_with_and_without_gradients(norm):
    """Without gradients an affine norm is folded into its Linear and Swish runs in place: same values, and the
    fold follows the weights when they change."""
    from lieprop.model.lieconv import KernelMLP

    torch.manual_seed(0)
    mlp = KernelMLP(5, 8, 4, norm=norm).double()
    for p in mlp.parameters():  # norms start as the identity: make them count
        p.data.normal_()
    a = torch.randn(2, 3, 3, 5, dtype=F64)
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    with_grad = mlp(a, mask)
    with torch.no_grad():
        assert torch.allclose(mlp(a, mask), with_grad, atol=1e-12)
        for p in mlp.parameters():
            p.mul_(0.5)
    assert torch.allclose(torch.no_grad()(mlp)(a, mask), mlp(a, mask), atol=1e-12)


def test_a_layer_built_in_inference_mode_runs_and_caches_can_be_forgotten():
    """Parameters made under inference_mode have no version counter: the layer folds anew instead of caching. A
    write through ``.data`` is invisible to version counters: ``forget_caches`` drops what was kept."""
    from lieprop.model.lieconv import forget_caches

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    v = torch.randn(2, 5, 8)
    emb = x[:, :, None] - x[:, None, :]
    nb = neighbourhood(emb, emb.norm(dim=-1), torch.ones(2, 5, dtype=torch.bool), 100, 1.0)
    with torch.inference_mode():
        built_here = LieConv(8, 8, d_embed=3, kernel_norm="affine")
        assert built_here(v, nb).shape == (2, 5, 8)
    layer = LieConv(8, 8, d_embed=3, kernel_norm="affine")
    with torch.no_grad():
        layer(v, nb)
        layer.linear.weight.data.mul_(2.0)
        layer.kernel.bn1.weight.data.mul_(3.0)
        forget_caches(layer)
        assert torch.allclose(layer(v, nb), torch.enable_grad()(layer)(v, nb), atol=1e-5)
