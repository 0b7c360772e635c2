"""Training configuration: presets, a TOML/YAML file and command-line overrides, validated by pydantic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lieprop.data.properties import BY_NAME, PROPERTY_NAMES


class TrainConfig(BaseModel):
    """Everything that defines a training run. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    # what to learn
    targets: list[str] = Field(default_factory=lambda: list(PROPERTY_NAMES))
    target_weights: dict[str, float] = Field(default_factory=dict)
    split: Literal["cormorant", "schnet"] = "cormorant"
    limit_train: int | None = None  # use only the first N training molecules (tests, pilots)
    limit_valid: int | None = 5000  # validation molecules evaluated each epoch
    # network
    group: str = "T3"
    width: int = 256
    depth: int = 6
    fill: float = 1.0
    nbhd: int = 100
    lift_samples: int = 1
    kernel_norm: bool = True
    norm: Literal["layer", "affine", "batch"] = "layer"  # normalisation layers (see lieprop.model.norm)
    aggregation: Literal["mean", "sum"] = "mean"  # of messages over a neighbourhood (see lieprop.model.lieconv)
    kernel_hidden: int = 32  # hidden width of the kernel MLP g
    kernel_out: int = 16  # kernel channels contracted with each value channel (the PointConv trick)
    distance_feature: bool = True
    radial_basis: int = 16  # Gaussians of the pair distance as extra kernel input (see docs/MODEL_CARD.md)
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
    # optimisation
    batch_size: int = 64
    lr: float = 3e-3
    warmup_fraction: float = 0.03
    epochs: int = 500
    max_minutes: float | None = None  # wall-time budget; with it the cosine schedule spans the budget
    grad_clip: float = 10.0
    ema_decay: float = 0.999  # 0 disables the exponential moving average of weights
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    # bookkeeping
    out_dir: str = "runs/default"
    checkpoint_minutes: float = 10.0
    tensorboard: bool = True  # also write OUT/tensorboard event files when the tensorboard package is installed
    name: str = "lieprop-qm9"
    init_from: str | None = None  # start from this bundle's weights and normalisation (a new schedule)

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
    # The paper's sizes, for GPU runs: k = 1536, 500 epochs, batch 100, one target at a time in the paper.
    "paper": {"width": 1536, "depth": 6, "batch_size": 100, "epochs": 500, "lr": 3e-3, "warmup_fraction": 0.01,
              "orientation": "rotate"},
    # Short CPU budgets (minutes to an hour): narrower, finer radial basis, summed messages; it won the 6-minute
    # pilots of docs/MODEL_CARD.md and is the configuration of benchmarks/equal_budget.py.
    "budget": {"width": 128, "radial_basis": 32, "aggregation": "sum"},
    # SE(3) lifts as in the paper's SE(3) runs.
    "se3": {"group": "SE3", "fill": 0.5, "nbhd": 25, "lift_samples": 4},
    # Seconds-long runs for tests.
    "tiny": {"width": 32, "depth": 2, "batch_size": 32, "epochs": 2, "limit_train": 256, "limit_valid": 64,
             "ema_decay": 0.0, "warmup_fraction": 0.1},
}


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
    """Preset, then the file's keys, then ``overrides`` (later wins)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    data = dict(PRESETS[preset])
    if file is not None:
        path = Path(file)
        if path.suffix in (".yaml", ".yml"):
            import yaml  # optional dependency

            data.update(yaml.safe_load(path.read_text()) or {})
        else:
            data.update(tomllib.loads(path.read_text()))
    data.update(overrides or {})
    return TrainConfig(**data)
