"""The Kubernetes manifests (deploy/k8s/): valid against the Kubernetes schemas (kubernetes-validate, strict, offline:
the schemas ship with the package), and in agreement with what ``lieprop serve`` in docker/Dockerfile's image
serves: probe paths that are routes of the app, the image's port, LIEPROP_* names that are settings."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.routing import Match

from lieprop.service.app import create_app
from lieprop.service.settings import Settings

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="needs the dev extra (kubernetes-validate)")

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37.0"


def resources() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def containers() -> list[tuple[str, dict, dict]]:
    """(deployment name, deployment, container) for every container of every Deployment."""
    return [(doc["metadata"]["name"], doc, c) for _, doc in resources() if doc["kind"] == "Deployment"
            for c in doc["spec"]["template"]["spec"]["containers"]]


def serves(app, path: str) -> bool:
    """Whether a GET of ``path`` reaches one of the app's routes (as its router matches a request)."""
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)


def test_every_manifest_is_valid_kubernetes():
    kinds = sorted(doc["kind"] for _, doc in resources())
    assert kinds == ["Deployment", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service",
                     "Service"]
    for name, doc in resources():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises ValidationError, naming the field
        assert doc["metadata"]["name"].startswith("lieprop"), name


def test_the_validator_catches_a_misspelt_field():
    [(_, deployment)] = [(n, d) for n, d in resources() if d["kind"] == "Deployment" and n == "deployment.yaml"]
    broken = copy.deepcopy(deployment)
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_probes_ask_routes_that_lieprop_serve_answers_on_the_images_port():
    app = create_app(Settings())
    assert not serves(app, "/no-such-probe")
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    entrypoint = re.search(r'^ENTRYPOINT \[(.*)\]', dockerfile, re.M).group(1)
    port = int(re.search(r'"--port", "(\d+)"', entrypoint).group(1))
    assert f"EXPOSE {port}" in dockerfile
    for name, _, container in containers():
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": port}, name
        probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert urlsplit(probes["livenessProbe"]["path"]).path == "/healthz"
        assert urlsplit(probes["readinessProbe"]["path"]).path == "/readyz"
        for kind, probe in probes.items():
            assert serves(app, urlsplit(probe["path"]).path), (name, kind)
            assert probe["port"] in ports, (name, kind)
        assert container["image"] == "lieprop:cpu"  # the tag docker/Dockerfile's build line gives
        assert "-t lieprop:cpu" in dockerfile


def test_every_environment_variable_is_a_setting_and_jobs_run_in_one_place():
    fields = set(Settings.model_fields)
    jobs = {}
    for name, deployment, container in containers():
        env = {e["name"]: e.get("value") for e in container["env"]}
        for var in env:
            assert var.startswith("LIEPROP_") and var.removeprefix("LIEPROP_").lower() in fields, (name, var)
        Settings(**{k.removeprefix("LIEPROP_").lower(): v for k, v in env.items()})  # values that validate
        jobs[name] = (env["LIEPROP_JOBS"], deployment["spec"]["replicas"], deployment["spec"]["strategy"]["type"])
    # scaled pods predict only; the one pod with jobs is replaced, never doubled (one runner per database)
    assert jobs == {"lieprop": ("false", 2, "RollingUpdate"), "lieprop-jobs": ("true", 1, "Recreate")}


def test_services_and_the_autoscaler_point_at_the_deployments():
    docs = [doc for _, doc in resources()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for service in (d for d in docs if d["kind"] == "Service"):
        target = deployments[service["metadata"]["name"]]
        assert service["spec"]["selector"] == target["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"] == target["spec"]["selector"]["matchLabels"]
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    [hpa] = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref["kind"] == "Deployment" and ref["name"] == "lieprop"
    assert deployments["lieprop"]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
