"""Review of b732602 (shape stand-ins for MatMulNBits, FusedMatMul, MultiHeadAttention, Attention,
GatherBlockQuantized and the int8 kernels): what it got wrong (all fixed since).

Every stand-in's shape and type held against ONNX Runtime 1.32 on the layouts it accepts (FusedMatMul's four
transposes at ranks 1..5 with broadcast batch dims, MatMulNBits at 2/4/8 bits and K off the block size,
GatherBlockQuantized's axes and packings, MultiHeadAttention's 3-D/BNSH/past/bias forms, Attention's
qkv_hidden_sizes/past, the int8 kernels with bias and batched B), and none passes values on. What fails is
the constant folder's use of them: ``infer_contrib_outputs`` declares an initializer that is also a graph input
(a default a caller may override) with its default's shape, so a shape computed from the op's output folds to
the default's dims.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as oh

from passes.constant_folding import FoldConstantsPass
from passes.fusion._inferred_shapes import inferred_shapes

_MS = "com.microsoft"
_F = TensorProto.FLOAT


def _ort_output(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The first output on ONNX Runtime, the overridable initializers fed too (``tests.helpers.run`` feeds only
    the session's required inputs)."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _shape_of_a_contrib_output(node: onnx.NodeProto, declared, initializers) -> onnx.ModelProto:
    """``ConstantOfShape(Shape(node's output))``: a shape read from the op's output, as the folder folds it."""
    nodes = [
        node,
        oh.make_node("Shape", ["y"], ["s"]),
        oh.make_node("ConstantOfShape", ["s"], ["out"], value=oh.make_tensor("v", _F, [1], [1.0])),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(name, _F, dims) for name, dims in declared],
        [oh.make_tensor_value_info("out", _F, None)],
        initializer=initializers,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(_MS, 1)], ir_version=10)


def _ones(name: str, dims: list[int], dtype: int = _F, fill: float = 1.0) -> onnx.TensorProto:
    return oh.make_tensor(name, dtype, dims, [fill] * int(np.prod(dims)))


_OVERRIDDEN = {
    # b: declared [K, N], default [5, 6]; a caller feeds a [5, 3] b.
    "FusedMatMul's B": (
        oh.make_node("FusedMatMul", ["a", "b"], ["y"], domain=_MS, alpha=1.0),
        [("a", [2, 5]), ("b", ["K", "N"])],
        [_ones("b", [5, 6])],
        {"a": np.ones((2, 5), np.float32), "b": np.ones((5, 3), np.float32)},
    ),
    # a: declared [M, 32], default [2, 32]; a caller feeds 3 rows. The folder's own MatMulNBits rule before
    # b732602 read a's declared shape and left this alone.
    "MatMulNBits' A": (
        oh.make_node("MatMulNBits", ["a", "w", "sc"], ["y"], domain=_MS, K=32, N=24, bits=4, block_size=16),
        [("a", ["M", 32])],
        [_ones("a", [2, 32]), _ones("w", [24, 2, 8], TensorProto.UINT8, 17), _ones("sc", [48])],
        {"a": np.ones((3, 32), np.float32)},
    ),
}


@pytest.mark.parametrize("name", list(_OVERRIDDEN))
def test_fold_constants_keeps_a_shape_that_a_caller_s_value_for_a_default_changes(name):
    """Review finding (fixed since): b732602: infer_contrib_outputs declares an initializer that is also a
    graph input by its default's shape (_dims_of reads const_value first), so fold-constants folds Shape(y)
    to the default's dims
    """
    node, declared, initializers, feeds = _OVERRIDDEN[name]
    proto = _shape_of_a_contrib_output(node, declared, initializers)
    model = ir.from_proto(proto)
    FoldConstantsPass()(model)
    expected = _ort_output(proto, feeds)
    assert _ort_output(ir.to_proto(model), feeds).shape == expected.shape


def test_a_default_pipeline_run_keeps_a_model_a_caller_feeds_its_own_fused_matmul_weight(tmp_path):
    """Review finding (fixed since): b732602: the default pipeline folds Shape(FusedMatMul(a, b)) with b a
    default a caller may override to b's default width; verified (verification never feeds b), and the
    caller's b then fails
    """
    import optimizer

    nodes = [
        oh.make_node("FusedMatMul", ["a", "b"], ["y"], domain=_MS, alpha=1.0),
        oh.make_node("Shape", ["y"], ["s"]),
        oh.make_node("ConstantOfShape", ["s"], ["z"], value=oh.make_tensor("v", _F, [1], [1.0])),
        oh.make_node("Add", ["z", "y"], ["out"]),
    ]
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("a", _F, [2, 5]), oh.make_tensor_value_info("b", _F, ["K", "N"])],
        [oh.make_tensor_value_info("out", _F, [2, "N"])],
        initializer=[_ones("b", [5, 6])],
    )
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(
        oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(_MS, 1)], ir_version=10), path
    )
    optimizer.optimize(str(path), output=str(out))
    feeds = {"a": np.ones((2, 5), np.float32), "b": np.ones((5, 3), np.float32)}
    expected = _ort_output(onnx.load(path), feeds)  # [2, 3] of 6.0
    np.testing.assert_allclose(_ort_output(onnx.load(out), feeds), expected)


def _inferred_output(node: onnx.NodeProto, declared, initializers) -> list | None:
    graph = oh.make_graph(
        [node, oh.make_node("Identity", ["y"], ["read"])],
        "g",
        [oh.make_tensor_value_info(name, dtype, dims) for name, dtype, dims in declared],
        [onnx.ValueInfoProto(name="read")],
        initializer=initializers,
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(_MS, 1)], ir_version=10)
    model = ir.from_proto(proto)
    out = next(n for n in model.graph if n.domain == _MS).outputs[0]
    with inferred_shapes(model):
        return None if out.shape is None else [d if isinstance(d, int) else d.value for d in out.shape]


def test_a_packed_lookup_with_a_negative_gather_axis_gets_its_shape():
    """Review finding (fixed since): b732602 (false refusal): uint8 GatherBlockQuantized's gather_axis is
    compared with 0 unnormalized; ONNX Runtime takes -2 on 2-D data as 0 and gives [B, S, 32]
    """
    node = oh.make_node("GatherBlockQuantized", ["d", "ids", "s"], ["y"], domain=_MS, block_size=16, gather_axis=-2)
    initializers = [_ones("d", [8, 16], TensorProto.UINT8, 17), _ones("s", [8, 2])]
    assert _inferred_output(node, [("ids", TensorProto.INT64, ["B", "S"])], initializers) == ["B", "S", 32]


def test_multi_head_attention_s_output_keeps_a_3d_value_s_named_width():
    """Review finding (fixed since): b732602 (false refusal): MultiHeadAttention's v_hidden is 1 * Dv by data
    propagation, which ONNX names afresh (unk__N): the output's last dim is not read as the value's Dv
    """
    node = oh.make_node("MultiHeadAttention", ["q", "k", "v"], ["y"], domain=_MS, num_heads=4)
    declared = [("q", _F, ["B", "S", 32]), ("k", _F, ["B", "L", 32]), ("v", _F, ["B", "L", "Dv"])]
    assert _inferred_output(node, declared, []) == ["B", "S", "Dv"]
