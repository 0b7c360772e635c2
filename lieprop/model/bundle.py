"""Model bundles: one file with weights, network config, normalisation, units, split and test MAE.

A bundle is a ``torch.save`` of plain containers, tensors, strings and numbers only, read back with
``torch.load(weights_only=True)`` so loading never unpickles arbitrary objects. ``sha256`` covers the
config and every weight; :func:`load_bundle` recomputes it and refuses a bundle that does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import lieprop
from lieprop.data.properties import BY_NAME
from lieprop.model.network import NetworkConfig
from lieprop.model.predictor import PropertyModel

FORMAT = "lieprop-bundle"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle that cannot be used: corrupted, tampered with, or from an incompatible version."""


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode, CPU) plus its metadata."""

    model: PropertyModel
    name: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return str(self.meta.get("code_version", "?"))


def _digest(config: dict, fix_signs: bool, state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"config": config, "fix_signs": fix_signs}, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_bundle(model: PropertyModel, path: str | Path, name: str, meta: dict[str, Any] | None = None) -> str:
    """Write ``model`` as a bundle; returns its sha256. ``meta`` holds JSON-like training facts."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    config = model.cfg.to_dict()
    sha = _digest(config, model.fix_signs, state)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "code_version": lieprop.__version__,
        "config": config,
        "fix_signs": model.fix_signs,
        "units": {t: BY_NAME[t].unit for t in model.targets},
        "meta": json.loads(json.dumps(meta or {})),  # plain JSON types only
        "state_dict": state,
        "sha256": sha,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return sha


def record_metadata(path: str | Path, **entries: Any) -> None:
    """Add JSON-like entries (e.g. ``test_mae``) to a bundle's metadata, keeping weights and sha256 as they are."""
    path = Path(path)
    load_bundle(path)  # refuse to touch a bundle that does not verify
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["meta"].update(json.loads(json.dumps(entries)))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load and verify a bundle; raises :class:`BundleError` with the reason when it cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model bundle {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage, pickled objects
        raise BundleError(f"{path} is not a readable lieprop bundle (corrupted or truncated?): {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BundleError(f"{path} is not a lieprop model bundle")
    if payload.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path} has bundle format {payload.get('format_version')}; this lieprop "
                          f"{lieprop.__version__} reads format {FORMAT_VERSION}")
    try:
        cfg = NetworkConfig.from_dict(payload["config"])
        state = payload["state_dict"]
        sha = _digest(payload["config"], bool(payload["fix_signs"]), state)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: incompatible bundle contents ({exc})") from None
    if sha != payload.get("sha256"):
        raise BundleError(f"{path}: sha256 mismatch (weights or config were modified after saving)")
    model = PropertyModel(cfg, fix_signs=bool(payload["fix_signs"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not fit the network config ({exc})") from None
    model.eval().to(device)
    meta = dict(payload.get("meta", {}))
    meta["code_version"] = payload.get("code_version")
    meta["units"] = payload.get("units", {})
    return Bundle(model=model, name=str(payload.get("name", path.stem)), sha256=sha, meta=meta)
