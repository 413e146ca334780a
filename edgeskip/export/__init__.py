"""Export and compile: ONNX graphs (gated: skip array as input; static: one per config) and IREE modules."""

from edgeskip.export.graphs import GatedGraph, StaticGraph
from edgeskip.export.onnx_export import export_gated, export_static, verify_onnx

__all__ = ["GatedGraph", "StaticGraph", "export_gated", "export_static", "verify_onnx"]
