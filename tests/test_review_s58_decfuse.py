"""Review (s58, decoder fusions): respellings of rotate_half that fuse-rotary-embedding must read as it reads the
exporters' own.

``x[..., -d/2:]`` and ``x[..., :-d/2]`` are ``x[..., d/2:]`` and ``x[..., :d/2]``: ONNX's Slice counts a negative
bound from the end of the axis. Both exporters write such a rotate_half with those negative constants
(``torch.cat((-x[..., -h:], x[..., :-h]), -1)``), and the rotation was left unfused with the wrong reason ("not a
full, non-interleaved rotate_half").
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from tests.helpers import FIXTURES, run
from tests.respelling import add_initializer as _add_initializer
from tests.respelling import clone as _clone
from tests.respelling import close as _close
from tests.respelling import optimized as _optimized
from tests.respelling import rotate_halves

_HEAD_SIZE = 16  # llama_legacy: 4 heads of 16
_END = np.iinfo(np.int64).max


def _sliced_at(lo_bounds: tuple[int, int], hi_bounds: tuple[int, int]) -> onnx.ModelProto:
    """llama_legacy with each rotate_half's halves sliced at the given constant (start, end) on the last axis."""
    proto = _clone(onnx.load(FIXTURES / "llama_legacy.onnx"))
    names = {}
    for label, value in (
        ("lo_start", lo_bounds[0]),
        ("lo_end", lo_bounds[1]),
        ("hi_start", hi_bounds[0]),
        ("hi_end", hi_bounds[1]),
        ("axis", -1),
        ("step", 1),
    ):
        names[label] = _add_initializer(proto, f"s58_{label}", np.array([value], np.int64))
    found = [(lo, hi) for _, _, lo, hi in rotate_halves(proto)]
    assert found, "no rotate_half found"
    for lo, hi in found:
        x = lo.input[0]
        del lo.input[:], hi.input[:]
        lo.input.extend([x, names["lo_start"], names["lo_end"], names["axis"], names["step"]])
        hi.input.extend([x, names["hi_start"], names["hi_end"], names["axis"], names["step"]])
    onnx.checker.check_model(proto)
    return proto


@functools.cache
def _feeds():
    return make_inputs(ir.from_proto(onnx.load(FIXTURES / "llama_legacy.onnx")), seed=0)


@pytest.mark.parametrize(
    ("lo_bounds", "hi_bounds"),
    [
        ((0, _HEAD_SIZE // 2), (_HEAD_SIZE // 2, _END)),  # the exporters' own spelling, as constants
        ((0, -_HEAD_SIZE // 2), (-_HEAD_SIZE // 2, _END)),  # x[..., :-h], x[..., -h:]
        ((-_HEAD_SIZE, -_HEAD_SIZE // 2), (-_HEAD_SIZE // 2, _HEAD_SIZE)),  # x[..., -d:-h], x[..., -h:d]
        ((-10 * _HEAD_SIZE, _HEAD_SIZE // 2), (_HEAD_SIZE // 2, _HEAD_SIZE)),  # a start before the axis: clamped to 0
    ],
    ids=["positive", "negative", "negative_both", "clamped"],
)
def test_rotate_half_sliced_from_the_end_fuses_alike(lo_bounds, hi_bounds):
    """Fixed: ``_slice_bounds_of`` reads a negative bound as ONNX's Slice does (from the end, then clamped)."""
    spelled = _sliced_at(lo_bounds, hi_bounds)
    feeds = _feeds()
    expected = run(ir.from_proto(spelled), feeds)
    got, trouble, outputs = _optimized(spelled, None, feeds)
    assert got.get("RotaryEmbedding") == 4, got
    assert trouble == []
    _close(expected, outputs, 1e-4)


@pytest.mark.parametrize(
    ("lo_bounds", "hi_bounds"),
    [
        ((0, -6), (-6, _END)),  # halves of 10 and 6 channels: no rotation (Concat keeps the width)
        ((-_HEAD_SIZE // 2, _END), (0, -_HEAD_SIZE // 2)),  # the halves swapped: -lo then hi
    ],
    ids=["unequal", "swapped"],
)
def test_a_negative_slice_that_is_no_rotate_half_is_left_alone(lo_bounds, hi_bounds):
    """What the rules must still refuse when the bounds are negative: the model computes something else."""
    spelled = _sliced_at(lo_bounds, hi_bounds)
    feeds = _feeds()
    expected = run(ir.from_proto(spelled), feeds)
    got, trouble, outputs = _optimized(spelled, None, feeds)
    assert "RotaryEmbedding" not in got, got
    assert trouble == []
    _close(expected, outputs, 1e-4)
