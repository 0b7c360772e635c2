"""The model to predict with: the bundled model's path, and bundles loaded once and cached until their file changes.

Every face of lieprop (the library, the service, file scoring, ``lieprop info`` / ``evaluate``) loads bundles
through :func:`load_model`, so a bundle named twice is read and verified once. Importing this module is cheap (the
service's settings and the CLI's parsers read :func:`default_model_path`); torch loads with the first bundle.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lieprop.model.bundle import Bundle

#: File name of the bundled model inside ``lieprop/models``.
DEFAULT_MODEL = "lieprop-qm9.pt"


class ModelNotFoundError(FileNotFoundError):
    """The model bundle to serve or to predict with does not exist."""


def default_model_path() -> Path:
    """Where the bundled model lives: ``lieprop/models/lieprop-qm9.pt`` inside the installed package."""
    return Path(str(importlib.resources.files("lieprop").joinpath("models", DEFAULT_MODEL)))


def load_model(path: str | os.PathLike | None = None) -> Bundle:
    """Load and verify a bundle (default: the bundled model), cached until the file changes.

    Raises :class:`ModelNotFoundError` when the file is missing and :class:`~lieprop.model.bundle.BundleError`
    when it is not a usable bundle.
    """
    resolved = Path(path) if path is not None else default_model_path()
    try:
        stat = resolved.resolve().stat()
    except OSError:
        hint = ("the bundled model is not installed yet: train one (lieprop train) or point at a bundle with "
                "--model PATH / LIEPROP_MODEL" if path is None or resolved == default_model_path()
                else "check the path given with --model / LIEPROP_MODEL")
        raise ModelNotFoundError(f"model bundle {resolved} does not exist; {hint}") from None
    return _load_cached(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> Bundle:
    from lieprop.model.bundle import load_bundle  # torch loads with the first model, not with this module

    return load_bundle(path)


def as_bundle(model: Bundle | str | os.PathLike | None) -> Bundle:
    """A loaded bundle as it is, else :func:`load_model` of the path (None: the bundled model): what every
    ``model=`` argument of lieprop accepts."""
    from lieprop.model.bundle import Bundle

    return model if isinstance(model, Bundle) else load_model(model)
