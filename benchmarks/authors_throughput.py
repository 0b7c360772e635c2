"""Training throughput beside the authors' code: molecules/s of training steps of Finzi et al.'s LieConv (their
repository, T(3), k = 256) and of lieprop's ``default`` and ``budget`` presets, on the same full-QM9 batches.

    python benchmarks/authors_throughput.py --authors ~/src/LieConv          # or LIEPROP_AUTHORS_LIECONV=~/src/LieConv
    python benchmarks/authors_throughput.py --steps 40 --threads 1           # lieprop's side only (authors skipped)

The authors' code is not a dependency of lieprop: give a local checkout of https://github.com/mfinzi/LieConv with
``--authors PATH`` (or the environment variable ``LIEPROP_AUTHORS_LIECONV``) in an environment where its own
requirements import (``pip install -e PATH`` brings them: olive-oil-ml, h5py, torchdiffeq). Without a checkout, or
when it does not import, its row says why it was skipped and lieprop's rows are measured all the same.

Their trainer package (olive-oil-ml, ``oil``) imports torchvision at import time for its image code. When torchvision
cannot load beside this torch build (PyPI's torchvision wheel and the CPU torch of this machine do not match), a
placeholder stands in for it (:func:`torchvision_placeholder`): importing works, and any use of a torchvision name
raises. The QM9 model uses none; the report says when the placeholder was used. How it was run here, with
``oil`` and the pure-Python requirements beside the checkout (docs/BENCHMARKS.md):

    pip install --target ~/.cache/lieprop/authors/site --no-deps dill natsort torchcontrib torchdiffeq h5py \
        scikit-learn threadpoolctl joblib cloudpickle narwhals
    PYTHONPATH=~/.cache/lieprop/authors/oil-src:~/.cache/lieprop/authors/site \
        python benchmarks/authors_throughput.py --authors ~/.cache/lieprop/authors/LieConv

What is timed, per model, after ``--warmup`` untimed steps: ``--steps`` full training steps (forward, L1 loss on the
standardised HOMO, backward, optimiser step; lieprop's steps also sample a frame per molecule, clip gradients and
update the EMA, as ``lieprop train`` does). The batches: ``--batch`` molecules drawn at random from a random sample
of ``--pool`` molecules of QM9's training split (so they have full QM9's size mix, mean ~18 atoms). Every random-batch
row trains on the same batches in the same order; lieprop's "size-bucketed" rows train on batches of the same pool
built as ``lieprop train`` builds them (molecules of one size together: less padding).

The authors' model is their QM9 model (``lie_conv.moleculeTrainer.MolecLieResNet``) configured as their
``examples/train_molec.py`` does, with k = 256: T(3), 6 bottleneck blocks, swish, batch norm, mean aggregation,
fill 1, 1 lift sample, nbhd 100, random-rotation augmentation, Adam (lr 3e-3); its minibatches are the dicts their
QM9 collate gives (``charges``, ``one_hot`` over H, C, N, O, F, ``positions``, the target), padded to the batch's
largest molecule.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lieprop.model.device import pick_device

ENV_VAR = "LIEPROP_AUTHORS_LIECONV"
SPECIES = (1, 6, 7, 8, 9)  # the authors' QM9 one-hot order (H, C, N, O, F); their charge scale is 9
Molecule = tuple[np.ndarray, np.ndarray]


class AuthorsSkipped(Exception):
    """The authors' code cannot be run here; the message says why."""


# ---------------------------------------------------------------------------------------------- the authors' side
#: Set when :func:`torchvision_placeholder` stood in for torchvision (the report says so).
PLACEHOLDERS: list[str] = []


def torchvision_placeholder() -> None:
    """Make ``import torchvision`` (and its submodules) succeed with placeholders when the real one cannot load:
    every name in them is a class whose construction raises. Only for the authors' trainer package, which imports
    torchvision for image code that the QM9 model never runs."""
    import importlib.abc
    import importlib.machinery
    import types

    try:
        import torchvision  # noqa: F401
        return
    except Exception as exc:  # a missing or mismatched build: either way it cannot run here
        PLACEHOLDERS.append(f"torchvision ({type(exc).__name__}: {str(exc)[:80]})")
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]

    class Absent(types.ModuleType):
        def __getattr__(self, name: str) -> type:
            if name.startswith("__"):
                raise AttributeError(name)
            where = f"{self.__name__}.{name}"

            def absent(*args, **kwargs):
                raise RuntimeError(f"{where}: torchvision cannot load here (a placeholder stands in for it)")
            return type(name, (), {"__init__": absent})  # a class: callable, and a base for subclasses

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            module = Absent(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module) -> None:
            pass

    sys.meta_path.insert(0, Finder())


def authors_step(checkout: str | Path | None, device: torch.device, k: int = 256,
                 lr: float = 3e-3) -> Callable[[Sequence[Molecule], np.ndarray], None]:
    """One training step of the authors' T(3) QM9 model on a list of molecules and their standardised targets.

    Everything that touches the authors' code is in here. Raises :class:`AuthorsSkipped` with the reason when there
    is no checkout or it does not import."""
    if not checkout:
        raise AuthorsSkipped(f"no checkout of the authors' code given (--authors PATH or {ENV_VAR})")
    root = Path(checkout).expanduser().resolve()
    if not (root / "lie_conv" / "moleculeTrainer.py").is_file():
        raise AuthorsSkipped(f"{root} is not a checkout of github.com/mfinzi/LieConv (no lie_conv/moleculeTrainer.py)")
    sys.path.insert(0, str(root))
    torchvision_placeholder()
    try:
        from lie_conv.lieGroups import T
        from lie_conv.moleculeTrainer import MolecLieResNet
    except Exception as exc:  # their imports (oil, ...) are theirs: any failure means "cannot run here"
        raise AuthorsSkipped(f"the authors' code in {root} does not import: {type(exc).__name__}: {exc} "
                             f"(pip install -e {root} installs its requirements)") from None
    model = MolecLieResNet(len(SPECIES), float(max(SPECIES)), k=k, nbhd=100, act="swish", group=T(3), fill=1.0,
                           liftsamples=1, bn=True, aug=True, mean=True, num_layers=6).to(device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    species = torch.tensor(SPECIES)

    def step(molecules: Sequence[Molecule], target: np.ndarray) -> None:
        n = max(len(z) for z, _ in molecules)
        charges = torch.zeros(len(molecules), n, dtype=torch.long)
        positions = torch.zeros(len(molecules), n, 3)
        for i, (z, x) in enumerate(molecules):
            charges[i, :len(z)] = torch.from_numpy(np.asarray(z, dtype=np.int64))
            positions[i, :len(z)] = torch.from_numpy(np.asarray(x, dtype=np.float32))
        mb = {"charges": charges.to(device), "positions": positions.to(device),
              "one_hot": (charges[..., None] == species).to(device)}
        y = torch.as_tensor(target, dtype=torch.float32, device=device)
        loss = (model(mb) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        float(loss)  # wait for the device

    return step


# ---------------------------------------------------------------------------------------------------- lieprop's side
def make_trainer(preset: str, pool: int, batch: int, device: str, data=None):
    """A lieprop Trainer of ``preset`` on the first ``pool`` training molecules (a random sample of QM9's training
    split), learning HOMO, writing to a temporary directory."""
    from lieprop.training.config import load_config
    from lieprop.training.loop import Trainer

    out = tempfile.mkdtemp(prefix=f"authors-throughput-{preset}-")
    cfg = load_config(preset, overrides={"targets": ["homo"], "limit_train": pool, "batch_size": batch,
                                         "device": device, "out_dir": out, "tensorboard": False,
                                         "limit_valid": 64})
    return Trainer(cfg, data=data, log=lambda *_: None)


def random_batches(n_pool: int, batch: int, n_batches: int, seed: int = 0) -> list[np.ndarray]:
    """``n_batches`` batches of ``batch`` distinct molecules of the pool, at random."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n_pool, size=min(batch, n_pool), replace=False) for _ in range(n_batches)]


def timed_steps(step: Callable[[np.ndarray], object], batches: Sequence[np.ndarray], warmup: int) -> tuple[float, int]:
    """(molecules/s, steps timed) over ``batches`` after the first ``warmup`` of them."""
    for idx in batches[:warmup]:
        step(idx)
    timed = batches[warmup:]
    t = time.perf_counter()
    for idx in timed:
        step(idx)
    dt = time.perf_counter() - t
    return sum(len(b) for b in timed) / dt, len(timed)


def lieprop_rows(presets: Sequence[str], batches: Sequence[np.ndarray], pool: int, batch: int, warmup: int,
                 device: str, data=None) -> list[dict]:
    """lieprop's rows: each preset on the random batches, then on size-bucketed batches of the same pool."""
    rows = []
    for preset in presets:
        tr = make_trainer(preset, pool, batch, device, data)
        width = tr.model.cfg.width
        mol_s, steps = timed_steps(tr.train_step, batches, warmup)
        rows.append({"model": f"lieprop {preset} (T(3), k={width})", "batches": "random", "mol_s": mol_s,
                     "steps": steps})
        bucketed: list[np.ndarray] = []
        for epoch in range(len(batches)):  # as many epochs of lieprop's own batches as it takes
            bucketed += tr._epoch_batches(epoch)
            if len(bucketed) >= len(batches):
                break
        bucketed = bucketed[:len(batches)]
        mol_s, steps = timed_steps(tr.train_step, bucketed, warmup)
        rows.append({"model": f"lieprop {preset} (T(3), k={width})", "batches": "size-bucketed", "mol_s": mol_s,
                     "steps": steps})
    return rows


def authors_row(checkout: str | None, batches: Sequence[np.ndarray], warmup: int, device: str, data=None,
                pool: int = 4096, batch: int = 32) -> dict:
    """The authors' row on the same random batches (the molecules and standardised HOMO of lieprop's pool), or a
    row that says why it was skipped."""
    name = "authors' LieConv (T(3), k=256)"
    try:
        step = authors_step(checkout, pick_device(device))
    except AuthorsSkipped as why:
        return {"model": name, "batches": "random", "mol_s": None, "steps": 0, "skipped": str(why)}
    tr = make_trainer("default", pool, batch, device, data)  # the same pool and molecules as lieprop's rows
    homo = tr.train.targets[:, 0]
    median = np.median(homo)
    target = (homo - median) / np.median(np.abs(homo - median))  # standardised as their trainer does (median, MAD)
    mol_s, steps = timed_steps(lambda idx: step([tr.train.molecule(int(i)) for i in idx], target[idx]),
                               batches, warmup)
    return {"model": name, "batches": "random", "mol_s": mol_s, "steps": steps}


def table(rows: Sequence[dict], batch: int, pool: int, device: str) -> str:
    """The rows as a Markdown table, with lieprop's ratio to the authors' rate when it was measured."""
    base = next((r["mol_s"] for r in rows if r["model"].startswith("authors") and r["mol_s"]), None)
    lines = [f"# benchmarks/authors_throughput.py  (torch {torch.__version__}, {torch.get_num_threads()} threads, "
             f"device {device}, batch {batch}, pool {pool} QM9 training molecules)", "",
             "| model | batches | steps timed | mol/s | vs authors |", "|---|---|---|---|---|"]
    for r in rows:
        if r["mol_s"] is None:
            lines.append(f"| {r['model']} | {r['batches']} | - | skipped: {r['skipped']} | |")
            continue
        ratio = f"{r['mol_s'] / base:.2f}x" if base else ""
        lines.append(f"| {r['model']} | {r['batches']} | {r['steps']} | {r['mol_s']:.0f} | {ratio} |")
    if PLACEHOLDERS:
        lines += ["", f"# placeholder for the authors' imports (unused by their QM9 model): {', '.join(PLACEHOLDERS)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None, data=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors", default=os.environ.get(ENV_VAR), help=f"checkout of mfinzi/LieConv (env {ENV_VAR})")
    ap.add_argument("--presets", default="default,budget")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--pool", type=int, default=4096, help="training molecules the batches are drawn from")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = random_batches(args.pool, args.batch, args.warmup + args.steps)
    rows = [authors_row(args.authors, batches, args.warmup, args.device, data, args.pool, args.batch)]
    if rows[0]["mol_s"] is None:
        print(f"authors' code skipped: {rows[0]['skipped']}", file=sys.stderr)
    rows += lieprop_rows([p for p in args.presets.split(",") if p], batches, args.pool, args.batch, args.warmup,
                         args.device, data)
    print(table(rows, args.batch, args.pool, args.device))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
