"""Model speed: molecules/second of LieConv (T(3), SE(3); training width and paper width) next to PyG SchNet.

Each configuration runs in its own process (clean peak memory), on the same QM9 molecules, under the same
allocator settings. "forward" is eval mode under no_grad; "train" is forward + L1 loss + backward; "predict"
is lieprop's invariant inference (frames, canonical order, frame averaging) on a list of molecules.
Achieved GFLOP/s (counted by torch's FlopCounterMode) is printed next to a plain 2048x2048 matmul.

Every configuration runs with subnormal floats flushed to zero (``torch.set_flush_denormal(True)``) unless
``--keep-denormals``: a CPU computes on subnormals on a slow path, and PyG SchNet's Gaussian distance expansion makes
many of them (exp of -87 to -103 in float32), which made its forward pass 1.5-2x and its training step 3.6x slower
here (docs/BENCHMARKS.md, "Subnormal floats"). LieConv's radial basis stops short of them by itself, so the flush
is what makes the comparison fair, not what makes lieprop fast.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \
      .venv/bin/python benchmarks/model_speed.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))


def molecules(n: int = 2000, seed: int = 0):
    """``n`` random molecules of QM9's test split (mean ~18 atoms, like real QM9 batches)."""
    from lieprop.data.qm9 import load_qm9, split_indices

    data = load_qm9()
    rows = np.random.default_rng(seed).choice(split_indices(len(data))["test"], n, replace=False)
    return [data.molecule(int(r)) for r in rows]


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def run_one(spec: dict) -> dict:
    torch.set_num_threads(spec.get("threads", 2))
    torch.set_flush_denormal(spec.get("flush_denormal", True))
    mols = molecules()
    bs, mode, reps = spec["batch"], spec["mode"], spec["reps"]
    batches = [mols[i:i + bs] for i in range(0, len(mols) - bs + 1, bs)][: max(reps + 2, 3)]
    if spec["model"] == "schnet":
        from baselines import schnet

        net = schnet()

        def inputs(b):
            z = torch.from_numpy(np.concatenate([m[0] for m in b]))
            pos = torch.from_numpy(np.concatenate([m[1] for m in b])).float()
            batch = torch.repeat_interleave(torch.arange(len(b)), torch.tensor([len(m[0]) for m in b]))
            return z, pos, batch

        prepared = [inputs(b) for b in batches]
        net.train(mode == "train")  # once, as a served model is put in eval mode once (lieprop.model.bundle)

        def step(i):
            z, pos, batch = prepared[i % len(prepared)]
            if mode == "train":
                net(z, pos, batch).abs().mean().backward()
            else:
                with torch.no_grad():
                    net(z, pos, batch)
    else:
        from lieprop.data.batch import collate, featurize
        from lieprop.data.properties import PROPERTY_NAMES
        from lieprop.model.network import NetworkConfig
        from lieprop.model.predictor import PropertyModel

        g = spec["model"]
        if g == "steerable":  # the steerable architecture's default config (implicit kernel, bonds + types)
            from lieprop.model.steerable import SteerableConfig

            model = PropertyModel(SteerableConfig(targets=list(PROPERTY_NAMES)), architecture="steerable")
        else:
            extra = {"fill": 0.5, "nbhd": 25, "lift_samples": 4} if g == "SE3" else {}
            cfg = NetworkConfig(group=g, width=spec["width"], depth=6, targets=list(PROPERTY_NAMES),
                                kernel_norm=spec.get("kernel_norm", True), **extra)
            model = PropertyModel(cfg)
        net = model.net
        prepared = []
        for b in batches:
            cb = collate([m[0] for m in b], [m[1] for m in b])
            prepared.append((featurize(cb.numbers), cb.positions, cb.mask, b))

        # the mode is set once, as a served model is put in eval mode once (lieprop.model.bundle); predict in
        # training mode would switch to eval and back on every call, walking every submodule twice
        model.train(mode == "train")

        def step(i):
            f, x, m, b = prepared[i % len(prepared)]
            if mode == "train":
                net(f, x, m).abs().mean().backward()
            elif mode == "forward":
                with torch.no_grad():
                    net(f, x, m)
            else:  # predict: the invariant path a user gets
                model.predict([q[0] for q in b], [q[1] for q in b], batch_size=max(bs, 32))

    counter = iter(range(10**9))
    sec = timed(lambda: step(next(counter)), reps)
    flops = count_flops(lambda: step(0)) if mode != "predict" else float("nan")
    params = sum(p.numel() for p in net.parameters())
    return {**spec, "mol_s": bs / sec, "gflops": flops / sec / 1e9, "params_m": params / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_gflops() -> float:
    torch.set_num_threads(2)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    sec = timed(lambda: a @ b, 5)
    return 2 * 2048**3 / sec / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer configurations and repetitions")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steerable", action="store_true",
                    help="only the steerable architecture (default config) beside LieConv T3 k=256, one thread")
    ap.add_argument("--predict-vs-schnet", action="store_true",
                    help="only lieprop's invariant predict (T3 k=256) against SchNet's forward, batch 1 and 32, at 1 "
                         "and 2 torch threads (the service's model worker uses all cores but one: 1 here)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="--predict-vs-schnet: run each lieprop / SchNet pair this many times, side by side, and "
                         "report the median ratio and its range over the rounds (a shared machine's load drifts)")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="compute on subnormal floats instead of flushing them to zero (how this script measured "
                         "before 2026-11-30 session 8)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    reps = 3 if args.quick else args.reps
    flush = not args.keep_denormals
    specs = []
    if args.predict_vs_schnet:
        for r in range(args.rounds):
            for threads in (1, 2):
                for bs in (1, 32):
                    specs.append({"model": "T3", "width": 256, "batch": bs, "mode": "predict", "threads": threads,
                                  "round": r})
                    specs.append({"model": "schnet", "width": 128, "batch": bs, "mode": "forward",
                                  "threads": threads, "round": r})
        results = run_specs(specs, reps, flush)
        print(f"\nlieprop predict / SchNet forward (molecules/s, same batch and threads; median over {args.rounds} "
              "round(s), [min, max]):")
        by = {(r["model"], r["batch"], r["threads"], r["round"]): r["mol_s"] for r in results}
        for threads in (1, 2):
            for bs in (1, 32):
                ratios = [by[("T3", bs, threads, r)] / by[("schnet", bs, threads, r)] for r in range(args.rounds)
                          if ("T3", bs, threads, r) in by and ("schnet", bs, threads, r) in by]
                if ratios:
                    print(f"  {threads} thread(s), batch {bs:>2}: {statistics.median(ratios):.2f}x "
                          f"[{min(ratios):.2f}, {max(ratios):.2f}]")
        return
    if args.steerable:
        for bs in (1, 32):
            for mode in ("predict", "forward", "train"):
                for model, width in (("T3", 256), ("steerable", "default")):
                    specs.append({"model": model, "width": width, "batch": bs, "mode": mode, "threads": 1})
        run_specs(specs, reps, flush)
        return
    for bs in ((1, 32) if args.quick else (1, 32, 256)):
        for mode in ("forward", "train", "predict"):
            specs.append({"model": "T3", "width": 256, "batch": bs, "mode": mode})
        for mode in ("forward", "train"):
            specs.append({"model": "schnet", "width": 128, "batch": bs, "mode": mode})
        if bs <= 32:
            specs.append({"model": "SE3", "width": 256, "batch": bs, "mode": "forward"})
            specs.append({"model": "SE3", "width": 256, "batch": bs, "mode": "train"})
    for mode in ("forward", "train", "predict"):  # one thread can beat two on a 2-vCPU machine
        specs.append({"model": "T3", "width": 256, "batch": 32, "mode": mode, "threads": 1})
    specs.append({"model": "schnet", "width": 128, "batch": 32, "mode": "forward", "threads": 1})
    for bs in ((32,) if args.quick else (32, 256)):
        specs.append({"model": "T3", "width": 1536, "batch": bs, "mode": "forward"})
        specs.append({"model": "T3", "width": 1536, "batch": bs, "mode": "train"})
    results = run_specs(specs, reps, flush)
    print("\nRatios (LieConv T3 k=256 / SchNet, same batch):")
    by = {(r["model"], r["width"], r["batch"], r["mode"]): r["mol_s"] for r in results if r.get("threads", 2) == 2}
    for bs in sorted({r["batch"] for r in results}):
        for mode in ("forward", "predict", "train"):
            ours = by.get(("T3", 256, bs, mode))
            ref = by.get(("schnet", 128, bs, "train" if mode == "train" else "forward"))
            if ours and ref:
                note = " (vs SchNet forward)" if mode == "predict" else ""
                print(f"  batch {bs:>3} {mode:>8}: {ours / ref:.2f}x{note}")


def run_specs(specs: list[dict], reps: int, flush: bool = True) -> list[dict]:
    """Run every spec in its own process, subnormals flushed to zero if ``flush``, and print the table row by row;
    returns the results."""
    print(f"# {' '.join(sys.argv)}  (torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'default')}, "
          f"subnormals {'flushed to zero' if flush else 'kept'})")
    mm = matmul_gflops()
    print(f"plain matmul 2048x2048: {mm:.0f} GFLOP/s\n")
    print("| model | width | batch | threads | mode | mol/s | GFLOP/s | % of matmul | params (M) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for spec in specs:
        spec["reps"] = reps
        spec["flush_denormal"] = flush
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {spec['model']} | {spec['width']} | {spec['batch']} | {spec['mode']} | failed: "
                  f"{out.stderr.strip().splitlines()[-1][:80]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        pct = f"{100 * r['gflops'] / mm:.0f}%" if r["gflops"] == r["gflops"] else ""
        gf = f"{r['gflops']:.0f}" if r["gflops"] == r["gflops"] else ""
        print(f"| {r['model']} | {r['width']} | {r['batch']} | {r.get('threads', 2)} | {r['mode']} | "
              f"{r['mol_s']:.0f} | {gf} | {pct} | "
              f"{r['params_m']:.2f} | {r['peak_rss_mb']:.0f} |", flush=True)
    return results


if __name__ == "__main__":
    main()
