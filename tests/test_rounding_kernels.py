"""Exact rewrites of models whose MatMulNBits round their inputs (accuracy_level 4): checked at level 0 too."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.kernel_rounding import at_level_zero, level_signature, rounding_kernels
from optimizer.verify import Tolerance, Verifier, _rounding_excess

K, N, ROWS = 256, 64, 48


def _weights(block: int = 32, scale_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed 4-bit codes ``[N, K / block, block / 2]``, scales ``[N * K / block]`` and the float weights
    ``[N, K]`` they stand for (symmetric: zero point 8), the same weights at any ``block`` dividing 32."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (N, K), dtype=np.uint8)
    scales32 = rng.uniform(0.01, 0.05, (N, K // 32)).astype(np.float32) * np.float32(scale_factor)
    weights = (codes.astype(np.float32) - 8) * np.repeat(scales32, 32, axis=1)
    scales = np.repeat(scales32, 32 // block, axis=1)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).reshape(N, K // block, block // 2)
    return packed, scales.reshape(-1), weights


def _nbits(
    level: int | None = 4,
    block: int = 32,
    scale_factor: float = 1.0,
    offset: float = 0.0,
    nudge: float = 0.0,
    offset_last_row_only: bool = False,
) -> ir.Model:
    """x [ROWS, K] -> MatMulNBits(4-bit) -> y [ROWS, N]. With ``offset``, x + offset goes in and
    offset times each column's weight sum comes off after: the same in float, a wider int8 range.
    With ``nudge``, x plus ``nudge`` times a fixed N(0, 1) vector over K goes in (3e-5: the same in
    float to the tolerance, but some inputs round to the other int8 step; a whole block scaled would not)."""
    packed, scales, weights = _weights(block, scale_factor)
    attributes = {"K": K, "N": N, "bits": 4, "block_size": block}
    if level is not None:
        attributes["accuracy_level"] = level
    initializers = [numpy_helper.from_array(packed, "w"), numpy_helper.from_array(scales, "s")]
    nodes = [helper.make_node("MatMulNBits", ["x", "w", "s"], ["y"], domain="com.microsoft", **attributes)]
    if nudge:
        nodes[0].input[0] = "nudged"
        nodes.insert(0, helper.make_node("Add", ["x", "nudge"], ["nudged"]))
        vector = (nudge * np.random.default_rng(2).standard_normal(K)).astype(np.float32)
        initializers.append(numpy_helper.from_array(vector, "nudge"))
    if offset:
        nodes[0].input[0], nodes[0].output[0] = "shifted", "y_shifted"
        nodes.insert(0, helper.make_node("Add", ["x", "offset"], ["shifted"]))
        nodes.append(helper.make_node("Sub", ["y_shifted", "taken_off"], ["y"]))
        rows = np.zeros((ROWS, 1)) if offset_last_row_only else np.ones((ROWS, 1))
        rows[-1] = 1.0
        initializers.append(numpy_helper.from_array((offset * rows).astype(np.float32), "offset"))
        taken_off = (offset * rows * weights.astype(np.float64).sum(axis=1)[None, :]).astype(np.float32)
        initializers.append(numpy_helper.from_array(taken_off, "taken_off"))
    graph = helper.make_graph(
        nodes,
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, N])],
        initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], ir_version=9
    )
    return ir.serde.deserialize_model(proto)


def _pair(first: int, second: int) -> ir.Model:
    """Two MatMulNBits on x, different weights, at levels ``first`` and ``second``; outputs y1, y2."""
    proto = ir.serde.serialize_model(_nbits(first))
    other = ir.serde.serialize_model(_nbits(second, scale_factor=0.5))
    node = other.graph.node[0]
    node.input[1:] = ["w2", "s2"]
    node.output[0] = "y2"
    proto.graph.node[0].output[0] = "y1"
    proto.graph.node.append(node)
    for tensor in other.graph.initializer:
        tensor.name = tensor.name + "2"
        proto.graph.initializer.append(tensor)
    proto.graph.output[0].name = "y1"
    proto.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, [ROWS, N]))
    return ir.serde.deserialize_model(proto)


def _inputs() -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(1).standard_normal((ROWS, K)).astype(np.float32)}]


def _levels(model: ir.Model) -> list[int | None]:
    return [
        node.attributes["accuracy_level"].as_int() if "accuracy_level" in node.attributes else None
        for node in model.graph
    ]


def test_level_zero_is_set_for_the_block_and_restored_after():
    level4, unset = _nbits(4), _nbits(None)
    assert rounding_kernels(level4) == 1 and rounding_kernels(unset) == 0
    with at_level_zero(level4, unset, level4):
        assert _levels(level4) == [0] and rounding_kernels(level4) == 0
        assert _levels(unset) == [None]  # already float arithmetic: left as it was
    assert _levels(level4) == [4] and _levels(unset) == [None]


def test_the_signature_pins_level_block_and_weights_to_each_column():
    assert level_signature(_nbits(4)) == level_signature(_nbits(4, nudge=0.5))  # upstream changes are not its business
    assert level_signature(_nbits(0)) != level_signature(_nbits(4))
    assert level_signature(_nbits(None)) == level_signature(_nbits(0))
    assert level_signature(_nbits(4, block=16)) != level_signature(_nbits(4, block=32))  # A's int8 blocks
    assert level_signature(_nbits(4, scale_factor=1.01)) != level_signature(_nbits(4))
    assert sum(level_signature(_nbits(4)).values()) == N


def test_levels_swapped_between_kernels_change_the_signature():
    swapped = _pair(0, 4)
    assert level_signature(_pair(4, 0)) != level_signature(swapped)
    result = Verifier(_pair(4, 0), _inputs()).check(swapped, by_segment=True)
    assert not result.ok and not result.rounding and "accuracy_level" not in result.first_failure


def test_a_rewrite_exact_in_float_that_rounds_no_worse_passes_with_a_note():
    base, candidate = _nbits(4), _nbits(4, nudge=3e-5)
    assert not Verifier(base, _inputs())._check_as_written(candidate, by_segment=False).ok  # steps flipped
    result = Verifier(base, _inputs()).check(candidate, by_segment=True)
    assert result.ok, result.first_failure
    assert "accuracy_level 4" in result.rounding and "within the float tolerance" in result.rounding
    assert result.rounding_error > 1e-4  # as written it does differ
    assert _levels(base) == [4] and _levels(candidate)[-1] == 4  # the check left the models as they were


def test_a_rounding_error_counts_only_where_finite_and_non_finite_values_must_stay():
    tolerance = Tolerance(1e-4, 1e-5)
    exact = np.array([[1.0, 2.0, -np.inf], [3.0, 4.0, -np.inf]], np.float32)
    original = exact + np.float32(0.1)
    assert _rounding_excess(exact, original, original, tolerance) == pytest.approx((0.1, 0.1))
    assert isinstance(_rounding_excess(exact, exact + np.float32(0.5), original, tolerance), str)  # 5x worse
    finite_instead = np.where(np.isfinite(exact), original, np.float32(0.0))
    assert "not NaN or infinite where" in _rounding_excess(exact, finite_instead, original, tolerance)
    nan_instead = original.copy()
    nan_instead[0, 0] = np.nan
    assert "NaN or infinite where the original is finite" in _rounding_excess(exact, nan_instead, original, tolerance)
    overflowed = original.copy()
    overflowed[0, 1] = np.inf  # the original as written overflowed where level 0 did not
    assert not isinstance(_rounding_excess(exact, overflowed, overflowed, tolerance), str)
    assert not isinstance(_rounding_excess(exact, original, overflowed, tolerance), str)  # finite there: fine
    flipped = overflowed.copy()
    flipped[0, 1] = -np.inf
    assert "not the same as written" in _rounding_excess(exact, flipped, overflowed, tolerance)


def test_an_offset_that_is_exact_in_float_but_widens_the_int8_range_is_refused():
    assert Verifier(_nbits(0), _inputs()).check(_nbits(0, offset=4.0)).ok  # the same in float
    result = Verifier(_nbits(4), _inputs()).check(_nbits(4, offset=4.0), by_segment=True)
    assert not result.ok
    assert "makes the kernels' int8 rounding worse" in result.first_failure


def test_an_offset_on_one_token_row_is_refused_though_the_whole_output_hides_it():
    candidate = _nbits(4, offset=8.0, offset_last_row_only=True)
    assert Verifier(_nbits(0), _inputs()).check(_nbits(0, offset=8.0, offset_last_row_only=True)).ok
    result = Verifier(_nbits(4), _inputs()).check(candidate, by_segment=True)
    assert not result.ok
    assert f"in row {ROWS - 1}" in result.first_failure and "rounding worse there" in result.first_failure


def test_a_wrong_rewrite_fails_at_level_zero():
    result = Verifier(_nbits(4), _inputs()).check(_nbits(4, nudge=0.01), by_segment=True)
    assert not result.ok
    assert "with its MatMulNBits at accuracy_level 0 (float arithmetic) too" in result.first_failure


def test_a_rewrite_that_changes_a_level_is_not_excused():
    result = Verifier(_nbits(4), _inputs()).check(_nbits(0), by_segment=True)  # closer, but not what was asked
    assert not result.ok
    assert "accuracy_level" not in result.first_failure and not result.rounding


def test_a_float_model_is_never_checked_at_level_zero():
    result = Verifier(_nbits(0), _inputs()).check(_nbits(0, scale_factor=1.01), by_segment=True)
    assert not result.ok and "accuracy_level" not in result.first_failure
