"""Inference engines over compiled artifacts: numpy in, numpy out. No torch, no compilers.

``iree``: IREE modules over a shared parameter archive (every target); ``ort``: onnxruntime sessions (a host
back end, installed with the ``onnxruntime`` extra).
"""
