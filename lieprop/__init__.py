"""lieprop: quantum-chemical properties of small organic molecules with LieConv, trained on QM9."""

__version__ = "0.1.0"
