"""Errors a user can act on. The CLI turns each into a one-paragraph message and its
``exit_code`` (2 unless a subclass says otherwise)."""


class SegmentationError(Exception):
    """Base class: anything the user can fix by changing input, config or data."""

    exit_code = 2


class ConfigError(SegmentationError):
    """The YAML config (or a --set override) is invalid; the message names the key."""


class DataValidationError(SegmentationError):
    """The exposure data violates the contract; the message names the column, key or row count."""


class ModelFileError(SegmentationError):
    """A ``model.json`` that is not valid JSON or not a model this package wrote (truncated,
    edited, another format version); the message names the file."""


class SeparationError(SegmentationError):
    """The likelihood has no finite minimiser in a direction the penalty does not bound."""


class TrackingUnavailable(SegmentationError):
    """The MLflow tracking store could not be reached before the work started (nothing was
    fitted or written). Exit code 3."""

    exit_code = 3


class TrackingIncomplete(SegmentationError):
    """The work finished and its outputs were written, but MLflow logging failed part way;
    the message says what was not logged. Exit code 4."""

    exit_code = 4


class ConvergenceWarning(UserWarning):
    """The solver hit max_iter before its optimality residual reached the tolerance."""
