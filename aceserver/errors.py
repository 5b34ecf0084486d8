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


class TooManyPairsError(ACEInputError):
    """A structure has more neighbour pairs than the caller allows (``pairs`` > ``limit``); raised by
    the neighbour search after counting and before allocating them, so front ends can answer it as
    a work limit (HTTP 413) rather than as a bad structure."""

    def __init__(self, message: str, field: str | None, pairs: int, limit: int):
        super().__init__(message, field)
        self.pairs, self.limit = pairs, limit


class ModelFileError(ValueError):
    """A model file is corrupted, truncated, of an unknown schema version or otherwise unreadable."""


class EvaluationCancelled(RuntimeError):
    """An evaluation stopped because its caller asked it to (`evaluate(cancel=...)`): nobody waits
    for the result. Not an input error."""


class NoActiveSetError(ACEInputError):
    """The extrapolation grade γ was asked of a model that has no active set attached (or whose
    active set was built for another model). Front ends answer it as a request the model cannot
    serve; the message says how to build one (`aceserver activeset`)."""

    def __init__(self, message: str, field: str | None = "properties"):
        super().__init__(message, field)
