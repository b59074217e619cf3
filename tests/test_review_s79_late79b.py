"""Review s79 late79b: which reader a 16-wide Conv channel group on AVX-512 is classified by
(``passes/pruning/_base.py``: ``_counts``, ``_read_pointwise``, the refusal's ``_NARROW_COUNTS_SAID``), after review
s79 xblk.

- A 1×1 Conv whose weight had no declared shape (a ``Constant`` node's output, a float16 weight widened by a ``Cast``,
  an int8 weight dequantized by ``Mul(Cast(q), scale)``) was taken for "another Conv": its 16 channels kept 8 at 0.5,
  which a 1×1 Conv read in 1.2–1.4× the time of all 16.
- A classifier's Gemm reading 16 pooled channels kept 8 or 4, called "read by the next Conv in less time". Measured
  (``benchmarks/narrow_conv_groups.py --shapes fc``, AVX-512, one thread): a 1×1 Conv 32 → C, GlobalAveragePool,
  Gemm C → 10 ran 1.0–1.4× the time of C = 16 at 12 and 8, 1.0–1.2× at 4: no count of 16 is faster, so all 16 stay.
- The refusal said "4, 8 or all 16 otherwise" (otherwise than what, when no other rule was named) inside a second
  pair of parentheses.
A strided 1×1 reader (measured as a 1×1: 12 1.3–1.65×, 8 1.1–1.2×, 4 0.96–0.99×) still keeps 4 or 16.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.pruning.channels import ChannelPruningPass


@pytest.fixture(scope="module")
def calibration():
    return {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}


def _model(reader: str) -> ir.Model:
    """``x [B, 3, 12, 12]`` → 3×3 Conv (16, + bias) → Relu → ``reader``: a 1×1 Conv (8 out) whose weight is an
    initializer (``init``), a ``Constant`` node (``constant``), a float16 initializer a ``Cast`` widens (``float16``),
    int8 dequantized by hand (``int8``), or an initializer read at stride 2 (``strided``); or GlobalAveragePool →
    Flatten → Gemm (``gemm``, 10 classes)."""
    rng = np.random.default_rng(5)
    one_by_one = (rng.standard_normal((8, 16, 1, 1)) * 0.3).astype(np.float32)
    init = {"w1": (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)}
    init["b1"] = (rng.standard_normal(16) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
    ]
    if reader == "gemm":
        init |= {"fc": (rng.standard_normal((10, 16)) * 0.3).astype(np.float32), "fb": np.zeros(10, np.float32)}
        nodes += [
            helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
            helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="conv2", transB=1),
        ]
    else:
        if reader == "constant":
            nodes.append(helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(one_by_one, "w2c")))
        elif reader == "float16":
            init["w2h"] = one_by_one.astype(np.float16)
            nodes.append(helper.make_node("Cast", ["w2h"], ["w2"], to=TensorProto.FLOAT))
        elif reader == "int8":
            init |= {"q": np.round(one_by_one * 300).astype(np.int8), "s": np.array(1 / 300, np.float32)}
            nodes += [
                helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
                helper.make_node("Mul", ["qf", "s"], ["w2"]),
            ]
        else:
            init["w2"] = one_by_one
        strides = [2, 2] if reader == "strided" else [1, 1]
        nodes.append(helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", strides=strides))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(array, name) for name, array in init.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


@pytest.mark.parametrize("reader", ["init", "constant", "float16", "int8", "strided"])
def test_on_avx512_16_channels_a_1x1_conv_reads_keep_4_whatever_holds_its_weight(avx512, calibration, reader):
    """0.5 asks 8: a 1×1 reader keeps the nearer of 4 and 16, 4 (8 ran slower than 16), however its weight is stored;
    a weight without a declared shape (Constant, Cast, dequantized) was taken for a 3×3 Conv's and kept 8."""
    pruning = ChannelPruningPass(0.5, samples=calibration, repair=False)
    pruning(_model(reader))
    assert pruning.pruned == {"conv2": (4, 16)}, pruning.pruned


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_on_avx512_16_channels_a_classifier_gemm_reads_are_left_whole(avx512, calibration, ratio):
    """No count of 16 a Gemm reads after a global pooling ran faster than 16 (12 and 8: 1.0–1.4×, 4: 1.0–1.2×); the
    refusal says so in one line."""
    pruning = ChannelPruningPass(ratio, samples=calibration, repair=False)
    result = pruning(_model("gemm"))
    assert pruning.pruned == {}, pruning.pruned
    said = [line for line in result.refusals if "of one block of 16" in line]
    assert len(said) == 1 and "a Gemm or MatMul" in said[0], result.refusals


def _depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


def test_on_avx512_a_refusal_names_which_conv_keeps_4_8_or_16_in_one_readable_line(avx512, calibration):
    """A 3×3 reader's rule was said as "4, 8 or all 16 otherwise", in parentheses within parentheses."""
    from tests.test_review_s79_xblk import _basic_block

    pruning = ChannelPruningPass(0.1, samples=calibration, repair=False)
    result = pruning(_basic_block())  # 16 a 3×3 Conv reads keep 14 → 16
    assert pruning.pruned == {}, pruning.pruned
    line = next(line for line in result.refusals if "rounds to none" in line)
    assert "4, 8 or all 16 where neither a 1×1 nor a depthwise Conv reads it" in line and "otherwise" not in line, line
    assert "\n" not in line and _depth(line) == 1, line


@pytest.mark.parametrize("reader", ["gemm", "depthwise"])
def test_on_avx512_a_16_wide_group_no_fraction_cuts_is_not_told_to_ask_for_more(avx512, calibration, reader):
    """A 16-wide group a Gemm or a depthwise Conv reads keeps all 16 at any fraction: the refusal said "ask for a
    larger fraction", which cuts nothing either."""
    from tests.passes.pruning.graphs import inverted_residual

    pruning = ChannelPruningPass(0.9, samples=calibration, repair=False)
    result = pruning(_model("gemm") if reader == "gemm" else inverted_residual(expand=2))
    assert pruning.pruned == {}, pruning.pruned
    line = next(line for line in result.refusals if "rounds to none" in line)
    assert "no fraction removes any" in line and "ask for a larger fraction" not in line, line


def test_on_avx512_a_12_wide_group_a_depthwise_conv_reads_keeps_a_multiple_of_4(avx512, calibration):
    """0.25 asks 9 of 12 expansion channels: through a depthwise Conv 9 and 11 of 12 ran 1.2–1.4× the time of 12 and 6
    of 8 1.1–1.9× of 8, where 8 of 12 ran 0.90–0.98× and 4 of 8 0.81–0.94× (benchmarks/narrow_conv_groups.py, one
    thread): the nearer multiple of 4, 8, is faster than both."""
    from tests.passes.pruning.graphs import inverted_residual

    pruning = ChannelPruningPass(0.25, samples=calibration, repair=False)
    pruning(inverted_residual(expand=2, channels=6))
    assert pruning.pruned and all(counts == (8, 12) for counts in pruning.pruned.values()), pruning.pruned
