"""The architecture registry: a new model family is its own module plus one line, and then trains, saves, loads,
predicts, evaluates and reports itself like LieConv (the toy family of tests/toy_architecture.py)."""

from __future__ import annotations

import pytest
import torch

from lieprop.data.properties import PROPERTY_NAMES
from lieprop.inference import model_card
from lieprop.model import architectures
from lieprop.model.architectures import get_architecture
from lieprop.model.bundle import load_bundle, save_bundle
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel
from lieprop.training.config import load_config
from lieprop.training.loop import train


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(architectures.MODULES, "toy", "toy_architecture")  # the one registration line
    return get_architecture("toy")


def test_lieconv_is_the_registered_default():
    arch = get_architecture(architectures.DEFAULT_ARCHITECTURE)
    assert arch.name == "lieconv" and arch.config is NetworkConfig and arch.invariance == "frames"
    with pytest.raises(ValueError, match="unknown architecture 'nope'; known: lconv, lieconv, steerable"):
        get_architecture("nope")


def test_a_single_lieconv_bundle_is_still_written_as_before_the_registry(tmp_path):
    """Format 1, no architecture key, the same digest scheme: older lieprop versions read it, and bundles saved before
    the registry load as LieConv with their digest."""
    import torch

    model = PropertyModel(NetworkConfig(width=8, depth=1, targets=list(PROPERTY_NAMES)))
    sha = save_bundle(model, tmp_path / "one.pt", "one")
    payload = torch.load(tmp_path / "one.pt", weights_only=True)
    assert payload["format_version"] == 1 and "architecture" not in payload and "members" not in payload
    bundle = load_bundle(tmp_path / "one.pt")
    assert (bundle.architecture, bundle.n_members, bundle.sha256) == ("lieconv", 1, sha)
    card = model_card(bundle)
    assert card["architecture"] == "lieconv" and card["network"] == "LieResNet T3, width 8, depth 1"


def test_a_registered_family_trains_saves_loads_and_predicts_invariantly(tmp_path, qm9_head, toy_registered):
    from helpers import assert_invariant

    cfg = load_config("tiny", overrides={"architecture": "toy", "network": {"width": 8}, "orientation": "frames",
                                         "targets": ["homo", "u0"], "out_dir": str(tmp_path / "run"),
                                         "epochs": 1, "threads": 1})
    threads = torch.get_num_threads()
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    assert torch.get_num_threads() == threads  # the run's thread count does not outlive it
    assert tr.orientation == "none"  # an intrinsically invariant family trains on molecules as they are: no frames
    bundle = load_bundle(tr.out / "best.pt")
    assert bundle.architecture == "toy" and bundle.model.cfg.width == 8
    card = model_card(bundle)
    assert card["network"] == "ToyNet width 8, cutoff 5.0 Å" and card["targets"] == ["homo", "u0"]
    molecules = [qm9_head.molecule(i) for i in range(20, 40)]
    assert_invariant(bundle.model.predict, molecules, bundle.model.scale.numpy())  # by construction, no frames
    assert len(bundle.model.expand([molecules[0][0]], [molecules[0][1]]).owners) == 1


def test_a_bundle_records_its_architecture_in_the_digest(tmp_path, toy_registered):
    toy = PropertyModel(toy_registered.make_config({"targets": list(PROPERTY_NAMES)}), architecture="toy")
    sha = save_bundle(toy, tmp_path / "toy.pt", "toy")
    assert load_bundle(tmp_path / "toy.pt").sha256 == sha
    lieconv = PropertyModel(NetworkConfig(width=8, depth=1, targets=list(PROPERTY_NAMES)))
    assert save_bundle(lieconv, tmp_path / "lc.pt", "lc") != sha


def test_a_bundle_of_an_unregistered_family_is_refused_by_name(tmp_path, toy_registered, monkeypatch):
    toy = PropertyModel(toy_registered.make_config({"targets": ["homo"]}), architecture="toy")
    save_bundle(toy, tmp_path / "toy.pt", "toy")
    monkeypatch.delitem(architectures.MODULES, "toy")
    with pytest.raises(ValueError, match="unknown architecture 'toy'"):
        load_bundle(tmp_path / "toy.pt")


def test_lconv_trains_saves_loads_and_predicts_invariantly_without_frames(tmp_path, qm9_head):
    """The L-conv family (lieprop.model.lconv_network): fixed se(3) generators make it exactly invariant, so it is
    served intrinsically; its generators travel in the bundle."""
    from helpers import assert_invariant

    from lieprop import predict

    cfg = load_config("tiny", overrides={"architecture": "lconv", "network": {"width": 16, "depth": 2, "hidden": 8},
                                         "orientation": "none", "targets": ["homo", "u0"],
                                         "out_dir": str(tmp_path / "run"), "epochs": 1})
    tr = train(cfg, data=qm9_head, log=lambda *_: None)
    bundle = load_bundle(tr.out / "best.pt")
    assert bundle.architecture == "lconv" and get_architecture("lconv").invariance == "intrinsic"
    card = model_card(bundle)
    assert card["network"] == "L-conv, width 16, depth 2, 6 fixed se3 generators, cutoff 3.0 Å"
    assert "Dehmamy" in get_architecture("lconv").paper
    assert bundle.model.net.generators.A.shape == (6, 3, 3) and not bundle.model.net.generators.A.requires_grad
    molecules = [qm9_head.molecule(i) for i in range(20, 40)]
    assert_invariant(bundle.model.predict, molecules, bundle.model.scale.numpy())  # by construction, no frames
    assert len(bundle.model.expand([molecules[0][0]], [molecules[0][1]]).owners) == 1
    z, x = molecules[3]
    results = predict({"numbers": z.tolist(), "positions": x.tolist()}, model=str(tr.out / "best.pt"),
                      properties=["homo", "u0"])
    results = results["results"]
    assert results[0]["ok"], results[0]
    direct = bundle.model.predict([z], [x])[0]
    assert results[0]["properties"]["homo"]["value"] == pytest.approx(float(direct[0]), rel=1e-5)
