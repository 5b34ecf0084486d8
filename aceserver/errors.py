"""Exceptions that name the problem, shared by the evaluator, the file readers and the servers.

Servers map these to 4xx responses (HTTP) or to a clean socket shutdown (i-PI); they are
raised for user input, never for programming errors.
"""


class ACEInputError(ValueError):
    """Bad user input. ``field`` names the offending input (e.g. ``"positions"``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownElementError(ACEInputError):
    """A structure holds an element that the model has no parameters for."""


class ModelFileError(ValueError):
    """A model file is corrupted, truncated, of an unknown schema version or otherwise unreadable."""
