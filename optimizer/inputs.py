"""Verification inputs: read from an .npz file, or generated from the graph's input types.

Generated inputs follow what a transformer or CNN expects: symbolic dimensions are
bound by name (``--dim NAME=VALUE``; batch-like dims default to 1, every other
symbolic dim to 128), token-id-like integer inputs stay inside the embedding table
they index, attention masks are ones (with two or more rows, the last row's final
quarter is padding, so verification exercises masking), and floats are standard
normal. Generation is seeded, so the same model always gets the same inputs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_domain
from optimizer.errors import InputSpecError

DEFAULT_BATCH = 1
DEFAULT_SEQUENCE = 128

_BATCH_NAME = re.compile(r"batch|^n$|^b$|^N$", re.IGNORECASE)
_MASK_NAME = re.compile(r"mask", re.IGNORECASE)
_POSITION_NAME = re.compile(r"position", re.IGNORECASE)

# Ops that carry integer indices through unchanged, on the way to the Gather that
# uses them (exporters add casts and reshapes between token ids and embeddings).
_INDEX_PRESERVING_OPS = frozenset(
    {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand", "Transpose"}
)
_DEFAULT_INT_HIGH = 2


def symbolic_dims(model: ir.Model) -> list[str]:
    """Names of the symbolic dimensions of the graph's inputs, in first-seen order."""
    names: list[str] = []
    for value in runtime_inputs(model):
        if value.shape is None:
            continue
        for dim in value.shape:
            if isinstance(dim, ir.SymbolicDim) and dim.value and dim.value not in names:
                names.append(dim.value)
    return names


def bind_dims(model: ir.Model, overrides: Mapping[str, int] | None = None) -> dict[str, int]:
    """Map every named symbolic input dimension to a size: ``overrides`` first, then defaults.

    Raises ``InputSpecError`` for an override naming a dim the model does not have.
    """
    overrides = dict(overrides or {})
    names = symbolic_dims(model)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        known = ", ".join(names) or "none"
        raise InputSpecError(f"--dim {unknown[0]}: the model has no symbolic dimension of that name (it has: {known})")
    bound = {}
    for name in names:
        if name in overrides:
            bound[name] = overrides[name]
        elif _BATCH_NAME.search(name):
            bound[name] = DEFAULT_BATCH
        else:
            bound[name] = DEFAULT_SEQUENCE
    return bound


def dims_from_inputs(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size each named symbolic input dim has in ``inputs``."""
    dims: dict[str, int] = {}
    for value in runtime_inputs(model):
        array = inputs.get(value.name)
        if array is None or value.shape is None or len(value.shape) != np.ndim(array):
            continue
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, ir.SymbolicDim) and dim.value:
                dims.setdefault(dim.value, int(np.shape(array)[axis]))
    return dims


def alternate_binding(model: ir.Model, overrides: Mapping[str, int] | None = None) -> dict[str, int] | None:
    """A second binding that changes every dim not fixed by ``overrides``, or None if there is none.

    Batch-like dims go from 1 to 2, others to about half their default, so the
    alternate stays inside position tables sized for the default.
    """
    overrides = dict(overrides or {})
    bound = bind_dims(model, overrides)
    free = [name for name in bound if name not in overrides]
    if not free:
        return None
    alternate = dict(bound)
    for name in free:
        alternate[name] = bound[name] + 1 if _BATCH_NAME.search(name) else bound[name] // 2 + 1
    return alternate


def batch_dims(model: ir.Model) -> list[str]:
    """Names of the symbolic input dims that look like a batch axis (``batch``, ``N``...)."""
    return [name for name in symbolic_dims(model) if _BATCH_NAME.search(name)]


def parse_dim_flags(flags: list[str] | None) -> dict[str, int]:
    """Parse ``NAME=VALUE`` strings from the command line into a dict."""
    dims: dict[str, int] = {}
    for flag in flags or []:
        name, sep, value = flag.partition("=")
        if not sep or not name or not value.strip().isdigit() or int(value) <= 0:
            raise InputSpecError(f"--dim {flag}: expected NAME=VALUE with a positive integer VALUE")
        dims[name.strip()] = int(value)
    return dims


def load_inputs(path: str | os.PathLike, model: ir.Model, *, flag: str = "--inputs") -> dict[str, np.ndarray]:
    """Read inputs from an .npz file whose keys are the graph's input names (``flag`` names it in errors)."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file holds one array, not named inputs
            raise InputSpecError(f"{flag} {path}: a single array, not a .npz file with one array per input name")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError as error:
        raise InputSpecError(f"{flag} {path}: no such file") from error
    except (OSError, ValueError) as error:
        raise InputSpecError(f"{flag} {path}: not a readable .npz file ({error})") from error
    return check_inputs(arrays, model, f"{flag} {path}")


def check_inputs(arrays: Mapping[str, np.ndarray], model: ir.Model, source: str) -> dict[str, np.ndarray]:
    """Check that ``arrays`` has every graph input with the right dtype and rank; return them in input order."""
    required = [value.name for value in runtime_inputs(model)]
    missing = [name for name in required if name not in arrays]
    if missing:
        raise InputSpecError(
            f"{source}: no array for graph input '{missing[0]}' (keys must be the input names: {', '.join(required)})"
        )
    for value in runtime_inputs(model):
        array = arrays[value.name]
        if value.dtype is not None and value.dtype != ir.DataType.STRING and array.dtype != value.dtype.numpy():
            raise InputSpecError(f"{source}: '{value.name}' is {array.dtype}, the model expects {value.dtype.numpy()}")
        if value.shape is not None and len(value.shape) != array.ndim:
            raise InputSpecError(
                f"{source}: '{value.name}' has rank {array.ndim}, the model expects {len(value.shape)}"
            )
    return {name: arrays[name] for name in required}


def make_inputs(model: ir.Model, dims: Mapping[str, int] | None = None, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Generate one input array per graph input, with symbolic dims bound by ``bind_dims``.

    Raises ``InputSpecError`` for an input with no type or shape, or of a type we
    cannot generate (strings, sequences): pass real inputs with ``--inputs`` instead.
    """
    bound = bind_dims(model, dims)
    rng = np.random.default_rng(seed)
    inputs = {}
    for value in runtime_inputs(model):
        shape = _concrete_shape(value, bound)
        inputs[value.name] = _generate(model, value, shape, rng)
    return inputs


def runtime_inputs(model: ir.Model) -> list[ir.Value]:
    """Graph inputs the caller must feed; inputs that are also initializers are optional overrides."""
    return [value for value in model.graph.inputs if value.name not in model.graph.initializers]


def _concrete_shape(value: ir.Value, bound: Mapping[str, int]) -> tuple[int, ...]:
    if not isinstance(value.type, ir.TensorType):
        raise InputSpecError(
            f"input '{value.name}' is not a tensor ({value.type}); pass real inputs with --inputs FILE.npz"
        )
    if value.shape is None:
        raise InputSpecError(f"input '{value.name}' has no shape; pass --inputs FILE.npz or --no-verify")
    shape = []
    for axis, dim in enumerate(value.shape):
        if isinstance(dim, int) and dim >= 0:
            shape.append(dim)
        elif isinstance(dim, int):  # -1: some exporters (Paddle) mark a dynamic dim this way
            shape.append(DEFAULT_BATCH if axis == 0 else DEFAULT_SEQUENCE)
        elif dim.value:
            shape.append(bound[dim.value])
        else:
            shape.append(DEFAULT_BATCH if axis == 0 else DEFAULT_SEQUENCE)
    return tuple(shape)


def _generate(model: ir.Model, value: ir.Value, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = value.dtype
    if dtype == ir.DataType.STRING:
        raise InputSpecError(f"input '{value.name}' holds strings; pass real inputs with --inputs FILE.npz")
    numpy_dtype = dtype.numpy()
    if dtype == ir.DataType.BOOL:
        if _MASK_NAME.search(value.name):
            return np.ones(shape, dtype=bool)
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.is_integer():
        if _MASK_NAME.search(value.name):
            return _padding_mask(shape, numpy_dtype)
        high = _index_range(value) or _DEFAULT_INT_HIGH
        if _POSITION_NAME.search(value.name) and shape:
            positions = np.arange(shape[-1]) % high
            return np.broadcast_to(positions, shape).astype(numpy_dtype)
        return rng.integers(0, high, size=shape).astype(numpy_dtype)
    if dtype.is_floating_point():
        if _MASK_NAME.search(value.name):
            return _padding_mask(shape, numpy_dtype)
        return rng.standard_normal(shape).astype(numpy_dtype)
    raise InputSpecError(
        f"input '{value.name}' has type {dtype}, which graphopt cannot generate; pass --inputs FILE.npz"
    )


def _padding_mask(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Ones (attend), except that a ``[batch >= 2, seq >= 4]`` mask pads its last row's final quarter.

    Right padding leaves every query row some key to attend to, so the original's
    outputs stay finite, while verification still sees masking at work.
    """
    mask = np.ones(shape, dtype=dtype)
    if len(shape) == 2 and shape[0] >= 2 and shape[1] >= 4:
        mask[-1, shape[1] - shape[1] // 4 :] = 0
    return mask


def _index_range(value: ir.Value) -> int | None:
    """Smallest table size among the Gathers this value indexes into, if any."""
    sizes = []
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        for node, index in current.uses():
            if node.op_type == "Gather" and is_onnx_domain(node) and index == 1:
                table = node.inputs[0]
                if table is None or table.shape is None or len(table.shape) == 0:
                    continue
                axis = node.attributes.get_int("axis", 0) % len(table.shape)
                if isinstance(table.shape[axis], int):
                    sizes.append(table.shape[axis])
            elif node.op_type in _INDEX_PRESERVING_OPS and index == 0:
                frontier.extend(node.outputs)
    return min(sizes) if sizes else None


SAMPLE_BATCH = 16


def split_samples(
    samples: Mapping[str, np.ndarray], size: int = SAMPLE_BATCH, model: ir.Model | None = None
) -> list[dict[str, np.ndarray]]:
    """Cut inputs holding many samples along axis 0 (calibration data) into batches of at most ``size``.

    With ``model``, a graph input whose first dim is a fixed number sets the batch size
    instead (a model built for batch 1 is fed one sample at a time). Scalars are passed
    whole to every batch.
    """
    if model is not None:
        fixed = [
            v.shape[0]
            for v in model.graph.inputs
            if v.shape is not None and v.shape.rank() and isinstance(v.shape[0], int)
        ]
        size = min([d for d in fixed if d > 0], default=size)
    arrays = {name: np.asarray(array) for name, array in samples.items()}
    count = min((len(array) for array in arrays.values() if array.ndim), default=1)
    return [
        {name: array[start : start + size] if array.ndim else array for name, array in arrays.items()}
        for start in range(0, count, size)
    ]
