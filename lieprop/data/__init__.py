"""Everything before the model: elements and features, molecule records, readers, QM9, batching.

The format registry is imported with the package, so that the error codes of every built-in input kind are known
(:func:`lieprop.data.validation.error_codes`) whichever data module is imported first."""

from lieprop.data import formats as formats  # noqa: F401 - registers the built-in formats
