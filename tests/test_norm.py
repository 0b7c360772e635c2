"""Normalisation: a molecule's output must not depend on what else shares its batch (lieprop.model.norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lieprop.data.batch import collate, featurize
from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.network import LieResNet, NetworkConfig
from lieprop.model.norm import fold_batch_norm


def net(norm: str) -> LieResNet:
    torch.manual_seed(0)
    return LieResNet(NetworkConfig(width=32, depth=2, targets=list(PROPERTY_NAMES), norm=norm)).double()


def outputs(model: LieResNet, zs, xs) -> torch.Tensor:
    b = collate(zs, xs, dtype=torch.float64)
    return model(featurize(b.numbers).double(), b.positions, b.mask)


def water_and_company(qm9_head):
    """Water, alone and in a batch of 30 larger molecules (as a size-bucketed batch of another size would hold)."""
    water = qm9_head.molecule(2)
    big = [qm9_head.molecule(i) for i in range(300, 330)]
    return water, big


@pytest.mark.parametrize("norm", ["layer", "affine"])
def test_in_training_mode_too_a_molecule_ignores_its_batch(qm9_head, norm):
    """What training optimises is what inference serves: the same function of one molecule in any batch."""
    m = net(norm).train()
    water, big = water_and_company(qm9_head)
    alone = outputs(m, [water[0]], [water[1]])[0]
    together = outputs(m, [water[0]] + [z for z, _ in big], [water[1]] + [x for _, x in big])[0]
    torch.testing.assert_close(alone, together, rtol=1e-9, atol=1e-9)


def test_batch_norm_in_training_mode_makes_a_molecule_depend_on_its_batch(qm9_head):
    """Why lieprop no longer trains with batch norm: size-bucketed batches taught the network per-size statistics
    that inference, with running averages, does not reproduce (the old bundle answered water's HOMO with +963 eV)."""
    m = net("batch").train()
    water, big = water_and_company(qm9_head)
    alone = outputs(m, [water[0], water[0]], [water[1], water[1]])[0]
    together = outputs(m, [water[0]] + [z for z, _ in big], [water[1]] + [x for _, x in big])[0]
    assert (alone - together).abs().max() > 1e-3


def test_folding_batch_norm_into_affine_layers_keeps_the_eval_function_exactly(qm9_head):
    bn = net("batch")
    for mod in bn.modules():  # statistics as after training
        if hasattr(mod, "running_var"):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    bn.eval()
    affine = net("affine")
    affine.load_state_dict(fold_batch_norm(bn.state_dict()))
    affine.eval()
    mols = [qm9_head.molecule(i) for i in range(40)]
    zs, xs = [z for z, _ in mols], [x for _, x in mols]
    torch.testing.assert_close(outputs(affine, zs, xs), outputs(bn, zs, xs), rtol=1e-12, atol=1e-12)


def test_configs_saved_before_the_norm_key_existed_mean_batch_norm():
    cfg = NetworkConfig(targets=["homo"]).to_dict()
    del cfg["norm"]
    assert NetworkConfig.from_dict(cfg).norm == "batch"
    assert NetworkConfig().norm == "layer"  # new networks default to layer norm
    with pytest.raises(ValueError, match="unknown norm"):
        NetworkConfig(norm="group")


def test_layer_norm_normalises_each_atom_over_its_channels():
    from lieprop.model.norm import make_norm

    ln = make_norm("layer", 8)
    x = torch.randn(2, 5, 8) * 3 + 1
    y = ln(x, torch.ones(2, 5, dtype=torch.bool)).detach().numpy()
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-2)
