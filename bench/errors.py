"""Errors a user can cause in a benchmark: printed as one line, exit code 2, like every other user error."""

from user_errors import UserError


class BenchError(UserError):
    """A model that does not load, an unknown or unavailable provider, a batch or sequence size that cannot be run."""
