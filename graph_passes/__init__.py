"""Pure ONNX graph analysis and rewriting: find coupled channel groups, apply masks to them."""

from graph_passes.channel_groups import ChannelGroup, GraphAnalysis, Member, analyze, require_prunable
from graph_passes.dims import Blocker
from graph_passes.errors import GraphPassError, MaskError, NotOnnxError, UnsupportedGraphError
from graph_passes.model_io import load_model, normalize, share_equal_initializers
from graph_passes.slicing import apply_masks, kept_along
from graph_passes.weight_edits import (
    computed_before,
    initializer_behind,
    layer_cuts,
    linear_bias,
    linear_biases,
    replace_initializers,
    truncated,
)

__all__ = [
    "Blocker",
    "ChannelGroup",
    "GraphAnalysis",
    "GraphPassError",
    "MaskError",
    "Member",
    "NotOnnxError",
    "UnsupportedGraphError",
    "analyze",
    "apply_masks",
    "computed_before",
    "initializer_behind",
    "kept_along",
    "layer_cuts",
    "linear_bias",
    "linear_biases",
    "load_model",
    "normalize",
    "replace_initializers",
    "require_prunable",
    "share_equal_initializers",
    "truncated",
]
