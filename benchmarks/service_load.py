"""How fast is the REST service under load? Latency percentiles and throughput, dynamic batching on vs off.

    python benchmarks/service_load.py                  # full run: concurrency 1, 8, 32, 64; ~10 minutes
    python benchmarks/service_load.py --quick          # smoke run: concurrency 1 and 8, a few requests per cell
    python benchmarks/service_load.py --requests 10000 --skip-latency   # only the long memory (RSS) run

It starts ``lieprop serve`` itself on a free local port (once with batching on, once with ``--no-batching``) and
drives it with a closed-loop httpx client: ``concurrency`` workers each send single-molecule requests back to back.
Rows: XYZ requests (geometry given, model only) and SMILES requests (5 conformers are embedded and predicted per
request; ``--kinds smiles1`` asks for one). The
memory run sends ``--requests`` requests (XYZ, every tenth a SMILES) at concurrency 32 and samples the server's
RSS. The client shares the machine with the server, so on a small machine the numbers include its CPU time too.

Without a bundled model (``lieprop/models/lieprop-qm9.pt``) it serves an untrained bundle of the default training
size (LieResNet k=256, depth 6): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# QM9-like molecules (H, C, N, O, F; at most 9 heavy atoms), a spread of sizes.
_SMILES_TEXT = """C N O CC CO C=O CN C#N CC#C CC=O CCO CCN COC CC#N NC=O OC=O CC(C)C CC(C)O CC(=O)C CC(=O)O CC(=O)N CCCO
CCCN COCC OCCO NCCN C1CC1 C1CO1 C1CCC1 C1COC1 C1CCCC1 C1CCOC1 C1CCCCC1 c1ccccc1 c1ccncc1 c1ccoc1 Cc1ccccc1
Oc1ccccc1 Fc1ccccc1 CC(C)(C)O CC(C)(C)N CCC(C)=O CCC(=O)O CC(O)CO OCC(O)CO CC1CC1 OC1CC1 C1CC2CC2C1 CC#CC
N#CCC#N O=CC=O FC(F)F OCC(F)(F)F CCCCC CCCCO CCOCC O=C1CCC1 O=C1CCCC1 O=C1NCCC1 C=CC=C C=CC#N"""
SMILES = _SMILES_TEXT.split()


@dataclass
class Cell:
    kind: str
    concurrency: int
    batching: bool
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        data = sorted(self.latencies)
        return data[min(len(data) - 1, int(round(q / 100 * (len(data) - 1))))] * 1000


class Server:
    """``lieprop serve`` in a subprocess on a free port."""

    def __init__(self, model: Path, batching: bool, extra: list[str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
        cmd = [sys.executable, "-m", "lieprop.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--log-level", "warning", "--batching" if batching else "--no-batching", *extra]
        fd, self.log = tempfile.mkstemp(prefix="lieprop-serve-", suffix=".log")
        self.process = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env)
        os.close(fd)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}: {Path(self.log).read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit("the server did not become ready within 180 s")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        Path(self.log).unlink(missing_ok=True)


def xyz_bodies() -> list[dict]:
    from lieprop.data.elements import symbol
    from lieprop.data.readers import from_smiles

    bodies = []
    for k, smi in enumerate(SMILES):
        m = from_smiles(smi)
        lines = [str(m.n_atoms), f"mol{k}"] + [f"{symbol(int(z))} {x:.6f} {y:.6f} {w:.6f}"
                                                for z, (x, y, w) in zip(m.numbers, m.positions, strict=True)]
        bodies.append({"molecules": [{"id": f"mol{k}", "xyz": "\n".join(lines) + "\n"}]})
    return bodies


def smiles_bodies(conformers: int | None = None) -> list[dict]:
    """SMILES requests; ``conformers`` asks for that many per SMILES (None: the service's default, 5)."""
    extra = {} if conformers is None else {"conformers": conformers}
    return [{"molecules": [{"id": f"mol{k}", "smiles": s}], **extra} for k, s in enumerate(SMILES)]


#: Request kinds a run may time: XYZ (model only), SMILES (the default conformers), SMILES with one conformer.
KINDS = {"xyz": xyz_bodies, "smiles": smiles_bodies, "smiles1": lambda: smiles_bodies(conformers=1)}


async def drive(url: str, bodies: list[dict], concurrency: int, n: int, on_progress=None) -> tuple[list[float], int,
                                                                                                    float]:
    """Closed loop: ``concurrency`` workers send ``n`` requests in all. Returns latencies, errors, wall seconds."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            nonlocal sent, errors
            while sent < n:
                body = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                response = await client.post("/v1/predict", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200 or not response.json()["results"][0]["ok"]:
                    errors += 1
                if on_progress is not None:
                    on_progress(len(latencies))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - start


def run_cells(server: Server, batching: bool, kinds: dict[str, list[dict]], levels: list[int],
              per_cell: int) -> list[Cell]:
    cells = []
    for kind, bodies in kinds.items():
        for c in levels:
            n = max(per_cell, 4 * c)
            asyncio.run(drive(server.url, bodies, c, 2 * c))  # warm the connections and the path
            latencies, errors, seconds = asyncio.run(drive(server.url, bodies, c, n))
            cell = Cell(kind, c, batching, n, errors, seconds, latencies)
            print(f"  {kind:<6} c={c:<3} batching={'on ' if batching else 'off'} p50 {cell.percentile(50):7.1f} ms  "
                  f"{cell.throughput:7.1f} req/s", file=sys.stderr, flush=True)
            cells.append(cell)
    return cells


def latency_table(cells: list[Cell]) -> str:
    off = {(c.kind, c.concurrency): c for c in cells if not c.batching}
    rows = ["| input | concurrency | batching | requests | errors | p50 ms | p95 ms | p99 ms | req/s | on/off |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.kind != "xyz", c.concurrency, not c.batching)):
        base = off.get((c.kind, c.concurrency))
        ratio = f"{c.throughput / base.throughput:.2f}x" if c.batching and base else ""
        rows.append(f"| {c.kind} | {c.concurrency} | {'on' if c.batching else 'off'} | {c.requests} | {c.errors} | "
                    f"{c.percentile(50):.1f} | {c.percentile(95):.1f} | {c.percentile(99):.1f} | "
                    f"{c.throughput:.1f} | {ratio} |")
    return "\n".join(rows)


def rss_run(model: Path, extra: list[str], total: int, concurrency: int) -> str:
    server = Server(model, True, extra)
    try:
        bodies = xyz_bodies()
        smiles = smiles_bodies()
        mixed = [smiles[k % len(smiles)] if k % 10 == 9 else bodies[k % len(bodies)] for k in range(len(bodies) * 10)]
        step = max(1, total // 10)
        samples = [(0, server.rss_mib())]

        def progress(done: int) -> None:
            if done % step == 0 and done > samples[-1][0]:
                samples.append((done, server.rss_mib()))

        latencies, errors, seconds = asyncio.run(drive(server.url, mixed, concurrency, total, progress))
        if samples[-1][0] != total:
            samples.append((total, server.rss_mib()))
    finally:
        server.stop()
    first_tenth = next((rss for done, rss in samples if done >= step), samples[0][1])
    rows = ["| requests done | server RSS MiB |", "|---|---|"] + [f"| {d} | {r:.1f} |" for d, r in samples]
    growth = samples[-1][1] - first_tenth
    return ("\n".join(rows) + f"\n\n{total} requests (XYZ, every tenth SMILES) at concurrency {concurrency} in "
            f"{seconds:.1f} s, {errors} errors; RSS growth after the first tenth: {growth:+.1f} MiB")


def default_model(tmp: Path) -> Path:
    from lieprop.inference import default_model_path

    bundled = default_model_path()
    if bundled.is_file():
        return bundled
    import torch

    from lieprop.data.properties import PROPERTY_NAMES
    from lieprop.model.bundle import save_bundle
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    print(f"no bundled model at {bundled}: serving an untrained default-size bundle (same speed)", file=sys.stderr)
    torch.manual_seed(0)
    cfg = NetworkConfig(targets=list(PROPERTY_NAMES))
    path = tmp / "untrained.pt"
    save_bundle(PropertyModel(cfg), path, "untrained-default-size")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 8, 24 requests per cell, 200-request "
                                                             "memory run: a smoke test in well under a minute")
    parser.add_argument("--model", type=Path, help="bundle to serve (default: the bundled model)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="levels (default 1 8 32 64)")
    parser.add_argument("--per-cell", type=int, help="requests per table cell (default 400; at least 4x concurrency)")
    parser.add_argument("--requests", type=int, help="requests in the memory run (default 10000; 0 skips it)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=["xyz", "smiles"],
                        help="request kinds: xyz, smiles (5 conformers each), smiles1 (one conformer)")
    parser.add_argument("--skip-latency", action="store_true", help="only the memory run")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra `lieprop serve` argument, e.g. --serve-arg=--max-wait-ms=2 (repeatable)")
    args = parser.parse_args(argv)
    levels = args.concurrency or ([1, 8] if args.quick else [1, 8, 32, 64])
    per_cell = args.per_cell or (24 if args.quick else 400)
    total = args.requests if args.requests is not None else (200 if args.quick else 10_000)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or default_model(Path(tmp))
        print(f"# lieprop service load ({'quick' if args.quick else 'full'})\n")
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; model "
              f"{model.name}; client and server on the same machine; serve args: "
              f"{' '.join(args.serve_arg) or '(defaults)'}\n")
        if not args.skip_latency:
            kinds = {k: KINDS[k]() for k in args.kinds}
            cells = []
            for batching in (True, False):
                server = Server(model, batching, args.serve_arg)
                try:
                    cells += run_cells(server, batching, kinds, levels, per_cell)
                finally:
                    server.stop()
            print(latency_table(cells) + "\n")
            xyz1 = next((c for c in cells if c.kind == "xyz" and c.concurrency == 1 and c.batching), None)
            if xyz1:
                print(f"- single XYZ request at concurrency 1: p50 {xyz1.percentile(50):.1f} ms (goal < 30 ms)")
            on32 = {(c.kind, c.batching): c for c in cells if c.concurrency == 32}
            if ("xyz", True) in on32 and ("xyz", False) in on32:
                ratio = on32["xyz", True].throughput / on32["xyz", False].throughput
                print(f"- XYZ throughput at concurrency 32, batching on/off: {ratio:.2f}x (goal >= 4x)")
            print(f"- median over all cells of p50: {statistics.median(c.percentile(50) for c in cells):.1f} ms\n")
        if total:
            print(rss_run(model, args.serve_arg, total, 32))
    return 0


if __name__ == "__main__":
    sys.exit(main())
