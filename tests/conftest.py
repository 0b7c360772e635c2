"""Shared fixtures: real QM9 molecules straight from the qm9pack CSV (the first few hundred rows)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def qm9_head():
    """The first 400 QM9 molecules (CH4, NH3, H2O, C2H2, HCN, ...: many symmetric ones), parsed directly."""
    from lieprop.data.qm9 import parse_qm9pack, qm9pack_csvs

    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("needs the training extra (qm9pack)")

    return parse_qm9pack(qm9pack_csvs()[:1], limit=400)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    np.random.seed(0)
    yield
    # a test that sets torch's thread count (a Trainer with threads=1) must not change the float rounding of the
    # tests after it: in-process values are compared byte for byte with those of subprocesses
    torch.set_num_threads(threads)
