"""_inferred_shapes through the contrib ops graphopt writes besides its norms and rotary: MatMulNBits,
FusedMatMul, MultiHeadAttention, Attention, GatherBlockQuantized, and the int8 kernels (DynamicQuantizeMatMul,
MatMulIntegerToFloat, QAttention). Each rule is checked against ONNX Runtime's
actual output (symbolic dims bound to the sizes fed), a near case stays unknown, and a fusion behind each op
now finds the shapes it needs."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from optimizer.inputs import make_inputs
from passes.constant_folding import FoldConstantsPass
from passes.fusion._inferred_shapes import inferred_shapes
from passes.fusion.attention import AttentionFusion
from passes.fusion.rms_norm import RmsNormFusion
from tests.helpers import FIXTURES, computed_op_types, parse_model, run
from tests.passes.fusion.test_inferred_shapes import _assert_fuses_the_unscaled_norm, _model

_MS = "com.microsoft"
_F = TensorProto.FLOAT
_SIZES = {"B": 2, "S": 5, "L": 7, "N": 3, "T": 6, "M": 4}


def _zeros(name: str, dtype: int, dims: list[int], fill: float = 0) -> onnx.TensorProto:
    return oh.make_tensor(name, dtype, dims, [fill] * int(np.prod(dims)))


def _nbits_weight(k: int, n: int, bits: int = 4, dtype: int = _F) -> list[onnx.TensorProto]:
    blocks = -(-k // 16)
    return [_zeros("nb_w", TensorProto.UINT8, [n, blocks, 16 * bits // 8], 17), _zeros("nb_s", dtype, [n * blocks], 1)]


def _one_op_model(node: onnx.NodeProto, inputs: list[tuple[str, int, list | None]], inits, opset: int = 18):
    """``node`` read by an Identity (a read output gets a stand-in), its inputs declared as given."""
    graph = oh.make_graph(
        [node, oh.make_node("Identity", [node.output[0]], ["read"])],
        "g",
        [oh.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in inputs],
        [onnx.ValueInfoProto(name="read")],
        initializer=inits,
    )
    imports = [oh.make_opsetid("", opset), oh.make_opsetid(_MS, 1)]
    return oh.make_model(graph, opset_imports=imports, ir_version=10)


def _inferred(proto: onnx.ModelProto) -> tuple[list | None, ir.DataType | None]:
    model = ir.from_proto(proto)
    out = next(node for node in model.graph if node.domain == _MS).outputs[0]
    with inferred_shapes(model):
        shape = None if out.shape is None else [d if isinstance(d, int) else d.value for d in out.shape]
        dtype = out.dtype
    assert out.shape is None  # taken back
    return shape, dtype


def _runtime_output(proto: onnx.ModelProto, inputs: list[tuple[str, int, list | None]]) -> np.ndarray:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dtype, dims in inputs:
        sizes = [_SIZES.get(d, d) for d in dims]
        if dtype in (TensorProto.INT64, TensorProto.INT32):
            feeds[name] = rng.integers(0, 3, sizes).astype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
        else:
            feeds[name] = rng.standard_normal(sizes).astype(onnx.helper.tensor_dtype_to_np_dtype(dtype))
    return run(ir.from_proto(proto), feeds)["read"]


_F16 = TensorProto.FLOAT16
_NBITS = oh.make_node("MatMulNBits", ["a", "nb_w", "nb_s"], ["y"], domain=_MS, K=32, N=24, bits=4, block_size=16)


def _fused_matmul(**attributes):
    return oh.make_node("FusedMatMul", ["a", "b"], ["y"], domain=_MS, alpha=0.5, **attributes)


def _mha(*inputs: str):
    return oh.make_node("MultiHeadAttention", list(inputs), ["y"], domain=_MS, num_heads=4)


def _attention(**attributes):
    return oh.make_node("Attention", ["a", "at_w", "at_b"], ["y"], domain=_MS, num_heads=4, **attributes)


def _lookup(dims: list[int], bits: int, quantize_axis: int, scales: list[int], ids: list, expected: list) -> tuple:
    """A case of GatherBlockQuantized on uint8 data of ``dims`` at int64 ids of ``ids``' dims."""
    node = oh.make_node(
        "GatherBlockQuantized", ["gq_d", "ids", "gq_s"], ["y"], domain=_MS,
        bits=bits, block_size=16, gather_axis=0, quantize_axis=quantize_axis,
    )  # fmt: skip
    inits = [_zeros("gq_d", TensorProto.UINT8, dims, 17), _zeros("gq_s", _F, scales, 1)]
    return node, [("ids", TensorProto.INT64, ids)], inits, expected


def _in(name: str, *dims, dtype: int = _F) -> tuple[str, int, list]:
    return name, dtype, list(dims)


_Q, _K, _V16 = _in("q", "B", "S", 32), _in("k", "B", "L", 32), _in("v", "B", "L", 16)
_NBITS_40 = oh.make_node("MatMulNBits", ["a", "nb_w", "nb_s"], ["y"], domain=_MS, K=40, N=24, bits=8, block_size=16)
_ALL_FOUR = {"transA": 1, "transB": 1, "transBatchA": 1, "transBatchB": 1}
_ATTENTION_WEIGHTS = [_zeros("at_w", _F, [16, 96]), _zeros("at_b", _F, [96])]
_NARROW_V_WEIGHTS = [_zeros("at_w", _F, [16, 80]), _zeros("at_b", _F, [80])]
_I8, _U8 = TensorProto.INT8, TensorProto.UINT8
_INT8_WEIGHTS = [_zeros("q_w", _I8, [16, 24], 1), _zeros("q_ws", _F, [], 0.1), _zeros("q_wz", _I8, [], 0)]
_INT8_ACTIVATION = [_zeros("q_as", _F, [], 0.1), _zeros("q_az", _U8, [], 128)]
_QATTENTION_INPUTS = ["a", "q_w", "at_b", "q_as", "q_ws", "", "q_az", "q_wz"]

# (node, inputs, initializers, the output's shape as inferred: ONNX Runtime's with its symbols)
_CASES = {
    "MatMulNBits [B, S, K]": (_NBITS, [_in("a", "B", "S", 32)], _nbits_weight(32, 24), ["B", "S", 24]),
    "MatMulNBits [K]": (_NBITS, [_in("a", 32)], _nbits_weight(32, 24), [24]),
    "MatMulNBits fp16 [2, 3, 4, K]": (
        _NBITS,
        [_in("a", 2, 3, 4, 32, dtype=_F16)],
        _nbits_weight(32, 24, dtype=_F16),
        [2, 3, 4, 24],
    ),
    "MatMulNBits 8 bits, K 40": (_NBITS_40, [_in("a", "M", 40)], _nbits_weight(40, 24, bits=8), ["M", 24]),
    "FusedMatMul broadcast": (_fused_matmul(), [_in("a", 2, 1, 4, 5), _in("b", 3, 5, 6)], [], [2, 3, 4, 6]),
    "FusedMatMul transB (Q K^T)": (
        _fused_matmul(transB=1),
        [_in("a", "B", "N", "S", 8), _in("b", "B", "N", "T", 8)],
        [],
        ["B", "N", "S", "T"],
    ),
    "FusedMatMul transA": (_fused_matmul(transA=1), [_in("a", "B", 8, "S"), _in("b", "B", 8, 6)], [], ["B", "S", 6]),
    "FusedMatMul transB of a vector": (_fused_matmul(transB=1), [_in("a", 5), _in("b", 6, 5)], [], [6]),
    "FusedMatMul transBatchA": (
        _fused_matmul(transBatchA=1),
        [_in("a", 2, 3, 4, 5), _in("b", 3, 4, 5, 6)],
        [],
        [3, 4, 2, 6],
    ),
    "FusedMatMul all four": (
        _fused_matmul(**_ALL_FOUR),
        [_in("a", 2, 3, 4, 5), _in("b", 6, 3, 4, 2)],
        [],
        [3, 4, 5, 6],
    ),
    "MultiHeadAttention v_hidden 16, query 32": (_mha("q", "k", "v"), [_Q, _K, _V16], [], ["B", "S", 16]),
    "MultiHeadAttention BNSH key and value": (
        _mha("q", "k", "v"),
        [_Q, _in("k", "B", 4, "L", 8), _in("v", "B", 4, "L", 8)],
        [],
        ["B", "S", 32],
    ),
    "MultiHeadAttention fp16 with a bias": (
        _mha("q", "k", "v", "", "", "bias"),
        [_in(name, *dims, dtype=_F16) for name, _, dims in (_Q, _K, _V16, _in("bias", 1, 4, "S", "L"))],
        [],
        ["B", "S", 16],
    ),
    "Attention": (_attention(), [_in("a", "B", "S", 16)], _ATTENTION_WEIGHTS, ["B", "S", 32]),
    "Attention qkv_hidden_sizes": (
        _attention(qkv_hidden_sizes=[32, 32, 16]),
        [_in("a", "B", "S", 16)],
        _NARROW_V_WEIGHTS,
        ["B", "S", 16],
    ),
    "GatherBlockQuantized uint8 [vocab, K / 2]": _lookup([10, 16], 4, 1, [10, 2], ["B", "S"], ["B", "S", 32]),
    "GatherBlockQuantized uint8 [vocab, blocks, 8] (a tied head's)": _lookup(
        [10, 2, 8], 4, 2, [10, 2, 1], ["B", "S"], ["B", "S", 2, 16]
    ),
    "GatherBlockQuantized 8 bits": _lookup([10, 32], 8, 1, [10, 2], ["S"], ["S", 32]),
    # The int8 quantization's kernels (a second run over its output).
    "DynamicQuantizeMatMul": (
        oh.make_node("DynamicQuantizeMatMul", ["a", "q_w", "q_ws", "q_wz"], ["y"], domain=_MS),
        [_in("a", "B", "S", 16)],
        _INT8_WEIGHTS,
        ["B", "S", 24],
    ),
    "MatMulIntegerToFloat": (
        oh.make_node("MatMulIntegerToFloat", ["a", "q_w", "q_as", "q_ws", "q_az", "q_wz"], ["y"], domain=_MS),
        [_in("a", "B", "S", 16, dtype=_U8)],
        [*_INT8_WEIGHTS, *_INT8_ACTIVATION],
        ["B", "S", 24],
    ),
    "QAttention": (
        oh.make_node("QAttention", _QATTENTION_INPUTS, ["y"], domain=_MS, num_heads=4),
        [_in("a", "B", "S", 16, dtype=_U8)],
        [_zeros("q_w", _I8, [16, 96], 1), _zeros("at_b", _F, [96]), *_INT8_WEIGHTS[1:], *_INT8_ACTIVATION],
        ["B", "S", 32],
    ),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_a_contrib_op_s_output_is_inferred_as_onnx_runtime_computes_it(name):
    # Before, ONNX's inference stopped at each of these ops: no shape, no type.
    node, inputs, inits, expected = _CASES[name]
    proto = _one_op_model(node, inputs, inits)
    shape, dtype = _inferred(proto)
    assert shape == expected
    actual = _runtime_output(proto, inputs)
    assert list(actual.shape) == [_SIZES.get(d, d) for d in expected]
    assert dtype.numpy() == actual.dtype


_UNKNOWN = {
    # ONNX Runtime's CPU kernel refuses the packed forms: no run checked a rule, so none.
    "MultiHeadAttention packed KV": (_mha("q", "kv"), [_Q, _in("kv", "B", "L", 4, 2, 8)], 18),
    # transBatch needs both ranks before inference.
    "FusedMatMul transBatchA of undeclared ranks": (
        _fused_matmul(transBatchA=1),
        [("a", _F, None), ("b", _F, None)],
        18,
    ),
    # The value's width is read by data propagation through Shape(start, end), opset 15 on.
    "MultiHeadAttention at opset 14": (_mha("q", "k", "v"), [_Q, _K, _V16], 14),
    # ONNX Runtime ignores transA on a vector; the stand-in's swap needs two axes.
    "FusedMatMul transA of a vector": (_fused_matmul(transA=1), [_in("a", 5), _in("b", 5, 6)], 18),
}


@pytest.mark.parametrize("name", list(_UNKNOWN))
def test_a_shape_no_rule_was_checked_for_stays_unknown(name):
    node, inputs, opset = _UNKNOWN[name]
    assert _inferred(_one_op_model(node, inputs, [], opset))[0] is None


@pytest.mark.parametrize(
    "op",
    [
        "g = com.microsoft.MatMulNBits<K = 2, N = 2, bits = 4, block_size = 16>(f, w4, s4)",
        "g = com.microsoft.FusedMatMul<transB = 1>(f, eye)",
    ],
)
def test_a_new_stand_in_passes_on_no_values(op):
    # As test_inferred_shapes' norms: the product of a shape read as floats is not that shape.
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[4, 6] t, float[24] u) => (float y) {{
      w4 = Constant<value = uint8[2, 1, 8] {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}>()
      s4 = Constant<value = float[2] {{1, 1}}>()
      eye = Constant<value = float[2, 2] {{1, 0, 0, 1}}>()
      s = Shape(t)
      f = Cast<to = 1>(s)
      {op}
      i = Cast<to = 7>(g)
      r = Reshape(u, i)
      y = Relu(r)
    }}""")
    reshaped = next(n for n in model.graph if n.op_type == "Reshape").outputs[0]
    computed = next(n for n in model.graph if n.domain == _MS).outputs[0]
    with inferred_shapes(model):
        assert computed.shape == ir.Shape([2])  # the stand-in ran
        assert reshaped.shape is None or [d if isinstance(d, int) else None for d in reshaped.shape] != [4, 6]


def _constant(name: str, dtype: str, dims: list[int], values: int = 7, scale: float = 0.1) -> str:
    """A Constant node in ONNX's text format: ``(i % values) * scale``, element by element."""
    count = int(np.prod(dims))
    body = ", ".join(str(int(i % values) if dtype == "uint8" else (i % values) * scale) for i in range(count))
    return f"{name} = Constant<value = {dtype}[{', '.join(map(str, dims))}] {{{body}}}>()"


_TO_3D = """t3 = Constant<value = int64[3] {1, 2, 12}>()
          x3 = Reshape(x, t3)"""
_PRODUCERS = {
    "MatMulNBits": f"""{_constant("nb_w", "uint8", [12, 1, 8], 255)}
          {_constant("nb_s", "float", [12], 3)}
          a = com.microsoft.MatMulNBits<K = 12, N = 12, bits = 4, block_size = 16>(x, nb_w, nb_s)""",
    "FusedMatMul": f"""{_constant("sq", "float", [12, 12])}
          a = com.microsoft.FusedMatMul<transB = 1, alpha = 0.5>(x, sq)""",
    "MultiHeadAttention": f"""{_TO_3D}
          a = com.microsoft.MultiHeadAttention<num_heads = 2>(x3, x3, x3)""",
    "Attention": f"""{_constant("qkv_w", "float", [12, 36])}
          {_constant("qkv_b", "float", [36], 3)}
          {_TO_3D}
          a = com.microsoft.Attention<num_heads = 2>(x3, qkv_w, qkv_b)""",
    "GatherBlockQuantized": f"""{_constant("gq_d", "uint8", [5, 6], 255)}
          {_constant("gq_s", "float", [5, 1], 5)}
          ids = Constant<value = int64[2] {{3, 1}}>()
          rows = com.microsoft.GatherBlockQuantized<bits = 4, block_size = 16, quantize_axis = 1>(gq_d, ids, gq_s)
          a = Add(rows, x)""",
}


@pytest.mark.parametrize("producer", list(_PRODUCERS))
def test_an_unscaled_norm_after_a_new_contrib_op_takes_the_inferred_last_dim(producer):
    # Refused before ("no scale, and the last dim has no static size"): a = producer(x) had no shape.
    _assert_fuses_the_unscaled_norm(_model(_PRODUCERS[producer]))


def _quantized(fixture: str) -> ir.Model:
    """``fixture`` with its MatMul weights in MatMulNBits, as ONNX Runtime's own quantizer writes them (no
    value_info: the legacy export records none)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(onnx.load(FIXTURES / f"{fixture}.onnx"), block_size=16, is_symmetric=True)
    quantizer.process()
    model = ir.from_proto(quantizer.model.model)
    assert "MatMulNBits" in computed_op_types(model)
    return model


def _same_outputs(before: ir.Model, after: ir.Model) -> None:
    feeds = make_inputs(before, {"batch": 2, "sequence": 7})
    expected, actual = run(before, feeds), run(after, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_an_int4_quantized_bert_fuses_its_attention_behind_the_matmul_nbits_projections():
    # Before: 'the head count cannot be derived' for both blocks (the head split of a MatMulNBits
    # projection had no rank), unless fold-constants had folded something first and kept its shapes.
    model = _quantized("bert_legacy")
    result = AttentionFusion()(model.clone())
    assert not [note for note in result.refusals if "left unfused" in note]
    assert computed_op_types(result.model).count("MultiHeadAttention") == 2
    _same_outputs(model, result.model)


def test_an_int4_quantized_llama_fuses_every_rms_norm_behind_the_projections():
    # Before: 4 of the 5 norms (those after a projection) were refused for want of their last dim.
    model = _quantized("llama_legacy")
    result = RmsNormFusion()(model.clone())
    assert computed_op_types(result.model).count("SimplifiedLayerNormalization") == 5
    _same_outputs(model, result.model)


def test_fold_constants_gives_contrib_ops_the_shapes_of_their_stand_ins():
    # One source of truth: the folder reads MatMulNBits' (and every stand-in op's) shape from the same rules;
    # before, it knew MatMulNBits' alone, and FusedMatMul's output (so the attention's) stayed unknown.
    model = parse_model(f"""
    <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
    g (float[B, S, 12] x) => (float y) {{
      {_constant("sq", "float", [12, 12])}
      two = Constant<value = float {{2}}>()
      three = Add(two, two)
      a = com.microsoft.FusedMatMul<transB = 1, alpha = 0.5>(x, sq)
      m = com.microsoft.MultiHeadAttention<num_heads = 2>(a, a, a)
      y = Mul(m, three)
    }}""")
    values = {v.name: v for n in model.graph for v in n.outputs}
    assert FoldConstantsPass()(model).modified
    assert values["a"].shape == ir.Shape(["B", "S", 12]) and values["a"].dtype == ir.DataType.FLOAT
    assert values["m"].shape == ir.Shape(["B", "S", 12])
