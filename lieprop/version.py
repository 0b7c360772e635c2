"""The version of this lieprop (the package's ``__version__``), in a module of its own so that every layer may read
it without importing the top-level package."""

__version__ = "0.1.0"
