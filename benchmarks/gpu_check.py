"""The GPU check: paper-size training throughput and predict throughput on one CUDA device, as tables for
docs/BENCHMARKS.md.

Run it on a machine with an NVIDIA GPU and a CUDA build of torch (e.g. the CUDA image of docs/CONTAINER.md, or
`make test TORCH_SPEC=...` with a CUDA wheel), from the repository root:

    python benchmarks/gpu_check.py                      # about 6 minutes: 3 bf16 + 1 float32 of training, then predict
    python benchmarks/gpu_check.py --minutes 1 --fp32-minutes 0.5 --json gpu.json

1. Training: the ``paper`` preset (LieConv T(3), k = 1536, 6 blocks, batch 100, random rotations, all 12 targets) on
   full-QM9 size-bucketed batches of the training split, timed step by step for ``--minutes`` with bfloat16 autocast
   (the preset's setting) and for ``--fp32-minutes`` without it; the first ``--warmup`` steps are not timed.
2. Predict: the bundled model's invariant ``predict`` (frames, frame averaging) at batch 1, 32 and 256 molecules per
   call on QM9 test-split molecules, in float32 and under bfloat16 autocast.

Without a CUDA device it stops at once with exit status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch


def require_cuda() -> torch.device:
    """The CUDA device, or exit 2 with the reason (before anything slow happens)."""
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none (a CPU build)"
        sys.stderr.write(
            "gpu_check: no CUDA device: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build: {build}). Run this on a machine with an NVIDIA GPU, its driver "
            "and a CUDA build of torch (docs/CONTAINER.md, 'GPU (CUDA)'); the GPU figures in docs/BENCHMARKS.md "
            "stay unmeasured until then.\n")
        sys.exit(2)
    return torch.device("cuda")


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings on CUDA need it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_throughput(minutes: float, autocast: bool, warmup: int, out_dir: str, device: torch.device,
                     preset: str = "paper", data=None, limit_train: int | None = None) -> dict:
    """Molecules/s of ``preset``'s training steps on ``device`` for ``minutes`` of timed steps (at least one)."""
    from lieprop.training.config import load_config
    from lieprop.training.loop import Trainer

    cfg = load_config(preset, overrides={"device": str(device), "autocast_bf16": autocast, "out_dir": out_dir,
                                         "tensorboard": False, "limit_train": limit_train})
    tr = Trainer(cfg, data=data, log=lambda *_: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    batches = (b for e in range(10**6) for b in tr._epoch_batches(e))  # epochs on demand
    molecules, steps, timed_s, loss = 0, 0, 0.0, float("nan")
    for i, idx in enumerate(batches):
        sync(device)
        t = time.perf_counter()
        loss = tr.train_step(idx)  # float(loss) waits for the step
        dt = time.perf_counter() - t
        if i >= warmup:
            molecules, steps, timed_s = molecules + len(idx), steps + 1, timed_s + dt
            if timed_s >= minutes * 60:
                break
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"mode": f"train {preset} ({'bf16 autocast' if tr.autocast else 'float32'})", "batch": cfg.batch_size,
            "steps": steps, "mol_s": molecules / max(timed_s, 1e-9), "ms_per_step": 1000 * timed_s / max(steps, 1),
            "peak_gib": peak, "last_loss": loss, "params_m": sum(p.numel() for p in tr.model.parameters()) / 1e6}


def test_molecules(n: int) -> list[tuple]:
    """``n`` random molecules of QM9's test split."""
    import numpy as np

    from lieprop.data.qm9 import load_qm9, split_indices

    data = load_qm9()
    rows = np.random.default_rng(0).choice(split_indices(len(data))["test"], n, replace=False)
    return [data.molecule(int(r)) for r in rows]


def predict_throughput(model, mols: list[tuple], batches: list[int], autocast: bool) -> list[dict]:
    """Molecules/s of ``model.predict`` (a PropertyModel on its device), ``b`` molecules per call, for each ``b``."""
    out = []
    for b in batches:
        calls = [mols[s:s + b] for s in range(0, len(mols), b)]
        for chunk in calls[:2]:  # warm-up (kernels, allocator)
            model.predict([z for z, _ in chunk], [x for _, x in chunk], batch_size=max(b, 32), autocast_bf16=autocast)
        sync(model.device)
        t = time.perf_counter()
        for chunk in calls:
            model.predict([z for z, _ in chunk], [x for _, x in chunk], batch_size=max(b, 32), autocast_bf16=autocast)
        sync(model.device)
        dt = time.perf_counter() - t
        out.append({"mode": f"predict ({'bf16 autocast' if autocast else 'float32'})", "batch": b,
                    "steps": len(calls), "mol_s": len(mols) / dt, "ms_per_step": 1000 * dt / len(calls)})
    return out


def table(rows: list[dict], device_name: str) -> str:
    """The rows as the Markdown table docs/BENCHMARKS.md shows."""
    lines = [f"# benchmarks/gpu_check.py  ({device_name}, torch {torch.__version__}, CUDA {torch.version.cuda})", "",
             "| mode | batch | calls/steps | mol/s | ms per call/step | peak GiB |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib", float("nan")) == r.get("peak_gib") else ""
        lines.append(f"| {r['mode']} | {r['batch']} | {r['steps']} | {r['mol_s']:,.0f} | {r['ms_per_step']:.1f} | "
                     f"{peak} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="timed training with bf16 autocast (paper preset)")
    ap.add_argument("--fp32-minutes", type=float, default=1.0, help="timed training in float32 (0: skip)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed training steps first")
    ap.add_argument("--batches", default="1,32,256", help="molecules per predict call")
    ap.add_argument("--molecules", type=int, default=2048, help="test-split molecules for predict")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    device = require_cuda()
    name = torch.cuda.get_device_name(device)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(train_throughput(args.minutes, True, args.warmup, f"{tmp}/bf16", device))
        print(f"trained: {rows[-1]}", file=sys.stderr)
        if args.fp32_minutes > 0:
            rows.append(train_throughput(args.fp32_minutes, False, args.warmup, f"{tmp}/fp32", device))
            print(f"trained: {rows[-1]}", file=sys.stderr)
    torch.cuda.empty_cache()
    from lieprop.model.bundle import load_bundle
    from lieprop.model.loading import default_model_path

    model = load_bundle(default_model_path(), device=device).model
    mols = test_molecules(args.molecules)
    sizes = [int(b) for b in args.batches.split(",")]
    for autocast in (False, True):
        rows += predict_throughput(model, mols, sizes, autocast)
    print(table(rows, name))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
