"""Review (s46): fuse-rotary-embedding's rotate_half by one Split (``_RotateHalfBySplit``, ``_split_in_halves``) and
the integer end-to-end check's refusal of Conv weights scaled off their output channels
(``verify._conv_weight_scales_off_output_channels``).

No wrong fusion found: every attack below is either fused with ONNX Runtime's outputs unchanged or left alone. The
tests pin the spellings the commit's own tests do not reach (opset 11/12 ``split`` attribute, opset 13 equal split,
a partial rotary spelled with Splits, and the look-alikes that must be refused)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import verify
from optimizer.api import optimize_with_report
from optimizer.inputs import make_inputs
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, op_types

_N = helper.make_node
HEADS, SIZE = 3, 8
HALVES = {"halves": np.array([SIZE // 2] * 2, np.int64)}


def _model(rotation, *, opset=18, table="dup", consts=None, inputs=(), width=SIZE) -> ir.Model:
    """``rotation`` (nodes computing ``y``) over ``x [B, N, S, d]`` and tables ``cos``/``sin [B, 1, S, width]``
    from ``position_ids``; ``table``: ``dup`` (Hugging Face's Concat(freqs, freqs)), ``scaled`` (second half at
    other frequencies) or ``interleaved`` (each frequency twice in a row)."""
    inv = (1.0 / 10000 ** (np.arange(0, width, 2) / width)).astype(np.float32)
    consts = {"inv": inv.reshape(1, 1, -1), "two": np.array([2.0], np.float32), **(consts or {})}
    unsqueeze = (
        (lambda x, y, axis: _N("Unsqueeze", [x, f"ax{axis}"], [y]))
        if opset >= 13
        else (lambda x, y, axis: _N("Unsqueeze", [x], [y], axes=[axis]))
    )
    consts.update({"ax1": np.array([1], np.int64), "ax-1": np.array([-1], np.int64)} if opset >= 13 else {})
    if table == "dup":
        tab = [_N("Concat", ["fr", "fr"], ["tab"], axis=-1)]
    elif table == "scaled":
        tab = [_N("Mul", ["fr", "two"], ["fr2"]), _N("Concat", ["fr", "fr2"], ["tab"], axis=-1)]
    else:
        consts["pairs"] = np.array([0, 0, width], np.int64)
        tab = [
            unsqueeze("fr", "fr1", -1),
            _N("Concat", ["fr1", "fr1"], ["fr_pairs"], axis=-1),
            _N("Reshape", ["fr_pairs", "pairs"], ["tab"]),
        ]
    nodes = [
        _N("Cast", ["position_ids"], ["pos_f"], to=TensorProto.FLOAT),
        unsqueeze("pos_f", "pos", -1),
        _N("Mul", ["pos", "inv"], ["fr"]),
        *tab,
        _N("Cos", ["tab"], ["cos3"]),
        _N("Sin", ["tab"], ["sin3"]),
        unsqueeze("cos3", "cos", 1),
        unsqueeze("sin3", "sin", 1),
        *rotation,
    ]
    graph = helper.make_graph(
        nodes,
        "rotary_split",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HEADS, "sequence", SIZE]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
            *inputs,
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HEADS, "sequence", SIZE])],
        [numpy_helper.from_array(value, name) for name, value in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return ir.from_proto(onnx.shape_inference.infer_shapes(model))


def _rotate(split: onnx.NodeProto, x="x", lo="lo", hi="hi", out="y") -> list[onnx.NodeProto]:
    """``out = x * cos + Concat(Neg(hi), lo) * sin`` after ``split``."""
    return [
        split,
        _N("Neg", [hi], [f"{out}_nhi"]),
        _N("Concat", [f"{out}_nhi", lo], [f"{out}_rot"], axis=-1),
        _N("Mul", [x, "cos"], [f"{out}_a"]),
        _N("Mul", [f"{out}_rot", "sin"], [f"{out}_b"]),
        _N("Add", [f"{out}_a", f"{out}_b"], [out]),
    ]


def _feeds(sequence: int, **extra) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(sequence)
    positions = np.stack([np.arange(sequence), np.arange(sequence) + 3])
    return {"x": rng.standard_normal((2, HEADS, sequence, SIZE)).astype(np.float32), "position_ids": positions, **extra}


def _fused_alike(model: ir.Model) -> None:
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert op_types(result.model).count("RotaryEmbedding") == 1, result.refusals
    for sequence in (5, 9):
        assert_same_outputs(model, result.model, _feeds(sequence), rtol=1e-5, atol=1e-5)


def _left_alone(model: ir.Model, refusal: str | None) -> None:
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert "RotaryEmbedding" not in op_types(result.model)
    if refusal is not None:
        assert any(refusal in line for line in result.refusals), result.refusals


@pytest.mark.parametrize(
    ("opset", "split"),
    [
        pytest.param(11, _N("Split", ["x"], ["lo", "hi"], axis=3, split=[4, 4]), id="opset11_split_attribute_axis3"),
        pytest.param(12, _N("Split", ["x"], ["lo", "hi"], axis=-1, split=[4, 4]), id="opset12_split_attribute"),
        pytest.param(12, _N("Split", ["x"], ["lo", "hi"], axis=-1), id="opset12_equal_outputs"),
        pytest.param(13, _N("Split", ["x"], ["lo", "hi"], axis=-1), id="opset13_neither_sizes_nor_count"),
    ],
)
def test_older_split_spellings_fuse_and_compute_the_original(opset, split):
    _fused_alike(_model(_rotate(split), opset=opset))


def test_a_partial_rotary_spelled_with_splits_computes_the_original():
    # x_rot, x_pass = x.split([4, 4], -1); rotate_half(x_rot) by chunk: the inner rotation is fused on x_rot
    # ([B, N, S, 4] as it is), the pass-through Concat left in place.
    sizes = {"outer": np.array([4, 4], np.int64), "inner": np.array([2, 2], np.int64)}
    nodes = [
        _N("Split", ["x", "outer"], ["x_rot", "x_pass"], axis=-1),
        *_rotate(_N("Split", ["x_rot", "inner"], ["lo", "hi"], axis=-1), x="x_rot", out="embedded"),
        _N("Concat", ["embedded", "x_pass"], ["y"], axis=-1),
    ]
    _fused_alike(_model(nodes, consts=sizes, width=4))


_SIZES_INPUT = helper.make_tensor_value_info("halves", TensorProto.INT64, [2])
_OTHER_X = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["batch", HEADS, "sequence", SIZE])
_COMPUTED = [
    _N("Shape", ["x"], ["width"], start=-1),
    _N("Div", ["width", "two_i"], ["half"]),
    _N("Concat", ["half", "half"], ["computed"], axis=0),
]


@pytest.mark.parametrize(
    ("build", "refusal"),
    [
        pytest.param(
            lambda: _model(_rotate(_N("Split", ["x"], ["lo", "hi"], axis=-1, split=[2, 6])), opset=12),
            "not a full, non-interleaved rotate_half",
            id="opset12_unequal_attribute",
        ),
        pytest.param(
            lambda: _model(
                _rotate(_N("Split", ["x", "halves"], ["lo", "hi"], axis=-1), lo="hi", hi="lo"), consts=HALVES
            ),
            None,
            id="halves_swapped",
        ),
        pytest.param(
            lambda: _model(
                _rotate(_N("Split", ["x", "three"], ["lo", "hi", "empty"], axis=-1)),
                consts={"three": np.array([4, 4, 0], np.int64)},
            ),
            "not a full, non-interleaved rotate_half",
            id="three_outputs",
        ),
        pytest.param(
            lambda: _model(
                [*_COMPUTED, *_rotate(_N("Split", ["x", "computed"], ["lo", "hi"], axis=-1))],
                consts={"two_i": np.array([2], np.int64)},
            ),
            "not a full, non-interleaved rotate_half",
            id="computed_sizes",
        ),
        pytest.param(
            lambda: _model(
                _rotate(_N("Split", ["x", "halves"], ["lo", "hi"], axis=-1)), consts=HALVES, inputs=[_SIZES_INPUT]
            ),
            "not a full, non-interleaved rotate_half",
            id="sizes_an_overridable_graph_input",
        ),
        pytest.param(
            lambda: _model(
                _rotate(_N("Split", ["x2", "halves"], ["lo", "hi"], axis=-1)), consts=HALVES, inputs=[_OTHER_X]
            ),
            None,
            id="split_of_another_tensor",
        ),
        pytest.param(
            lambda: _model(_rotate(_N("Split", ["x", "halves"], ["lo", "hi"], axis=-1)), consts=HALVES, table="scaled"),
            "cos/sin are not two equal halves",
            id="tables_halves_differ",
        ),
        pytest.param(
            lambda: _model(
                _rotate(_N("Split", ["x", "halves"], ["lo", "hi"], axis=-1)), consts=HALVES, table="interleaved"
            ),
            "cos/sin are not two equal halves",
            id="interleaved_tables",
        ),
    ],
)
def test_split_look_alikes_are_left_alone(build, refusal):
    _left_alone(build(), refusal)


# -- Target 2: the integer end-to-end check's Conv weight axis ---------------------------------------------------


def _cnn() -> ir.Model:
    """A stem Conv, a depthwise Conv ([C, 1, 3, 3], group=C), a grouped 1x1 Conv, a Gemm."""
    rng = np.random.default_rng(0)
    shapes = {"w0": (8, 3, 3, 3), "b0": (8,), "w1": (8, 1, 3, 3), "b1": (8,), "w2": (16, 4, 1, 1), "b2": (16,)}
    shapes.update({"wf": (4, 16), "bf": (4,)})
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [
        _N("Conv", ["x", "w0", "b0"], ["c0"], pads=[1] * 4, name="stem"),
        _N("Relu", ["c0"], ["r0"]),
        _N("Conv", ["r0", "w1", "b1"], ["c1"], group=8, pads=[1] * 4, name="depthwise"),
        _N("Relu", ["c1"], ["r1"]),
        _N("Conv", ["r1", "w2", "b2"], ["c2"], group=2, name="grouped"),
        _N("Relu", ["c2"], ["r2"]),
        _N("GlobalAveragePool", ["r2"], ["pooled"]),
        _N("Flatten", ["pooled"], ["flat"]),
        _N("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_static_int8_cnn_with_a_depthwise_conv_is_not_refused_for_its_weight_axis():
    model = _cnn()
    result, report = optimize_with_report(
        model, quantize="static", calibration=make_inputs(model, {"batch": 16}, seed=4)
    )
    record = next(record for record in report.passes if record.name == "quantize-static")
    assert record.status == "applied" and report.verified
    weights = [node for node in result.graph if node.name == "depthwise_weight_dq"]
    assert weights and weights[0].attributes.get_int("axis") == 0
    assert verify._conv_weight_scales_off_output_channels(result) is None


def _dequantized_conv(op_type: str, weight_shape, scale_shape, axis: int | None) -> ir.Model:
    attributes = {} if axis is None else {"axis": axis}
    inits = [
        numpy_helper.from_array(np.ones(weight_shape, np.int8), "w_q"),
        numpy_helper.from_array(np.full(scale_shape, 0.1, np.float32), "w_scale"),
    ]
    nodes = [
        _N("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="w_dq", **attributes),
        _N(op_type, ["x", "w"], ["y"], name="conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "dq_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return ir.from_proto(onnx.shape_inference.infer_shapes(helper.make_model(graph)))


@pytest.mark.parametrize(
    ("op_type", "weight_shape", "scale_shape", "axis", "refused"),
    [
        pytest.param("ConvTranspose", (4, 6, 3, 3), (6,), 1, False, id="conv_transpose_output_channels_axis1"),
        pytest.param("Conv", (6, 4, 3, 3), (1,), None, False, id="one_scale_of_shape_1"),
        pytest.param("Conv", (6, 4, 3, 3), (4,), None, True, id="default_axis_is_1_input_channels"),
        pytest.param("Conv", (6, 4, 3, 3), (6,), -4, False, id="negative_axis_of_output_channels"),
    ],
)
def test_the_weight_axis_is_read_as_dequantize_linear_defines_it(op_type, weight_shape, scale_shape, axis, refused):
    found = verify._conv_weight_scales_off_output_channels(_dequantized_conv(op_type, weight_shape, scale_shape, axis))
    assert (found == "conv") is refused
