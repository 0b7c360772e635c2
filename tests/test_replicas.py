"""Serving replicas on Ray Serve (lieprop/service/replicas.py): options, and two real replicas behind Ray's proxy that
answer exactly like the plain server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_service import free_port, make_tiny_bundle, start_server

from lieprop.service.replicas import deployment_options, replica_settings
from lieprop.service.schemas import ETHANOL_XYZ, WATER
from lieprop.service.settings import ReplicaSettings, Settings


def test_a_fixed_replica_count_and_gpus_only_where_the_cluster_has_them():
    fixed = ReplicaSettings(replicas=3, num_cpus=2)
    cpu = deployment_options(fixed, cluster_gpus=0)
    assert cpu["num_replicas"] == 3 and "autoscaling_config" not in cpu
    assert cpu["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0.0}
    assert deployment_options(fixed, cluster_gpus=4)["ray_actor_options"]["num_gpus"] == 1.0
    shared = ReplicaSettings(replicas=4, num_gpus=0.5)
    assert deployment_options(shared, cluster_gpus=2)["ray_actor_options"]["num_gpus"] == 0.5


def test_autoscaling_is_on_when_max_replicas_is_set():
    options = deployment_options(ReplicaSettings(min_replicas=1, max_replicas=8, target_ongoing_requests=2), 0)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {"min_replicas": 1, "initial_replicas": 1, "max_replicas": 8,
                                             "target_ongoing_requests": 2}


def test_inconsistent_autoscaling_settings_are_refused_with_their_names():
    with pytest.raises(ValueError, match="min_replicas needs max_replicas"):
        ReplicaSettings(min_replicas=2)
    with pytest.raises(ValueError, match=r"min_replicas \(5\) is more than max_replicas \(2\)"):
        ReplicaSettings(min_replicas=5, max_replicas=2)


def test_replicas_run_without_jobs_and_size_their_threads_to_their_cpus():
    s = replica_settings(Settings(), ReplicaSettings(num_cpus=2))
    assert not s.jobs and s.model_threads == 1 and s.workers_embed == 2  # one core left for the event loop
    assert replica_settings(Settings(), ReplicaSettings(num_cpus=4)).model_threads == 3
    explicit = replica_settings(Settings(model_threads=3, workers_embed=1), ReplicaSettings(num_cpus=2))
    assert not explicit.jobs and explicit.model_threads == 3 and explicit.workers_embed == 1


def test_serve_ray_without_ray_or_with_bad_settings_says_why(capsys):
    from lieprop.cli import main

    assert main(["serve-ray", "--min-replicas", "3"]) == 2
    err = capsys.readouterr().err
    assert "min_replicas needs max_replicas" in err or "pip install 'lieprop[ray]'" in err


# --------------------------------------------------------------------------------------------------
# two replicas on a local Ray, compared with lieprop serve

MOLECULES = [{"smiles": "CCO", "id": "ethanol"}, WATER, {"xyz": ETHANOL_XYZ}, {"smiles": "C1=CC=CN=C1"},
             {"smiles": "not a smiles"}, {"numbers": [6, 17], "positions": [[0, 0, 0], [1.7, 0, 0]]}]


def start_ray_serve(tmp: Path, bundle: Path, replicas: int) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log_path = tmp / "serve-ray.log"
    cmd = [sys.executable, "-m", "lieprop.cli", "serve-ray", "--replicas", str(replicas), "--num-cpus", "1",
           "--model", str(bundle), "--port", str(port), "--workers-embed", "1", "--model-threads", "1"]
    process = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
                               env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lieprop serve-ray exited with {process.returncode}:\n{log_path.read_text()}")
        if '"replicas running"' in log_path.read_text():
            return process, f"http://127.0.0.1:{port}", log_path
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    raise RuntimeError(f"the replicas were not running within 240 s:\n{log_path.read_text()[-5000:]}")


def without_request_ids(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "request_id"}


@pytest.mark.slow
def test_two_ray_serve_replicas_answer_like_the_plain_server(tmp_path):
    pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'lieprop[ray]'")
    bundle = make_tiny_bundle(tmp_path / "tiny.pt")
    plain = start_server(tmp_path, bundle)
    process, url, log_path = start_ray_serve(tmp_path, bundle, replicas=2)
    try:
        running = [json.loads(line[line.index("{"):]) for line in log_path.read_text().splitlines()
                   if '"replicas running"' in line]
        assert running[0]["replicas"] == {"RUNNING": 2}
        with httpx.Client(base_url=plain.base_url, timeout=60) as a, httpx.Client(base_url=url, timeout=60) as b:
            deadline = time.monotonic() + 120
            while b.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            ready = b.get("/readyz").json()
            assert ready["status"] == "ready" and ready["model"] == a.get("/readyz").json()["model"]
            assert ready["jobs"]["status"] == "down"  # replicas leave batch jobs to one plain server
            body = {"molecules": MOLECULES, "properties": ["homo", "u0", "mu"]}
            expected = a.post("/v1/predict", json=body).json()
            for _ in range(6):  # several requests: the proxy spreads them over both replicas
                got = b.post("/v1/predict", json=body)
                assert got.status_code == 200 and got.headers["x-request-id"]
                got = got.json()
                assert [r["ok"] for r in got["results"]] == [r["ok"] for r in expected["results"]]
                for r, e in zip(got["results"], expected["results"], strict=True):
                    if r["ok"]:
                        assert r["id"] == e["id"] and r["warnings"] == e["warnings"]
                        for name, value in e["properties"].items():
                            assert r["properties"][name]["unit"] == value["unit"]
                            np.testing.assert_allclose(r["properties"][name]["value"], value["value"],
                                                       rtol=1e-5, atol=1e-6)
                    else:
                        assert r == e
            for request in ({"molecules": 3}, {"molecules": []}):
                mine, theirs = b.post("/v1/predict", json=request), a.post("/v1/predict", json=request)
                assert mine.status_code == theirs.status_code and mine.status_code >= 400
                assert without_request_ids(mine.json()) == without_request_ids(theirs.json())
                assert mine.json()["request_id"] == mine.headers["x-request-id"]  # one id, as from lieprop serve
            disabled = b.get("/v1/jobs")
            assert disabled.status_code == 503 and disabled.json()["error"]["code"] == "jobs_disabled"
            assert b.get("/v1/models").json() == a.get("/v1/models").json()
            assert "lieprop_http_requests_total" in b.get("/metrics").text
    finally:
        plain.stop()
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(90) == 0, log_path.read_text()[-5000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
