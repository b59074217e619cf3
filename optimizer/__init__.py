"""graphopt's spine: load → passes → verify → save, the CLI and the Python API.

``optimize`` is the entry point for Python users; ``load_model``/``save_model``
read and write onnx-ir models safely; ``run_pipeline`` runs passes with
verification and rollback. ``optimizer.compare`` is the comparison tool (its
``compare`` function times two models side by side). This package knows passes
only through the registry.

Names are imported on first use, so that a pass importing one leaf module of the
spine (``optimizer.runtime``, ``optimizer.accuracy``) does not load the CLI, the
comparison tool or ``rich``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "optimize": "optimizer.api",
    "optimize_with_report": "optimizer.api",
    "CompareSettings": "optimizer.compare",
    "ComparisonReport": "optimizer.compare",
    "GraphoptError": "optimizer.errors",
    "Options": "optimizer.options",
    "load_model": "optimizer.model_io",
    "save_model": "optimizer.model_io",
    "run_pipeline": "optimizer.pipeline",
    "all_passes": "optimizer.registry",
    "default_pass_names": "optimizer.registry",
    "resolve": "optimizer.registry",
    "PipelineReport": "optimizer.report",
    "DEFAULT_TOLERANCES": "optimizer.verify",
    "Tolerance": "optimizer.verify",
    "Verifier": "optimizer.verify",
}

# Subpackages reachable as attributes: ``optimizer.compare`` is always the comparison tool.
_SUBPACKAGES = ("compare",)

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"optimizer.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBPACKAGES))
