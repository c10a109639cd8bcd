"""The one root of every error a user can cause: a file, a graph or an option that cannot be used as given.

`graph_passes`, `compressor` and `bench` each derive their error types from `UserError`; the command line turns any
of them into one line on stderr and exit code 2. Anything else that escapes is a bug.
"""


class UserError(Exception):
    """A problem with what the user passed, explained in one line that names the problem and the fix."""

    def __str__(self) -> str:
        text = super().__str__().strip()
        return text.splitlines()[0] if text else type(self).__name__


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
