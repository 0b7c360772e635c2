"""Padded vs packed batches for the all-pairs LieConv layer, on QM9 molecules.

Padded: (B, N_max, ...) tensors with a mask; the convolution is one batched matmul per layer. Packed: atoms
concatenated with index vectors; the pairs are an explicit list and the convolution scatters outer products with
``index_add_``. Times collation and one LieConv layer (64 channels, forward + backward) per batch of 64 molecules,
with random batches and with size-bucketed batches (what training uses).

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 .venv/bin/python benchmarks/collate.py
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from lieprop.data.batch import collate_ragged, size_bucketed_batches
from lieprop.data.qm9 import load_qm9, split_indices
from lieprop.model.lieconv import LieConv, neighbourhood


def median_time(fn, reps: int = 7) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def packed(data, idx):
    """Atoms of molecules ``idx`` concatenated, with every within-molecule (dst, src) pair listed."""
    starts, ends = data.offsets[idx], data.offsets[idx + 1]
    atoms = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
    sizes = ends - starts
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    dst = np.concatenate([np.repeat(np.arange(n) + f, n) for n, f in zip(sizes, first, strict=True)])
    src = np.concatenate([np.tile(np.arange(n) + f, n) for n, f in zip(sizes, first, strict=True)])
    pos = torch.from_numpy(data.positions[atoms].astype(np.float32))
    return pos, torch.from_numpy(dst), torch.from_numpy(src)


def main() -> None:
    torch.set_num_threads(2)
    data = load_qm9()
    rows = split_indices(len(data))["train"][:6400]
    sizes = data.n_atoms[rows]
    rng = np.random.default_rng(0)
    layouts = {"random": [rows[i:i + 64] for i in range(0, len(rows), 64)],
               "bucketed": [rows[b] for b in size_bucketed_batches(sizes, 64, rng)]}
    c = 64
    conv = LieConv(c, c, d_embed=3)
    print(f"# {' '.join(sys.argv)}  (torch {torch.__version__}, 2 threads)")
    print("| layout | batches | collate ms | padded pairs / real pairs | padded conv ms (fwd+bwd) | "
          "packed conv ms (fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    for name, batches in layouts.items():
        batches = batches[:8]
        real = sum(int((data.n_atoms[b] ** 2).sum()) for b in batches)
        padded_pairs = sum(len(b) * int(data.n_atoms[b].max()) ** 2 for b in batches)
        t_collate = median_time(lambda bs=batches: [collate_ragged(data.numbers, data.positions, data.offsets, b)
                                                    for b in bs], 3) / len(batches)

        def padded_step(bs=batches):
            for b in bs:
                cb = collate_ragged(data.numbers, data.positions, data.offsets, b)
                x = cb.positions
                emb = x[:, :, None] - x[:, None, :]
                nb = neighbourhood(emb, emb.norm(dim=-1), cb.mask, 100, 1.0)
                v = torch.randn(*cb.mask.shape, c, requires_grad=True)
                conv(v, nb).sum().backward()

        def packed_step(bs=batches):
            for b in bs:
                pos, dst, src = packed(data, b)
                emb = pos[dst] - pos[src]
                v = torch.randn(pos.shape[0], c, requires_grad=True)
                g = conv.kernel(emb, torch.ones(len(dst), dtype=torch.bool))
                outer = (g[:, :, None] * v[src][:, None, :]).reshape(len(dst), -1)
                s = torch.zeros(pos.shape[0], outer.shape[1]).index_add_(0, dst, outer)
                s = s / torch.bincount(dst, minlength=pos.shape[0])[:, None]
                conv.linear(s).sum().backward()

        t_pad = median_time(padded_step, 3) / len(batches)
        t_pack = median_time(packed_step, 3) / len(batches)
        print(f"| {name} | {len(batches)} x 64 | {1000 * t_collate:.2f} | {padded_pairs / real:.2f} | "
              f"{1000 * t_pad:.1f} | {1000 * t_pack:.1f} |", flush=True)


if __name__ == "__main__":
    main()
