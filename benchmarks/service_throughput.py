"""Throughput of the REST service driven by a C-speed load generator (``hey``): req/s, p50, p99, batching on/off.

    python benchmarks/service_throughput.py                          # concurrency 1, 8, 32, 64; ~2 minutes
    python benchmarks/service_throughput.py --seconds 3 --concurrency 1 32
    python benchmarks/service_throughput.py --source before=/work/main --source after=.   # two code trees, one run
    python benchmarks/service_throughput.py --model-only   # the model alone: torch threads x batch size, no server

It installs nothing: ``hey`` must be on the PATH (``apt-get install -y hey``). For each code tree (``--source
LABEL=DIR``, default: this checkout) and each of batching on / ``--no-batching``, it starts a real ``lieprop serve``
(the bundled model, or ``--model``) on 127.0.0.1 with that tree first on ``PYTHONPATH``, waits for ``/readyz``, and
runs ``hey`` for ``--seconds`` at each concurrency, every request one small molecule as XYZ
(``{"molecules": [{"xyz": ...}]}``). Servers run one after another, never two at once; with several trees the
cells are interleaved per configuration so that a change in the machine's load hits every tree alike. Unlike
``benchmarks/service_load.py`` (a Python client), ``hey`` takes little of the CPU the server needs on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Ethanol (9 atoms) in a hand-made, nearly mirror-symmetric geometry: the default body of every request. Its
#: principal axes are nearly degenerate, so the model sees it in 5 weighted frames (lieprop.model.frames); a
#: typical QM9 molecule has 1.2 (``--molecule typical``).
ETHANOL_XYZ = """9
ethanol
C -0.0127 1.0858 0.0080
C 0.0021 -0.0041 0.0020
O 0.0097 -1.3906 -0.0020
H 1.0173 1.4579 0.0017
H -0.5409 1.4467 -0.8775
H -0.5234 1.4379 0.9060
H 0.5224 -0.3722 0.8903
H 0.5411 -0.3633 -0.8848
H -0.8938 -1.7327 -0.0049
"""


@dataclass
class Cell:
    """One hey run against one server."""

    source: str
    batching: bool
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # the server process's CPU time (all its threads) per answered request
    loop_ms: float  # of which its main thread (the event loop)


class Server:
    """``lieprop serve`` from the code tree ``source`` in a subprocess on a free local port."""

    def __init__(self, source: Path, model: Path | None, batching: bool, extra: list[str],
                 settings: dict[str, str] | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(source),
               **{f"LIEPROP_{k.upper()}": v for k, v in (settings or {}).items()}}
        cmd = [sys.executable, "-m", "lieprop.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning", "--batching" if batching else "--no-batching", *extra]
        if model is not None:
            cmd += ["--model", str(model)]
        fd, self.log = tempfile.mkstemp(prefix="lieprop-serve-", suffix=".log")
        self.process = subprocess.Popen(cmd, stdout=fd, stderr=subprocess.STDOUT, env=env, cwd=source)
        os.close(fd)
        deadline = time.monotonic() + 900  # a compiled model (model_compile) compiles during warm-up
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited with {self.process.returncode}: {Path(self.log).read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not become ready within 900 s")

    def cpu_seconds(self) -> tuple[float, float]:
        """User + system CPU time so far of the server and its child processes (the model process, the embedding
        pool): all threads, and the server's main thread (the event loop) alone (from /proc; NaN elsewhere)."""
        pid = self.process.pid
        tick = os.sysconf("SC_CLK_TCK")

        def fields(path: str) -> list[str]:
            return Path(path).read_text().rsplit(")", 1)[1].split()

        try:
            main = fields(f"/proc/{pid}/task/{pid}/stat")
            total = 0
            for p in [pid, *_children(pid)]:
                try:
                    f = fields(f"/proc/{p}/stat")
                except OSError:  # exited meanwhile
                    continue
                total += int(f[11]) + int(f[12])
        except OSError:
            return float("nan"), float("nan")
        return total / tick, (int(main[11]) + int(main[12])) / tick

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        Path(self.log).unlink(missing_ok=True)


def typical_xyz() -> str:
    """XYZ of the first QM9 test-split molecule with 18 atoms (QM9's mean size) and a single frame."""
    sys.path.insert(0, str(ROOT))
    from lieprop.data.elements import SYMBOLS
    from lieprop.data.qm9 import load_qm9, split_indices
    from lieprop.model.frames import molecule_frames

    data = load_qm9()
    for i in split_indices(len(data))["test"]:
        z, x = data.molecule(int(i))
        if len(z) == 18 and len(molecule_frames(z, x)) == 1:
            lines = [f"{SYMBOLS[int(a)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for a, p in zip(z, x, strict=True)]
            return f"{len(z)}\nQM9 molecule {int(i)}\n" + "\n".join(lines) + "\n"
    raise SystemExit("no 18-atom single-frame molecule in the test split")


def _children(pid: int) -> list[int]:
    """The process ids of ``pid``'s children (from /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _seconds(text: str, pattern: str) -> float:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else float("nan")


def run_hey(url: str, body: Path, concurrency: int, seconds: float) -> tuple[int, int, float, float, float]:
    """``hey`` for ``seconds`` at ``concurrency``: (requests, non-200 answers and errors, req/s, p50 ms, p99 ms)."""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
                          "-T", "application/json", "-D", str(body), f"{url}/v1/predict"],
                         capture_output=True, text=True, check=True).stdout
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    failed = out.split("Error distribution:")[1] if "Error distribution:" in out else ""
    transport = sum(int(n) for n in re.findall(r"\[(\d+)\]", failed))  # timeouts, refused connections
    errors = transport + sum(n for code, n in codes.items() if code != 200)
    return (sum(codes.values()) + transport, errors, _seconds(out, r"Requests/sec:\s+([\d.]+)"),
            1000 * _seconds(out, r"50%+ in ([\d.]+) secs"), 1000 * _p99(out))


def _p99(out: str) -> float:
    """hey's 99th percentile; hey omits it below ~100 requests, where it is the slowest request."""
    p99 = _seconds(out, r"99%+ in ([\d.]+) secs")
    return p99 if p99 == p99 else _seconds(out, r"Slowest:\s+([\d.]+) secs")


def table(cells: list[Cell]) -> str:
    """Markdown: one row per (source, concurrency, batching), with the on/off ratio on the batching-on rows."""
    off = {(c.source, c.concurrency): c for c in cells if not c.batching}
    sources = list(dict.fromkeys(c.source for c in cells))
    rows = ["| code | concurrency | batching | requests | errors | req/s | p50 ms | p99 ms | server CPU ms/req "
            "| of which event loop | on/off |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(cells, key=lambda c: (c.concurrency, not c.batching, sources.index(c.source))):
        base = off.get((c.source, c.concurrency))
        ratio = f"{c.rps / base.rps:.2f}x" if c.batching and base is not None and base.rps else ""
        rows.append(f"| {c.source} | {c.concurrency} | {'on' if c.batching else 'off'} | {c.requests} | {c.errors} "
                    f"| {c.rps:.1f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.cpu_ms:.1f} | {c.loop_ms:.1f} | {ratio} |")
    return "\n".join(rows)


def model_only(model: Path | None, threads: list[int], batches: list[int], seconds: float) -> str:
    """The served model's ``predictions`` as the service's model thread runs them (the same chunking, on a worker
    thread with ``torch.set_num_threads``), without a server: wall and CPU milliseconds per molecule."""
    import threading

    import torch

    from lieprop.inference import load_model, parse_item
    from lieprop.model.cost import CostModel
    from lieprop.service.admission import FORWARD_SHARE, chunked_predict
    from lieprop.service.settings import Settings

    bundle, settings = load_model(model), Settings()
    predict = chunked_predict(bundle.model, CostModel.of(bundle.model), settings.model_chunk,
                              settings.max_batch_cost_ms / FORWARD_SHARE)
    m = parse_item({"xyz": ETHANOL_XYZ}, 0)
    rows = ["| torch threads | batch | wall ms/molecule | CPU ms/molecule | molecules/s |", "|---|---|---|---|---|"]

    def run(n_threads: int) -> None:
        torch.set_num_threads(n_threads)
        for b in batches:
            numbers, positions = [m.numbers] * b, [m.positions] * b
            predict(numbers, positions)
            start, cpu, k = time.perf_counter(), time.thread_time(), 0
            while time.perf_counter() - start < seconds:
                predict(numbers, positions)
                k += 1
            wall, used = (time.perf_counter() - start) / (k * b), (time.thread_time() - cpu) / (k * b)
            rows.append(f"| {n_threads} | {b} | {1000 * wall:.2f} | {1000 * used:.2f} | {1 / wall:.0f} |")

    for n in threads:
        worker = threading.Thread(target=run, args=(n,))
        worker.start()
        worker.join()
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--seconds", type=float, default=5.0, help="hey's duration per cell (default 5)")
    p.add_argument("--source", action="append", default=None, metavar="LABEL=DIR",
                   help="a code tree to serve from (repeatable; default: this checkout)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                   help="a server setting to compare (repeatable; each variant serves this checkout with those "
                        "settings, e.g. --variant process=model_process=true --variant thread=model_process=false)")
    p.add_argument("--molecule", choices=["ethanol", "typical"], default="ethanol",
                   help="the request's molecule: the hand-made ethanol (5 frames), or a typical QM9 molecule (the "
                        "first of the test split with 18 atoms and one frame; needs the QM9 cache)")
    p.add_argument("--batching", choices=["both", "on", "off"], default="both",
                   help="serve with dynamic batching on, off, or both (default; the table's ratio needs both)")
    p.add_argument("--no-warmup", action="store_true", help="skip the 1 s hey run before each server's cells")
    p.add_argument("--serve-arg", action="append", default=[], help="extra argument for lieprop serve")
    p.add_argument("--model-only", action="store_true",
                   help="no server: time the model alone at torch threads 1 and 2, batch 1/16/32")
    args = p.parse_args()
    if args.model_only:
        sys.path.insert(0, str(ROOT))
        print(f"# load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        print(model_only(args.model, [1, 2], [1, 16, 32], args.seconds / 2.5))
        return 0
    if shutil.which("hey") is None:
        print("service_throughput: needs hey on the PATH (apt-get install -y hey)", file=sys.stderr)
        return 2
    sources: list[tuple[str, Path, dict[str, str]]] = []
    for spec in args.source or ([] if args.variant else [f"this={ROOT}"]):
        label, sep, directory = spec.partition("=")
        if not sep or not Path(directory).is_dir():
            print(f"service_throughput: --source wants LABEL=DIR, got {spec!r}", file=sys.stderr)
            return 2
        sources.append((label, Path(directory).resolve(), {}))
    for spec in args.variant:
        label, _, rest = spec.partition("=")
        pairs = [kv.partition("=") for kv in rest.split(",") if kv]
        if not label or any(not sep for _, sep, _ in pairs):
            print(f"service_throughput: --variant wants LABEL=KEY=VALUE[,KEY=VALUE], got {spec!r}", file=sys.stderr)
            return 2
        sources.append((label, ROOT, {k: v for k, _, v in pairs}))
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}"
          f", load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    fd, name = tempfile.mkstemp(suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump({"molecules": [{"xyz": ETHANOL_XYZ if args.molecule == "ethanol" else typical_xyz()}]}, f)
    body = Path(name)
    cells: list[Cell] = []
    try:
        for batching in {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]:
            for label, source, settings in sources:
                server = Server(source, args.model, batching, args.serve_arg, settings)
                try:
                    if not args.no_warmup:
                        run_hey(server.url, body, 8, 1)
                    for c in args.concurrency:
                        cpu, loop = server.cpu_seconds()
                        n, errors, rps, p50, p99 = run_hey(server.url, body, c, args.seconds)
                        cpu_after, loop_after = server.cpu_seconds()
                        answered = max(n - errors, 1)
                        cpu_ms, loop_ms = 1000 * (cpu_after - cpu) / answered, 1000 * (loop_after - loop) / answered
                        cells.append(Cell(label, batching, c, n, errors, rps, p50, p99, cpu_ms, loop_ms))
                        print(f"  {label:>8} batching={'on ' if batching else 'off'} c={c:<3} {rps:7.1f} req/s "
                              f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  CPU {cpu_ms:5.1f} ms/req (loop {loop_ms:4.1f})  "
                              f"errors {errors}",
                              flush=True)
                finally:
                    server.stop()
    finally:
        body.unlink(missing_ok=True)
    print(f"# load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
