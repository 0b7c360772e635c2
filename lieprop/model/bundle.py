"""Model bundles: one file with weights, network config, normalisation, units, split and test MAE.

A bundle is a ``torch.save`` of plain containers, tensors, strings and numbers only, read back with
``torch.load(weights_only=True)`` so loading never unpickles arbitrary objects.

What the digests guarantee: ``sha256`` covers the architecture (when it is not the default LieConv, so bundles saved
before the registry keep their digest), the config, ``fix_signs`` and every weight (name, dtype, shape, bytes); it is
the model's identity (``GET /v1/models``, the resume fingerprint of file scoring). ``meta_sha256`` (bundles written by
this version on) covers the name, the units and the metadata (test MAE, training facts, calibration), bound to
``sha256``; :func:`record_metadata` recomputes it when it adds entries, so recording metrics never changes
``sha256``. :func:`load_bundle` recomputes both and refuses a bundle whose digest does not match; a bundle without
``meta_sha256`` (older ones, the first shipped bundles) loads with its metadata unverified (:attr:`Bundle.meta_verified`
is False). Both are integrity checks against accidental corruption (a truncated copy, a flipped bit, an edit by
mistake), not authenticity: they are stored in the file they check, unsigned, so anyone who changes a bundle can
recompute them. Trust a bundle by where it came from (the sha256 published with it), not by its loading.

Format 1 holds one model (``state_dict``). Format 2 adds ``architecture`` and may hold an ensemble: ``members``, a
list of state dicts of one architecture and config, each with its own normalisation. This lieprop writes format 1
for a single LieConv model (so older lieprop versions still read it) and format 2 otherwise; it reads both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lieprop.data.properties import BY_NAME
from lieprop.model.architectures import DEFAULT_ARCHITECTURE, get_architecture
from lieprop.model.calibration import Calibration, calibrations_from_dict, path_calibration
from lieprop.model.prediction import predict_molecules
from lieprop.model.predictor import EnsembleModel, PropertyModel
from lieprop.version import __version__

FORMAT = "lieprop-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
Model = PropertyModel | EnsembleModel


class BundleError(ValueError):
    """A bundle that cannot be used: corrupted, tampered with, or from an incompatible version."""


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode, CPU; a :class:`PropertyModel` or an :class:`EnsembleModel`) plus its
    metadata."""

    model: Model
    name: str
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: {geometry path: calibration} of an ensemble's spread (``lieprop calibrate --record``), else None.
    calibration: dict[str, Calibration] | None = None
    #: Whether ``meta_sha256`` checked the name, units and metadata (False: an older bundle without one).
    meta_verified: bool = False

    @property
    def version(self) -> str:
        return str(self.meta.get("code_version", "?"))

    @property
    def architecture(self) -> str:
        return self.model.architecture

    @property
    def n_members(self) -> int:
        """1 for a single model, else the ensemble's size."""
        return len(self.model.members) if isinstance(self.model, EnsembleModel) else 1

    @property
    def has_spread(self) -> bool:
        """Whether its predictions carry a spread: an ensemble, or a model with ``spread`` poses in its metadata."""
        return self.n_members > 1 or self.model.spread_poses > 1

    def weighs_members(self, path: str) -> bool:
        """Whether the calibration of geometry ``path`` (``given`` / ``generated`` / ``forcefield`` /
        ``lone_conformer``) weights the members."""
        cal = self.path_calibration(path)
        return cal is not None and cal.weights is not None

    def path_calibration(self, path: str) -> Calibration | None:
        """The calibration of geometry ``path`` (:func:`lieprop.model.calibration.path_calibration`), if any."""
        return path_calibration(self.calibration or {}, path)

    def values(self, numbers: Sequence[np.ndarray], positions: Sequence[np.ndarray], path: str = "given",
               batch_size: int = 128) -> np.ndarray:
        """(n, T) values this bundle serves for molecules whose geometries came by ``path``: the path's member-weighted
        mean when its calibration weights the members (what results report), else the model's prediction."""
        if self.weighs_members(path):
            members = self.model.member_values(numbers, positions, batch_size=batch_size)
            return self.path_calibration(path).center(members)
        return self.model.predict(numbers, positions, batch_size=batch_size)

    def molecule_values(self, molecules: Sequence[Any], path: str = "given", batch_size: int = 128) -> np.ndarray:
        """Like :meth:`values`, for molecules (objects with ``numbers`` and ``geometries``, e.g.
        :class:`lieprop.data.molecule.Molecule`), each averaged over its conformers as results are
        (:func:`lieprop.model.prediction.predict_molecules`)."""
        predictions = predict_molecules(self.model, molecules, batch_size=batch_size)
        if self.weighs_members(path):
            return self.path_calibration(path).center(predictions.members)
        return predictions.value


def _digest(config: dict, fix_signs: bool, states: list[dict[str, torch.Tensor]],
            architecture: str = DEFAULT_ARCHITECTURE) -> str:
    h = hashlib.sha256()
    head: dict[str, Any] = {"config": config, "fix_signs": fix_signs}
    if architecture != DEFAULT_ARCHITECTURE:
        head["architecture"] = architecture
    h.update(json.dumps(head, sort_keys=True).encode())
    for m, state in enumerate(states):
        prefix = f"members.{m}." if len(states) > 1 else ""
        for key in sorted(state):
            t = state[key].detach().cpu().contiguous()
            h.update((prefix + key).encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _meta_digest(sha256: str, name: str, units: Any, meta: Any) -> str:
    """The digest of a bundle's name, units and metadata, bound to its model digest ``sha256``."""
    head = {"sha256": sha256, "name": name, "units": units, "meta": meta}
    return hashlib.sha256(json.dumps(head, sort_keys=True, allow_nan=True).encode()).hexdigest()


def save_bundle(model: Model, path: str | Path, name: str, meta: dict[str, Any] | None = None) -> str:
    """Write ``model`` (a model or an ensemble) as a bundle; returns its sha256. ``meta`` holds JSON-like facts."""
    members = list(model.members) if isinstance(model, EnsembleModel) else [model]
    states = [{k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for m in members]
    config = model.cfg.to_dict()
    sha = _digest(config, model.fix_signs, states, model.architecture)
    single_lieconv = len(states) == 1 and model.architecture == DEFAULT_ARCHITECTURE
    payload: dict[str, Any] = {
        "format": FORMAT,
        "format_version": 1 if single_lieconv else FORMAT_VERSION,
        "name": name,
        "code_version": __version__,
        "config": config,
        "fix_signs": model.fix_signs,
        "units": {t: BY_NAME[t].unit for t in model.targets},
        "meta": json.loads(json.dumps(meta or {})),  # plain JSON types only
        "sha256": sha,
    }
    payload["meta_sha256"] = _meta_digest(sha, name, payload["units"], payload["meta"])
    if single_lieconv:
        payload["state_dict"] = states[0]
    else:
        payload["architecture"] = model.architecture
        payload["members"] = states
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return sha


def member_reference(ref: str | Path) -> tuple[Path, int | None]:
    """Split an ensemble argument into the bundle's path and, for ``PATH#K``, the index of that ensemble's member K
    (None: every member). A path that itself ends in ``#K`` and exists is taken as it is."""
    text = str(ref)
    path, sep, index = text.rpartition("#")
    if not sep or not index.isdigit() or Path(text).exists():
        return Path(text), None
    return Path(path), int(index)


def member_record(bundle: Bundle, k: int) -> dict[str, Any]:
    """Network ``k`` of an ensemble bundle as its ``members`` record (name, sha256, training facts), with where it
    was taken from (``member_of``: the ensemble's name, sha256 and the index)."""
    records = bundle.meta.get("members") or []
    if len(records) != bundle.n_members:  # an ensemble made of ensembles before records were per network
        records = [{"name": bundle.name, "sha256": None, "training": None}] * bundle.n_members
    taken: dict[str, Any] = {"name": bundle.name, "sha256": bundle.sha256, "member": k}
    if records[k].get("member_of"):  # taken from an ensemble before: that lineage stays, one level further down
        taken["member_of"] = records[k]["member_of"]
    return {**records[k], "member_of": taken}


def make_ensemble(paths: list[str | Path], out: str | Path, name: str, meta: dict[str, Any] | None = None) -> str:
    """Combine bundles of one architecture and config into an ensemble bundle at ``out``; returns its sha256. An
    ensemble bundle adds all its members, ``PATH#K`` only its member K (0 the first).

    The ensemble's metadata records each network's name, sha256 and training facts (``members``, one per network;
    one taken from an ensemble also names that ensemble and its index, ``member_of``) and the split of the first;
    test MAE must be measured again (``lieprop evaluate --record``)."""
    refs = [member_reference(p) for p in paths]
    bundles = [load_bundle(path) for path, _ in refs]
    models: list[PropertyModel] = []
    records: list[dict[str, Any]] = []
    sources: list[str] = []  # which argument gave each network, to name a network given twice
    for (path, index), b in zip(refs, bundles, strict=True):
        if b.meta.get("split") != bundles[0].meta.get("split"):
            raise BundleError(f"{path} was trained on split {b.meta.get('split')!r}, {refs[0][0]} on "
                              f"{bundles[0].meta.get('split')!r}: an ensemble's test MAE needs one split")
        own = {"name": b.name, "sha256": b.sha256, "training": b.meta.get("training")}
        if not isinstance(b.model, EnsembleModel):
            if index not in (None, 0):
                raise BundleError(f"{path}#{index}: {path} is a single network, not an ensemble")
            models.append(b.model)
            records.append(own)
            sources.append(str(path))
            continue
        members = list(b.model.members)
        kept = range(len(members)) if index is None else [index]
        if index is not None and index >= len(members):
            raise BundleError(f"{path}#{index}: {path} has {len(members)} members (0..{len(members) - 1})")
        models.extend(members[k] for k in kept)  # type: ignore[misc]
        records.extend(member_record(b, k) for k in kept)
        sources.extend(f"{path}#{k}" for k in kept)
    seen: dict[str, str] = {}
    for model, source in zip(models, sources, strict=True):
        digest = _digest({}, False, [model.state_dict()])
        if digest in seen:  # the same weights twice would count one network double and shrink the spread
            raise BundleError(f"{source} is the same network as {seen[digest]}: an ensemble's members must differ")
        seen[digest] = source
    if len(models) < 2:
        raise BundleError(f"an ensemble needs at least 2 networks, got {len(models)}")
    try:
        ensemble = EnsembleModel(models)
    except ValueError as exc:
        raise BundleError(str(exc)) from None
    record = {"members": records, "split": bundles[0].meta.get("split", "cormorant"), **(meta or {})}
    return save_bundle(ensemble, out, name, record)


def weights_problem(weights: Any, model: Model) -> str | None:
    """What is wrong with a calibration's member weights for ``model`` (None: nothing, or no weights): they must be
    an ensemble's, of shape (members, targets), finite, non-negative, each target's summing to 1."""
    if weights is None:
        return None
    if not isinstance(model, EnsembleModel):
        return "need an ensemble; the model is a single network"
    expected = (len(model.members), len(model.targets))
    if weights.shape != expected:
        return f"have shape {weights.shape}, the ensemble needs {expected} (members, targets)"
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or not np.allclose(weights.sum(0), 1.0, atol=1e-6):
        return "must be finite, non-negative and sum to 1 for each target"
    return None


def record_metadata(path: str | Path, drop: Iterable[str] = (), **entries: Any) -> None:
    """Add JSON-like entries (e.g. ``test_mae``) to a bundle's metadata, and remove the keys in ``drop`` (records
    that no longer describe it), keeping weights and sha256 as they are (``meta_sha256`` is recomputed, or added to
    an older bundle)."""
    path = Path(path)
    load_bundle(path)  # refuse to touch a bundle that does not verify
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in drop:
        payload["meta"].pop(key, None)
    payload["meta"].update(json.loads(json.dumps(entries)))
    payload["meta_sha256"] = _meta_digest(payload["sha256"], payload["name"], payload.get("units", {}),
                                          payload["meta"])
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


#: The largest integer a network config may hold (a width, a neighbourhood size, ...) and the largest depth (keys
#: with ``depth`` or ``layers`` in their name): beyond them a bundle is refused before its network is allocated.
MAX_CONFIG_SIZE = 65536
MAX_CONFIG_DEPTH = 64


def check_config_sizes(config: Any) -> None:
    """``ValueError`` naming the key when a network config asks for an absurd size (:data:`MAX_CONFIG_SIZE`,
    :data:`MAX_CONFIG_DEPTH`), which would exhaust memory while the network is built."""
    if not isinstance(config, dict):
        raise TypeError(f"the network config is a {type(config).__name__}, not a table")
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        limit = MAX_CONFIG_DEPTH if "depth" in str(key) or "layers" in str(key) else MAX_CONFIG_SIZE
        if not 0 <= value <= limit:
            raise ValueError(f"network config {key}={value} is out of range (0 to {limit})")


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
    if payload.get("format_version") not in READABLE_VERSIONS:
        raise BundleError(f"{path} has bundle format {payload.get('format_version')}; this lieprop "
                          f"{__version__} reads formats {', '.join(map(str, READABLE_VERSIONS))}")
    try:
        arch = get_architecture(str(payload.get("architecture", DEFAULT_ARCHITECTURE)))
        check_config_sizes(payload["config"])  # before a network of that size is allocated
        cfg = arch.make_config(payload["config"])
        states = payload["members"] if "members" in payload else [payload["state_dict"]]
        if not isinstance(states, list) or not states or not all(isinstance(s, dict) for s in states):
            raise ValueError("no weights")
        sha = _digest(payload["config"], bool(payload["fix_signs"]), states, arch.name)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{path}: incompatible bundle contents ({exc})") from None
    if sha != payload.get("sha256"):
        raise BundleError(f"{path}: sha256 mismatch (weights or config were modified after saving)")
    meta_verified = "meta_sha256" in payload
    if meta_verified and _meta_digest(sha, payload.get("name"), payload.get("units", {}), payload.get("meta", {})
                                      ) != payload["meta_sha256"]:
        raise BundleError(f"{path}: meta_sha256 mismatch (name, units or metadata such as test MAE were modified "
                          "after saving)")
    for i, state in enumerate(states):
        for key, tensor in state.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                where = f"member {i}, " if len(states) > 1 else ""
                raise BundleError(f"{path}: the weights hold NaN or infinite values ({where}tensor {key!r}); "
                                  "the model cannot predict")
    members = []
    for state in states:
        member = PropertyModel(cfg, fix_signs=bool(payload["fix_signs"]), architecture=arch.name)
        try:
            member.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(f"{path}: weights do not fit the network config ({exc})") from None
        members.append(member)
    model: Model = members[0] if len(members) == 1 else EnsembleModel(members)
    model.eval().to(device)
    meta = dict(payload.get("meta", {}))
    spread = meta.get("spread")
    if isinstance(spread, dict):  # a spread over fixed poses (lieprop calibrate --poses), what the calibration fits
        model.spread_poses = int(spread.get("poses", 0))
    calibration = None
    if (isinstance(model, EnsembleModel) or model.spread_poses > 1) and isinstance(meta.get("calibration"), dict):
        try:
            calibration = calibrations_from_dict(meta["calibration"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable calibration ({exc})") from None
        for name, cal in calibration.items():
            if list(cal.targets) != model.targets:
                raise BundleError(f"{path}: the calibration is for targets {list(cal.targets)}, the model predicts "
                                  f"{model.targets}")
            problem = weights_problem(cal.weights, model)
            if problem:
                raise BundleError(f"{path}: the {name} calibration's member weights {problem}")
    meta["code_version"] = payload.get("code_version")
    meta["units"] = payload.get("units", {})
    return Bundle(model=model, name=str(payload.get("name", path.stem)), sha256=sha, meta=meta,
                  calibration=calibration, meta_verified=meta_verified)
