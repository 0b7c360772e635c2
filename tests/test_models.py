"""Several models in one server (``extra_models``): /v1/models lists them, a request or a batch job chooses one by
name, and each answers as the library does with that bundle, whatever its architecture."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from test_jobs import upload, wait_for
from test_service import assert_json_error, make_tiny_bundle, start_server

import lieprop
from lieprop.data.properties import PROPERTY_NAMES
from lieprop.model.bundle import save_bundle
from lieprop.model.lconv_network import LConvConfig
from lieprop.model.predictor import PropertyModel
from lieprop.service import schemas


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    torch.manual_seed(1)
    lconv = PropertyModel(LConvConfig(width=16, depth=1, hidden=8, targets=list(PROPERTY_NAMES)),
                          architecture="lconv")
    save_bundle(lconv, folder / "lconv.pt", "tiny-lconv", {"training": {"note": "untrained test bundle"}})
    return make_tiny_bundle(folder / "tiny.pt"), folder / "lconv.pt"


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundles):
    default, extra = bundles
    s = start_server(tmp_path_factory.mktemp("server"), default, "--extra-models", str(extra))
    yield s
    s.stop()


def test_models_lists_every_served_model_with_the_default_first(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        cards = client.get("/v1/models").json()["models"]
    assert [(c["name"], c["architecture"], c["default"]) for c in cards] == [
        ("tiny-test", "lieconv", True), ("tiny-lconv", "lconv", False)]


@pytest.mark.parametrize("name, which", [(None, 0), ("tiny-test", 0), ("tiny-lconv", 1)])
def test_a_request_gets_the_model_it_names_with_the_librarys_values(server, bundles, name, which):
    molecules = [schemas.WATER, {"smiles": "CCO"}]
    body = {"molecules": molecules, "properties": ["homo", "u0"], **({"model": name} if name else {})}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        answer = client.post("/v1/predict", json=body).json()
    assert answer["model"]["name"] == (name or "tiny-test")
    local = lieprop.predict(molecules, model=bundles[which], properties=["homo", "u0"])["results"]
    for served, mine in zip(answer["results"], local, strict=True):
        for prop in ("homo", "u0"):
            np.testing.assert_allclose(served["properties"][prop]["value"], mine["properties"][prop]["value"],
                                       rtol=1e-5, atol=1e-6)


def test_a_model_that_is_not_served_is_a_422_naming_the_served_ones(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        response = client.post("/v1/predict", json={"molecules": [{"smiles": "C"}], "model": "nope"})
    message = assert_json_error(response, 422, "unknown_model")["error"]["message"]
    assert "'tiny-test'" in message and "'tiny-lconv'" in message


def test_two_bundles_with_one_name_stop_start_up_with_the_reason(tmp_path, bundles):
    with pytest.raises(RuntimeError, match="two served models are called 'tiny-test'"):
        start_server(tmp_path, bundles[0], "--extra-models", str(bundles[0]), "--no-jobs")


def test_a_batch_job_scores_with_the_model_it_names(server, bundles, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("name,smiles\nethanol,CCO\nwater,O\n")
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        job = upload(client, source, properties=["homo"], model="tiny-lconv")
        assert job["model"]["name"] == "tiny-lconv"
        wait_for(client, job["id"], lambda j: j["state"] == "succeeded")
        rows = [json.loads(line) for line in client.get(f"/v1/jobs/{job['id']}/results").text.splitlines()]
        refused = client.post("/v1/jobs", files={"file": ("in.csv", source.read_bytes())}, data={"model": "nope"})
    local = lieprop.predict(["CCO", "O"], model=bundles[1], properties=["homo"])["results"]
    for row, mine in zip(rows, local, strict=True):
        np.testing.assert_allclose(row["properties"]["homo"]["value"], mine["properties"]["homo"]["value"],
                                   rtol=1e-5, atol=1e-6)
    assert "'tiny-lconv'" in assert_json_error(refused, 422, "unknown_model")["error"]["message"]


#: The L-conv bundle shipped beside the default model (docs/MODEL_CARD.md, "The L-conv bundle").
LCONV_BUNDLE = Path(lieprop.__file__).parent / "models" / "lieprop-lconv-qm9.pt"


def test_the_shipped_lconv_bundle_is_invariant_and_carries_its_test_mae(qm9_head):
    from helpers import assert_invariant

    from lieprop.inference import load_model, model_card, size_warnings

    bundle = load_model(LCONV_BUNDLE)
    assert bundle.architecture == "lconv" and bundle.model.targets == list(PROPERTY_NAMES)
    card = model_card(bundle)
    by_name = {p["name"]: p for p in card["properties"]}
    assert by_name["homo"]["test_mae"] is not None and by_name["homo"]["test_mae"] < 0.2  # eV, whole test split
    assert "3-8" in size_warnings(bundle.meta)  # it fails on the smallest molecules, and their results say so
    molecules = [qm9_head.molecule(i) for i in (2, 23, 100, 399)]
    assert_invariant(bundle.model.predict, molecules, bundle.model.scale.numpy(), rtol=1e-4)


#: The steerable bundle shipped beside the default model (docs/MODEL_CARD.md, "The steerable bundle").
STEERABLE_BUNDLE = Path(lieprop.__file__).parent / "models" / "lieprop-steerable-qm9.pt"


def test_the_shipped_steerable_bundle_is_invariant_continuous_and_carries_its_test_mae(qm9_head):
    from helpers import assert_invariant

    from lieprop.inference import load_model, model_card, size_warnings

    bundle = load_model(STEERABLE_BUNDLE)
    assert bundle.architecture == "steerable" and bundle.model.targets == list(PROPERTY_NAMES)
    by_name = {p["name"]: p for p in model_card(bundle)["properties"]}
    assert by_name["homo"]["test_mae"] is not None and by_name["homo"]["test_mae"] < 0.25  # eV, whole test split
    assert "3-8" in size_warnings(bundle.meta)  # it fails on the smallest molecules, and their results say so
    scale = bundle.model.scale.numpy()
    molecules = [qm9_head.molecule(i) for i in (0, 2, 23, 100, 399)]  # methane, water and three larger ones
    assert_invariant(bundle.model.predict, molecules, scale, rtol=1e-4)
    # No frames, so no frame thresholds: methane with one hydrogen moved by 1e-5 Å predicts what methane does.
    z, x = qm9_head.molecule(0)
    nudged = x.copy()
    nudged[1, 0] += 1e-5
    a, b = np.asarray(bundle.model.predict([z, z], [x, nudged]))
    assert (np.abs(a - b) / scale).max() < 1e-3


def test_a_server_serves_the_shipped_steerable_bundle_by_name(tmp_path, bundles):
    server = start_server(tmp_path, bundles[0], "--extra-models", str(STEERABLE_BUNDLE), "--no-jobs")
    molecules = [schemas.WATER, {"smiles": "CCO"}]
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            names = [c["name"] for c in client.get("/v1/models").json()["models"]]
            answer = client.post("/v1/predict", json={"molecules": molecules, "model": "lieprop-steerable-qm9",
                                                      "properties": ["homo", "mu"]}).json()
    finally:
        server.stop()
    assert names == ["tiny-test", "lieprop-steerable-qm9"]
    assert answer["model"]["name"] == "lieprop-steerable-qm9"
    local = lieprop.predict(molecules, model=STEERABLE_BUNDLE, properties=["homo", "mu"])["results"]
    for served, mine in zip(answer["results"], local, strict=True):
        for prop in ("homo", "mu"):
            np.testing.assert_allclose(served["properties"][prop]["value"], mine["properties"][prop]["value"],
                                       rtol=1e-5, atol=1e-6)
