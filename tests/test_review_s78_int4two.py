"""Review s78 (int4two): issue 14's int4 decode step at two threads, where the exact Q4_1 form's small ops (block
sums, outlier channels) do not split across threads. merge-matmul-nbits runs after quantize-int4 and is checked
against quantize-int4's result, not against a twin: on SmolLM2 a rewrite of the corrections' inputs that was exact
in float but summed the blocks in another order (one ``MatMul`` by a 0/1 matrix instead of ``ReduceSum``) moved
the level-4 kernels' int8 rounding 1.33x past the original's worst row and the whole pass was rolled back, its
sibling merges with it (docs/benchmarks.md, *Int4 decode at two threads on Zen 4*). So the merge must stay
bit-identical on int4's corrections at accuracy_level 4, which these tests hold."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.runtime import run_model
from passes.fusion.matmul_nbits_merge import MatMulNBitsMergeFusion
from passes.quantization.int4 import Int4QuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.test_int4_outliers import _norm_and_two_readers, _x


@pytest.fixture(scope="module", params=[18, 13], ids=["reduce_sum", "matmul_sums"])
def quantized(request) -> ir.Model:
    """HQQ (uint8 zero points + block offsets) with 2 outlier channels at level 4: both corrections, one input,
    two readers; the block sums by ``ReduceSum`` from opset 15, by a 0/1 ``MatMul`` before it."""
    return Int4QuantizationPass(quantize_outputs=True, method="hqq", outlier_channels=2, samples=_x(1))(
        _norm_and_two_readers(opset=request.param)
    ).model


def test_merging_int4s_corrected_siblings_is_bit_identical_at_level_4(quantized):
    assert {"Gather", "Concat"} <= set(computed_op_types(quantized))  # both corrections read off the input
    merged = MatMulNBitsMergeFusion()(quantized.clone()).model
    assert computed_op_types(merged).count("MatMulNBits") == 1
    for seed in (3, 4):
        feeds = {"x": _x(seed, batch=2)["x"]}
        np.testing.assert_array_equal(run_model(merged, feeds)["y"], run_model(quantized, feeds)["y"])
