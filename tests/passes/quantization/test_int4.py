"""quantize-int4: MatMul/Gemm into MatMulNBits, embedding tables into GatherBlockQuantized, RTN/GPTQ/HQQ values."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import AccuracyBudget
from optimizer.api import optimize_with_report
from optimizer.cli import main
from optimizer.errors import OptionError, PassSelectionError
from optimizer.options import Options
from optimizer.runtime import drift_of, run_batches, run_model
from optimizer.samples import hold_out
from passes.quantization import _blockwise
from passes.quantization._blockwise import (
    pack_nibbles,
    quantize_gptq,
    quantize_hqq,
    quantize_rtn,
    recover_grid,
    unpack_nibbles,
)
from passes.quantization.int4 import Int4QuantizationPass
from tests.helpers import FIXTURES, computed_op_types
from tests.passes.quantization.graphs import attention, mlp, samples, weights
from tests.real_models import MINILM_MISSING, minilm_path


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(nodes, "int4", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _matmul(weight: np.ndarray) -> ir.Model:
    """``y = x @ weight`` with ``x [B, K]``."""
    k, n = weight.shape
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        [("w", weight)],
    )


def _closest_to_twin(result, feeds: dict[str, np.ndarray]) -> float:
    """Largest |result - twin| on ``feeds``, the result run as deployed (all ORT optimizations)."""
    outputs = run_batches(result.model, [feeds])[0]
    expected = run_model(result.twin.model, feeds)
    return max(float(np.abs(outputs[name] - expected[name]).max()) for name in expected)


# -- packing ----------------------------------------------------------------------------------


def test_packing_of_a_hand_computed_block():
    # One column of 16 values -8..7 halves: the largest magnitude (-4) maps to -8, scale 0.5,
    # stored values 0..15, two per byte with the first in the low nibble.
    column = (np.arange(-8, 8, dtype=np.float32) * 0.5).reshape(16, 1)
    symmetric = quantize_rtn(column, 16, symmetric=True)
    assert symmetric.scales.tolist() == [[0.5]] and symmetric.zero_points is None
    assert symmetric.packed().reshape(-1).tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    # Asymmetric: range [-1, 2.75] is 15 steps of 0.25, zero point round(1 / 0.25) = 4, and
    # value i * 0.25 - 1 is stored as round((i * 0.25 - 1) / 0.25) + 4 = i.
    column = (np.arange(16, dtype=np.float32) * 0.25 - 1.0).reshape(16, 1)
    asymmetric = quantize_rtn(column, 16, symmetric=False)
    assert asymmetric.scales.tolist() == [[0.25]] and asymmetric.zero_points.tolist() == [[4]]
    assert asymmetric.packed().reshape(-1).tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    # one block: the zero point in the low nibble, the unused high one holds the default 8 (as ORT writes it)
    assert asymmetric.packed_zero_points().tolist() == [[0x84]]
    np.testing.assert_array_equal(asymmetric.dequantize(), column)


def test_packing_pads_odd_counts_and_unpacks():
    values = np.array([[1, 2, 3]], dtype=np.uint8)
    assert pack_nibbles(values).tolist() == [[0x21, 0x03]]
    np.testing.assert_array_equal(unpack_nibbles(pack_nibbles(values), 3), values)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k", [64, 80])
def test_round_to_nearest_matches_onnxruntimes_own_packer(symmetric, k):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    weight = weights(k, 12, seed=3, scale=1.0)
    block = 32
    blocks = -(-k // block)
    packed = np.zeros((12, blocks, block // 2), np.uint8)
    scales = np.zeros((12, blocks), np.float32)
    zero_points = np.zeros((12, (blocks + 1) // 2), np.uint8)
    padded = np.pad(weight, ((0, blocks * block - k), (0, 0)))
    quantize_matmul_4bits(packed, padded, scales, zero_points, block, 12, blocks * block, symmetric)
    ours = quantize_rtn(weight, block, symmetric=symmetric)
    np.testing.assert_array_equal(ours.packed(), packed)
    np.testing.assert_array_equal(ours.scales, scales)
    if not symmetric:
        np.testing.assert_array_equal(ours.packed_zero_points(), zero_points)


# -- the rewrite --------------------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block_size", [16, 32, 64, 128])
def test_matmuls_become_matmulnbits_computing_their_twin(block_size, symmetric):
    model = mlp(head=True)
    quantization = Int4QuantizationPass(block_size=block_size, symmetric=symmetric, quantize_outputs=True)
    result = quantization(model.clone())
    assert computed_op_types(result.model) == ["MatMulNBits", "Relu", "MatMulNBits", "MatMulNBits"]
    nodes = [node for node in result.model.graph if node.op_type == "MatMulNBits"]
    up = nodes[0]
    assert up.attributes.get_int("block_size") == block_size and up.attributes.get_int("accuracy_level") == 4
    assert (up.attributes.get_int("K"), up.attributes.get_int("N")) == (32, 64)
    # the up projection's bias Add is the op's bias input; zero points only when asymmetric
    assert len(up.inputs) == 6 and (up.inputs[3] is None) == symmetric
    assert result.twin.kind == "int4" and "int8 per block" in result.twin.description
    feeds = samples(model, 4)
    assert _closest_to_twin(result, feeds) < 1e-5
    # weight-only 4 bits is approximate, not broken
    float_y, int4_y = run_model(model, feeds)["y"], run_batches(result.model, [feeds])[0]["y"]
    cosine = float(np.sum(float_y * int4_y) / np.linalg.norm(float_y) / np.linalg.norm(int4_y))
    assert cosine > 0.98


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_accuracy_level_zero_is_float_arithmetic_on_the_dequantized_weights(method):
    model = mlp(gemm_trans_b=True)
    result = Int4QuantizationPass(method=method, target="cuda", quantize_outputs=True)(model.clone())
    assert "Gemm" not in computed_op_types(result.model)
    assert all(not node.attributes.get_int("accuracy_level", 0) for node in result.model.graph)
    assert "int8 per block" not in result.twin.description
    assert _closest_to_twin(result, samples(model, 4)) < 1e-5


def test_hqq_float_zero_points_run_as_uint8_plus_block_offsets_at_the_int8_level():
    model = mlp(head=False)
    result = Int4QuantizationPass(method="hqq", quantize_outputs=True)(model.clone())
    up = next(node for node in result.model.graph if node.op_type == "MatMulNBits")
    # ONNX Runtime's float zero points have no int8 path (62-78x slower at one row): uint8 ones plus offsets
    assert up.inputs[3].const_value.dtype == ir.DataType.UINT8
    assert up.attributes.get_int("accuracy_level", 0) == 4
    offsets = [node for node in result.model.graph if node.name.endswith("_block_offsets")]
    assert len(offsets) == 2
    assert "float block offsets" in result.twin.description
    assert _closest_to_twin(result, samples(model, 4)) < 1e-4


def test_an_8bit_grid_read_at_a_finer_block_is_recovered_from_its_own_blocks():
    # Half of a Q8_0 block of 32 holds a few of 255 levels and reveals no step (here q in {0, 2, 5, 13}); the
    # blocks of 32 do, and each of their halves keeps the block's step.
    weight = _on_q8_0_grid(64, 48, seed=3)
    weight[16:32, 0] = weight[0, 0] / np.float32(127) * np.array([0, 2, 5, 13] * 4, np.float32)
    assert _blockwise._recover_grid(weight, 16, 8) is None
    grid = recover_grid(weight, 16, bits=8)
    assert grid is not None and grid.block_size == 16 and grid.bits == 8 and grid.scales.shape == (48, 4)
    np.testing.assert_array_equal(grid.dequantize(), recover_grid(weight, 32, bits=8).dequantize())
    np.testing.assert_allclose(grid.dequantize(), weight, rtol=0, atol=1e-6)  # float32 rounding of d * q
    result = Int4QuantizationPass(quantize_outputs=True, block_size=16)(_matmul(weight))
    node = next(node for node in result.model.graph if node.op_type == "MatMulNBits")
    assert node.attributes.get_int("bits") == 8 and node.attributes.get_int("block_size") == 16
    assert any("8-bit grid, kept exact in 8 bits" in note for note in result.notes)


def test_a_split_grid_keeps_each_blocks_scale_and_zero_point():
    weight = _on_grid(64, 8, 32, integer_zero=False, seed=2)
    grid = recover_grid(weight, 32)
    halves = grid.split(16)
    assert halves.block_size == 16 and halves.blocks == 4 and halves.has_offsets
    np.testing.assert_array_equal(halves.scales[:, ::2], grid.scales)
    np.testing.assert_array_equal(halves.zero_points[:, 1::2], grid.zero_points)
    np.testing.assert_array_equal(halves.dequantize(), grid.dequantize())
    with pytest.raises(ValueError, match="does not split"):
        grid.split(24)


def test_block_offsets_restore_the_float_zero_points_exactly():
    weight = weights(64, 24, seed=9)
    chosen = quantize_hqq(weight, 32)
    assert chosen.has_offsets and chosen.stored().zero_points.dtype == np.uint8
    x = np.random.default_rng(1).standard_normal((5, 64))
    sums = x.reshape(5, 2, 32).sum(axis=-1)
    restored = x @ chosen.stored().dequantize() + sums @ chosen.offsets()
    np.testing.assert_allclose(restored, x @ chosen.dequantize(), rtol=1e-5, atol=1e-5)


# -- weights already on a 4-bit grid (a dequantized 4-bit checkpoint) -----------------------


def _on_grid(k: int, n: int, block_size: int, *, integer_zero: bool, seed: int = 0, levels: int = 16) -> np.ndarray:
    """A ``[k, n]`` weight as a 4-bit checkpoint dequantizes it: Q4_1 (``d * q + m``) or Q4_0 (``d * (q - 8)``)."""
    rng = np.random.default_rng(seed)
    blocks = k // block_size
    q = rng.integers(0, levels, (n, blocks, block_size)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, levels - 1  # every block spans its levels, as llama.cpp's min/max writes them
    d = (rng.random((n, blocks, 1)) * 0.02 + 0.005).astype(np.float32)
    if integer_zero:
        values = d * (q - 8)
    else:
        m = -(rng.random((n, blocks, 1)) * 0.1 + 0.02).astype(np.float32)
        values = d * q + m
    return np.ascontiguousarray(values.reshape(n, k).T.astype(np.float32))


@pytest.mark.parametrize("integer_zero", [False, True], ids=["q4_1", "q4_0"])
def test_a_weight_on_a_4bit_grid_is_recovered_exactly(integer_zero):
    weight = _on_grid(64, 24, 32, integer_zero=integer_zero)
    grid = recover_grid(weight, 32)
    assert grid is not None
    np.testing.assert_allclose(grid.dequantize(), weight, atol=1e-6)
    assert grid.has_offsets is not integer_zero
    if integer_zero:  # Q4_0 is symmetric: the implicit zero point 8, none stored
        assert grid.zero_points is None
    # Round to nearest moves a Q4_1 block by up to half a step
    rtn_error = np.abs(quantize_rtn(weight, 32, symmetric=False).dequantize() - weight).max()
    assert (rtn_error > 1e-3) is not integer_zero


def test_a_grid_with_unused_levels_is_found_by_its_smallest_gap():
    weight = _on_grid(64, 8, 32, integer_zero=True, levels=11)  # every block spans 10 steps, not 15
    grid = recover_grid(weight, 32)
    assert grid is not None and not grid.has_offsets
    np.testing.assert_allclose(grid.dequantize(), weight, atol=1e-6)


@pytest.mark.parametrize("levels", [16, 5], ids=["all-levels", "five-levels"])
def test_a_checkpoints_grid_read_at_a_finer_block_is_recovered_exactly(levels):
    # Half of a Q4_1 block of 32 need not span its levels or use them evenly (q in {0, 2, 5, 13}: no step
    # from the range, the peak or the smallest gap fits); a step that fits such a sparse half only to
    # within the tolerance would move its weights.
    weight = _on_grid(256, 48, 32, integer_zero=False, levels=levels, seed=5)
    weight[:16, 0] = weight[0, 0] + np.float32(0.0113) * np.array([0, 2, 5, 13] * 4, np.float32)
    grid = recover_grid(weight, 16)
    assert grid is not None
    np.testing.assert_allclose(grid.dequantize(), weight, rtol=0, atol=1e-6)


# 128 of an 8-bit grid's levels: the smallest gap between two float32 values is a step off by an ulp,
# which 127 steps make larger than float rounding.
_HALF_AN_8BIT_GRID = np.float32(0.001) * (np.arange(70, 198, dtype=np.float32) - np.float32(128))
# Half a Q4_1 block far from zero: the same for the gap between two values near -10.
_A_4BIT_BLOCK_FAR_FROM_ZERO = np.float32(0.012791554) * np.array(
    [7, 11, 6, 0, 4, 10, 8, 13, 0, 14, 9, 1, 13, 3, 5, 2], np.float32
) - np.float32(10.0)


@pytest.mark.parametrize(
    "weight, block_size, bits",
    [(_HALF_AN_8BIT_GRID[:, None], 128, 8), (_A_4BIT_BLOCK_FAR_FROM_ZERO[:, None], 16, 4)],
    ids=["8bit-half-the-levels", "4bit-far-from-zero"],
)
def test_a_step_found_from_two_values_is_made_exact_from_the_blocks_span(weight, block_size, bits):
    grid = recover_grid(weight, block_size, bits=bits)
    assert grid is not None
    np.testing.assert_allclose(grid.dequantize(), weight, rtol=0, atol=1e-7 * np.abs(weight).max())


def test_a_weight_within_the_tolerance_of_a_grid_but_off_it_is_not_recovered():
    # Steps of 0.1 from -0.7 fit these to 5e-4 steps (within the tolerance) but miss two by 5e-5, far more
    # than a dequantized checkpoint's float32 rounding: storing them on that grid would move them.
    weight = np.array([-0.7, -0.59995, -0.29995, 0.1] * 4, np.float32)[:, None]
    assert recover_grid(weight, 16) is None


@pytest.mark.parametrize(
    "weight",
    [weights(64, 8, seed=3), _on_grid(64, 8, 32, integer_zero=False)[:48], _on_grid(64, 8, 16, integer_zero=False)],
    ids=["float-trained", "k-not-a-multiple", "a-finer-grid-than-the-block"],
)
def test_weights_off_any_4bit_grid_of_the_block_are_not_recovered(weight):
    assert recover_grid(weight, 32) is None


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("gemm_trans_b", [False, True], ids=["matmul", "gemm-transB"])
def test_a_dequantized_q4_1_checkpoint_quantizes_without_loss(method, gemm_trans_b):
    model = mlp(gemm_trans_b=gemm_trans_b)
    for value in model.graph.initializers.values():
        array = value.const_value.numpy()
        if array.ndim == 2:  # every layer's weight on a Q4_1 grid, in the layout the node reads it
            kn = array.T if gemm_trans_b and value.name == "w2" else array
            grid = _on_grid(*kn.shape, 32, integer_zero=False, seed=len(value.name))
            value.const_value = ir.tensor(grid.T if kn is not array else grid, name=value.name)
    feeds = samples(model, 4)
    options = dict(method=method, quantize_outputs=True, target="cuda")  # level 0: float arithmetic
    if method == "gptq":
        options["samples"] = feeds
    result = Int4QuantizationPass(**options)(model.clone())
    assert any("already lie on a 4-bit grid" in note and "block offsets" in note for note in result.notes)
    expected = run_model(model, feeds)
    outputs = run_batches(result.model, [feeds])[0]
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-4)
    # the twin is the same arithmetic at the CPU's level 4 too
    level4 = Int4QuantizationPass(
        method=method, quantize_outputs=True, **({"samples": feeds} if method == "gptq" else {})
    )
    assert _closest_to_twin(level4(model.clone()), feeds) < 1e-4


def test_a_tied_head_with_block_offsets_leaves_its_table_float():
    model = _embedding_model(tied=True)
    grid = _on_grid(64, 1024, 32, integer_zero=False)  # the head's [hidden, vocab]: blocks along hidden
    model.graph.initializers["table"].const_value = ir.tensor(np.ascontiguousarray(grid.T), name="table")
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    assert "GatherBlockQuantized" not in computed_op_types(result.model)
    assert "MatMulNBits" in computed_op_types(result.model)
    assert any("zero points are float" in reason for reason in result.refusals)
    assert _closest_to_twin(result, _ids()) < 1e-3


def test_k_not_a_multiple_of_the_block_is_padded():
    model = _matmul(weights(40, 8, seed=4))
    result = Int4QuantizationPass(block_size=32, quantize_outputs=True)(model.clone())
    node = next(iter(result.model.graph))
    assert node.op_type == "MatMulNBits" and node.inputs[1].const_value.shape == (8, 2, 16)
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)}
    assert _closest_to_twin(result, feeds) < 1e-5


def test_refusals_near_misses():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])
    other = helper.make_tensor_value_info("w_in", TensorProto.FLOAT, [16, 16])
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w_in"], ["a"], name="dynamic_weight"),
            helper.make_node("MatMul", ["a", "w3"], ["b"], name="batched_weight"),
            helper.make_node("Gemm", ["x", "wg"], ["c"], name="transposed_a", transA=1),
            helper.make_node("Add", ["b", "c"], ["y"], name="join"),
        ],
        [x, other],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])],
        [("w3", weights(1, 16, 16)), ("wg", weights(16, 16))],
    )
    result = Int4QuantizationPass(quantize_outputs=True)(model)
    # A Gemm with transA is quantized behind a Transpose of its input since review s72.
    assert computed_op_types(result.model).count("MatMulNBits") == 1
    assert sorted(result.refusals) == [
        "1 of 2 MatMul stay float: weight has rank 3, not 2",
        "1 of 2 MatMul stay float: weight is not a constant",
    ]


def test_packed_qkv_attention_is_named_as_left_float():
    result = Int4QuantizationPass(quantize_outputs=True)(attention())
    assert computed_op_types(result.model) == ["Cast", "Attention", "MatMulNBits", "Add"]
    assert "1 of 1 Attention stay float: packed QKV weights have no 4-bit form" in result.refusals[0]


def test_the_model_output_layer_stays_float_unless_asked():
    quantization = Int4QuantizationPass()
    quantization(mlp(head=True))
    assert quantization.kept_float == ["head"] and quantization.quantized == ["up", "down"]


# -- GPTQ and HQQ ----------------------------------------------------------------------------------


def _correlated_inputs(rows: int, k: int, seed: int) -> np.ndarray:
    """Inputs whose features are strongly correlated (four latent factors, one loading matrix for every
    seed, plus a little noise), as in a real layer; ``seed`` draws the rows."""
    loadings = np.random.default_rng(100).standard_normal((4, k))
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, 4)) @ loadings + 0.1 * rng.standard_normal((rows, k))).astype(np.float32)


def test_gptq_lowers_the_output_error_on_held_out_correlated_inputs():
    weight = weights(64, 32, seed=5, scale=1.0)
    calibration, held_out = _correlated_inputs(512, 64, seed=6), _correlated_inputs(256, 64, seed=7)
    exact = held_out @ weight

    def error(quantized) -> float:
        return float(np.linalg.norm(held_out @ quantized.dequantize() - exact) / np.linalg.norm(exact))

    rtn = error(quantize_rtn(weight, 32, symmetric=False))
    gptq = error(quantize_gptq(weight, calibration, 32, symmetric=False))
    assert gptq < 0.7 * rtn, (gptq, rtn)


def test_hqq_lowers_the_weight_error_in_its_norm():
    weight = weights(128, 32, seed=7, scale=1.0)
    weight[::17, ::5] *= 6.0  # outliers, which HQQ's l_p norm (p < 1) tolerates

    def lp(quantized) -> float:
        return float(np.mean(np.abs(quantized.dequantize() - weight) ** 0.7))

    assert lp(quantize_hqq(weight, 32)) < lp(quantize_rtn(weight, 32, symmetric=False))


def test_gptq_through_the_pass_uses_the_calibration_samples():
    model = mlp(head=False)
    feeds = samples(model, 16)
    quantization = Int4QuantizationPass(method="gptq", samples=feeds)
    result = quantization(model.clone())
    assert any(note.startswith("GPTQ on") for note in result.notes)
    assert _closest_to_twin(result, samples(model, 4, seed=9)) < 1e-5
    generated = Int4QuantizationPass(method="gptq", samples=feeds, samples_generated=True)(model.clone())
    assert any("round-to-nearest used" in note for note in generated.notes)


# -- budget ----------------------------------------------------------------------------------------


def test_the_budget_keeps_the_most_sensitive_layer_float():
    weight = weights(16, 16, seed=1, scale=0.3)
    weight[:, 0] *= 50.0  # the middle layer's input has one huge channel; int4 blocks of it hurt
    nodes = [
        helper.make_node("MatMul", ["x", "w_first"], ["h"], name="first"),
        helper.make_node("MatMul", ["h", "w_mid"], ["k"], name="mid"),
        helper.make_node("MatMul", ["k", "w_last"], ["y"], name="last"),
    ]
    mid = weights(16, 16, seed=2, scale=0.3)
    mid[0, :] /= 50.0
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 16])],
        [("w_first", weight), ("w_mid", mid), ("w_last", weights(16, 16, seed=3, scale=0.3))],
    )
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)}
    everything = Int4QuantizationPass(block_size=16, quantize_outputs=True, samples=feeds)
    everything(model.clone())
    assert everything.drift.cosine < 0.99
    budget = AccuracyBudget(min_cosine=0.99)
    quantization = Int4QuantizationPass(block_size=16, quantize_outputs=True, samples=feeds, budget=budget)
    result = quantization(model.clone())
    # mid leaves int4: kept float, or int8 where that meets the budget on the held-out rows (the tests' cost model
    # times int8 faster than float)
    assert result.modified and quantization.drift.cosine >= 0.99 and result.fitted_to_samples
    assert "mid" in quantization.kept_float or quantization.schemes.get("mid") == "int8", quantization.schemes
    if "mid" in quantization.kept_float:
        assert any("kept float to meet the accuracy budget" in refusal for refusal in result.refusals)
    # the summary counts layers by form (the budget may move some to int8, faster than int4 in the tests' cost model)
    summary = f", {len(quantization.kept_float)} float: {quantization.drift}"
    assert any(summary in note for note in result.notes)


# -- embeddings ------------------------------------------------------------------------------------


def _embedding_model(*, tied: bool, vocab: int = 1024, hidden: int = 64) -> ir.Model:
    """ids → Gather(table) → MatMul → head: ``Gemm(h, table, transB=1)`` (tied) or its own weight."""
    table = weights(vocab, hidden, seed=11, scale=1.0)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="mix"),
        helper.make_node("Reshape", ["h", "flat"], ["h2"], name="flatten"),
    ]
    init = [("table", table), ("w", weights(hidden, hidden, seed=12)), ("flat", np.array([-1, hidden], np.int64))]
    if tied:
        nodes.append(helper.make_node("Gemm", ["h2", "table"], ["logits"], name="lm_head", transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["h2", "head"], ["logits"], name="lm_head"))
        init.append(("head", weights(hidden, vocab, seed=13)))
    return _model(
        nodes,
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, vocab])],
        init,
    )


def _ids() -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(2).integers(0, 1024, (2, 5)).astype(np.int64)}


def test_embedding_table_becomes_gather_block_quantized():
    model = _embedding_model(tied=False)
    result = Int4QuantizationPass()(model.clone())
    assert computed_op_types(result.model)[0] == "GatherBlockQuantized"
    data = next(node for node in result.model.graph if node.op_type == "GatherBlockQuantized").inputs[0]
    assert data.const_value.shape == (1024, 32) and data.const_value.dtype == ir.DataType.UINT8
    # symmetric, yet its zero points (8) are written: the CUDA lookup's default was 0 (ORT #31692)
    symmetric = Int4QuantizationPass(symmetric=True)(model.clone())
    lookup = next(node for node in symmetric.model.graph if node.op_type == "GatherBlockQuantized")
    assert (lookup.inputs[3].const_value.numpy() == 0x88).all()
    assert _closest_to_twin(symmetric, _ids()) < 1e-4
    assert "1 embedding tables dequantized" in result.twin.description
    assert _closest_to_twin(result, _ids()) < 1e-4
    kept = Int4QuantizationPass(exclude=["embed"])(model.clone())
    assert "Gather" in computed_op_types(kept.model)
    assert "1 of 1 embedding tables stay float: matched by --exclude" in kept.refusals


@pytest.mark.parametrize("named", [True, False])
def test_a_tied_table_shares_the_heads_packed_weight(named):
    model = _embedding_model(tied=True)
    for node in model.graph:
        node.name = node.name if named else ""
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    lookup = next(node for node in result.model.graph if node.op_type == "GatherBlockQuantized")
    head = next(
        node for node in result.model.graph if node.op_type == "MatMulNBits" and node.attributes["N"].value == 1024
    )
    assert lookup.inputs[0] is head.inputs[1]  # one packed [vocab, blocks, block/2] tensor
    assert "table" not in result.model.graph.initializers
    assert any("sharing its tied LM head's packed weight" in note for note in result.notes)
    assert _closest_to_twin(result, _ids()) < 1e-4
    # the head stays float (a model output): so does the table, one float copy being smaller
    float_head = Int4QuantizationPass()(model.clone())
    assert "GatherBlockQuantized" not in computed_op_types(float_head.model)
    assert any("tied to the LM head" in refusal for refusal in float_head.refusals)


# -- options, pipeline and CLI ---------------------------------------------------------------------


def test_options_are_checked_once():
    assert Options(quantize="int4", block_size=64, int4_method="gptq").block_size == 64
    with pytest.raises(OptionError, match="--block-size 48"):
        Options(quantize="int4", block_size=48)
    with pytest.raises(OptionError, match="--int4-method awq"):
        Options(quantize="int4", int4_method="awq")
    with pytest.raises(OptionError, match="--int4-accuracy-level 2: expected 0"):
        Options(quantize="int4", int4_accuracy_level=2)


def test_int4_options_without_int4_are_refused():
    with pytest.raises(PassSelectionError, match="--block-size 64 .* needs --quantize int4"):
        optimize_with_report(mlp(), block_size=64)


def test_cli_quantize_int4_end_to_end_verified(tmp_path):
    output, report = tmp_path / "int4.onnx", tmp_path / "report.json"
    command = ["optimize", str(FIXTURES / "gpt2_legacy.onnx"), "-o", str(output), "--quantize", "int4"]
    assert main([*command, "--block-size", "16", "--report", str(report)]) == 0
    record = next(r for r in json.loads(report.read_text())["passes"] if r["name"] == "quantize-int4")
    assert record["status"] == "applied" and "(int4 tolerance)" in record["twin"]
    assert "MatMulNBits" in computed_op_types(ir.load(output))


def test_many_layers_rank_sensitivity_by_their_local_int4_error(monkeypatch):
    # Past _EXHAUSTIVE_LAYERS the budget ranks layers by each one's own int4 output error
    # (not the int8 estimate of the int8 passes) on sampled input rows.
    monkeypatch.setattr("passes.quantization.int4._EXHAUSTIVE_LAYERS", 0)
    monkeypatch.setattr("passes.quantization._base._EXHAUSTIVE_LAYERS", 0)
    model = mlp(head=True)
    budget = AccuracyBudget(min_cosine=0.9999)
    quantization = Int4QuantizationPass(quantize_outputs=True, samples=samples(model, 16), budget=budget)
    result = quantization(model.clone())
    assert any("relative int4 error" in note for note in result.notes)
    assert quantization.kept_float


def test_a_decoder_with_a_kv_cache_quantizes_and_verifies():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    result, report = optimize_with_report(model, quantize="int4", symmetric=True, block_size=16)
    record = next(r for r in report.passes if r.name == "quantize-int4")
    assert record.status == "applied", record.detail
    assert "MatMulNBits" in computed_op_types(result)


MINILM = minilm_path()


@pytest.mark.skipif(MINILM is None, reason=MINILM_MISSING)
def test_pretrained_weights_quantize_close_to_float_and_to_their_twin():
    # Real weights have outliers random ones lack; benchmarks/int4_methods.py measures them on real sentences.
    model = ir.load(MINILM)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1000, 5000, (2, 24)), "attention_mask": np.ones((2, 24), np.int64)}
    float_y = run_model(model, feeds)
    name = next(n for n, v in float_y.items() if v.ndim == 3)
    for level in (0, 4):
        result = Int4QuantizationPass(accuracy_level=level)(model.clone())
        assert computed_op_types(result.model).count("MatMulNBits") == 18
        int4_y = run_batches(result.model, [feeds])[0][name]
        a, b = float_y[name].reshape(-1), int4_y.reshape(-1)
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98
        twin_distance = np.abs(int4_y - run_model(result.twin.model, feeds)[name]).max()
        if level == 0:  # float arithmetic on the dequantized weights
            assert twin_distance < 1e-5
        else:  # int8 rounding of each layer's input meets ties that cascade (measured 1.3e-2 vs 0.37 from float)
            assert twin_distance < 0.1 * np.abs(int4_y - float_y[name]).max()


def test_the_budget_through_the_api():
    model = mlp(head=True)
    feeds = samples(model, 16)
    unbudgeted = optimize_with_report(model, quantize="int4", quantize_outputs=True, calibration=feeds)[0]
    # The budget is checked on the samples held out of the search (every fifth): just past what every layer in
    # int4 reaches there.
    held = list(hold_out([feeds], model)[1])
    reached = drift_of(unbudgeted, held, run_batches(model, held)).cosine
    _, report = optimize_with_report(
        model, quantize="int4", quantize_outputs=True, calibration=feeds, min_cosine=min(1.0, reached + 1e-4)
    )
    record = next(r for r in report.passes if r.name == "quantize-int4")
    # the budget changed some layers (to int8 or float) and says so
    assert record.status == "applied" and any("layers changed" in note for note in record.notes)


@pytest.mark.parametrize("method", ["rtn", "hqq"])
def test_the_budget_times_a_layer_in_the_form_it_will_be_written(method):
    from passes.quantization._layer_speed import LayerShape

    model = mlp(head=False)
    quantizer = Int4QuantizationPass(method=method)
    quantizer.prepare(model, [], [])
    probe = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4")
    offsets = [node for node in probe.graph if node.name.endswith("_block_offsets")]
    # HQQ's layers carry block offsets, so the probe does; round to nearest writes none
    assert bool(offsets) is (method == "hqq")
    assert ("block offsets" in quantizer.speed_form("int4")) is (method == "hqq")


def _on_q8_0_grid(k: int, n: int, seed: int = 0) -> np.ndarray:
    """A ``[k, n]`` weight as a GGUF Q8_0 tensor dequantizes: ``d * q``, ``q`` in -127..127, ``d = max|w| / 127``."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-127, 128, (n, k // 32, 32)).astype(np.float32)
    q[..., 0] = 127
    d = (rng.random((n, k // 32, 1)) * 0.01 + 0.001).astype(np.float32)
    return np.ascontiguousarray((d * q).reshape(n, k).T.astype(np.float32))


def test_an_8bit_grid_is_recovered_and_kept_exact_in_8_bits_at_level_4():
    weight = _on_q8_0_grid(64, 48)
    assert recover_grid(weight, 32) is None  # not a 4-bit grid
    grid = recover_grid(weight, 32, bits=8)
    assert grid is not None and grid.bits == 8 and grid.zero_points is None  # Q8_0: the implicit 128
    np.testing.assert_allclose(grid.dequantize(), weight, atol=1e-6)
    model = _matmul(weight)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)}
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    node = next(node for node in result.model.graph if node.op_type == "MatMulNBits")
    assert node.attributes.get_int("bits") == 8 and node.inputs[1].const_value.shape == (48, 2, 32)
    assert any("8-bit grid, kept exact in 8 bits" in note for note in result.notes)
    assert _closest_to_twin(result, feeds) < 1e-4
    np.testing.assert_allclose(run_batches(result.model, [feeds])[0]["y"], feeds["x"] @ weight, rtol=0.02, atol=0.02)
    # At level 0 (ONNX Runtime's 8-bit float-input path is 11-18x slower than float) it is rounded to 4 bits instead
    level0 = Int4QuantizationPass(quantize_outputs=True, target="cuda")(model.clone())
    node = next(node for node in level0.model.graph if node.op_type == "MatMulNBits")
    assert node.attributes.get_int("bits") == 4


def test_the_summary_counts_a_layer_kept_exact_in_8_bits_apart_from_the_int4_ones():
    # SmolLM2's note read "211 layers int4" while its Q8_0 head was written MatMulNBits bits=8.
    hidden, head = weights(64, 64, seed=3, scale=0.2), _on_q8_0_grid(64, 48)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="head"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 48])],
        [("w1", hidden), ("w2", head)],
    )
    result = Int4QuantizationPass(quantize_outputs=True, samples=samples(model, 8))(model.clone())
    bits = sorted(node.attributes.get_int("bits") for node in result.model.graph if node.op_type == "MatMulNBits")
    assert bits == [4, 8]
    assert any(note.startswith("1 layers int4, 1 layers 8-bit (exact grid), 0 float") for note in result.notes), (
        result.notes
    )
    assert "2 layers' weights int4-dequantized (1 of them on an 8-bit grid)" in result.twin.description


@pytest.mark.parametrize("decoder", ["transpose", "gemm-transB"])
def test_a_constant_read_both_ways_round_gets_the_grid_of_each_reading(decoder):
    # A tied autoencoder: W on a grid along its rows for the encoder; the decoder reads W transposed, off any grid
    grid = _on_grid(64, 64, 32, integer_zero=True, seed=1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="enc"), helper.make_node("Relu", ["h"], ["r"])]
    if decoder == "transpose":
        nodes += [
            helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0], name="tr"),
            helper.make_node("MatMul", ["r", "wt"], ["y"], name="dec"),
        ]
    else:
        nodes.append(helper.make_node("Gemm", ["r", "w"], ["y"], name="dec", transB=1))
    model = _model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 64])],
        [("w", grid)],
    )
    feeds = {"x": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}
    result = Int4QuantizationPass(quantize_outputs=True, target="cuda")(model.clone())
    assert any(note.startswith("1 of 2 weights already lie on a 4-bit grid") for note in result.notes)
    expected = run_model(model, feeds)["y"]
    actual = run_batches(result.model, [feeds])[0]["y"]
    cosine = float(np.sum(actual * expected) / np.linalg.norm(actual) / np.linalg.norm(expected))
    assert cosine > 0.99  # the decoder rounded to 4 bits, not given the encoder's grid


def test_the_budget_times_each_layer_in_its_own_form():
    model = mlp(head=False)
    shapes = {"w1": (32, 64), "w2": (64, 32)}
    for name, (k, n) in shapes.items():  # up on a Q4_1 grid (offsets), down on a Q8_0 one (8 bits)
        array = _on_grid(k, n, 32, integer_zero=False) if name == "w1" else _on_q8_0_grid(k, n)
        model.graph.initializers[name].const_value = ir.tensor(array, name=name)
    quantizer = Int4QuantizationPass(quantize_outputs=True)
    from passes._layers import find_layers

    layers = {layer.name: layer for layer in find_layers(model.graph, quantizer.kinds)[0]}
    quantizer.prepare(model, list(layers.values()), [])
    assert quantizer.speed_form("int4", layers["up"]).endswith("accuracy_level 4 + block offsets (summed by ReduceSum)")
    assert quantizer.speed_form("int4", layers["down"]).startswith("MatMulNBits bits 8 ")
    from passes.quantization._layer_speed import LayerShape

    probe = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4", layers["down"])
    node = next(node for node in probe.graph if node.op_type == "MatMulNBits")
    assert node.attributes.get_int("bits") == 8
    assert not any(node.name.endswith("_block_offsets") for node in probe.graph)


@pytest.mark.parametrize(("opset", "k", "op"), [(18, 64, "ReduceSum"), (13, 64, "MatMul"), (18, 48, "MatMul")])
def test_the_budget_times_the_block_sums_in_the_form_the_layer_gets(opset, k, op):
    # The timing probe is written at opset 18; its block sums must take the source model's form (MatMul before
    # opset 15, or where K does not fill whole blocks), and the speed label (the timing cache's key) must say which.
    model = _matmul(np.random.default_rng(0).standard_normal((k, 16)).astype(np.float32))
    model.opset_imports[""] = opset
    from passes._layers import find_layers
    from passes.quantization._layer_speed import LayerShape

    quantizer = Int4QuantizationPass(quantize_outputs=True, method="hqq")  # float zero points: block offsets
    (layer,) = find_layers(model.graph, quantizer.kinds)[0]
    result = quantizer(model.clone())
    written = computed_op_types(result.model)
    assert (written.count("ReduceSum") == 1) is (op == "ReduceSum")
    assert quantizer.speed_form("int4", layer).endswith(f"+ block offsets (summed by {op})")
    probe = quantizer._layer_model(LayerShape("MatMul", 1, k, 16), "int4", layer)
    sums = [node for node in probe.graph if node.name.endswith("block_sums")]
    assert sums and {node.op_type for node in sums} == {op}


def test_a_foreign_tensor_named_like_the_block_sums_is_not_reused():
    model = _matmul(_on_grid(64, 16, 32, integer_zero=False))
    foreign = np.ones((64, 2), dtype=np.float32)
    value = ir.Value(name="graphopt.block_sums_64x32", const_value=ir.tensor(foreign, name="graphopt.block_sums_64x32"))
    value.shape, value.type = ir.Shape([64, 2]), ir.TensorType(ir.DataType.FLOAT)
    model.graph.register_initializer(value)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)}
    expected = run_model(model, feeds)["y"]
    result = Int4QuantizationPass(quantize_outputs=True, target="cuda")(model.clone())
    np.testing.assert_allclose(run_batches(result.model, [feeds])[0]["y"], expected, rtol=1e-4, atol=1e-4)


def test_the_budget_gives_a_layer_float_inputs_before_it_gives_it_up(tmp_path):
    from passes.quantization._layer_speed import LayerSpeeds
    from passes.quantization.int4 import FLOAT_INPUT

    def measure(shape, builders):  # level 4 fastest, level 0 in between, float slowest (as at one row)
        costs = {"float": 1.0, "DynamicQuantizeMatMul": 0.5}
        return {f: shape.k * shape.n * costs.get(f, 0.9 if "accuracy_level 0" in f else 0.4) for f in builders}

    first = weights(32, 32, seed=1, scale=0.3)
    first[:, 0] *= 1000.0  # the second layer's input has one huge channel: level 4 rounds its block to it
    second = _on_grid(32, 32, 16, integer_zero=True, seed=2)  # exact in 4 bits: only the input rounding hurts
    second[0, :] = 0.0  # (a level of the grid) the huge channel itself adds nothing to y
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w_first"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w_second"], ["y"], name="second"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])],
        [("w_first", first), ("w_second", second)],
    )
    feeds = {"x": np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)}
    speeds = LayerSpeeds(path=tmp_path / "speeds.json", measure=measure)
    everything = Int4QuantizationPass(block_size=16, quantize_outputs=True, samples=feeds, layer_speeds=speeds)
    everything(model.clone())
    assert everything.drift.cosine < 0.99
    budget = AccuracyBudget(min_cosine=0.999)
    quantization = Int4QuantizationPass(
        block_size=16, quantize_outputs=True, samples=feeds, budget=budget, layer_speeds=speeds
    )
    result = quantization(model.clone())
    assert quantization.schemes.get("second") == FLOAT_INPUT and not quantization.kept_float
    assert quantization.drift.cosine >= 0.999
    second = next(node for node in result.model.graph if node.name == "second_int4")
    assert second.op_type == "MatMulNBits" and not second.attributes.get_int("accuracy_level", 0)
    assert any("int4 with float inputs (accuracy_level 0) (second)" in note for note in result.notes)
    assert _closest_to_twin(result, feeds) < 1e-3


def test_the_speed_probe_keeps_the_layers_zero_points():
    from passes._layers import find_layers
    from passes.quantization._layer_speed import LayerShape

    model = mlp(head=False)
    for method, symmetric, stored in (("rtn", False, True), ("rtn", True, False)):
        quantizer = Int4QuantizationPass(method=method, symmetric=symmetric)
        layers = find_layers(model.graph, quantizer.kinds)[0]
        quantizer.prepare(model, layers, [])
        probe = quantizer._layer_model(LayerShape("MatMul", 1, 64, 96), "int4", layers[0])
        node = next(node for node in probe.graph if node.op_type == "MatMulNBits")
        assert (len(node.inputs) > 3 and node.inputs[3] is not None) is stored
        assert quantizer.speed_form("int4", layers[0]).endswith("symmetric") is not stored


def test_a_tied_head_is_not_offered_int8():
    from passes._layers import find_layers

    model = _embedding_model(tied=True)
    quantizer = Int4QuantizationPass(quantize_outputs=True)
    quantizer._planned = quantizer._plan_tables(model)
    layers = find_layers(model.graph, quantizer.kinds)[0]
    quantizer.prepare(model, layers, [])
    head = next(layer for layer in layers if layer.name == "lm_head")
    assert "int8" not in quantizer.alternatives(head)


def test_a_cuda_budget_without_cuda_does_not_time_layers_on_the_cpu(monkeypatch):
    from passes.quantization import _base

    monkeypatch.setattr(_base, "cuda_unavailable_reason", lambda: "onnxruntime-gpu is not installed")

    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA budget timed its layers on the CPU")

    monkeypatch.setattr(_base, "LayerSpeeds", refuse)
    model = mlp()
    feeds = samples(model, 8)
    quantizer = Int4QuantizationPass(
        target="cuda", quantize_outputs=True, samples=feeds, budget=AccuracyBudget(min_cosine=0.9999)
    )
    result = quantizer(model.clone())
    assert any("--target cuda and onnxruntime-gpu is not installed" in note for note in result.notes)


def test_a_tied_head_on_an_asymmetric_8bit_grid_shares_its_zero_points_too():
    rng = np.random.default_rng(3)
    q = rng.integers(0, 256, (1024, 2, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 255  # every block spans the grid, so its step is (max - min) / 255
    zero = rng.integers(1, 255, (1024, 2, 1)).astype(np.float32)
    step = (rng.random((1024, 2, 1)) * 0.01 + 0.001).astype(np.float32)
    table = np.ascontiguousarray(((q - zero) * step).reshape(1024, 64).astype(np.float32))
    model = _embedding_model(tied=True)
    model.graph.initializers["table"].const_value = ir.tensor(table, name="table")
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    lookup = next(node for node in result.model.graph if node.op_type == "GatherBlockQuantized")
    head = next(
        node for node in result.model.graph if node.name.startswith("lm_head") and node.op_type == "MatMulNBits"
    )
    assert lookup.attributes.get_int("bits") == 8 and lookup.inputs[0] is head.inputs[1]
    np.testing.assert_array_equal(lookup.inputs[3].const_value.numpy(), zero.astype(np.uint8))
    assert _closest_to_twin(result, _ids()) < 1e-4


@pytest.mark.parametrize("spelling", ["head reads the table", "head holds a copy"])
def test_a_table_tied_to_a_head_on_an_8bit_grid_shares_the_heads_8bit_bytes(spelling):
    # GGUF keeps a tied head in Q8_0: the head stays exact in 8 bits and the table's lookups read the same
    # [vocab, blocks, block] bytes (GatherBlockQuantized bits=8), whether the head reads the table itself
    # (Gemm transB=1, the dynamo export after share-transposed-initializers) or a copy (the legacy export).
    table = np.ascontiguousarray(_on_q8_0_grid(64, 1024).T)
    model = _embedding_model(tied=spelling == "head reads the table")
    model.graph.initializers["table"].const_value = ir.tensor(table, name="table")
    if spelling == "head holds a copy":
        model.graph.initializers["head"].const_value = ir.tensor(np.ascontiguousarray(table.T), name="head")
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    lookup = next(node for node in result.model.graph if node.op_type == "GatherBlockQuantized")
    head = next(
        node for node in result.model.graph if node.name.startswith("lm_head") and node.op_type == "MatMulNBits"
    )
    assert head.attributes.get_int("bits") == 8 and lookup.attributes.get_int("bits") == 8
    assert lookup.inputs[0] is head.inputs[1] and lookup.inputs[0].const_value.shape == (1024, 2, 32)
    floats = [value.const_value for value in result.model.graph.initializers.values() if value.const_value is not None]
    assert not any(t.dtype == ir.DataType.FLOAT and t.size >= table.size for t in floats)  # no float copy is left
    assert any("1 embedding tables in GatherBlockQuantized (0 int4, 1 8-bit" in note for note in result.notes)
    # The zero points are written out (128), not left to the lookup's default, which CUDA got wrong (ORT #31692)
    assert lookup.inputs[3].const_value.shape == (1024, 2, 1)
    assert (lookup.inputs[3].const_value.numpy() == 128).all()
    assert _closest_to_twin(result, _ids()) < 1e-4
    # The lookups are exact: the rows the model reads are the table's
    probe = result.model.clone()
    gathered = next(node for node in probe.graph if node.op_type == "GatherBlockQuantized").outputs[0]
    rows = next(user for user, _ in gathered.uses()).outputs[0]  # the reshape back to [ids..., width]
    probe.graph.outputs.append(rows)
    ids = _ids()["ids"]
    looked_up = run_batches(probe, [_ids()])[0][rows.name]
    np.testing.assert_allclose(looked_up, table[ids], rtol=0, atol=1e-6)
    # The head float (not --quantize-outputs): the table stays float with it, and says why
    float_head = Int4QuantizationPass()(model.clone())
    assert "GatherBlockQuantized" not in computed_op_types(float_head.model)
    assert any("tied to the LM head" in reason for reason in float_head.refusals)


def test_a_layer_input_that_is_also_a_model_output_is_quantized():
    # A review: the budget's probe cut the graph at the layer's input, a graph output too (a Llama export's last
    # hidden state with output_hidden_states=True), and the whole int4 pass failed; the model stayed float, exit 0.
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = _model(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["B", 64]),
        ],
        [("w", weight)],
    )
    result, report = optimize_with_report(model, passes=["quantize-int4"], quantize="int4", quantize_outputs=True)
    (step,) = [p for p in report.passes if p.name == "quantize-int4"]
    assert step.status == "applied", step
    assert "MatMulNBits" in [node.op_type for node in result.graph]


def test_an_initializer_is_not_named_like_a_node_output():
    # A review: a node output named "proj.scales" beside a MatMul "proj" gave the int4 result two values of one
    # name, and the pass was rolled back.
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    model = _model(
        [
            helper.make_node("Relu", ["x"], ["proj.scales"]),
            helper.make_node("MatMul", ["proj.scales", "w"], ["y"], name="proj"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 32])],
        [("w", weight)],
    )
    result = Int4QuantizationPass(quantize_outputs=True)(model.clone())
    names = [value.name for node in result.model.graph for value in node.outputs]
    names += list(result.model.graph.initializers)
    assert len(names) == len(set(names))
