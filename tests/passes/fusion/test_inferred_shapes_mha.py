"""_inferred_shapes' MultiHeadAttention (and Attention) stand-ins: the output's width is the value's own dim
where ONNX Runtime's is (a 3-D value's ``Dv``, a symbol kept as a symbol), ``num_heads * H`` of a BNSH value,
and no shape where ONNX Runtime refuses the layout. Every case runs on ONNX Runtime with its symbols bound to
sizes: the shape inferred is the one it computes, or it refuses the node."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from optimizer.errors import RuntimeRefusedError
from passes.fusion._inferred_shapes import infer_contrib_outputs, inferred_shapes
from tests.helpers import run

_MS = "com.microsoft"
_F = TensorProto.FLOAT
_SIZES = {"B": 2, "S": 5, "L": 7, "P": 3, "N": 4, "H": 8, "D": 32, "Dv": 16}
_OPSETS = {"": 18, _MS: 1}


def _model(node: onnx.NodeProto, inputs: list[tuple[str, list | None]], before: list[onnx.NodeProto] = ()):
    """``node`` after ``before``, read by an Identity; ``inputs`` declared float of the given dims."""
    graph = oh.make_graph(
        [*before, node, oh.make_node("Identity", [node.output[0]], ["read"])],
        "g",
        [oh.make_tensor_value_info(name, _F, dims) for name, dims in inputs],
        [onnx.ValueInfoProto(name="read")],
    )
    opsets = [oh.make_opsetid(domain, version) for domain, version in _OPSETS.items()]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)


def _inferred(proto: onnx.ModelProto) -> list | None:
    model = ir.from_proto(proto)
    out = next(node for node in model.graph if node.domain == _MS).outputs[0]
    with inferred_shapes(model):
        return None if out.shape is None else [d if isinstance(d, int) else d.value for d in out.shape]


def _runtime_shape(proto: onnx.ModelProto, inputs: list[tuple[str, list]]) -> list[int]:
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal([_SIZES.get(d, d) for d in dims]).astype(np.float32) for name, dims in inputs}
    return list(run(ir.from_proto(proto), feeds)["read"].shape)


def _mha(*inputs: str, **attributes) -> onnx.NodeProto:
    return oh.make_node("MultiHeadAttention", list(inputs), ["y"], domain=_MS, **{"num_heads": 4, **attributes})


_Q = ("q", ["B", "S", 32])
_PAST = [("pk", ["B", 4, "P", 8]), ("pv", ["B", 4, "P", 8])]

# (node, inputs, the output's shape as inferred: ONNX Runtime's, its symbols the inputs')
_CASES = {
    "a 3-D value of a named width": (
        _mha("q", "k", "v"),
        [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", "Dv"])],
        ["B", "S", "Dv"],
    ),
    "3-D query, key and value of one named width": (
        _mha("q", "k", "v"),
        [("q", ["B", "S", "D"]), ("k", ["B", "L", "D"]), ("v", ["B", "L", "D"])],
        ["B", "S", "D"],
    ),
    # ONNX Runtime refuses a BNSH key whose N is not num_heads: the width is num_heads * H.
    "a BNSH value of named heads": (
        _mha("q", "k", "v"),
        [_Q, ("k", ["B", "N", "L", 8]), ("v", ["B", "N", "L", 8])],
        ["B", "S", 32],
    ),
    "a 3-D value with past_key and past_value": (
        _mha("q", "k", "v", "", "", "", "pk", "pv"),
        [("q", ["B", "S", "D"]), ("k", ["B", "L", "D"]), ("v", ["B", "L", "D"]), *_PAST],
        ["B", "S", "D"],
    ),
    "a BNSH value with past_key and past_value": (
        _mha("q", "k", "v", "", "", "", "pk", "pv"),
        [_Q, ("k", ["B", 4, "L", 8]), ("v", ["B", 4, "L", 8]), *_PAST],
        ["B", "S", 32],
    ),
}


@pytest.mark.parametrize("name", list(_CASES))
def test_the_output_s_width_is_the_value_s_as_onnx_runtime_computes_it(name):
    # Before, a 3-D value's width was 1 * Dv by data propagation (a fresh unk__N, not Dv), a BNSH value's
    # N * 8 (fresh, where num_heads makes it 32).
    node, inputs, expected = _CASES[name]
    proto = _model(node, inputs)
    assert _inferred(proto) == expected
    assert _runtime_shape(proto, inputs) == [_SIZES.get(d, d) for d in expected]


def test_a_value_whose_rank_is_known_only_after_inference_keeps_its_named_width():
    # The value is an Identity's output with no recorded shape: its rank is unknown when the stand-in is
    # built, so the width is the product of the dims between its first and last two and its last.
    inputs = [_Q, ("k", ["B", "L", 32]), ("v_in", ["B", "L", "Dv"])]
    proto = _model(_mha("q", "k", "v"), inputs, [oh.make_node("Identity", ["v_in"], ["v"])])
    assert _inferred(proto) == ["B", "S", "Dv"]
    assert _runtime_shape(proto, inputs) == [2, 5, 16]


def test_the_constant_folder_s_node_by_node_inference_keeps_the_named_width():
    # infer_contrib_outputs leaves a dim ONNX made up unknown: before, [B, S, None].
    q, k, v = (ir.Value(name=n, type=ir.TensorType(ir.DataType.FLOAT)) for n in "qkv")
    q.shape, k.shape, v.shape = ir.Shape(["B", "S", 32]), ir.Shape(["B", "L", 32]), ir.Shape(["B", "L", "Dv"])
    node = ir.node("MultiHeadAttention", [q, k, v], {"num_heads": 4}, domain=_MS)
    assert infer_contrib_outputs(node, _OPSETS)
    assert node.outputs[0].shape == ir.Shape(["B", "S", "Dv"])


# Layouts ONNX Runtime refuses ("Expect rank of key and value be same, and either 3 or 4", "Input 'query' is
# expected to have 3 or 5 dimensions"): before, each got a shape.
_REFUSED = {
    "a 3-D key with a BNSH value": [_Q, ("k", ["B", "L", 32]), ("v", ["B", 4, "L", 8])],
    "a 2-D value": [_Q, ("k", ["B", "L", 32]), ("v", ["L", 32])],
    "a 2-D query": [("q", ["S", 32]), ("k", ["L", 32]), ("v", ["L", 32])],
}


@pytest.mark.parametrize("name", list(_REFUSED))
def test_a_layout_onnx_runtime_refuses_gets_no_shape(name):
    inputs = _REFUSED[name]
    proto = _model(_mha("q", "k", "v"), inputs)
    assert _inferred(proto) is None
    with pytest.raises(RuntimeRefusedError):
        _runtime_shape(proto, inputs)
