"""benchmarks/authors_throughput.py: without the authors' checkout it says why and still measures lieprop's side, on
real QM9 molecules and real training steps (a tiny pool and a few steps)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "authors_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("authors_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_checkout_the_authors_row_is_skipped_with_the_reason(bench, tmp_path):
    batches = bench.random_batches(64, 8, 3)
    row = bench.authors_row(None, batches, 1, "cpu")
    assert row["mol_s"] is None and "--authors PATH" in row["skipped"] and bench.ENV_VAR in row["skipped"]
    row = bench.authors_row(str(tmp_path), batches, 1, "cpu")
    assert "is not a checkout of github.com/mfinzi/LieConv" in row["skipped"]


def test_a_checkout_that_does_not_import_is_skipped_with_the_import_error(bench, tmp_path):
    # the shape of a checkout whose requirements are missing: their moleculeTrainer imports oil first
    (tmp_path / "lie_conv").mkdir()
    (tmp_path / "lie_conv" / "moleculeTrainer.py").write_text("from oil_not_installed_here import Trainer\n")
    (tmp_path / "lie_conv" / "lieGroups.py").write_text("from oil_not_installed_here import export\n")
    try:
        row = bench.authors_row(str(tmp_path), bench.random_batches(64, 8, 3), 1, "cpu")
    finally:
        sys.path.remove(str(tmp_path.resolve()))
        for name in [m for m in sys.modules if m == "lie_conv" or m.startswith("lie_conv.")]:
            del sys.modules[name]
    assert row["mol_s"] is None
    assert "does not import: ModuleNotFoundError" in row["skipped"] and "oil_not_installed_here" in row["skipped"]
    assert f"pip install -e {tmp_path.resolve()}" in row["skipped"]


def test_random_batches_are_distinct_molecules_of_the_pool(bench):
    batches = bench.random_batches(50, 32, 4, seed=1)
    assert [len(b) for b in batches] == [32] * 4
    assert all(len(set(b.tolist())) == 32 and b.max() < 50 for b in batches)
    assert not np.array_equal(batches[0], batches[1])


def test_lieprops_side_is_measured_and_tabled_without_the_authors(bench, qm9_head, capsys, monkeypatch):
    monkeypatch.delenv(bench.ENV_VAR, raising=False)
    assert bench.main(["--steps", "1", "--warmup", "1", "--pool", "48", "--batch", "8", "--presets", "budget",
                       "--device", "cpu"], data=qm9_head) == 0
    out = capsys.readouterr()
    assert "authors' code skipped: no checkout" in out.err
    lines = [line for line in out.out.splitlines() if line.startswith("| lieprop budget")]
    assert [line.split("|")[2].strip() for line in lines] == ["random", "size-bucketed"]
    for line in lines:
        cells = [c.strip() for c in line.split("|")]
        assert cells[3] == "1" and float(cells[4]) > 0
    assert "| authors' LieConv (T(3), k=256) | random | - | skipped: no checkout" in out.out


def test_the_torchvision_placeholder_lets_imports_work_and_every_use_raise():
    """When torchvision cannot load here, the authors' trainer package still imports (it only uses torchvision for
    image code); any use of a torchvision name raises, so nothing measured can silently depend on it."""
    import subprocess

    code = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench", {str(SCRIPT)!r})
bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
sys.modules["torchvision"] = None  # as if it could not load
bench.torchvision_placeholder()
import torchvision.utils as vutils
from torchvision.models.inception import inception_v3
import torchvision.datasets as ds
class CIFAR(ds.CIFAR10):
    pass
for use in (lambda: inception_v3(pretrained=True), lambda: CIFAR("data"), lambda: vutils.make_grid([])):
    try:
        use()
    except RuntimeError as exc:
        assert "placeholder" in str(exc), exc
    else:
        raise SystemExit("a placeholder did not raise")
assert bench.PLACEHOLDERS and bench.PLACEHOLDERS[0].startswith("torchvision")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
