"""``lieprop discover``: learn the generators that relate pairs of configurations (the work is in
:mod:`lieprop.model.discovery`), write the JSON report, print the verdict, and optionally plot the generators beside
the best-matching named algebra."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lieprop.cli_parser import subcommand

if TYPE_CHECKING:  # torch is imported when the command runs, so that ``lieprop --help`` stays instant
    from lieprop.model.discovery import Discovery



def add_discover(sub: Any) -> None:
    p = subcommand(sub, "discover", "learn which infinitesimal transformations (Lie algebra generators) relate pairs "
                "of configurations: frames 2i and 2i+1 of a multi-frame XYZ / extxyz file", """\
  lieprop discover pairs.xyz --generators 3 --out report.json            # verdict on stdout, report in the file
  lieprop discover pairs.xyz --generators 1 --out report.json --plot generators.png
  lieprop discover pairs.extxyz --generators 3 --no-translations --out report.json
  jq '.matches.so3.cosines' report.json""")
    p.add_argument("pairs", help="multi-frame XYZ or extxyz file (.gz looked through): frames 2i and 2i+1 are a "
                   "pair, the same atoms in the same order")
    p.add_argument("--generators", "-k", type=int, default=3, metavar="K", help="how many generators to learn "
                   "(1-12, 1-9 with --no-translations; default 3)")
    p.add_argument("--out", help="write the JSON report here (default: print it)")
    p.add_argument("--plot", metavar="FILE.png", help="also plot the learned generators beside the best-matching "
                   "named algebra (needs matplotlib)")
    p.add_argument("--translations", action=argparse.BooleanOptionalAction, default=True,
                   help="give each generator a translation part (default: yes)")
    p.add_argument("--iterations", type=int, default=30, help="Levenberg-Marquardt iterations of each fit")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-generator baseline")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the fit is small)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_discover)


def _fail(message: object) -> int:
    print(f"lieprop discover: {message}", file=sys.stderr)
    return 2


def run_discover(args: argparse.Namespace) -> int:
    import torch

    if args.threads < 1:
        return _fail(f"--threads must be at least 1, got {args.threads}")
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _discover(args)
    finally:
        torch.set_num_threads(threads)  # a caller's (a test's, a notebook's) setting is theirs


def _discover(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from lieprop.data.xyz import read_xyz_frames
    from lieprop.model.discovery import discover

    try:
        frames = read_xyz_frames(Path(args.pairs))
    except (ValueError, FileNotFoundError) as exc:
        return _fail(f"{args.pairs}: {exc}")
    with tqdm(total=2 * args.iterations, desc="fitting", unit=" it", disable=args.quiet, file=sys.stderr,
              dynamic_ncols=True) as bar:
        try:
            result = discover(frames, args.generators, translations=args.translations, iterations=args.iterations,
                              seed=args.seed, progress=bar.update)
        except ValueError as exc:
            return _fail(f"{args.pairs}: {exc}")
    report = result.report()
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    print(report["verdict"], file=sys.stderr if not args.out else sys.stdout)
    if args.plot:
        plot_discovery(result, args.plot)
    return 0


def aligned_bases(learned: np.ndarray, named: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal vectors of two spans (rows, in the affine space): bases of each, rotated within its span so that
    row i of one is as close as possible to row i of the other, with the cosines between them."""
    from lieprop.model.discovery import orthonormal_basis

    qa, qb = orthonormal_basis(learned), orthonormal_basis(named)
    u, s, vt = np.linalg.svd(qa @ qb.T)
    n = len(s)
    a, b = u.T[:n] @ qa, vt[:n] @ qb
    signs = np.sign(np.sum(a * b, axis=1))
    signs[signs == 0] = 1.0
    return a, b * signs[:, None], s


def plot_discovery(result: Discovery, path: str | Path, name: str | None = None) -> Path:
    """A PNG: the discovered algebra's generators (3x3 matrix and translation column, as heat maps) in the top row,
    the best-matching named algebra (``name`` to pick another) below, both bases rotated to their principal vectors
    so that columns correspond, with the cosine of each pair. Returns the path."""
    import textwrap

    import matplotlib

    from lieprop.model.discovery import NAMED_ALGEBRAS, orthonormal_basis

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = name or result.best_match
    learned = result.learned_span() if result.rank else result.learned_span()[:0]
    description, named = NAMED_ALGEBRAS[name]
    if len(learned):
        top, bottom, cosines = aligned_bases(learned, named)
    else:
        top, bottom, cosines = np.zeros((0, 12)), orthonormal_basis(named), np.zeros(0)
    cols = max(len(top), len(bottom), 1)
    width = max(2.3 * cols + 1.2, 6.5)
    fig, axes = plt.subplots(2, cols, figsize=(width, 5.0), squeeze=False)
    for row, (vectors, label) in enumerate(((top, "learned"), (bottom, name))):
        for c in range(cols):
            ax = axes[row, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(vectors):
                ax.axis("off")
                continue
            v = vectors[c]
            mat = np.concatenate([v[:9].reshape(3, 3), v[9:, None]], axis=1)  # [A | b / rho]
            ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.axvline(2.5, color="k", lw=0.8)
            for (i, j), value in np.ndenumerate(mat):
                if abs(value) > 0.05:
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            title = f"{label} {c + 1}"
            if row == 0 and c < len(cosines):
                title += f"\ncos {cosines[c]:.4f}"
            ax.set_title(title, fontsize=9)
    heading = textwrap.fill(result.verdict(), int(width * 15))
    fig.suptitle(f"{heading}\nbottom: {name} ({description})\neach panel: [A | b / rho], principal vectors of the "
                 "two spans, paired", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
