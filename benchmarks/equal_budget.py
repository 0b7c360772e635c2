"""Equal wall-time budget: lieprop's LieConv against torch_geometric's SchNet on the same QM9 split and targets.

Both train for ``--minutes`` of training-step wall time on the Cormorant-style training split (same standardised
targets: per-element offsets fitted on the training split, L1 loss, Adam with warm-up + cosine over the budget,
same thread count; ``--parallel`` runs the two at once in two processes, one thread each, which on a
2-core machine gives each model one core for the same wall time), then predict the first ``--test``
molecules of the test split (lieprop with its invariant frame-averaged predict, SchNet plainly: it is
invariant by construction). lieprop uses its `budget` preset (``--preset``, ``--set KEY=VALUE`` change it).
Prints test MAE per target side by side in the units of the published tables.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 \\
      .venv/bin/python benchmarks/equal_budget.py --minutes 20 --parallel [--targets homo lumo gap u0 mu]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))

from lieprop.data.properties import BY_NAME  # noqa: E402
from lieprop.data.qm9 import load_qm9, split_indices  # noqa: E402
from lieprop.training.config import load_config, parse_override  # noqa: E402
from lieprop.training.data import split_data  # noqa: E402
from lieprop.training.loop import Trainer, fit_normalisation, lr_at  # noqa: E402


def train_lieconv(args, log) -> tuple[np.ndarray, dict]:
    cfg = load_config(args.preset, overrides={
        **dict(parse_override(kv) for kv in args.set),
        "targets": args.targets, "max_minutes": args.minutes, "threads": args.threads, "limit_valid": 1000,
        "out_dir": os.path.join(args.out, "lieconv"), "checkpoint_minutes": 1e9, "name": "equal-budget"})
    tr = Trainer(cfg, log=log)
    tr.fit()
    test = test_split(args.targets, args.test)
    pred = tr.eval_model().predict(*molecule_lists(test))
    return pred - test.targets, {"steps": tr.state.step, "epochs": round(tr.state.step / tr.steps_per_epoch, 2)}


def train_schnet(args, log) -> tuple[np.ndarray, dict]:
    from baselines import schnet

    from lieprop.data.batch import size_bucketed_batches
    from lieprop.model.network import NetworkConfig
    from lieprop.model.predictor import PropertyModel

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_qm9()
    train = split_data(data, split_indices(len(data))["train"], args.targets)
    pooling = ["sum" if BY_NAME[t].extensive else "mean" for t in args.targets]
    norm = PropertyModel(NetworkConfig(width=8, depth=1, targets=list(args.targets), pooling=pooling))
    fit_normalisation(norm, train)  # the same standardised targets as lieprop's
    net = schnet()
    net.lin2 = torch.nn.Linear(net.lin2.in_features, len(args.targets))  # one output channel per target
    mean_cols = torch.tensor([p == "mean" for p in pooling])
    opt = torch.optim.Adam(net.parameters(), lr=args.schnet_lr)
    cfg = load_config("default", overrides={"lr": args.schnet_lr, "max_minutes": args.minutes})

    def forward(z_list, x_list):
        z = torch.from_numpy(np.concatenate(z_list))
        pos = torch.from_numpy(np.concatenate(x_list)).float()
        counts = torch.tensor([len(q) for q in z_list])
        batch = torch.repeat_interleave(torch.arange(len(z_list)), counts)
        out = net(z, pos, batch)  # 'add' readout: sums over atoms
        return torch.where(mean_cols, out / counts[:, None], out)

    elapsed, step, epoch = 0.0, 0, 0
    rng = np.random.default_rng(0)
    net.train()
    while elapsed < 60 * args.minutes:
        for idx in size_bucketed_batches(train.sizes, 32, rng):
            t = time.perf_counter()
            zs, xs = zip(*(train.molecule(int(i)) for i in idx), strict=True)
            zpad = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(z) for z in zs], batch_first=True)
            target = norm.standardise(torch.from_numpy(train.targets[idx]), zpad).float()
            loss = (forward(zs, xs) - target).abs().mean()
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, elapsed / (60 * args.minutes))
            opt.zero_grad()
            loss.backward()
            opt.step()
            elapsed += time.perf_counter() - t
            step += 1
            if elapsed >= 60 * args.minutes:
                break
        epoch += 1
    net.eval()
    test = test_split(args.targets, args.test)
    zs, xs = molecule_lists(test)
    preds = []
    with torch.no_grad():
        for i in range(0, len(zs), 256):
            out = forward(zs[i:i + 256], xs[i:i + 256]).double()
            zpad = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(z) for z in zs[i:i + 256]], batch_first=True)
            preds.append(norm.to_physical(out, zpad).numpy())
    n_epochs = step * 32 / len(train)
    return np.concatenate(preds) - test.targets, {"steps": step, "epochs": round(n_epochs, 2)}


_TEST = {}


def test_split(targets, n):
    key = (tuple(targets), n)
    if key not in _TEST:
        data = load_qm9()
        _TEST[key] = split_data(data, split_indices(len(data))["test"][:n], targets)
    return _TEST[key]


def molecule_lists(split):
    zs, xs = zip(*(split.molecule(i) for i in range(len(split))), strict=True)
    return list(zs), list(xs)


MODELS = {"lieconv": ("lieprop LieConv T(3)", train_lieconv), "schnet": ("PyG SchNet", train_schnet)}


def run_one(args, key: str) -> None:
    """Train and test one model; its MAE per target and run facts go to OUT/KEY.json."""
    name, fn = MODELS[key]
    t = time.time()
    err, info = fn(args, lambda *_: None)
    info["wall_minutes"] = round((time.time() - t) / 60, 1)
    print(f"# {name}: {json.dumps(info)}", flush=True)
    with open(os.path.join(args.out, f"{key}.json"), "w") as f:
        json.dump({"mae": np.abs(err).mean(0).tolist(), "info": info}, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--targets", nargs="+", default=["homo", "lumo", "gap", "u0", "mu"])
    ap.add_argument("--test", type=int, default=3000, help="first N molecules of the test split")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both models")
    ap.add_argument("--schnet-lr", type=float, default=5e-4)
    ap.add_argument("--preset", default="budget", help="lieprop training preset (see lieprop.training.config)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a lieprop TrainConfig key (value parsed as JSON when it parses)")
    ap.add_argument("--parallel", action="store_true", help="train both at once, one process and thread each")
    ap.add_argument("--only", choices=list(MODELS), help=argparse.SUPPRESS)  # a --parallel child
    ap.add_argument("--out", default="runs/equal_budget")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.only:
        run_one(args, args.only)
        return
    if args.parallel:
        args.threads = 1
        children = [subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--only", key],
                                     env=dict(os.environ, OMP_NUM_THREADS="1")) for key in MODELS]
        if any(c.wait() for c in children):
            raise SystemExit("a --parallel child failed")
    else:
        for key in MODELS:
            run_one(args, key)
    results = {}
    for key, (name, _) in MODELS.items():
        with open(os.path.join(args.out, f"{key}.json")) as f:
            r = json.load(f)
        results[name] = (np.array(r["mae"]), r["info"])
    how = "at once" if args.parallel else "one after the other"
    print(f"\n# {' '.join(sys.argv)}: {args.minutes} min each ({how}), {args.threads} thread(s) each, "
          f"test MAE on the first {args.test} test molecules")
    names = list(results)
    print("| target | unit | " + " | ".join(names) + " | ratio |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for j, t in enumerate(args.targets):
        p = BY_NAME[t]
        vals = [results[n][0][j] * p.to_paper for n in names]
        ratio = vals[0] / vals[1] if vals[1] > 0 else math.nan
        print(f"| {t} | {p.paper_unit} | " + " | ".join(f"{v:.4g}" for v in vals) + f" | {ratio:.2f} |")
    print("| epochs | | " + " | ".join(str(results[n][1]["epochs"]) for n in names) + " | |")


if __name__ == "__main__":
    main()
