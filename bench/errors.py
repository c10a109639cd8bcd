"""Errors a user can cause in a benchmark: printed as one line, exit code 2, like every other user error."""

from graph_passes.errors import GraphPassError


class BenchError(GraphPassError):
    """A model that does not load, an unknown or unavailable provider, a batch or sequence size that cannot be run."""
