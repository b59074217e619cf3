"""Review s79 (xseg): false rollbacks seen on a real segmenter (apeer's nucleus detector from napari-czann-segment
0.1.2: tf2onnx, opset 12, NHWC 1024x1024 tiles into a 2-class softmax), rebuilt small.

- ``simplify-ops``' Conv+BatchNormalization folds were rolled back on the generated batch-2 set: its second sample
  (normal draws, 35x in the model's first Mul) drives the network where ONNX Runtime's own load-time rewrites move the
  logits by up to 521; the fold stays within 4x each pixel's own noise, but the noise floor is capped at 1 % of the
  output's RMS, and 37 pixels at the decision boundary were past it. Fixed: a row keeps the noise ONNX Runtime's own
  rewrites show in it (once) past the cap.
- ``convert-float16`` was rolled back against its twin on a real tile (0.188): the twin rounds the weights alone, the
  result casts the low-contrast input (0.50 +- 0.022) to float16, a step of 1 % of its spread, and a steep softmax
  makes that 0.19 at boundary pixels.

The second is a strict xfail named in README.md (``tests/test_review_s79_docs.py``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report


def _status(report, name: str) -> str:
    return next(p.status for p in report.passes if p.name == name)


def test_a_row_keeps_the_float_noise_onnx_runtimes_own_rewrites_show_in_it_past_the_cap():
    # The segmenter's generated sample, in small: boundary pixels of a 2-class softmax whose own ORT_ENABLE_ALL run
    # moved them by 0.08 to 0.2, past the floor's cap (1 % of the RMS, 0.007); the folds moved them by at most 0.028
    # (0.14x that) and were rolled back. A row keeps its own noise (once) past the cap; a quiet row, or a noisy row
    # moved further than ORT moved it, still fails.
    from optimizer.verify import Verifier, compare_outputs

    rng = np.random.default_rng(0)
    saturated = (rng.random((1, 64, 64)) < 0.5).astype(np.float64)
    reference = np.stack([saturated, 1.0 - saturated], axis=-1).astype(np.float32)  # rows: one pixel's 2 classes
    reference[0, 3, 5] = [0.8, 0.2]
    reference[0, 9, 1] = [0.55, 0.45]
    deployed = reference.copy()
    deployed[0, 3, 5] = [0.6, 0.4]  # ORT's own rewrites moved this boundary pixel by 0.2
    deployed[0, 9, 1] += np.float32(1e-7)  # and this one by rounding alone
    noise = Verifier._noise_rows({"y": deployed}, {"y": reference})

    def moved(row: tuple[int, int, int], by: float) -> bool:
        after = reference.copy()
        after[row] += np.array([by, -by], np.float32)
        return compare_outputs({"y": reference}, {"y": after}, noise=noise).ok

    assert moved((0, 3, 5), 0.028)  # within what ORT moved that row by
    assert not moved((0, 3, 5), 0.25)  # past it
    assert not moved((0, 9, 1), 0.028)  # a row ORT barely moved: the cap holds
    assert not moved((0, 0, 0), 0.028)  # a row ORT did not move: the tolerance holds


def _low_contrast_softmax_head(gain: float) -> ir.Model:
    # A Transpose of the input (float16 kernels on CPU keep the input's Cast to float16 before it), a normalization
    # that stretches an image of low contrast, and a steep 2-class softmax: the segmenter's input path and head.
    constants = {
        "mid": np.array(0.5, np.float32),
        "k": np.array(40.0, np.float32),
        "w": np.array([[[[gain]]], [[[-gain]]]], np.float32),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Sub", ["t", "mid"], ["c"]),
        helper.make_node("Mul", ["c", "k"], ["h"]),
        helper.make_node("Conv", ["h", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 16, 16])],
        [numpy_helper.from_array(array, name) for name, array in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return ir.from_proto(model)


@pytest.mark.xfail(
    strict=True,
    reason="the float16 twin rounds the weights alone, not a float input the result casts to float16, and is "
    "compared end to end only",
)
def test_float16_of_a_low_contrast_input_is_held_to_a_twin_that_rounds_that_input_too():
    # Pixels 0.5 +- 0.02: float16's step there (2.4e-4) is 1 % of their spread; the result, which rounds them, is
    # 0.035 from a twin that does not, past float16's tolerance at the softmax (rtol 1e-2).
    x = {"x": (0.5 + 0.02 * np.random.default_rng(1).standard_normal((1, 1, 16, 16))).astype(np.float32)}
    _, report = optimize_with_report(
        _low_contrast_softmax_head(8.0), passes=["convert-float16"], target="cuda", fp16=True, inputs=x
    )
    assert _status(report, "convert-float16") == "applied", report.passes
