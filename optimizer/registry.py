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
    """One registered pass: ``factory(options)`` builds a fresh onnx-ir pass instance."""

    name: str
    factory: Callable[[PassOptions], ir.passes.PassBase]
    summary: str
    default_for: frozenset[str]


_REGISTRY: dict[str, PassSpec] = {}


def register(
    name: str,
    factory: Callable[[PassOptions], ir.passes.PassBase],
    summary: str,
    *,
    default_for: tuple[str, ...] = (),
) -> None:
    """Add a pass under ``name``; ``default_for`` lists targets whose default pipeline runs it.

    Registration order is pipeline order.
    """
    if name in _REGISTRY:
        raise ValueError(f"pass {name!r} is registered twice")
    unknown = set(default_for) - set(TARGETS)
    if unknown:
        raise ValueError(f"pass {name!r}: unknown targets {sorted(unknown)}")
    _REGISTRY[name] = PassSpec(name, factory, summary, frozenset(default_for))


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


def resolve(names: list[str] | None, target: str = "cpu") -> list[PassSpec]:
    """Look up passes by name (``None`` = the target's default pipeline), keeping the given order."""
    if target not in TARGETS:
        raise PassSelectionError(f"--target {target}: unknown target (choose from {', '.join(TARGETS)})")
    load_builtin_passes()
    if names is None:
        names = default_pass_names(target)
    specs = []
    for name in names:
        if name not in _REGISTRY:
            known = ", ".join(_REGISTRY)
            raise PassSelectionError(f"unknown pass '{name}' (registered passes: {known}; see `graphopt passes`)")
        specs.append(_REGISTRY[name])
    return specs
