"""Same input, same bytes: ``import lieprop`` puts Intel MKL (torch's CPU BLAS) in its strict reproducible mode.

Without it MKL picks a code path by the threads it gets and the memory's alignment, and about one run in 30 of a
2-worker ``lieprop predict`` gave a chunk that differed in the last bits (docs/JOBS.md, "Reproducibility";
``benchmarks/reproducible_runs.py`` counts it). MKL reads its mode once, at its first call, so each check runs in a
fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

#: ``mkl_cbwr_get`` values (mkl_cbwr.h): the branch bits, and the strict flag.
MKL_CBWR_OFF, MKL_CBWR_AUTO, MKL_CBWR_COMPATIBLE, MKL_CBWR_STRICT = 0x1, 0x2, 0x3, 0x10000

PROBE = """
import ctypes, os, sys
import lieprop  # first, as the CLI, the service and the job workers do
import torch
torch.randn(8, 8) @ torch.randn(8, 8)  # MKL's first call: its mode is fixed from here on
lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
print(lib.mkl_serv_cbwr_get(-1))
"""


def mkl_mode(**env: str) -> int:
    """MKL's reproducibility mode in a fresh interpreter that imports lieprop, with ``env`` added (and no
    inherited ``MKL_CBWR`` unless ``env`` names it)."""
    base = {k: v for k, v in os.environ.items() if k != "MKL_CBWR"}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**base, **env}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


needs_mkl = pytest.mark.skipif(not torch.backends.mkl.is_available() or sys.platform != "linux",
                               reason="torch without Intel MKL: nothing to set")


@needs_mkl
def test_import_lieprop_makes_mkl_strictly_reproducible():
    mode = mkl_mode()
    assert mode & MKL_CBWR_STRICT, hex(mode)
    assert mode & 0xFFFF == MKL_CBWR_AUTO, hex(mode)  # the fastest code path the CPU has, chosen once


@needs_mkl
def test_a_users_own_mkl_cbwr_wins():
    assert mkl_mode(MKL_CBWR="COMPATIBLE") == MKL_CBWR_COMPATIBLE
    assert mkl_mode(MKL_CBWR="") == MKL_CBWR_OFF  # empty: MKL's own default
