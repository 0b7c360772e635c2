#!/usr/bin/env python3
"""``make docker-test``: build the lieprop image for real, run it, and check that it predicts what the library does.

Docker Hub is out of reach here and there is no Docker engine, so the test

1. installs podman, buildah, runc and debootstrap with apt when they are missing (needs root);
2. builds a Debian bookworm base with python3 + python3-venv by debootstrap, once: the rootfs tarball is cached in
   ``~/.cache/lieprop/`` and imported with ``podman import`` as ``localhost/lieprop-base:bookworm``;
3. builds ``docker/Dockerfile`` FROM that base (build arg ``BASE_IMAGE``) in a temporary copy of the work tree
   (git's tracked and untracked-but-not-ignored files, filtered by ``.dockerignore`` as usual). The local CPU torch
   wheel (pip's find-links, ``/opt/wheels``) goes into the copy's ``docker/wheels/``, and the machine's CA bundle is
   passed as the build secret ``pip_cert`` (this machine's traffic to PyPI goes through a TLS-intercepting proxy);
4. if ``lieprop/models/lieprop-qm9.pt`` does not exist yet, writes a small untrained PLACEHOLDER bundle into the
   temporary copy only (never into the work tree) and says so loudly; with the real bundle present it uses that;
5. runs the image with podman on a random free 127.0.0.1 port, times the cold start until ``/readyz`` is 200, runs
   the image's HEALTHCHECK (``podman healthcheck run``), checks the process is not root and ``/data`` is writable,
6. POSTs a SMILES and an XYZ molecule to ``/v1/predict`` and compares every value with ``lieprop.predict`` run by
   this Python on the same bundle (float32 tolerance), then stops the container (SIGTERM; it must exit well before
   podman's SIGKILL) and removes it with its volume.

It prints the image size, the build times and the time to ready. Options: ``--json PATH`` writes those numbers,
``--rmi`` removes the image afterwards (by default it stays, so a re-run reuses the build's cached layers).
Run it with the project's virtual environment: ``.venv/bin/python docker/smoke_test.py`` (``make docker-test``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lieprop"
SUITE = "bookworm"
BASE_PACKAGES = ["python3", "python3-venv"]
BASE_TAG = f"localhost/lieprop-base:{SUITE}"
IMAGE_TAG = "localhost/lieprop:smoke"
MIRROR = os.environ.get("LIEPROP_DEBIAN_MIRROR")  # unset: debootstrap's default mirror
TOOLS = {"podman": "podman", "buildah": "buildah", "runc": "runc", "debootstrap": "debootstrap"}  # command: package
# podman on this kind of machine: runc (crun fails here) and explicit limits (the defaults exceed the sandbox's).
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
CA_BUNDLE = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
BUNDLE_IN_PACKAGE = "lieprop/models/lieprop-qm9.pt"
READY_TIMEOUT_S = 300.0
RTOL, ATOL = 1e-5, 1e-5  # float32 forward passes, two processes: differences stay at a few ulp


def log(msg: str) -> None:
    print(f"[docker-test] {msg}", flush=True)


def sh(cmd: list[str], check: bool = True, capture: bool = False, **kw) -> subprocess.CompletedProcess:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=check, text=True, capture_output=capture, **kw)


def out(cmd: list[str]) -> str:
    return subprocess.run(cmd, check=True, text=True, capture_output=True).stdout.strip()


# ----------------------------------------------------------------------------------------------------------------
# 1. tools


def ensure_tools() -> None:
    missing = [pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None and not Path(f"/usr/sbin/{cmd}").exists()]
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"docker-test: missing {' '.join(missing)}; install them (apt-get install {' '.join(missing)}) "
                 "or run as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh(["apt-get", "update", "-q"], env=env)
    sh(["apt-get", "install", "-y", "-q", *missing], env=env)
    os.environ["PATH"] += ":/usr/sbin:/sbin"


# ----------------------------------------------------------------------------------------------------------------
# 2. the debootstrap base


def image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag]).returncode == 0


def ensure_base() -> float:
    """Import (and first build) the debootstrap base; returns the seconds spent (0 when it was there)."""
    if image_exists(BASE_TAG):
        log(f"base {BASE_TAG}: present")
        return 0.0
    t0 = time.monotonic()
    tarball = CACHE / f"debian-{SUITE}-{'-'.join(BASE_PACKAGES)}.tar"
    if not tarball.exists():
        if os.geteuid() != 0:
            sys.exit("docker-test: debootstrap needs root to build the base image")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="lieprop-rootfs-", dir=CACHE) as tmp:
            rootfs = Path(tmp) / "rootfs"
            debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
            sh([debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs),
                *([MIRROR] if MIRROR else [])])
            for junk in ["var/lib/apt/lists", "var/cache/apt/archives", "var/log"]:
                for p in (rootfs / junk).glob("*"):
                    if p.is_file():
                        p.unlink()
            partial = tarball.with_suffix(".tar.part")
            sh(["tar", "-C", str(rootfs), "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                "-cf", str(partial), "."])
            partial.replace(tarball)
        log(f"debootstrap: {time.monotonic() - t0:.0f} s, rootfs {tarball.stat().st_size / 2**20:.0f} MiB -> {tarball}")
    sh(["podman", "import", "--change", "CMD=/bin/sh", "--message", f"debootstrap {SUITE} minbase + "
        + " ".join(BASE_PACKAGES), str(tarball), BASE_TAG], capture=True)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------------------------------------------
# 3./4. the build context and the image


def make_context(tmp: Path) -> tuple[Path, Path, bool]:
    """A copy of the work tree as git sees it (tracked + untracked-not-ignored), plus the local torch wheel.

    Returns (context, bundle path inside it, whether that bundle is a placeholder)."""
    ctx = tmp / "context"
    files = out(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard", "-z"]).split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            dst = ctx / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    wheels = sorted(glob.glob("/opt/wheels/torch-*-cp311-*.whl"))  # the base's Python is Debian's 3.11
    (ctx / "docker" / "wheels").mkdir(parents=True, exist_ok=True)
    for whl in wheels:
        shutil.copy2(whl, ctx / "docker" / "wheels")
    log(f"context: {len(files)} files" + (f", local wheel {Path(wheels[0]).name}" if wheels
                                           else ", no local torch wheel: torch comes from the index"))
    bundle = ctx / BUNDLE_IN_PACKAGE
    placeholder = not bundle.exists()
    if placeholder:
        log("!" * 100)
        log(f"!! {BUNDLE_IN_PACKAGE} does not exist yet: this run bakes a small UNTRAINED PLACEHOLDER bundle into")
        log("!! the image (written into the temporary build context only). The build, the HTTP path and the")
        log("!! library comparison are real; the values are not a trained model's.")
        log("!" * 100)
        subprocess.run([sys.executable, "-c", PLACEHOLDER_CODE, str(bundle)], check=True)
    return ctx, bundle, placeholder


PLACEHOLDER_CODE = """
import sys, torch
from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.model.bundle import save_bundle
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel
torch.manual_seed(0)
cfg = NetworkConfig(width=32, depth=2, targets=list(PROPERTY_NAMES))
save_bundle(PropertyModel(cfg), sys.argv[1], "placeholder-untrained-docker-test",
            {"training": {"note": "UNTRAINED placeholder written by docker/smoke_test.py; not a real model"}})
"""


def build_image(ctx: Path) -> float:
    old = out(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE_TAG]) if image_exists(IMAGE_TAG) else None
    # docker format: OCI image configs have no HEALTHCHECK (podman drops it there)
    cmd = [*PODMAN, "build", *LIMITS, "--format", "docker", "--network", "host",
           "-f", str(ctx / "docker" / "Dockerfile"), "-t", IMAGE_TAG,
           "--build-arg", f"BASE_IMAGE={BASE_TAG}", "--build-arg", "TORCH_INDEX_URL="]
    if Path(CA_BUNDLE).is_file():
        cmd += ["--secret", f"id=pip_cert,src={CA_BUNDLE}"]
    t0 = time.monotonic()
    sh([*cmd, str(ctx)])
    seconds = time.monotonic() - t0
    new = out(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE_TAG])
    if old and old != new:  # the previous smoke image, now untagged: drop it (its shared layers stay)
        subprocess.run(["podman", "rmi", old], capture_output=True)
    return seconds


# ----------------------------------------------------------------------------------------------------------------
# 5./6. run and check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_ready(base: str, name: str, t0: float) -> float:
    while time.monotonic() - t0 < READY_TIMEOUT_S:
        if out(["podman", "inspect", "--format", "{{.State.Running}}", name]) != "true":
            raise RuntimeError("the container exited before it was ready")
        try:
            status, _ = http("GET", base + "/readyz", timeout=2)
            if status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {READY_TIMEOUT_S:.0f} s")


LIBRARY_CODE = """
import json, sys
import lieprop
items = json.loads(sys.stdin.read())
print(json.dumps(lieprop.predict(items, model=sys.argv[1])))
"""


def compare(served: dict, library: dict) -> float:
    """Assert both responses carry the same molecules and values; returns the largest relative difference."""
    assert served["model"]["sha256"] == library["model"]["sha256"], (served["model"], library["model"])
    worst = 0.0
    assert len(served["results"]) == len(library["results"])
    for s, lib in zip(served["results"], library["results"], strict=True):
        assert s["ok"] and lib["ok"], (s, lib)
        assert s["id"] == lib["id"] and set(s["properties"]) == set(lib["properties"]), (s["id"], lib["id"])
        for name, pv in s["properties"].items():
            a, b = pv["value"], lib["properties"][name]["value"]
            assert pv["unit"] == lib["properties"][name]["unit"]
            if abs(a - b) > ATOL + RTOL * abs(b):
                raise AssertionError(f"{s['id']} {name}: served {a!r} != library {b!r}")
            worst = max(worst, abs(a - b) / max(abs(b), 1e-12))
    return worst


def run_and_check(bundle: Path) -> dict:
    name = f"lieprop-smoke-{os.getpid()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    xyz = (ROOT / "tests" / "data" / "ethanol.xyz").read_text()
    items = [{"id": "ethanol-smiles", "smiles": "CCO"}, {"id": "ethanol-xyz", "xyz": xyz}]
    result: dict = {}
    t0 = time.monotonic()
    sh([*PODMAN, "run", "-d", *LIMITS, "--name", name, "-p", f"127.0.0.1:{port}:8000",
        "-e", "LIEPROP_WORKERS_EMBED=1", IMAGE_TAG], capture=True)
    try:
        result["ready_s"] = wait_ready(base, name, t0)
        log(f"ready after {result['ready_s']:.1f} s (cold start: podman run -> /readyz 200)")
        health = subprocess.run([*PODMAN, "healthcheck", "run", name], capture_output=True, text=True)
        assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"
        log("HEALTHCHECK (python urllib -> /healthz): healthy")
        uid = out([*PODMAN, "exec", name, "id", "-u"])
        assert uid != "0", "the service runs as root"
        sh([*PODMAN, "exec", name, "sh", "-c", "touch /data/.write-test && rm /data/.write-test"])
        log(f"runs as uid {uid}; /data volume writable")

        status, served = http("POST", base + "/v1/predict", {"molecules": items})
        assert status == 200, (status, served)
        status, models = http("GET", base + "/v1/models")
        assert status == 200, (status, models)
        lib = subprocess.run([sys.executable, "-c", LIBRARY_CODE, str(bundle)], input=json.dumps(items),
                             capture_output=True, text=True, check=True)
        result["max_rel_diff"] = compare(served, json.loads(lib.stdout))
        result["model"] = served["model"]
        n = sum(len(r["properties"]) for r in served["results"])
        log(f"/v1/predict: SMILES + XYZ, {n} values equal lieprop.predict's "
            f"(largest relative difference {result['max_rel_diff']:.1e}); model {served['model']['name']}")

        t_stop = time.monotonic()  # SIGTERM to PID 1 (lieprop itself, no init): graceful, well before the SIGKILL
        sh([*PODMAN, "stop", "-t", "60", name], capture=True)
        result["stop_s"] = time.monotonic() - t_stop
        code = out(["podman", "inspect", "--format", "{{.State.ExitCode}}", name])
        assert result["stop_s"] < 40, f"podman stop took {result['stop_s']:.0f} s: SIGTERM not handled"
        log(f"stopped by SIGTERM in {result['stop_s']:.1f} s, exit status {code}")
    except BaseException:
        subprocess.run(["podman", "logs", "--tail", "60", name])
        raise
    finally:
        subprocess.run([*PODMAN, "rm", "-f", "-v", "-t", "10", name], capture_output=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the measured numbers to this file")
    ap.add_argument("--rmi", action="store_true", help="remove the image afterwards")
    args = ap.parse_args()
    os.environ["PATH"] += ":/usr/sbin:/sbin"
    ensure_tools()
    t_all = time.monotonic()
    report: dict = {"base_s": ensure_base()}
    with tempfile.TemporaryDirectory(prefix="lieprop-docker-") as tmp:
        ctx, bundle, placeholder = make_context(Path(tmp))
        report["placeholder_model"] = placeholder
        report["build_s"] = build_image(ctx)
        report["image_bytes"] = int(out(["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE_TAG]))
        report.update(run_and_check(bundle))
    report["total_s"] = time.monotonic() - t_all
    if args.rmi:
        subprocess.run(["podman", "rmi", IMAGE_TAG], capture_output=True)
    log(f"image {IMAGE_TAG}: {report['image_bytes'] / 1e6:.0f} MB; base {report['base_s']:.0f} s, "
        f"build {report['build_s']:.0f} s, time to ready {report['ready_s']:.1f} s, stop {report['stop_s']:.1f} s, "
        f"total {report['total_s']:.0f} s"
        + ("  [PLACEHOLDER model]" if placeholder else ""))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    log("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
