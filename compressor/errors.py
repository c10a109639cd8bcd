"""Errors a user can cause in the pipeline; the CLI prints each as one line and exits with code 2."""

from user_errors import UserError


class CompressorError(UserError):
    """Base class for pipeline errors explained in one line."""


class CalibrationError(CompressorError):
    """Calibration data that cannot be read: missing file or columns, empty file, labels that are not numbers."""


class CalibrationMismatchError(CompressorError):
    """Calibration data that does not match the model's inputs."""


class BudgetError(CompressorError):
    """A keep fraction outside (0, 1], or one the chosen granularity cannot reach."""


class OutputPathError(CompressorError):
    """An output path that would overwrite the input or cannot be written."""
