"""The architecture registry: which networks lieprop can build, train, save, load and serve.

An :class:`Architecture` names a network family and says how to make it: its config class (a dataclass with
``targets`` and ``pooling``, deriving from :class:`DictConfig` for ``to_dict`` and ``from_dict``), a function
building the network from a config, and how its predictions are made invariant: ``"frames"`` (the network sees the
molecule in its weighted canonical frames, :mod:`lieprop.model.frames`) or ``"intrinsic"`` (the network is invariant
by construction and sees the input coordinates once).

Every network follows one calling convention, used by training and by inference alike::

    net(features (B, N, F), positions (B, N, 3), mask (B, N), *, generator=None, deterministic=False) -> (B, T)

``features`` are the atom-type features of :func:`lieprop.data.batch.featurize`; the output is per target, in
standardised units (:class:`~lieprop.model.predictor.PropertyModel` turns it into physical ones). ``generator``
drives any sampling during training; ``deterministic=True`` (inference) must make the output a function of the
input alone.

Adding a family is its own module, which defines a module-level ``ARCHITECTURE``, plus one line in
:data:`MODULES`. The registry imports a family's module only when the family is asked for, so a bundle of one
family never loads another's code.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from torch import nn

#: The family of bundles saved before the registry existed, and of new runs unless told otherwise.
DEFAULT_ARCHITECTURE = "lieconv"

#: Registered families: name -> the module that defines its ``ARCHITECTURE``.
MODULES: dict[str, str] = {
    "lieconv": "lieprop.model.network",
    "lconv": "lieprop.model.lconv_network",
    "steerable": "lieprop.model.steerable",
}


class ArchitectureConfig(Protocol):
    """What the rest of lieprop needs from an architecture's config."""

    targets: list[str]
    pooling: list[str] | None

    def to_dict(self) -> dict[str, Any]: ...


class DictConfig:
    """``to_dict`` / ``from_dict`` for an architecture's config dataclass (a base class: ``@dataclass class
    MyConfig(DictConfig)``); ``from_dict`` refuses unknown keys, naming them and the known ones."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {known}")
        return cls(**d)


@dataclass(frozen=True)
class Architecture:
    """A registered network family (see the module doc)."""

    name: str
    config: type  #: dataclass with ``from_dict`` (a classmethod raising ValueError for unknown keys) and ``to_dict``
    build: Callable[[Any], nn.Module]  #: config -> network following the calling convention above
    invariance: Literal["frames", "intrinsic"]
    summary: Callable[[Any], str]  #: config -> one line for ``lieprop info`` ("LieResNet T3, width 256, depth 6")
    paper: str = ""  #: where the family comes from

    def make_config(self, values: dict[str, Any]) -> Any:
        """The family's config from a plain dict (a bundle's, or a training run's ``network`` table)."""
        return self.config.from_dict(values)


def get_architecture(name: str) -> Architecture:
    """The registered family called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in MODULES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(MODULES))}")
    arch = importlib.import_module(MODULES[name]).ARCHITECTURE
    if not isinstance(arch, Architecture) or arch.name != name:
        raise TypeError(f"{MODULES[name]}.ARCHITECTURE is not the {name!r} architecture")
    return arch


def architecture_names() -> list[str]:
    """Every registered family, sorted."""
    return sorted(MODULES)
