"""Errors a user can act on. The CLI turns each into a one-paragraph message and exit code 2."""


class SegmentationError(Exception):
    """Base class: anything the user can fix by changing input, config or data."""


class ConfigError(SegmentationError):
    """The YAML config (or a --set override) is invalid; the message names the key."""


class DataValidationError(SegmentationError):
    """The exposure data violates the contract; the message names the column, key or row count."""


class SeparationError(SegmentationError):
    """The likelihood has no finite minimiser in a direction the penalty does not bound."""


class ConvergenceWarning(UserWarning):
    """The solver hit max_iter before its optimality residual reached the tolerance."""
