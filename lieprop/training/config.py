"""Training configuration: presets, a TOML/YAML file and command-line overrides, validated by pydantic.

The network is configured once, by its architecture (:mod:`lieprop.model.architectures`): ``architecture`` names
the family and ``network`` holds that family's config keys (``--set network.width=128``; for LieConv the fields of
:class:`lieprop.model.network.NetworkConfig`, with their defaults there). ``targets`` is shared by the run and the
network. A network key given at the top level (``--set width=128``, the form before the registry) still works, with
a ``DeprecationWarning``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from lieprop.data.properties import BY_NAME, PROPERTY_NAMES
from lieprop.model.architectures import DEFAULT_ARCHITECTURE, get_architecture

#: Keys of an architecture's config that belong to the run rather than to ``network``.
RUN_KEYS = frozenset({"targets"})


class TrainConfig(BaseModel):
    """Everything that defines a training run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    # what to learn
    targets: list[str] = Field(default_factory=lambda: list(PROPERTY_NAMES))
    target_weights: dict[str, float] = Field(default_factory=dict)
    split: Literal["cormorant", "schnet"] = "cormorant"
    limit_train: int | None = None  # use only the first N training molecules (tests, pilots)
    limit_valid: int | None = 5000  # validation molecules evaluated each epoch
    # network: a registered architecture and its config keys (defaults: the architecture's config class)
    architecture: str = DEFAULT_ARCHITECTURE
    network: dict[str, Any] = Field(default_factory=dict)
    # orientation handling: "frames" trains in principal-axes frames (one sampled per step), "rotate"
    # applies random rotations (the paper's augmentation), "none" uses the input orientation.
    orientation: Literal["frames", "rotate", "none"] = "frames"
    fix_signs: bool = True
    # each training molecule with at most lieprop.data.qm9.SMALL_MAX_ATOMS (10) atoms appears this many times per
    # epoch: there are only ~600 of them among 100,000, and they are the molecules a chemist tries first
    oversample_small: int = Field(1, ge=1)
    # also train on the validation split's molecules with at most 10 atoms (about 100 of 17,748; the test split is
    # untouched): water is a validation molecule in the Cormorant split, and nothing in training resembles it
    train_small_valid: bool = False
    # also train on every training molecule's force-field conformer (RDKit ETKDGv3 + MMFF94 from its SMILES, exactly
    # the service's SMILES path; lieprop.data.qm9_conformers), with the DFT targets: the geometries SMILES users send.
    # Validation then scores both geometries of the validation molecules, and the best checkpoint is the best mean.
    forcefield_geometries: bool = False
    # how many of each training molecule's force-field conformers to train on (the lowest in energy first; the service
    # averages over 5): each is one more training example with the same DFT targets
    forcefield_conformers: int = Field(1, ge=1)
    # train on the force-field conformers of those training molecules the cache has embedded (a build with
    # --fraction: python -m lieprop.data.qm9_conformers --splits train --fraction 0.2) instead of refusing a cache
    # that lacks some; the DFT geometries of every training molecule are trained on either way
    forcefield_embedded_only: bool = False
    # optimisation
    batch_size: int = 64
    lr: float = 3e-3
    warmup_fraction: float = 0.03
    epochs: int = 500
    max_minutes: float | None = None  # time budget of the training steps; with it the cosine schedule spans it
    # what max_minutes counts: "wall" seconds, or "cpu" seconds of this process (every thread), which other work on a
    # shared machine cannot eat into: equal CPU budgets for runs side by side (benchmarks/equal_budget.py)
    budget_clock: Literal["wall", "cpu"] = "wall"
    grad_clip: float = 10.0
    ema_decay: float = 0.999  # 0 disables the exponential moving average of weights
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    # bfloat16 autocast for the training steps' forward pass, on CUDA only (a no-op on the CPU); the lifts and pair
    # geometry stay in float32, and validation runs in float32
    autocast_bf16: bool = False
    # bookkeeping
    out_dir: str = "runs/default"
    checkpoint_minutes: float = 10.0
    tensorboard: bool = True  # also write OUT/tensorboard event files when the tensorboard package is installed
    name: str = "lieprop-qm9"
    init_from: str | None = None  # start from this bundle's weights and normalisation (a new schedule)
    init_member: int | None = Field(None, ge=0)  # with init_from an ensemble: start from this member (0 the first)

    @model_validator(mode="before")
    @classmethod
    def _nest_network_keys(cls, data: Any) -> Any:
        return nest_network_keys(data) if isinstance(data, dict) else data

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, v: str) -> str:
        get_architecture(v)  # ValueError naming the known ones
        return v

    @model_validator(mode="after")
    def _valid_network(self) -> TrainConfig:
        self.network_config()  # unknown keys, wrong types and bad values fail here, before any work
        return self

    def network_config(self) -> Any:
        """The architecture's config for this run: ``network`` with the run's ``targets``."""
        arch = get_architecture(self.architecture)
        reserved = sorted(set(self.network) & RUN_KEYS)
        if reserved:
            raise ValueError(f"network.{reserved[0]} is a run key: set {reserved[0]} at the top level")
        unknown = sorted(set(self.network) - network_keys(arch.name))
        if unknown:
            raise ValueError(f"unknown network keys {unknown} for architecture {arch.name}; known: "
                             f"{', '.join(sorted(network_keys(arch.name)))}")
        try:
            return TypeAdapter(arch.config).validate_python({**self.network, "targets": list(self.targets)})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            name = f"network.{where}" if where else "network"
            raise ValueError(f"{name}: {first.get('msg')} (architecture {arch.name})") from None

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if t not in BY_NAME]
        if bad:
            raise ValueError(f"unknown targets {bad}; known: {list(PROPERTY_NAMES)}")
        if not v:
            raise ValueError("at least one target")
        return v


PRESETS: dict[str, dict] = {
    # The LieConv QM9 recipe sized for a CPU budget (see docs/MODEL_CARD.md for why).
    "default": {},
    # The paper's sizes, for GPU runs: k = 1536, 500 epochs, batch 100, one target at a time in the paper; bfloat16
    # autocast on CUDA (nothing changes on a CPU).
    "paper": {"network": {"width": 1536, "depth": 6}, "batch_size": 100, "epochs": 500, "lr": 3e-3,
              "warmup_fraction": 0.01, "orientation": "rotate", "autocast_bf16": True},
    # Short CPU budgets (minutes to an hour): narrower, finer radial basis, summed messages; it won the 6-minute
    # pilots of docs/MODEL_CARD.md and is the configuration of benchmarks/equal_budget.py.
    "budget": {"network": {"width": 128, "radial_basis": 32, "aggregation": "sum"}},
    # SE(3) lifts as in the paper's SE(3) runs.
    "se3": {"network": {"group": "SE3", "fill": 0.5, "nbhd": 25, "lift_samples": 4}},
    # Seconds-long runs for tests.
    "tiny": {"network": {"width": 32, "depth": 2}, "batch_size": 32, "epochs": 2, "limit_train": 256,
             "limit_valid": 64, "ema_decay": 0.0, "warmup_fraction": 0.1},
}


def network_keys(architecture: str = DEFAULT_ARCHITECTURE) -> frozenset[str]:
    """The config keys of ``architecture`` that go under ``network``."""
    return frozenset(f.name for f in dataclasses.fields(get_architecture(architecture).config)) - RUN_KEYS


def nest_network_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with dotted keys (``network.width``) and top-level network keys (``width``, deprecated) moved into
    the ``network`` table. Other keys are left alone (unknown ones are errors later)."""
    out = dict(data)
    network = dict(out.get("network") or {})
    for key in [k for k in out if isinstance(k, str) and k.startswith("network.")]:
        network[key.removeprefix("network.")] = out.pop(key)
    flat = sorted(set(out) & network_keys(str(out.get("architecture", DEFAULT_ARCHITECTURE))))
    if flat:
        warnings.warn(f"top-level network keys {flat} are deprecated; use network.{flat[0]}=... (--set) or a "
                      "[network] table", DeprecationWarning, stacklevel=3)
        for key in flat:
            network[key] = out.pop(key)
    if network or "network" in out:
        out["network"] = network
    return out


def merge_layers(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win, key by key; ``network`` tables are merged key by key too, unless a layer switches to
    another architecture (then the earlier table, another family's keys, is dropped)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = nest_network_keys(layer)
        before = merged.get("architecture", DEFAULT_ARCHITECTURE)
        if layer.get("architecture", before) != before:
            merged.pop("network", None)
        network = {**merged.get("network", {}), **layer.get("network", {})}
        merged.update(layer)
        if network:
            merged["network"] = network
    return merged


def parse_value(text: str):
    """A command-line override value: JSON if it parses (numbers, true, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_override(item: str) -> tuple[str, object]:
    """``KEY=VALUE`` (a ``--set`` argument) -> (key, parsed value); ValueError when there is no ``=``."""
    key, sep, value = item.partition("=")
    if not sep:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    return key.strip(), parse_value(value)


def load_config(preset: str = "default", file: str | Path | None = None,
                overrides: dict | None = None) -> TrainConfig:
    """Preset, then the file's keys, then ``overrides`` (later wins; ``network`` tables merge key by key)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    from_file: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional dependency

            from_file = yaml.safe_load(path.read_text()) or {}
        else:
            from_file = tomllib.loads(path.read_text())
    return TrainConfig(**merge_layers(PRESETS[preset], from_file, overrides or {}))
