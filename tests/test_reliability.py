"""The reliability suite: every attack of the red-team catalogue (tests/attacks.py) against one real server, then
proof that the server is unharmed and that the attacks' after-effects (jobs they created) end as they must.

The server is ``lieprop serve`` in a subprocess on 127.0.0.1 with an untrained tiny bundle (speed does not depend on
the weights), two tenants' API keys and the limits of ``attacks.server_args()``. The attacks run in catalogue order
over one client; the checks after them rely on that order (pytest runs a module's tests in file order). The long
replay with faults (kill -9, database locks, damaged results) and the light-request latency under heavy load is
benchmarks/reliability.py, whose table is in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import attacks
import httpx
import pytest
from test_service import make_tiny_bundle, start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    bundle = make_tiny_bundle(tmp / "tiny.pt")
    s = start_server(tmp, bundle, *attacks.server_args(), env=attacks.server_env())
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60, headers={"x-api-key": attacks.API_KEY}) as c:
        yield c


GOLDEN = {"molecules": [attacks.WATER_ATOMS, {"smiles": "CCO"}, {"xyz": attacks.WATER_XYZ}]}


@pytest.fixture(scope="module")
def before(client):
    """The answer to an ordinary request before any attack."""
    response = client.post("/v1/predict", json=GOLDEN)
    assert response.status_code == 200
    return response.json()["results"]


def test_the_catalogue_covers_every_area_and_has_unique_names():
    names = [a.name for a in attacks.ATTACKS]
    assert len(names) == len(set(names))
    assert {a.area for a in attacks.ATTACKS} == {"body", "items", "paths", "auth", "uploads", "headers"}


@pytest.fixture(scope="module")
def attacker(server):
    """A client with no default headers: each attack brings its own (the API key unless it attacks the key)."""
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("attack", attacks.ATTACKS, ids=[a.name for a in attacks.ATTACKS])
def test_each_attack_gets_the_answer_it_must(attack, server, attacker, before):
    started = time.monotonic()
    response = attacker.request(attack.method, attack.path, **attacks.request_kwargs(attack))
    problems = attacks.violations(attack, response.status_code, dict(response.headers), response.content,
                                  time.monotonic() - started)
    assert not problems, problems
    assert server.process.poll() is None, "the server died"


def test_after_the_attacks_the_server_answers_an_ordinary_request_exactly_as_before(server, client, before):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz", params={"jobs": "true"}).status_code == 200
    after = client.post("/v1/predict", json=GOLDEN)
    assert after.status_code == 200
    assert after.json()["results"] == before
    metrics = client.get("/metrics").text
    assert "lieprop_job_runner_up 1.0" in metrics


def _wait_finished(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


@pytest.mark.parametrize(("filename", "limit"), [("rows.smi.gz", f"{attacks.JOB_MAX_ROWS:,} rows"),
                                                  ("bytes.smi.gz", f"{attacks.JOB_MAX_DECOMPRESSED_BYTES:,} bytes")])
def test_the_gzip_bomb_jobs_fail_naming_their_quota(client, filename, limit):
    jobs = client.get("/v1/jobs").json()["jobs"]
    bomb = next(j for j in jobs if j["input"]["filename"] == filename)
    job = _wait_finished(client, bomb["id"])
    assert job["state"] == "failed"
    assert limit in job["error"]


def test_a_path_traversal_filename_stays_a_name_inside_its_job_folder(server, client):
    jobs = client.get("/v1/jobs").json()["jobs"]
    job = next(j for j in jobs if (j["input"]["filename"] or "").endswith("evil.csv"))
    job = _wait_finished(client, job["id"])
    assert job["state"] == "succeeded"
    assert not Path("/tmp/evil.csv").exists()
    data_dir = Path(server.bundle).parent / "data"
    stored = [p for p in data_dir.rglob("*") if p.is_file() and "evil" in p.name]
    assert stored == [], f"an upload was stored under its client-given name: {stored}"


def test_the_other_tenant_sees_none_of_the_attackers_jobs(server, client):
    mine = client.get("/v1/jobs").json()["jobs"]
    assert mine, "the attacks created jobs"
    with httpx.Client(base_url=server.base_url, timeout=30, headers={"x-api-key": attacks.OTHER_KEY}) as other:
        assert other.get("/v1/jobs").json()["jobs"] == []
        for job in mine:
            assert other.get(f"/v1/jobs/{job['id']}").status_code == 404
            assert other.get(f"/v1/jobs/{job['id']}/results").status_code == 404
            assert other.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert len(client.get("/v1/jobs").json()["jobs"]) == len(mine)
