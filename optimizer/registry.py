"""The pass registry: a name for each pass, a factory, and the targets whose default pipeline runs it.

The optimizer knows passes only through this registry. Pass modules register
themselves with one line each in ``passes/__init__.py``; importing that package
(``load_builtin_passes``) fills the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from optimizer.errors import PassSelectionError

TARGETS = ("cpu", "cuda")


@dataclass(frozen=True)
class PassOptions:
    """What a pass factory may know about the run: the target EP, bound dims, and extra settings."""

    target: str = "cpu"
    dims: Mapping[str, int] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassSpec:
    """One registered pass: ``factory(options)`` builds a fresh onnx-ir pass instance.

    ``specializes_shapes`` marks a pass whose result accepts only the bound input
    shapes (``--static-shapes`` runs these first; verification then uses one binding).
    ``approximate`` marks a pass that changes numerics on purpose (quantization,
    float16): it is verified against an accuracy budget, not float32 closeness.
    """

    name: str
    factory: Callable[[PassOptions], ir.passes.PassBase]
    summary: str
    default_for: frozenset[str]
    specializes_shapes: bool = False
    approximate: bool = False


_REGISTRY: dict[str, PassSpec] = {}


def register(
    name: str,
    factory: Callable[[PassOptions], ir.passes.PassBase],
    summary: str,
    *,
    default_for: tuple[str, ...] = (),
    specializes_shapes: bool = False,
    approximate: bool = False,
) -> None:
    """Add a pass under ``name``; ``default_for`` lists targets whose default pipeline runs it.

    Registration order is pipeline order. See ``PassSpec`` for the flags.
    """
    if name in _REGISTRY:
        raise ValueError(f"pass {name!r} is registered twice")
    unknown = set(default_for) - set(TARGETS)
    if unknown:
        raise ValueError(f"pass {name!r}: unknown targets {sorted(unknown)}")
    _REGISTRY[name] = PassSpec(name, factory, summary, frozenset(default_for), specializes_shapes, approximate)


def load_builtin_passes() -> None:
    """Import the ``passes`` package, whose ``__init__`` registers graphopt's own passes."""
    importlib.import_module("passes")


def all_passes() -> list[PassSpec]:
    """Every registered pass, in pipeline order."""
    load_builtin_passes()
    return list(_REGISTRY.values())


def default_pass_names(target: str = "cpu") -> list[str]:
    """Names of the passes in ``target``'s default pipeline, in order."""
    return [spec.name for spec in all_passes() if target in spec.default_for]


def resolve(names: list[str] | None, target: str = "cpu", *, static_shapes: bool = False) -> list[PassSpec]:
    """Look up passes by name (``None`` = the target's default pipeline), keeping the given order.

    When every name starts with ``+`` (``["+fuse-gelu"]``), those passes are added to the
    target's default pipeline instead, each at its registered position.
    ``static_shapes`` puts the shape-specializing passes first if they are not listed.
    """
    if target not in TARGETS:
        raise PassSelectionError(f"--target {target}: unknown target (choose from {', '.join(TARGETS)})")
    load_builtin_passes()
    if names is None:
        names = default_pass_names(target)
    elif names and all(name.startswith("+") for name in names):
        extra = {name[1:] for name in names}
        unknown = sorted(extra - set(_REGISTRY))
        if unknown:
            raise PassSelectionError(f"unknown pass '{unknown[0]}' (see `graphopt passes`)")
        names = [spec.name for spec in _REGISTRY.values() if target in spec.default_for or spec.name in extra]
    elif any(name.startswith("+") for name in names):
        raise PassSelectionError("--passes: either list every pass, or only +NAME additions to the default pipeline")
    specs = []
    for name in names:
        if name not in _REGISTRY:
            known = ", ".join(_REGISTRY)
            raise PassSelectionError(f"unknown pass '{name}' (registered passes: {known}; see `graphopt passes`)")
        specs.append(_REGISTRY[name])
    if static_shapes:
        specializing = [spec for spec in _REGISTRY.values() if spec.specializes_shapes and spec not in specs]
        specs = specializing + specs
    return specs
