"""Deprecated alias of :mod:`lieprop.scoring.ray_engine` (see :mod:`lieprop.jobs`)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("lieprop.scoring.ray_engine")
