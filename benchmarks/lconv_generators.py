"""What the generators of trained L-conv networks became: principal-angle cosines of their span with so(3), the
translations and se(3), at initialisation and after training (docs/SYMMETRY.md).

    python benchmarks/lconv_generators.py runs/lconv-random/best.pt [more bundles ...]

Each bundle must be an ``lconv`` model; its initial generators are rebuilt from its config (``generators``,
``n_generators``, ``seed``). Spans are compared in the space of affine generators (vec A, b), b in Å (a length scale
of 1 Å, the size of a bond), and for the linear parts A alone. ``rotation change`` is how far the trained model is
from invariant: the mean |prediction(R x) - prediction(x)| of its first target over 300 QM9 molecules (rows 100 to
399 of the first qm9pack file), each under a random rotation (needs the training extra).
"""

from __future__ import annotations

import argparse

import numpy as np

from lieprop.model.bundle import load_bundle
from lieprop.model.discovery import NAMED_ALGEBRAS, compare
from lieprop.model.lconv import closure_penalty, named_generators


def _affine(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    flat = a.reshape(len(a), 9)
    return np.concatenate([flat, np.zeros((len(a), 3)) if b is None else b], axis=1)


def describe(a: np.ndarray, b: np.ndarray | None) -> dict[str, str]:
    """Similarity and principal cosines of one set of generators with so(3), translations and se(3)."""
    import torch

    span = _affine(a, b)
    row = {}
    for name in ("so3", "translations", "se3"):
        m = compare(span, NAMED_ALGEBRAS[name][1])
        row[name] = f"{m['similarity']:.3f} ({', '.join(f'{c:.2f}' for c in m['cosines'])})"
    linear = compare(_affine(a, None), NAMED_ALGEBRAS["so3"][1])  # A alone against so(3)
    row["so3 (A only)"] = f"{', '.join(f'{c:.3f}' for c in linear['cosines'])}"
    bt = None if b is None else torch.from_numpy(b)
    row["closure"] = f"{float(closure_penalty(torch.from_numpy(a), bt)):.3g}"
    return row


def rotation_change(model, n: int = 300, seed: int = 0) -> float:
    """Mean |f(R x) - f(x)| of the first target over ``n`` QM9 molecules, one random rotation each."""
    from lieprop.data.qm9 import parse_qm9pack, qm9pack_csvs

    data = parse_qm9pack(qm9pack_csvs()[:1], limit=100 + n)
    molecules = [data.molecule(i) for i in range(100, 100 + n)]
    rng = np.random.default_rng(seed)
    rotations = [np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in molecules]
    before = model.predict([z for z, _ in molecules], [x for _, x in molecules])[:, 0]
    after = model.predict([z for z, _ in molecules], [x @ r.T for (_, x), r in zip(molecules, rotations,
                                                                                       strict=True)])[:, 0]
    return float(np.abs(after - before).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+")
    args = parser.parse_args()
    rows = []
    for path in args.bundles:
        bundle = load_bundle(path)
        if bundle.architecture != "lconv":
            raise SystemExit(f"{path} is a {bundle.architecture} model, not lconv")
        cfg = bundle.model.cfg
        a0, b0 = named_generators(cfg.generators, cfg.n_generators, cfg.seed)
        gens = bundle.model.net.generators
        a1 = gens.A.detach().double().numpy()
        b1 = None if gens.b is None else gens.b.detach().double().numpy()
        training = bundle.meta.get("training", {}) if isinstance(bundle.meta, dict) else {}
        valid = training.get("valid_mae", {})
        label = f"{path} ({', '.join(f'{k} {v:.4g}' for k, v in valid.items())})"
        init = describe(a0.double().numpy(), None if b0 is None else b0.double().numpy())
        rows.append((label, "init", {**init, "rotation change": ""}))
        rows.append((label, "trained", {**describe(a1, b1), "rotation change": f"{rotation_change(bundle.model):.2g}"}))
    keys = list(rows[0][2])
    print("| bundle | generators | " + " | ".join(f"{k}: similarity (cosines)" if k in ("so3", "translations", "se3")
                                                 else k for k in keys) + " |")
    print("|" + "---|" * (len(keys) + 2))
    for label, when, row in rows:
        print(f"| {label} | {when} | " + " | ".join(row[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
