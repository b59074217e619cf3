"""graphopt's passes: one module per pass or small family, each an onnx-ir pass usable in any ``PassManager``.

Importing this package (or any one pass) registers nothing and loads nothing else:
the catalog of passes and their composition rules is ``passes/catalog.py``, read by
``optimizer.registry``.
"""
