"""Fusion passes: decomposed subgraphs into the fused operators ONNX Runtime runs fastest."""
