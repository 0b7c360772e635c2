"""Deprecated alias of :mod:`lieprop.scoring.output` (see :mod:`lieprop.jobs`)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("lieprop.scoring.output")
