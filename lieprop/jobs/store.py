"""Deprecated alias of :mod:`lieprop.service.job_store` (see :mod:`lieprop.jobs`)."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("lieprop.service.job_store")
