"""The compression pipeline: calibration, activation capture, MI scoring, masks, recovery, CLI and Python API."""

from compressor.pipeline import CompressionResult, compress

__all__ = ["CompressionResult", "compress"]
