"""Pure ONNX graph analysis and rewriting: find coupled channel groups, apply masks to them."""

from graph_passes.channel_groups import ChannelGroup, GraphAnalysis, Member, analyze, require_prunable
from graph_passes.dims import Blocker
from graph_passes.errors import GraphPassError, MaskError, NotOnnxError, UnsupportedGraphError
from graph_passes.model_io import load_model
from graph_passes.slicing import apply_masks

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
    "load_model",
    "require_prunable",
]
