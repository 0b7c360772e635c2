"""Symmetry discovery (lieprop.model.discovery, ``lieprop discover``) finds what is there in pairs of real QM9
molecules, and nothing when there is nothing: rotations -> so(3), rotations about one axis -> that axis' generator,
a uniform scaling -> the identity, random non-rigid jitter -> "no symmetry". Bad input fails naming the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lieprop.cli import main
from lieprop.data.xyz import write_xyz_frames
from lieprop.model.discovery import discover, example_pairs, make_pairs, principal_cosines


@pytest.fixture(scope="module")
def molecules():
    """32 QM9 molecules of 5 to 19 atoms (some linear or flat: CO2-like, HCN, ...)."""
    import importlib.util

    from lieprop.data.qm9 import parse_qm9pack, qm9pack_csvs

    if importlib.util.find_spec("qm9pack") is None:
        pytest.skip("needs the training extra (qm9pack)")
    data = parse_qm9pack(qm9pack_csvs()[:1], limit=200)
    return [data.molecule(i) for i in range(20, 200, 6)][:32]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a fit this small is fastest on one thread, and the suite shares the machine
    yield
    torch.set_num_threads(threads)


def _cosines(result, name):
    return np.array(result.matches[name]["cosines"])


def test_rotated_molecules_give_so3(molecules):
    result = discover(example_pairs(molecules, "rotation", seed=1), 3, iterations=15)
    assert result.found and result.rank == 3 and result.best_match == "so3"
    cos = _cosines(result, "so3")
    assert len(cos) == 3 and cos.min() > 0.99, cos
    assert result.residual < 1e-3 * result.baseline_residual
    assert "matching so3" in result.verdict()
    assert result.matches["rotation_z"]["similarity"] == pytest.approx(1 / 3, abs=1e-3)  # one axis of three


def test_rotations_about_one_axis_give_that_axis(molecules):
    result = discover(example_pairs(molecules, "rotation_z", seed=2), 3, iterations=15)  # asks for more than there is
    assert result.found and result.rank == 1 and result.best_match == "rotation_z"
    assert _cosines(result, "rotation_z")[0] > 0.99
    a = result.generators[0]
    lz = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]) / np.sqrt(2)
    assert min(np.abs(a - lz).max(), np.abs(a + lz).max()) < 0.01, a  # the generator itself, up to its sign
    assert np.abs(result.translations[0]).max() < 0.01  # about the centroid: no translation part


def test_a_uniform_scaling_gives_the_identity(molecules):
    result = discover(example_pairs(molecules, "scaling", seed=3), 2, iterations=15)
    assert result.found and result.rank == 1 and result.best_match == "scaling"
    assert _cosines(result, "scaling")[0] > 0.99
    assert np.allclose(np.abs(result.generators[0]), np.eye(3) / np.sqrt(3), atol=0.01)


def test_random_non_rigid_jitter_is_no_symmetry(molecules):
    result = discover(example_pairs(molecules, "jitter", seed=4), 3, iterations=15)
    report = result.report()
    assert not result.found and report["symmetry"] is False and report["best_match"] is None
    assert report["verdict"].startswith("no symmetry")
    assert result.residual > 0.8 * result.baseline_residual  # K generators explain barely more than K random ones


def test_translations_are_seen_because_pairs_share_one_centre(molecules):
    result = discover(example_pairs(molecules, "translation", seed=5), 3, iterations=15)
    assert result.found and result.best_match == "translations" and _cosines(result, "translations").min() > 0.99
    no_translations = discover(example_pairs(molecules, "translation", seed=5), 3, iterations=5, translations=False)
    assert not no_translations.found  # linear maps alone cannot move a centroid


def test_principal_cosines_of_known_subspaces():
    e = np.eye(4)
    assert np.allclose(principal_cosines(e[:2], e[:2]), [1, 1])
    assert np.allclose(principal_cosines(e[:2], e[2:]), [0, 0])
    tilted = np.array([e[0], np.cos(0.3) * e[1] + np.sin(0.3) * e[2]])
    assert np.allclose(principal_cosines(e[:2], tilted), [1, np.cos(0.3)])


def test_the_command_writes_the_report_and_the_plot(molecules, tmp_path, capsys):
    pairs = tmp_path / "pairs.xyz"
    write_xyz_frames(pairs, example_pairs(molecules[:16], "rotation_z", seed=6))
    out, png = tmp_path / "report.json", tmp_path / "generators.png"
    rc = main(["discover", str(pairs), "--generators", "2", "--out", str(out), "--plot", str(png),
               "--iterations", "10"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert {"generators", "translations", "residual", "baseline_residual", "matches", "verdict"} <= set(report)
    assert np.asarray(report["generators"]).shape == (2, 3, 3)
    assert np.asarray(report["translations"]).shape == (2, 3)
    assert report["n_pairs"] == 16 and report["symmetry"] is True and report["best_match"] == "rotation_z"
    assert report["residual"] < 1e-3 * report["baseline_residual"]
    assert set(report["matches"]) >= {"so3", "rotation_x", "rotation_y", "rotation_z", "scaling", "shear",
                                      "translations"}
    captured = capsys.readouterr()
    assert "symmetry found" in captured.out and "matching rotation_z" in captured.out
    assert "fitting" in captured.err  # the progress bar
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _run_bad(tmp_path, capsys, frames, *extra):
    path = tmp_path / "bad.xyz"
    write_xyz_frames(path, frames)
    rc = main(["discover", str(path), "--quiet", "--out", str(tmp_path / "r.json"), *extra])
    assert rc == 2 and not (tmp_path / "r.json").exists()
    return capsys.readouterr().err


def test_malformed_input_is_refused_naming_the_problem(molecules, tmp_path, capsys):
    (za, xa), (zb, xb) = molecules[0], molecules[1]
    err = _run_bad(tmp_path, capsys, [(za, xa)])
    assert "need at least 2 frames" in err and "got 1" in err
    err = _run_bad(tmp_path, capsys, [(za, xa), (za, xa), (zb, xb)])
    assert "odd number of frames (3)" in err and "frame 2 has no partner" in err
    err = _run_bad(tmp_path, capsys, [(za, xa), (za, xa), (za, xa), (zb, xb)])
    assert f"pair 1 (frames 2 and 3): {len(za)} atoms against {len(zb)}" in err
    swapped = np.r_[za[1:], za[:1]]
    assert (swapped != za).any()
    err = _run_bad(tmp_path, capsys, [(za, xa), (swapped, xa)])
    assert "pair 0 (frames 0 and 1): atom" in err and "same atoms in the same order" in err
    err = _run_bad(tmp_path, capsys, [(za, xa), (za, xa)], "--generators", "13")
    assert "--generators must be between 1 and 12" in err
    (tmp_path / "garbled.xyz").write_text("3\nfirst\nC 0 0 0\nH 1 0 0\n")
    assert main(["discover", str(tmp_path / "garbled.xyz"), "--quiet"]) == 2
    assert "frame 0" in capsys.readouterr().err
    assert main(["discover", str(tmp_path / "missing.xyz"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pairs_are_checked_before_any_fit():
    z = np.array([6, 1])
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="pair 0 .*: atom 0 is C in frame 0 and O in frame 1"):
        make_pairs([(z, x), (np.array([8, 1]), x)])


def test_identical_frames_are_no_motion(molecules):
    frames = [f for z, x in molecules[:4] for f in ((z, x), (z, x))]
    result = discover(frames, 2, iterations=3, translations=False)
    assert not result.found and result.verdict().startswith("no motion")
