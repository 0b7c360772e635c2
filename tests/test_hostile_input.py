"""Hostile input (issue 17): every input is refused or served at a cost bounded before the work starts.

Each test is one rule: what the attack is, what lieprop does about it, and how fast or how small the answer is.
"""

from __future__ import annotations

import gzip
import json
import resource
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lieprop.data.atoms import from_arrays
from lieprop.data.readers import from_smiles
from lieprop.data.smiles import MAX_CHARS_PER_ATOM
from lieprop.data.textio import open_text
from lieprop.data.validation import MoleculeError, ValidationLimits
from lieprop.model.bundle import BundleError, load_bundle, record_metadata, save_bundle
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel
from lieprop.scoring.pipeline import ScoreOptions, score_file
from lieprop.scoring.records import open_source
from lieprop.service.schemas import MoleculeInput

WATER_POSITIONS = [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]]
#: cyclo[28]carbon, a 28-membered ring of alternating triple bonds: ETKDG fails on it only after a long search.
POLYYNE_28 = "C1#C" + "C#C" * 13 + "1"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------------
# 1. Cost before work for SMILES


def test_a_200000_carbon_smiles_is_refused_before_rdkit_parses_it():
    before = _peak_rss_mb()
    started = time.perf_counter()
    with pytest.raises(MoleculeError) as err:
        from_smiles("C" * 200_000)
    assert time.perf_counter() - started < 0.5
    assert _peak_rss_mb() - before < 50  # parsing it and adding hydrogens would take hundreds of MB
    assert err.value.code == "too_many_atoms"
    assert "the limit is 29" in err.value.message


def test_a_smiles_naming_more_atoms_than_the_limit_is_too_many_atoms_bracket_atoms_included():
    with pytest.raises(MoleculeError, match="names 30 atoms") as err:
        from_smiles("[CH3]" + "C" * 28 + "[OH]")
    assert err.value.code == "too_many_atoms"


def test_an_absurdly_long_smiles_with_few_atoms_is_invalid_smiles_naming_the_length_limit():
    text = "C" + "1" * (MAX_CHARS_PER_ATOM * 29) + "C"
    with pytest.raises(MoleculeError, match="at most 580") as err:
        from_smiles(text)
    assert err.value.code == "invalid_smiles"


def test_implicit_hydrogens_are_counted_before_they_are_added():
    # 12 carbons written, 26 hydrogens implied: 38 atoms, refused by the count before AddHs
    with pytest.raises(MoleculeError, match="38 atoms") as err:
        from_smiles("CCCCCCCCCCCC")
    assert err.value.code == "too_many_atoms"


def test_small_molecules_are_unaffected_by_the_size_checks():
    ethanol = from_smiles("CCO")
    again = from_smiles("CCO", limits=ValidationLimits(embed_timeout=0))
    assert ethanol.n_atoms == 9
    np.testing.assert_array_equal(ethanol.positions, again.positions)  # the time limit changes no geometry


# --------------------------------------------------------------------------------------------------
# 2. A time limit per molecule in the embedder


def test_a_slow_failing_polyyne_ring_fails_with_embedding_timeout_within_seconds():
    started = time.perf_counter()
    with pytest.raises(MoleculeError) as err:
        from_smiles(POLYYNE_28)
    assert time.perf_counter() - started < 4
    assert err.value.code == "embedding_timeout"
    assert "time limit of 1 s" in err.value.message


def test_the_rest_of_a_batch_is_served_when_one_molecule_times_out():
    import lieprop

    out = lieprop.predict([POLYYNE_28, "CCO"], properties=["homo"], model=_tiny_bundle_path())["results"]
    assert out[0]["ok"] is False and out[0]["error"]["code"] == "embedding_timeout"
    assert out[1]["ok"] is True


# --------------------------------------------------------------------------------------------------
# 3. Echoed input is truncated


@pytest.mark.parametrize("smiles", ["C" * 1_000_000, "1" * 1_000_000, "C" * 10 + "(" * 1_000_000])
def test_a_one_megabyte_smiles_gives_a_short_message(smiles):
    with pytest.raises(MoleculeError) as err:
        from_smiles(smiles)
    assert len(str(err.value)) < 300


def test_an_unparsable_long_smiles_is_quoted_cut_with_its_length():
    text = "C" * 100 + "(" + "C" * 100
    with pytest.raises(MoleculeError) as err:
        from_smiles(text, limits=ValidationLimits(max_atoms=1000))
    assert err.value.code == "invalid_smiles"
    assert "... (201 characters)" in err.value.message
    assert len(err.value.message) < 600


# --------------------------------------------------------------------------------------------------
# 4. Quotas for file scoring


def _smi_gz(path: Path, n: int) -> Path:
    with gzip.open(path, "wt") as f:
        f.writelines(f"CCO row{i}\n" for i in range(n))
    return path


def test_max_rows_stops_the_run_naming_the_limit_and_keeps_committed_rows(tmp_path):
    source = _smi_gz(tmp_path / "in.smi.gz", 12)
    out = tmp_path / "out.csv"
    with pytest.raises(ValueError, match="more than 8 rows, the limit"):
        score_file(source, out, ScoreOptions(chunk_size=4, max_rows=8), model=_tiny_bundle_path(), workers=1)
    progress = json.loads((tmp_path / "out.csv.partial" / "progress.json").read_text())
    assert progress["rows_done"] == 8  # the two chunks before the limit are committed, and resumable


def test_a_gzip_bomb_stops_at_the_decompressed_bytes_cap(tmp_path):
    bomb = tmp_path / "bomb.smi.gz"
    with gzip.open(bomb, "wb") as f:
        f.write(b"C" * 5_000_000 + b"\n")  # 5 MB of one line, a few kB compressed
    assert bomb.stat().st_size < 50_000
    source = open_source(bomb, max_decompressed_bytes=1_000_000)
    with pytest.raises(ValueError, match="more than 1,000,000 bytes"):
        list(source.records())


def test_a_non_gzip_file_named_gz_is_a_clean_value_error(tmp_path):
    fake = tmp_path / "fake.smi.gz"
    fake.write_text("CCO\n")
    with pytest.raises(ValueError, match="not a gzip file"):
        open_source(fake)
    with pytest.raises(ValueError, match="not a gzip file"), open_text(fake) as handle:
        handle.read()


def test_a_csv_cell_over_the_csv_modules_limit_is_a_clean_value_error(tmp_path):
    path = tmp_path / "huge.csv"
    path.write_text("id,smiles\na," + "C" * 200_000 + "\n")
    source = open_source(path)
    with pytest.raises(ValueError, match="unreadable CSV near line 2: field larger than field limit"):
        list(source.records())


def test_quotas_are_off_by_default_for_the_cli():
    assert ScoreOptions().max_rows is None and ScoreOptions().max_decompressed_bytes is None
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        ScoreOptions(max_rows=0)


# --------------------------------------------------------------------------------------------------
# 5. Smaller items


def test_booleans_are_not_atomic_numbers():
    body = json.dumps({"numbers": [True, True], "positions": WATER_POSITIONS[:2]})
    with pytest.raises(ValidationError):
        MoleculeInput.model_validate_json(body)
    with pytest.raises(MoleculeError, match="must be integers"):
        from_arrays([True, True], WATER_POSITIONS[:2])
    assert MoleculeInput.model_validate_json(json.dumps({"numbers": [8, 1, 1], "positions": WATER_POSITIONS}))


def test_a_smiles_radical_gets_the_same_warning_as_sdf_input():
    methyl = from_smiles("[CH3]")
    assert any("unpaired electrons" in w for w in methyl.warnings)
    assert not any("unpaired electrons" in w for w in from_smiles("C").warnings)


def test_a_bundle_with_nan_weights_is_refused_naming_the_tensor(tmp_path):
    torch.manual_seed(0)
    model = PropertyModel(NetworkConfig(width=16, depth=1, targets=["homo"]))
    with torch.no_grad():
        model.net.head.weight[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    save_bundle(model, path, "nan")
    with pytest.raises(BundleError, match="NaN or infinite values .*head.weight"):
        load_bundle(path)


@pytest.mark.parametrize(("key", "value"), [("width", 10**9), ("depth", 100_000)])
def test_a_bundle_with_an_absurd_network_config_is_refused_before_allocating(tmp_path, key, value):
    path = tmp_path / "big.pt"
    torch.manual_seed(0)
    save_bundle(PropertyModel(NetworkConfig(width=16, depth=1, targets=["homo"])), path, "big")
    payload = torch.load(path, weights_only=True)
    payload["config"][key] = value
    torch.save(payload, path)
    started = time.perf_counter()
    with pytest.raises(BundleError, match=f"{key}={value} is out of range"):
        load_bundle(path)
    assert time.perf_counter() - started < 2


def test_a_bundle_digest_catches_a_changed_weight_and_changed_metadata_and_recording_keeps_sha256(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "b.pt"
    sha = save_bundle(PropertyModel(NetworkConfig(width=16, depth=1, targets=["homo"])), path, "b",
                      {"test_mae": {"homo": 0.1}})
    assert load_bundle(path).meta_verified
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["net.head.bias"] += 1e-3  # one weight
    torch.save(payload, tmp_path / "weight.pt")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(tmp_path / "weight.pt")
    payload = torch.load(path, weights_only=True)
    payload["meta"]["test_mae"]["homo"] = 0.01  # a better score than measured
    torch.save(payload, tmp_path / "meta.pt")
    with pytest.raises(BundleError, match="meta_sha256 mismatch"):
        load_bundle(tmp_path / "meta.pt")
    record_metadata(path, test_mae={"homo": 0.2})  # recording metrics re-digests the metadata, not the model
    again = load_bundle(path)
    assert again.sha256 == sha and again.meta_verified and again.meta["test_mae"] == {"homo": 0.2}
    del payload["meta_sha256"]  # a bundle from before meta_sha256 (the shipped one): loads, metadata unverified
    torch.save(payload, tmp_path / "old.pt")
    old = load_bundle(tmp_path / "old.pt")
    assert old.sha256 == sha and not old.meta_verified


def test_the_shipped_bundle_keeps_its_digest_and_info_says_what_it_guarantees(capsys):
    from lieprop.cli import main
    from lieprop.model.loading import default_model_path

    payload = torch.load(default_model_path(), weights_only=True)
    assert "meta_sha256" not in payload
    assert main(["info"]) == 0  # loads it, verifying the digest
    out = capsys.readouterr().out
    assert f"sha256    {payload['sha256']}" in out
    assert "metadata (test MAE, training) is not covered" in out and "not proof of origin" in out


_BUNDLE: list[Path] = []


def _tiny_bundle_path() -> Path:
    """A small untrained bundle predicting HOMO, made once per session."""
    if not _BUNDLE:
        import tempfile

        torch.manual_seed(1)
        path = Path(tempfile.mkdtemp()) / "tiny.pt"
        save_bundle(PropertyModel(NetworkConfig(width=16, depth=1, targets=["homo"])), path, "tiny")
        _BUNDLE.append(path)
    return _BUNDLE[0]
