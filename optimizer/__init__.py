"""graphopt's spine: load → passes → verify → save, the CLI and the Python API.

``optimize`` is the entry point for Python users; ``load_model``/``save_model``
read and write onnx-ir models safely; ``run_pipeline`` runs passes with
verification and rollback. This package knows passes only through the registry.
"""

from optimizer.api import optimize, optimize_with_report
from optimizer.comparison import CompareSettings, ComparisonReport, compare
from optimizer.errors import GraphoptError
from optimizer.model_io import load_model, save_model
from optimizer.pipeline import run_pipeline
from optimizer.registry import PassOptions, all_passes, default_pass_names, register, resolve
from optimizer.report import PipelineReport
from optimizer.verify import DEFAULT_TOLERANCES, Tolerance, Verifier

__all__ = [
    "CompareSettings",
    "ComparisonReport",
    "compare",
    "DEFAULT_TOLERANCES",
    "GraphoptError",
    "PassOptions",
    "PipelineReport",
    "Tolerance",
    "Verifier",
    "all_passes",
    "default_pass_names",
    "load_model",
    "optimize",
    "optimize_with_report",
    "register",
    "resolve",
    "run_pipeline",
    "save_model",
]
