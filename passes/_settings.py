"""Reading the reduced-precision and pruning passes' options from the pipeline's settings.

Keys (all optional): ``per_channel`` (default True), ``reduce_range`` (default True),
``exclude`` (globs over node names and op types), ``quantize_outputs`` (default
False), ``accuracy_budget`` (an ``AccuracyBudget``), ``samples`` (input arrays with
samples along axis 0: calibration data), ``calibration_method`` (``minmax``,
``percentile`` or ``entropy``), ``smooth_alpha`` (SmoothQuant migration strength,
None = off), ``keep_io_types`` (float16, default True); for pruning ``prune_ffn`` and
``prune_heads`` (ratios), ``importance`` (magnitude, activation), ``ranking`` (layer,
global), ``repair`` (default: on when samples are given).
"""

from __future__ import annotations

from typing import Any

from optimizer.registry import PassOptions


def pruning_settings(options: PassOptions, ratio_key: str) -> dict[str, Any]:
    """A pruning pass's arguments: its ratio (``settings[ratio_key]``), importance, ranking, repair, budget."""
    settings = options.settings
    return {
        "ratio": float(settings.get(ratio_key) or 0.0),
        "importance": settings.get("importance"),
        "ranking": settings.get("ranking", "layer"),
        "repair": settings.get("repair"),
        "samples": settings.get("samples"),
        "budget": settings.get("accuracy_budget"),
    }


def int8_settings(options: PassOptions) -> dict[str, Any]:
    """Keyword arguments shared by the int8 passes, from ``options.settings``."""
    settings = options.settings
    return {
        "per_channel": bool(settings.get("per_channel", True)),
        "reduce_range": bool(settings.get("reduce_range", True)),
        "exclude": tuple(settings.get("exclude", ()) or ()),
        "quantize_outputs": bool(settings.get("quantize_outputs", False)),
        "budget": settings.get("accuracy_budget"),
        "samples": settings.get("samples"),
        "smooth_alpha": settings.get("smooth_alpha"),
    }
