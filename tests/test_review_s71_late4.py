"""Review s71 (late 4): the blockwise comparisons of 87b586b and the padded rows of 717a65a (2026-12-07).

The blockwise ``_compare_one``, ``_systematic_error`` and ``int8_row_excess`` held against d1f9791's on 2,000 and
500 random cases (NaN/Inf in one block, 0-d, empty, int, float16, bfloat16, unequal padding, blocks of 1 to 64
values): no verdict, figure or detail differed. ``unpadded_rows`` matched an activation to a padding mask by shape
alone (its leading dims the mask's ``[batch, sequence]``, or a 2-D one's row count the mask's size): a
``[sequence * batch, embed]`` layout or a channels-first map of as many channels as tokens lost real rows from the
ranges, peaks and GPTQ's rows, which before 717a65a counted every row; and an activation ``[..., 0]`` raised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from optimizer.padding import token_rows, unpadded_rows
from passes.quantization import calibration


def _model(signature: str, body: str, weights: dict[str, np.ndarray] | None = None) -> ir.Model:
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng {signature}\n{{\n{body}\n}}')
    for name, value in (weights or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


_MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int64)  # the second row's last two tokens pad


def test_an_empty_activation_has_a_range_as_before():
    # Before 717a65a calibration took an activation with no values as (0, 0); unpadded_rows' reshape(-1, 0)
    # raised "cannot reshape array of size 0" (the 2-D view of a [2, 0] array has no -1 to infer).
    model = _model("(float[2, 0] x) => (float[2, 0] y)", "y = Relu(x)")
    assert calibration.calibrate(model, ["y"], [{"x": np.zeros((2, 0), np.float32)}]) == {"y": (0.0, 0.0)}
    assert unpadded_rows(np.zeros((2, 4, 0), np.float32), {(2, 4): _MASK == 0}).shape == (6, 0)


def test_a_sequence_major_2d_activation_keeps_its_real_rows():
    model = _model(
        "(float[2, 4, 3] x, int64[2, 4] attention_mask) => (float[8, 3] y)",
        "t = Transpose<perm = [1, 0, 2]>(x)\nflat = Reshape(t, shape)\ny = MatMul(flat, w)",
        {"shape": np.array([-1, 3], np.int64), "w": np.eye(3, dtype=np.float32)},
    )
    x = np.full((2, 4, 3), 0.5, np.float32)
    x[0, 3] = 5.0  # a real token (batch 0, position 3): its row is flat's 3 * 2 + 0 = 6, where batch 1's pad is
    low, high = calibration.calibrate(model, ["flat"], [{"x": x, "attention_mask": _MASK}])["flat"]
    assert high == 5.0


def test_a_channels_first_feature_map_of_the_sequences_width_keeps_its_channels():
    model = _model(
        "(float[2, 4, 4] x, int64[2, 4] attention_mask) => (float[2, 2, 4] y)",
        "h = Relu(x)\ny = Conv(h, w)",
        {"w": np.ones((2, 4, 1), np.float32)},
    )
    x = np.full((2, 4, 4), 0.5, np.float32)
    x[1, 2, 0] = 5.0  # batch 1, channel 2, position 0: a real token's channel, its row (1, 2) where the mask pads
    low, high = calibration.calibrate(model, ["h"], [{"x": x, "attention_mask": _MASK}])["h"]
    assert high == 5.0


def test_a_transformers_projections_still_read_as_token_rows():
    # The walk back must not lose Hugging Face's own layout: every weight's MatMul input of BERT (through its
    # attention's Transpose(0, 2, 1, 3) and Reshape back) is [batch, sequence, hidden]; only the attention's own
    # [batch, heads, ...] operands are not.
    model = ir.load(Path(__file__).parent / "fixtures" / "bert_legacy.onnx")
    projections = [
        node.inputs[0].name for node in model.graph if node.op_type == "MatMul" and node.inputs[1].is_initializer()
    ]
    assert len(projections) == 12
    assert token_rows(model, projections) == frozenset(projections)
