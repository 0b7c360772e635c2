"""Does a light client keep its latency while heavy clients attack the service? (issue 17, item 1)

    python benchmarks/hostile_load.py                 # 30 s, the bundled model
    python benchmarks/hostile_load.py --duration 10   # shorter

It starts a real ``lieprop serve`` with the bundled model on 127.0.0.1 (``--model-threads 1 --workers-embed 1``
unless told otherwise) and runs, at the same time, for ``--duration`` seconds:

- ``light``: one water molecule (atom arrays) per request, a request every 50 ms;
- ``healthz``: ``GET /healthz`` every 50 ms;
- ``cage-refused``: requests of 64 copies of a near-symmetric 24-carbon cage (a truncated octahedron, 288 frames,
  ~100 KB), over the per-molecule cost limit;
- ``cage-heavy``: requests of 64 copies of a less symmetric cage (135 frames, 208 counted by the cost bound: an
  estimated 1.5 s of model time each), admitted up to the request's budget (20 of them);
- ``cage-abandon``: the same request with a 2 s client timeout, then the client disconnects (its work should be
  cancelled);
- ``polyyne``: requests of 16 copies of the 28-ring polyyne SMILES ``C1#CC#C...1``, which ETKDG fails on slowly;
- ``big-invalid``: a 1 MB body of 333,000 invalid items.

It prints one table: each client's requests, the outcomes (HTTP status, and per-molecule codes), and latency
percentiles; then the cancelled-molecule counters from ``/metrics``. First it prints the cost estimate
(:mod:`lieprop.model.cost`) beside the measured model time of a few molecules, in this process, on one thread.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attacks import c24_cage  # noqa: E402  (tests/attacks.py: the red-team catalogue's molecules)

WATER = {"numbers": [8, 1, 1], "positions": [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]}
POLYYNE_28 = "C1#C" + "C#C" * 13 + "1"
CUBANE = "C12C3C4C1C5C2C3C45"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    data = sorted(values)
    return data[min(len(data) - 1, int(round(q / 100 * (len(data) - 1))))]


@dataclass
class Client:
    """One client's record: request latencies (s) and outcomes."""

    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    codes: Counter = field(default_factory=Counter)  # per-molecule: ok / error codes

    def record(self, seconds: float, response: httpx.Response | None, error: str | None = None) -> None:
        self.latencies.append(seconds)
        if response is None:
            self.statuses[error or "transport"] += 1
            return
        self.statuses[str(response.status_code)] += 1
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        for r in body.get("results", []):
            self.codes["ok" if r["ok"] else r["error"]["code"]] += 1
        if "error" in body:
            self.codes[body["error"].get("code", "?")] += 1


#: Each client kind: (body or "GET /healthz", pause between requests in s, client timeout in s).
def _kinds() -> dict[str, tuple[object, float, float]]:
    return {
        "light": ({"molecules": [WATER], "properties": ["homo"]}, 0.05, 120.0),
        "healthz": ("GET /healthz", 0.05, 120.0),
        "cage-refused": ({"molecules": [c24_cage(1e-4)] * 64, "properties": ["homo"]}, 0.0, 120.0),
        "cage-heavy": ({"molecules": [c24_cage(1e-2)] * 64, "properties": ["homo"]}, 0.0, 120.0),
        "cage-abandon": ({"molecules": [c24_cage(1e-2)] * 64, "properties": ["homo"]}, 0.0, 2.0),
        "polyyne": ({"molecules": [{"smiles": POLYYNE_28}] * 16, "properties": ["homo"]}, 0.0, 120.0),
        "big-invalid": (b'{"molecules":[' + b",".join([b"{}"] * 333_000) + b"]}", 0.0, 120.0),
    }


def run_client(url: str, kind: str, name: str, stop) -> Client:
    """Send ``kind``'s request back to back (at most one per its pause) until ``stop`` is set; the record."""
    body, period, timeout = _kinds()[kind]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()  # encoded once
    client = Client(name)
    with httpx.Client(base_url=url, timeout=timeout) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                if body == "GET /healthz":
                    response = http.get("/healthz")
                else:
                    response = http.post("/v1/predict", content=content, headers={"content-type": "application/json"})
            except httpx.TimeoutException:
                client.record(time.perf_counter() - started, None, "client timeout")
            except httpx.TransportError as exc:
                client.record(time.perf_counter() - started, None, type(exc).__name__)
            else:
                client.record(time.perf_counter() - started, response)
            rest = period - (time.perf_counter() - started)
            if rest > 0:
                stop.wait(rest)
    return client


def _run_client_process(url: str, kind: str, name: str, stop, answers) -> None:
    answers.put(run_client(url, kind, name, stop))


def serve(args: argparse.Namespace) -> tuple[subprocess.Popen, str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fd, log = tempfile.mkstemp(prefix="lieprop-hostile-", suffix=".log")
    cmd = [sys.executable, "-m", "lieprop.cli", "serve", "--port", str(port), "--log-level", "warning",
           "--model-threads", str(args.model_threads), "--workers-embed", str(args.workers_embed),
           "--data-dir", tempfile.mkdtemp(prefix="lieprop-hostile-data-"), *args.serve_args]
    process = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT)
    os.close(fd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}: {Path(log).read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url, log
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server was not ready within 180 s")


def calibration() -> list[tuple[str, int, int, float, float]]:
    """(molecule, atoms, frames, estimated ms, measured ms) for the bundled model on one thread, in this process."""
    import torch

    from lieprop.data.readers import from_smiles
    from lieprop.model.cost import molecule_cost
    from lieprop.model.loading import load_model

    torch.set_num_threads(1)
    model = load_model().model
    ethanol = from_smiles("CCO")
    cubane = from_smiles(CUBANE)
    molecules = [("water", np.array(WATER["numbers"]), np.array(WATER["positions"])),
                 ("ethanol (SMILES conformer)", ethanol.numbers, ethanol.positions),
                 ("cubane (SMILES conformer)", cubane.numbers, cubane.positions)]
    for name, jitter in (("C24 cage, jitter 0.01 Å", 1e-2), ("C24 cage, jitter 1e-4 Å", 1e-4)):
        cage = c24_cage(jitter)
        molecules.append((name, np.array(cage["numbers"]), np.array(cage["positions"])))
    rows = []
    for name, z, x in molecules:
        model.predictions([z], [x])  # warm
        start = time.perf_counter()
        model.predictions([z], [x])
        measured = (time.perf_counter() - start) * 1000
        cost = molecule_cost(model, z, x)
        rows.append((name, len(z), cost.frames, cost.ms, measured))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of attack (default 30)")
    parser.add_argument("--baseline", type=float, default=10.0,
                        help="seconds of the light client alone first, for comparison (default 10)")
    parser.add_argument("--model-threads", type=int, default=1)
    parser.add_argument("--workers-embed", type=int, default=1)
    parser.add_argument("--no-calibration", action="store_true", help="skip the estimated-vs-measured table")
    parser.add_argument("--heavy", default="cage-refused,cage-heavy,cage-abandon,polyyne,big-invalid",
                        help="the heavy clients to run, comma-separated (default: all)")
    parser.add_argument("serve_args", nargs="*", help="more `lieprop serve` flags (after --)")
    args = parser.parse_args()

    print(f"# hostile load, {args.duration:g} s, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, model threads {args.model_threads}, embedding workers {args.workers_embed}")
    if not args.no_calibration:
        print("\n| molecule | atoms | frames | estimated ms | measured ms |\n|---|---|---|---|---|")
        for name, atoms, frames, estimated, measured in calibration():
            print(f"| {name} | {atoms} | {frames} | {estimated:.0f} | {measured:.0f} |")

    process, url, log = serve(args)
    clients: dict[str, Client] = {}

    def phase(seconds: float, suffix: str, heavy_clients: list[str]) -> None:
        """The light and health clients on threads here, each heavy client in a process of its own (so that their
        CPU work never takes this process' interpreter lock from the light client)."""
        stop = multiprocessing.Event()
        answers: multiprocessing.Queue = multiprocessing.Queue()
        threads = [threading.Thread(target=lambda n=name, k=kind: clients.__setitem__(n, run_client(url, k, n, stop)))
                   for name, kind in (("light" + suffix, "light"), ("healthz" + suffix, "healthz"))]
        processes = [multiprocessing.Process(target=_run_client_process, args=(url, name, name, stop, answers))
                     for name in heavy_clients]
        for w in [*threads, *processes]:
            w.start()
        time.sleep(seconds)
        stop.set()
        for _ in processes:
            client = answers.get(timeout=180)
            clients[client.name] = client
        for w in [*threads, *processes]:
            w.join(180)

    if args.baseline > 0:
        phase(args.baseline, " (alone)", [])
    phase(args.duration, " (under attack)", [h for h in args.heavy.split(",") if h])
    metrics = httpx.get(url + "/metrics", timeout=10).text
    process.terminate()
    process.wait(60)

    print("\n| client | requests | HTTP status | molecule outcomes | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for c in clients.values():
        ms = [s * 1000 for s in c.latencies]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(c.statuses.items()))
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(c.codes.items()))
        print(f"| {c.name} | {len(ms)} | {statuses} | {codes} | {percentile(ms, 50):.0f} | {percentile(ms, 99):.0f} "
              f"| {max(ms, default=float('nan')):.0f} |")
    cancelled = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("lieprop_cancelled_molecules_total")}
    print(f"\ncancelled molecules (lieprop_cancelled_molecules_total): {json.dumps(cancelled)}")
    light = clients["light (under attack)"]
    errors = sum(v for k, v in light.statuses.items() if k != "200")
    p99 = percentile(light.latencies, 99) * 1000
    print(f"light requests: p99 {p99:.0f} ms (goal < 1000 ms: {'met' if p99 < 1000 else 'NOT met'}), "
          f"{errors} errors; server log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
