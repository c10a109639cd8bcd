"""The weight-based baseline: unstructured magnitude pruning, weights zeroed in place.

Each encoder matrix (the same ones `--keep` counts) keeps its largest-magnitude `keep` fraction of entries; the
rest become zeros in a tensor of unchanged shape. On a dense runtime that is the speedup such a method gets.
"""

from __future__ import annotations

import numpy as np
import onnx

from compressor.budget import encoder_matrices
from graph_passes import analyze, normalize, replace_initializers, share_equal_initializers


def magnitude_zeroed(model: onnx.ModelProto, keep: float) -> onnx.ModelProto:
    analysis = analyze(model)
    pruned = normalize(model)
    arrays = {}
    for matrix in encoder_matrices(analysis):
        weight = analysis.values[matrix.weight]
        cut = int(round((1 - keep) * weight.size))
        if cut:
            threshold = np.partition(np.abs(weight), cut - 1, axis=None)[cut - 1]
            arrays[matrix.weight] = np.where(np.abs(weight) > threshold, weight, 0).astype(weight.dtype)
    replace_initializers(pruned, arrays)
    share_equal_initializers(pruned)
    return pruned
