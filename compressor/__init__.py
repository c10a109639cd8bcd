"""The compression pipeline: calibration, activation capture, MI scoring, masks, recovery, CLI and Python API."""
