"""The REST service against a real uvicorn server (``lieprop serve`` in a subprocess on 127.0.0.1, random port)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from helpers import random_rotation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import lieprop
from lieprop.data.properties import ATOMREF_HARTREE, BY_NAME, ENERGY_NAMES, HARTREE_EV, PROPERTY_NAMES
from lieprop.service.schemas import ETHANOL_XYZ, METHANAL_SDF, WATER

DATA = Path(__file__).parent / "data"
ALL_OUTPUTS = [*PROPERTY_NAMES, *(f"{e}_atomization" for e in ENERGY_NAMES)]
JSON = {"content-type": "application/json"}


def make_tiny_bundle(path: Path) -> Path:
    """A small untrained all-target bundle (seconds to build, milliseconds per prediction)."""
    import torch

    from lieprop.model.bundle import save_bundle
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    torch.manual_seed(0)
    cfg = NetworkConfig(width=32, depth=2, targets=list(PROPERTY_NAMES))
    save_bundle(PropertyModel(cfg), path, "tiny-test",
                {"test_mae": {"homo": 0.1, "u0": 0.02}, "training": {"epochs": 1, "note": "untrained test bundle"}})
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen
    log_path: Path
    bundle: Path
    seen: list[tuple[str, int]] = field(default_factory=list)  # (path, status) polled during start-up

    def logs(self) -> list[dict]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_server(tmp: Path, bundle: Path, *extra: str, env: dict[str, str] | None = None) -> Server:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-m", "lieprop.cli", "serve", "--model", str(bundle), "--port", str(port),
           "--workers-embed", "1", "--model-threads", "1", "--data-dir", str(tmp / "data"), *extra]
    process = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    server = Server(f"http://127.0.0.1:{port}", process, log_path, bundle)
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=server.base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                status = client.get("/readyz").status_code
            except httpx.TransportError:
                time.sleep(0.02)
                continue
            server.seen.append(("/readyz", status))
            if status == 200:
                return server
            server.seen.append(("/healthz", client.get("/healthz").status_code))
            time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"the server was not ready within 90 s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny.pt")


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundle_path):
    s = start_server(tmp_path_factory.mktemp("server"), bundle_path, "--max-molecules", "64",
                     "--max-body-bytes", "200000", "--max-connections", "400")  # 200 concurrent clients below
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def post(client: httpx.Client, molecules: list[dict], **body) -> httpx.Response:
    return client.post("/v1/predict", json={"molecules": molecules, **body})


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


# --------------------------------------------------------------------------------------------------
# Start-up and health


def test_readyz_flips_to_200_after_warmup(server, client):
    statuses = [s for path, s in server.seen if path == "/readyz"]
    assert statuses[0] == 503 and statuses[-1] == 200, statuses  # answered while warming, then ready
    assert all(s == 200 for path, s in server.seen if path == "/healthz")  # alive all along
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"]["name"] == "tiny-test"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_models_and_properties(server, client):
    from lieprop.model.bundle import load_bundle

    card = client.get("/v1/models").json()["models"][0]
    assert card["sha256"] == load_bundle(server.bundle).sha256
    assert card["targets"] == list(PROPERTY_NAMES) and card["default"] is True
    by_name = {p["name"]: p for p in card["properties"]}
    assert set(by_name) == set(ALL_OUTPUTS)
    assert by_name["homo"]["test_mae"] == 0.1 and by_name["mu"]["test_mae"] is None
    assert by_name["u0_atomization"] == {**by_name["u0_atomization"], "unit": "eV", "atomization": True,
                                         "test_mae": 0.02}
    assert card["training"]["epochs"] == 1
    props = client.get("/v1/properties").json()
    assert props["model"]["sha256"] == card["sha256"]
    assert {p["name"]: p["unit"] for p in props["properties"]} == {
        n: BY_NAME[n.removesuffix("_atomization")].unit for n in ALL_OUTPUTS}


# --------------------------------------------------------------------------------------------------
# Predictions


@pytest.mark.parametrize("item, source", [
    ({"id": "ethanol", "smiles": "CCO"}, "smiles"),
    ({"id": "ethanol", "xyz": ETHANOL_XYZ}, "xyz"),
    ({"id": "methanal", "sdf": METHANAL_SDF}, "sdf"),
    ({"id": "water", **WATER}, "atoms"),
])
def test_each_input_kind_returns_values_with_units(client, item, source):
    response = post(client, [item])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == "tiny-test" and len(body["model"]["sha256"]) == 64
    [result] = body["results"]
    assert result["ok"] is True and result["id"] == item["id"]
    assert list(result["properties"]) == ALL_OUTPUTS  # default: all properties plus atomization energies
    for name, value in result["properties"].items():
        assert value["unit"] == BY_NAME[name.removesuffix("_atomization")].unit
        assert np.isfinite(value["value"])
    assert result["provenance"]["source"] == source
    assert (result["provenance"]["conformer"] is not None) == (source == "smiles")
    assert result["warnings"] == []


def test_mixed_batch_gives_one_result_per_item_in_order(client):
    items = [
        {"id": "bad-smiles", "smiles": "C1CC"},
        {"id": "chlorine", "smiles": "CCl"},
        {"id": "ammonium", "smiles": "[NH4+]"},
        {"id": "good", "smiles": "CC(=O)O"},
        {"id": "empty", "smiles": "  "},
        {"id": "too-big", "smiles": "CCCCCCCCCCCC"},
        {"id": "bad-xyz", "xyz": "3\nwater\nO 0 0\n"},
        {"id": "bad-sdf", "sdf": "not\na\nmol block\n"},
        {"id": "overlap", "numbers": [6, 6], "positions": [[0, 0, 0], [0, 0, 0.1]]},
        {"id": "charged-atoms", "charge": 1, **WATER},
        {"smiles": "N#N"},
    ]
    response = post(client, items, properties=["homo"])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == [i.get("id", str(k)) for k, i in enumerate(items)]
    codes = [r["error"]["code"] if not r["ok"] else "ok" for r in results]
    assert codes == ["invalid_smiles", "unsupported_element", "charged_molecule", "ok", "empty_input",
                     "too_many_atoms", "invalid_xyz", "invalid_sdf", "invalid_geometry", "charged_molecule", "ok"]
    assert results[3]["properties"].keys() == {"homo"}
    assert "Cl" in results[1]["error"]["message"]


def test_property_filter_and_atomization_energies(client):
    response = post(client, [{"xyz": ETHANOL_XYZ}], properties=["u0", "u0_atomization", "homo", "u0"])
    props = response.json()["results"][0]["properties"]
    assert list(props) == ["u0", "u0_atomization", "homo"]
    reference = (2 * ATOMREF_HARTREE["u0"][1] + 6 * ATOMREF_HARTREE["u0"][0] + ATOMREF_HARTREE["u0"][3]) * HARTREE_EV
    assert props["u0_atomization"]["value"] == pytest.approx(props["u0"]["value"] - reference, abs=1e-9)
    body = assert_json_error(post(client, [{"smiles": "C"}], properties=["homo", "bogus", "homo_atomization"]),
                             422, "unknown_property")
    assert body["error"]["details"] == [{"unknown": ["bogus", "homo_atomization"]}]
    assert "bogus" in body["error"]["message"]
    assert_json_error(post(client, [{"smiles": "C"}], model="no-such-model"), 422, "unknown_model")
    assert post(client, [{"smiles": "C"}], model="tiny-test").status_code == 200


def test_rotated_translated_permuted_molecule_gets_the_same_prediction(client):
    lines = ETHANOL_XYZ.splitlines()[2:]
    numbers = [{"C": 6, "O": 8, "H": 1}[ln.split()[0]] for ln in lines]
    positions = np.array([[float(v) for v in ln.split()[1:]] for ln in lines])
    items = [{"id": "plain", "numbers": numbers, "positions": positions.tolist()}]
    rng = np.random.default_rng(7)
    for k in range(3):
        order = rng.permutation(len(numbers))
        moved = positions[order] @ random_rotation(k).T + rng.normal(scale=5.0, size=3)
        if k == 2:
            moved = moved * np.array([-1.0, 1.0, 1.0])  # a reflection too: QM9's properties do not see it
        items.append({"id": f"moved-{k}", "numbers": [numbers[i] for i in order], "positions": moved.tolist()})
    results = post(client, items).json()["results"]
    plain = results[0]["properties"]
    for moved in results[1:]:
        for name, value in moved["properties"].items():
            assert value["value"] == pytest.approx(plain[name]["value"], rel=1e-5, abs=1e-5), (moved["id"], name)


def test_rest_and_library_give_identical_results(server, client):
    items = [{"id": "s", "smiles": "CC(=O)N"}, {"id": "x", "xyz": ETHANOL_XYZ}, {"id": "f", "sdf": METHANAL_SDF},
             {"id": "a", **WATER}, {"id": "bad", "smiles": "CF(F)(F)(F)F"}]
    rest = post(client, items, properties=["homo", "gap", "g298", "g298_atomization"]).json()
    library = lieprop.predict(items, properties=["homo", "gap", "g298", "g298_atomization"], model=server.bundle)
    assert json.loads(json.dumps(library)) == rest


def test_a_smiles_is_averaged_over_the_conformers_asked_for(server, client):
    items = [{"id": "chain", "smiles": "OCCCC(C)C"}, {"id": "water", **WATER}]
    default = post(client, items, properties=["homo"]).json()["results"]
    one = post(client, items, properties=["homo"], conformers=1).json()["results"]
    assert default[0]["provenance"]["conformer"]["averaged"] == 5
    assert one[0]["provenance"]["conformer"]["n_conformers"] == one[0]["provenance"]["conformer"]["averaged"] == 1
    assert one[0]["properties"]["homo"]["value"] != pytest.approx(default[0]["properties"]["homo"]["value"], abs=1e-6)
    assert one[1] == default[1]  # a given geometry is answered as it is
    library = lieprop.predict(items, properties=["homo"], model=server.bundle, conformers=1)
    assert json.loads(json.dumps(library))["results"] == one
    for bad in (0, 21):
        assert_json_error(post(client, items, conformers=bad), 422, "invalid_request")


def test_200_concurrent_requests_each_get_their_own_answer(server):
    base = [WATER, {"xyz": ETHANOL_XYZ}]
    items = []
    for i in range(200):
        if i % 2:
            items.append({"id": f"mol-{i}", "numbers": WATER["numbers"],
                          "positions": (np.array(WATER["positions"]) * (1 + 0.001 * i)).tolist()})
        else:
            items.append({"id": f"mol-{i}", **base[1]})
    expected = lieprop.predict(items, properties=["homo", "u0"], model=server.bundle)["results"]

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, httpx.Response]:
        return i, await client.post("/v1/predict", json={"molecules": [items[i]], "properties": ["homo", "u0"]},
                                    headers={"X-Request-ID": f"req-{i}"})

    async def all_at_once() -> list[tuple[int, httpx.Response]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    responses = asyncio.run(all_at_once())
    for i, response in responses:
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == f"req-{i}"
        [result] = response.json()["results"]
        assert result["id"] == f"mol-{i}"
        for name in ("homo", "u0"):
            assert result["properties"][name]["value"] == pytest.approx(
                expected[i]["properties"][name]["value"], rel=1e-6, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Hard edges


@pytest.mark.parametrize("content, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b'{"molecules": "\xff"}', 400, "invalid_json"),  # not UTF-8
    (b"[1, 2, 3]", 422, "invalid_request"),
    (b'{"molecules": []}', 422, "invalid_request"),
    (b'{"molecules": [{}]}', 422, "invalid_request"),
    (b'{"molecules": [{"smiles": "C", "xyz": "1\\n\\nC 0 0 0"}]}', 422, "invalid_request"),
    (b'{"molecules": [{"numbers": ["C"], "positions": [[0, 0, 0]]}]}', 422, "invalid_request"),
    (b'{"molecules": [{"numbers": [6], "positions": [[0, 0]]}]}', 422, "invalid_request"),
    (b'{"molecules": [{"numbers": [6]}]}', 422, "invalid_request"),
    (b'{"molecules": [{"smiles": "C", "colour": "red"}]}', 422, "invalid_request"),
    (b'{"molecules": [{"smiles": 5}]}', 422, "invalid_request"),
    (b'{"molecules": "CCO"}', 422, "invalid_request"),
    (json.dumps({"molecules": [{"smiles": "C"}] * 65}).encode(), 413, "too_many_molecules"),
    (json.dumps({"molecules": [{"smiles": "C" * 250_000}]}).encode(), 413, "body_too_large"),
])
def test_malformed_and_oversize_bodies_get_4xx_json(client, content, status, code):
    assert_json_error(client.post("/v1/predict", content=content, headers=JSON), status, code)


def test_streamed_oversize_body_without_length_gets_413(client):
    def chunks():
        yield b'{"molecules": [{"smiles": "'
        for _ in range(50):
            yield b"C" * 10_000
        yield b'"}]}'

    assert_json_error(client.post("/v1/predict", content=chunks(), headers=JSON), 413, "body_too_large")


def test_body_that_is_not_sent_as_json_gets_415(client):
    response = client.post("/v1/predict", content=b'{"molecules": [{"smiles": "C"}]}',
                           headers={"content-type": "text/plain"})
    assert_json_error(response, 415, "unsupported_media_type")


def test_wrong_route_and_method_get_json(client):
    assert_json_error(client.get("/v1/nothing"), 404, "not_found")
    assert_json_error(client.get("/v1/predict"), 405, "method_not_allowed")


def test_request_id_is_echoed_and_logged_as_json(server, client):
    response = client.get("/v1/properties", headers={"X-Request-ID": "test-rid-42"})
    assert response.headers["x-request-id"] == "test-rid-42"
    generated = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert generated != "bad id\twith spaces" and len(generated) == 32
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [e for e in server.logs() if e.get("request_id") == "test-rid-42"]
        if lines:
            break
        time.sleep(0.05)
    assert lines and lines[0]["path"] == "/v1/properties" and lines[0]["status"] == 200


def test_cors_is_off_by_default(client):
    response = client.options("/v1/predict", headers={"Origin": "https://example.org",
                                                      "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in response.headers
    assert response.status_code < 500


def test_metrics_parse_and_count_requests(client):
    def scrape() -> dict:
        text = client.get("/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    key = ("lieprop_http_requests_total", (("method", "GET"), ("route", "/v1/models"), ("status", "200")))
    before = scrape().get(key, 0.0)
    for _ in range(3):
        client.get("/v1/models")
    post(client, [{"smiles": "CO"}, {"smiles": "CCl"}])
    after = scrape()
    assert after[key] == before + 3
    assert after[("lieprop_molecules_total", (("code", "unsupported_element"), ("outcome", "error")))] >= 1
    assert after[("lieprop_molecules_total", (("code", ""), ("outcome", "ok")))] >= 1
    assert after[("lieprop_batch_size_count", (("priority", "interactive"),))] >= 1
    assert after[("lieprop_embedding_duration_seconds_count", ())] >= 2
    assert after[("lieprop_queue_wait_seconds_count", ())] >= 1
    assert after[("lieprop_ready", ())] == 1
    latency = ("lieprop_http_request_duration_seconds_count",
               (("method", "POST"), ("route", "/v1/predict"), ("status", "200")))
    assert after[latency] >= 1


# --------------------------------------------------------------------------------------------------
# Fuzzing the OpenAPI schema: no input may produce a 5xx


def test_fuzzing_finds_no_server_errors(server):
    """Schemathesis cases from the served OpenAPI schema, valid (positive) and invalid (negative) ones."""
    from schemathesis import GenerationMode

    api = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    cases = st.one_of(api.as_strategy(GenerationMode.POSITIVE), api.as_strategy(GenerationMode.NEGATIVE))
    statuses: Counter = Counter()

    @given(case=cases)
    @settings(max_examples=int(os.environ.get("LIEPROP_TEST_FUZZ_EXAMPLES", "100")), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call(base_url=server.base_url, timeout=60)
        statuses[response.status_code] += 1
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r:.300}: {response.text[:500]}"
        if response.status_code >= 400:
            assert response.json()["error"]["code"]

    fuzz()
    assert sum(statuses.values()) >= 30 and any(code < 300 for code in statuses), statuses


# --------------------------------------------------------------------------------------------------
# A second server: API key, start-up failure, graceful shutdown


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory, bundle_path):
    s = start_server(tmp_path_factory.mktemp("keyed"), bundle_path, "--no-warmup",
                     env={"LIEPROP_API_KEY": "s3cret", "LIEPROP_MAX_WAIT_MS": "1"})
    yield s
    s.stop()


def test_api_key_guards_the_api_but_not_health(keyed_server):
    with httpx.Client(base_url=keyed_server.base_url, timeout=30) as c:
        assert_json_error(c.get("/v1/models"), 401, "unauthorized")
        assert_json_error(c.get("/metrics", headers={"X-API-Key": "s3cre"}), 401, "unauthorized")
        assert_json_error(post(c, [{"smiles": "C"}]), 401, "unauthorized")
        assert c.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


def test_sigterm_finishes_in_flight_requests(keyed_server):
    molecules = [{"smiles": "C" * (1 + i % 6) + "O"} for i in range(40)]
    answer: dict = {}

    def call() -> None:
        with httpx.Client(base_url=keyed_server.base_url, timeout=60) as c:
            answer["response"] = c.post("/v1/predict", json={"molecules": molecules},
                                        headers={"X-API-Key": "s3cret"})

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)  # the request is in flight: 40 SMILES on one embedding worker take about a second
    assert keyed_server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    assert any(e.get("msg") == "Application shutdown complete." for e in keyed_server.logs())
    thread.join(30)
    response = answer["response"]
    assert response.status_code == 200
    assert [r["ok"] for r in response.json()["results"]] == [True] * 40


def test_missing_model_stops_start_up_with_a_clear_message(tmp_path):
    done = subprocess.run([sys.executable, "-m", "lieprop.cli", "serve", "--model", str(tmp_path / "none.pt"),
                           "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "none.pt does not exist" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_slow_requests_get_504_json(bundle_path):
    """In-process (Starlette's TestClient runs the lifespan): a request over request_timeout_s is cut off."""
    from fastapi.testclient import TestClient

    from lieprop.service import Settings, create_app

    settings = Settings(model=bundle_path, request_timeout_s=0.001, warmup=False, workers_embed=1)
    with TestClient(create_app(settings)) as c:
        body = assert_json_error(post(c, [{"smiles": "CCCCCCO"}] * 8), 504, "timeout")
        assert "0.001" in body["error"]["message"]
        assert c.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------------
# Access declared with the routes (lieprop/service/access.py), checked at the edge before any body is read


def test_routes_declare_which_need_the_api_key_and_which_stream_uploads(bundle_path):
    from lieprop.service.access import RouteTable
    from lieprop.service.app import create_app
    from lieprop.service.routes import ROUTERS
    from lieprop.service.settings import Settings

    app = create_app(Settings(model=bundle_path, warmup=False, workers_embed=1))
    table = RouteTable([*app.routes, *(r for router in ROUTERS for r in router.routes)])
    keyed = {(m, r.template) for r in table.routes if r.api_key for m in r.methods or ()}
    assert keyed == {("POST", "/v1/predict"), ("GET", "/v1/models"), ("GET", "/v1/properties"), ("GET", "/metrics"),
                     ("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"),
                     ("GET", "/v1/jobs/{job_id}/results"), ("DELETE", "/v1/jobs/{job_id}")}
    assert {(m, r.template) for r in table.routes if r.upload for m in r.methods or ()} == {("POST", "/v1/jobs")}
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        route, full = table.match(path, "GET")
        assert route is not None and full and not route.api_key, path
    route, full = table.match("/v1/jobs/abc", "PUT")  # 405, still behind the key
    assert route is not None and not full and route.api_key and route.template == "/v1/jobs/{job_id}"


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/predict"])
def test_a_wrong_key_is_refused_before_the_body_is_read(bundle_path, path):
    """The edge answers 401 without calling ``receive``: a wrong key never uploads its body."""
    from lieprop.service.app import create_app
    from lieprop.service.settings import Settings

    app = create_app(Settings(model=bundle_path, warmup=False, workers_embed=1, api_key="s3cret"))
    sent: list[dict] = []

    async def receive() -> dict:
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        sent.append(message)

    for key in (b"wrong", None):
        sent.clear()
        headers = [(b"content-type", b"text/csv"), (b"content-length", b"1000000000")]
        scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": headers + ([(b"x-api-key", key)] if key else []), "root_path": "",
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1"}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401
        body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
        assert body["error"]["code"] == "unauthorized" and ("wrong" if key else "missing") in body["error"]["message"]


# --------------------------------------------------------------------------------------------------
# connection hygiene: slow and idle clients (raw sockets against a real server with 1 s timeouts)


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, bundle_path):
    s = start_server(tmp_path_factory.mktemp("strict"), bundle_path, "--keep-alive-timeout-s", "1",
                     "--header-timeout-s", "1", "--body-timeout-s", "1", "--max-connections", "20")
    yield s
    s.stop()


def test_a_server_without_jobs_predicts_and_answers_the_job_routes_503(tmp_path, bundle_path):
    no_jobs = start_server(tmp_path, bundle_path, "--no-jobs")  # a replica's settings (docs/SCALING.md)
    try:
        _check_no_jobs(no_jobs)
    finally:
        no_jobs.stop()


def _check_no_jobs(server: Server) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["jobs"]["status"] == "down"
        assert "jobs=false" in ready.json()["jobs"]["detail"]
        assert c.get("/readyz", params={"jobs": "true"}).status_code == 503
        for response in (c.get("/v1/jobs"), c.get("/v1/jobs/abc"), c.delete("/v1/jobs/abc"),
                         c.post("/v1/jobs", params={"format": "smi"}, content=b"CCO\n")):
            assert "jobs=false" in assert_json_error(response, 503, "jobs_disabled")["error"]["message"]
        assert post(c, [{"smiles": "CCO"}]).json()["results"][0]["ok"]
        assert not (server.log_path.parent / "data" / "jobs.sqlite3").exists()
        metrics = c.get("/metrics").text
        assert "lieprop_job_runner_up 0.0" in metrics


def raw_socket(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, limit: float = 10) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    start, data = time.monotonic(), b""
    sock.settimeout(limit)
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data, time.monotonic() - start
        data += chunk


def test_idle_keep_alive_connection_is_closed(strict_server):
    with raw_socket(strict_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data, seconds = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200"), data
    assert 0.5 < seconds < 5, seconds  # keep_alive_timeout_s 1


def test_silent_connection_is_closed_after_the_header_timeout(strict_server):
    with raw_socket(strict_server) as sock:
        data, seconds = read_until_closed(sock)
    assert data == b"" and 0.5 < seconds < 5, (data, seconds)


def test_trickled_headers_are_cut(strict_server):
    with raw_socket(strict_server) as sock:
        start, closed = time.monotonic(), False
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for _ in range(50):  # one header byte every 0.1 s: never finishes within header_timeout_s
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.1)
            try:
                if sock.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
                break
        seconds = time.monotonic() - start
    assert closed and 0.5 < seconds < 4, seconds


def test_slow_body_gets_408(strict_server):
    with raw_socket(strict_server) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"molecules\"")
        data, seconds = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert 0.5 < seconds < 5, seconds


def test_a_trickled_job_upload_gets_408_and_leaves_no_folder(strict_server):
    """A job upload at ~10 bytes/s (under upload_min_rate_bytes_s, 16384 by default, after body_timeout_s 1 s) is cut
    with 408 request_timeout, and its partial upload is removed."""
    jobs = strict_server.log_path.parent / "data" / "jobs"
    before = set(jobs.iterdir()) if jobs.is_dir() else set()
    with raw_socket(strict_server) as sock:
        sock.sendall(b"POST /v1/jobs?format=csv HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                     b"Content-Length: 1000\r\n\r\nsmiles\n")
        start, data = time.monotonic(), b""
        sock.settimeout(0.1)
        while time.monotonic() - start < 8 and not data:
            try:
                sock.sendall(b"C")
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        seconds = time.monotonic() - start
        data += read_until_closed(sock, limit=5)[0]
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and "upload_min_rate_bytes_s" in error["message"]
    assert 0.9 < seconds < 4, seconds
    assert (set(jobs.iterdir()) if jobs.is_dir() else set()) == before


def test_idle_sockets_at_the_connection_cap_do_not_lock_out_new_clients(strict_server):
    idle = [raw_socket(strict_server) for _ in range(20)]  # max_connections 20
    try:
        with httpx.Client(base_url=strict_server.base_url, timeout=10) as c:
            refused = c.get("/healthz")  # at the cap: refused, not hung, in the JSON error body
            assert assert_json_error(refused, 503, "overloaded")["error"]["message"].count("max_connections") == 1
            assert refused.headers["retry-after"] == "1" and refused.headers["connection"] == "close"
        time.sleep(1.5)  # header_timeout_s 1: the idle ones are cut
        for sock in idle:
            assert read_until_closed(sock, limit=5)[0] == b""
        with httpx.Client(base_url=strict_server.base_url, timeout=10) as c:
            assert c.get("/healthz").status_code == 200
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("body", [
    '{"molecules": [{"smiles": "CCO"}], "molecules": [{"smiles": "C"}]}',
    '{"molecules": [{"smiles": "CCO", "smiles": "C"}]}',
])
def test_duplicate_json_keys_are_422(client, body):
    r = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    error = assert_json_error(r, 422, "invalid_request")["error"]
    key = "molecules" if body.count("molecules") == 2 else "smiles"
    assert repr(key) in error["message"]
    assert error["details"][0]["type"] == "duplicate_key"
