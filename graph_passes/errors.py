"""Error types raised by graph analysis and rewriting; the CLI turns each into one line."""

from user_errors import UserError


class GraphPassError(UserError):
    """Base class: a problem with the model or the request, explained in one line."""


class NotOnnxError(GraphPassError):
    """The file cannot be parsed as an ONNX model."""


class UnsupportedGraphError(GraphPassError):
    """The graph holds something the passes cannot prune through."""


class MaskError(GraphPassError):
    """A mask does not fit the group it is meant for."""
