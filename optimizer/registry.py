"""The pass registry: graphopt's catalog of passes, and ``resolve``, which turns a request into a checked pipeline.

The catalog (``passes/catalog.py``) declares each pass and its composition rules
(``optimizer.protocol.PassSpec``); ``resolve`` applies them, so the CLI and the
Python API accept and refuse exactly the same requests, with the same words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from optimizer.errors import OptionError, PassSelectionError
from optimizer.options import TARGETS, Options, flag_of
from optimizer.protocol import PassSpec

__all__ = ["TARGETS", "all_passes", "default_pass_names", "resolve"]


def all_passes() -> list[PassSpec]:
    """Every registered pass, in pipeline order."""
    from passes.catalog import CATALOG

    names = [spec.name for spec in CATALOG]
    if len(set(names)) != len(names):
        raise ValueError(f"a pass is registered twice: {sorted(n for n in names if names.count(n) > 1)}")
    return list(CATALOG)


def default_pass_names(target: str = "cpu") -> list[str]:
    """Names of the passes in ``target``'s default pipeline, in order; ``OptionError`` for an unknown target (an
    empty list read as "nothing to run" for ``"gpu"`` or ``"CUDA"``)."""
    if target not in TARGETS:
        raise OptionError(f"--target {target}: expected one of {', '.join(TARGETS)}")
    return [spec.name for spec in all_passes() if target in spec.default_for]


def resolve(names: Sequence[str] | None, options: Options | None = None) -> list[PassSpec]:
    """The passes to run, in order, for ``names`` and ``options``; ``PassSelectionError`` if they do not compose.

    ``names``: registered pass names in order (the whole pipeline), ``None`` for the
    target's default pipeline, or only changes to the default pipeline: ``+NAME`` adds a
    pass (at its registered position), ``-NAME`` leaves one of the target's default passes
    out (a pass an option asks for cannot be left out: that is a contradiction, refused).
    Options that ask for a pass (``quantize="dynamic"``, ``prune_ffn=0.3``, ``fp16=True``)
    add it the same way, after an explicit list.
    ``static_shapes`` puts the shape-specializing passes first. Then the rules declared
    on the passes are checked: every pass may run on the target, has the option it
    needs, excludes no other pass in the pipeline and runs after the passes it must
    follow; and every option set away from its default is read by some pass.
    """
    options = options or Options()
    registry = {spec.name: spec for spec in all_passes()}
    names = list(names) if names is not None else None
    if names is not None:
        for name in names:
            if _bare(name) not in registry:
                known = ", ".join(registry)
                raise PassSelectionError(
                    f"unknown pass '{_bare(name)}' (registered passes: {known}; see `graphopt passes`)"
                )
        if any(_is_change(name) for name in names) and not all(_is_change(name) for name in names):
            raise PassSelectionError(
                "--passes: either list every pass, or only +NAME/-NAME changes to the default pipeline"
            )
    requested = [spec.name for spec in registry.values() if spec.requested_by and spec.requested_by.asked(options)]
    bare = [_bare(name) for name in names or []]
    if len(set(bare)) != len(bare):
        twice = next(name for name in bare if bare.count(name) > 1)
        raise PassSelectionError(f"--passes names {twice} twice: each pass runs once")
    if names is None or (names and all(_is_change(name) for name in names)):
        extra = {_bare(name) for name in names or [] if name.startswith("+")} | set(requested)
        left_out = {_bare(name) for name in names or [] if name.startswith("-")}
        for name in sorted(left_out):
            spec = registry[name]
            if name in requested:
                raise PassSelectionError(f"--passes -{name}: {spec.requested_by.describe()} asks for {name}; drop one")
            if options.target not in spec.default_for:
                raise PassSelectionError(
                    f"--passes -{name}: {name} is not in the default pipeline for --target {options.target} "
                    "(nothing to leave out; `graphopt passes` lists it)"
                )
        chosen = [
            s.name
            for s in registry.values()
            if (options.target in s.default_for or s.name in extra) and s.name not in left_out
        ]
        if not chosen:
            raise PassSelectionError("--passes: every pass is left out; there is nothing to run")
    else:
        chosen = names + [name for name in requested if name not in names]
    specs = [registry[name] for name in chosen]
    if options.static_shapes:  # first, wherever a list or the request put them
        specs = [s for s in registry.values() if s.specializes_shapes] + [s for s in specs if not s.specializes_shapes]
    _check(specs, options, registry)
    return specs


def _bare(name: str) -> str:
    """A pass name without the ``+`` or ``-`` that adds it to or leaves it out of the default pipeline (only one)."""
    return name[1:] if _is_change(name) else name


def _is_change(name: str) -> bool:
    """Whether ``name`` is a change to the default pipeline (``+NAME`` or ``-NAME``) rather than a pass in a list."""
    return name.startswith(("+", "-"))


def _check(specs: list[PassSpec], options: Options, registry: dict[str, PassSpec]) -> None:
    names = [spec.name for spec in specs]
    for spec in specs:
        if options.target not in spec.targets:
            reason = f" ({spec.target_reason})" if spec.target_reason else ""
            raise PassSelectionError(f"{_asked(spec, options)} is for --target {'|'.join(spec.targets)}{reason}")
        if spec.needs is not None and getattr(options, spec.needs) in (None, False):
            raise PassSelectionError(f"{spec.name} needs {_describe_need(spec)}")
        for other in spec.excludes:
            if other in names:
                first, second = sorted((spec, registry[other]), key=lambda s: names.index(s.name))
                raise PassSelectionError(
                    f"{_asked(first, options)} and {_asked(second, options)} do not combine: choose one"
                )
        for earlier in spec.after:
            if earlier in names and names.index(earlier) > names.index(spec.name):
                raise PassSelectionError(f"{spec.name} must run after {earlier}: list {earlier} first")
    read = set().union(*(spec.options_read for spec in specs)) if specs else set()
    readers: dict[str, list[PassSpec]] = {}
    for spec in registry.values():
        for option in spec.options_read:
            readers.setdefault(option, []).append(spec)
    for option in options.changed():
        if option in readers and option not in read:
            asks = ways_to_ask(readers[option])
            raise PassSelectionError(f"{options.describe(option)} needs {asks}")
    budgeted = [spec for spec in specs if spec.times_kernels == "budget" and spec.kernels_timed(options)]
    if options.budget_decode_steps is not None and not budgeted:
        timed = ways_to_ask(spec for spec in all_passes() if spec.times_kernels == "budget")
        raise PassSelectionError(
            f"{options.describe('budget_decode_steps')} does nothing here: it sets how an accuracy budget "
            f"(--min-cosine/--min-worst-cosine/--max-error) of {timed} times a decoder's layers"
        )
    if options.threads is not None and not any(spec.kernels_timed(options) for spec in specs):
        raise PassSelectionError(
            f"{options.describe('threads')} does nothing here: it sets the threads of the kernel timings of "
            f"{kernel_timing_passes()}"
        )


def kernel_timing_passes() -> str:
    """How a user asks for a pass that times kernels (what ``threads`` sets): ``--lowrank R or ...``."""
    specs = [spec for spec in all_passes() if spec.times_kernels]
    budgeted = (
        " (some only under --min-cosine/--min-worst-cosine/--max-error)"
        if any(s.times_kernels == "budget" for s in specs)
        else ""
    )
    return ways_to_ask(specs) + budgeted


def ways_to_ask(specs: Iterable[PassSpec]) -> str:
    """How a user asks for any of ``specs``: ``--prune-ffn R or --quantize dynamic``. A pass asked only
    by a combination of flags (prune-ffn-heads: both pruning ratios) is reached through its parts."""
    listed = [spec for spec in specs if getattr(spec.requested_by, "listed", True)]
    return " or ".join(dict.fromkeys(spec.how_to_ask() for spec in listed))


def _asked(spec: PassSpec, options: Options) -> str:
    """How the user asked for ``spec``: its flag when that option is set, else its name."""
    if spec.requested_by is not None and spec.requested_by.asked(options):
        return spec.requested_by.describe()
    return spec.name


def _describe_need(spec: PassSpec) -> str:
    flag = flag_of(spec.needs)
    return f"its ratio: {flag} R ({spec.needs}=R)" if spec.needs.startswith("prune_") else f"{flag} ({spec.needs}=...)"
