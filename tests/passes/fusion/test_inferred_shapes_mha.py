"""_inferred_shapes' MultiHeadAttention and Attention stand-ins: the output's width is the value's own dim
where ONNX Runtime's is (a 3-D value's ``Dv``, a symbol kept as a symbol), ``num_heads * H`` of a BNSH value;
present_key and present_value are ``[B, num_heads, P + L, H]``; and there is no shape where ONNX Runtime refuses
the node. Every case runs on ONNX Runtime with its symbols bound to sizes: each shape inferred is the one it
computes (an unnamed dim any size), or it refuses the node."""

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
_F, _I32 = TensorProto.FLOAT, TensorProto.INT32
_SIZES = {"B": 2, "S": 5, "L": 7, "P": 3, "N": 4, "H": 8, "D": 32, "Dv": 16}
_OPSETS = {"": 18, _MS: 1}


def _model(node: onnx.NodeProto, inputs: list[tuple], initializers=(), before=()) -> onnx.ModelProto:
    """``node`` after ``before``, each of its outputs read by an Identity (a read output gets a stand-in);
    ``inputs`` (name, dims[, type]) declared float unless typed."""
    reads = [oh.make_node("Identity", [out], [f"read_{out}"]) for out in node.output if out]
    graph = oh.make_graph(
        [*before, node, *reads],
        "g",
        [oh.make_tensor_value_info(name, (*rest, _F)[0], dims) for name, dims, *rest in inputs],
        [onnx.ValueInfoProto(name=read.output[0]) for read in reads],
        initializer=list(initializers),
    )
    opsets = [oh.make_opsetid(domain, version) for domain, version in _OPSETS.items()]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)


def _names(shape: ir.Shape | None) -> list | None:
    return None if shape is None else [d if isinstance(d, int) else d.value for d in shape]


def _inferred(proto: onnx.ModelProto) -> list[list | None]:
    """The shape ``inferred_shapes`` gives each output of the contrib op."""
    model = ir.from_proto(proto)
    outs = [out for out in next(node for node in model.graph if node.domain == _MS).outputs if out.name]
    with inferred_shapes(model):
        return [_names(out.shape) for out in outs]


def _runtime_shapes(proto: onnx.ModelProto, inputs: list[tuple]) -> list[list[int]]:
    rng = np.random.default_rng(0)
    feeds = {}
    for name, dims, *typed in inputs:
        sizes = [_SIZES.get(d, d) for d in dims]
        # The one int32 input is past_sequence_length: 2 of a past buffer's 10.
        feeds[name] = np.full(sizes, 2, np.int32) if typed else rng.standard_normal(sizes).astype(np.float32)
    return [list(array.shape) for array in run(ir.from_proto(proto), feeds).values()]


def _as_run(expected: list | None) -> list | None:
    return None if expected is None else [_SIZES.get(d, d) for d in expected]


def _mha(*inputs: str, outputs=("y",), **attributes) -> onnx.NodeProto:
    return oh.make_node("MultiHeadAttention", list(inputs), list(outputs), domain=_MS, **{"num_heads": 4, **attributes})


_Q = ("q", ["B", "S", 32])
_PAST = [("pk", ["B", 4, "P", 8]), ("pv", ["B", 4, "P", 8])]
_WITH_PAST = ("q", "k", "v", "", "", "", "pk", "pv")

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
        _mha(*_WITH_PAST),
        [("q", ["B", "S", "D"]), ("k", ["B", "L", "D"]), ("v", ["B", "L", "D"]), *_PAST],
        ["B", "S", "D"],
    ),
    "a BNSH value with past_key and past_value": (
        _mha(*_WITH_PAST),
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
    assert _inferred(proto) == [expected]
    assert _runtime_shapes(proto, inputs) == [_as_run(expected)]


def test_a_value_whose_rank_is_known_only_after_inference_keeps_its_named_width():
    # The value is an Identity's output with no recorded shape: its rank is unknown when the stand-in is
    # built, so the width is the product of the dims between its first and last two and its last.
    inputs = [_Q, ("k", ["B", "L", 32]), ("v_in", ["B", "L", "Dv"])]
    proto = _model(_mha("q", "k", "v"), inputs, before=[oh.make_node("Identity", ["v_in"], ["v"])])
    assert _inferred(proto) == [["B", "S", "Dv"]]
    assert _runtime_shapes(proto, inputs) == [[2, 5, 16]]


def _declared(name: str, dims: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(dims))


def test_the_constant_folder_s_node_by_node_inference_keeps_the_named_width():
    # infer_contrib_outputs leaves a dim ONNX made up unknown: before, [B, S, None].
    inputs = [_declared("q", ["B", "S", 32]), _declared("k", ["B", "L", 32]), _declared("v", ["B", "L", "Dv"])]
    node = ir.node("MultiHeadAttention", inputs, {"num_heads": 4}, domain=_MS)
    assert infer_contrib_outputs(node, _OPSETS)
    assert node.outputs[0].shape == ir.Shape(["B", "S", "Dv"])


_PRESENTS = ("y", "present_key", "present_value")

# (node, inputs, the presents' shapes as inferred: ONNX Runtime's, its symbols the inputs')
_PRESENT_CASES = {
    "3-D key and value (H = width / num_heads)": (
        _mha("q", "k", "v", outputs=_PRESENTS),
        [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 16])],
        [["B", 4, "L", 8], ["B", 4, "L", 4]],
    ),
    "BNSH key and value of a named head size": (
        _mha("q", "k", "v", outputs=_PRESENTS),
        [("q", ["B", "S", "D"]), ("k", ["B", 4, "L", "H"]), ("v", ["B", 4, "L", "H"])],
        [["B", 4, "L", "H"], ["B", 4, "L", "H"]],
    ),
    "a 3-D key and value after a past": (
        _mha(*_WITH_PAST, outputs=_PRESENTS),
        [_Q, ("k", ["B", 7, 32]), ("v", ["B", 7, 32]), ("pk", ["B", 4, 3, "H"]), ("pv", ["B", 4, 3, "H"])],
        [["B", 4, 10, 8], ["B", 4, 10, 8]],  # the new key's and value's head size (the past's must equal it)
    ),
    "BNSH key and value after a past": (
        _mha(*_WITH_PAST, outputs=_PRESENTS),
        [_Q, ("k", ["B", 4, 7, 8]), ("v", ["B", 4, 7, 8]), ("pk", ["B", "N", 3, 8]), ("pv", ["B", "N", 3, 8])],
        [["B", 4, 10, 8], ["B", 4, 10, 8]],
    ),
    "the value's present alone": (
        _mha("q", "k", "v", outputs=("y", "", "present_value")),
        [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 16])],
        [["B", 4, "L", 4]],
    ),
}


@pytest.mark.parametrize("name", list(_PRESENT_CASES))
def test_the_presents_are_inferred_as_onnx_runtime_computes_them(name):
    # Before, no rule: unknown.
    node, inputs, expected = _PRESENT_CASES[name]
    proto = _model(node, inputs)
    assert _inferred(proto)[1:] == expected
    assert _runtime_shapes(proto, inputs)[1:] == [_as_run(dims) for dims in expected]


def test_a_present_s_total_length_of_a_named_past_is_left_unnamed():
    # P + L of two symbols has no name of its own; ONNX Runtime's is 3 + 7 = 10.
    inputs = [_declared("q", ["B", "S", 32]), _declared("k", ["B", "L", 32]), _declared("v", ["B", "L", 32])]
    pasts = [_declared("pk", ["B", 4, "P", 8]), _declared("pv", ["B", 4, "P", 8])]
    node = ir.node(
        "MultiHeadAttention", [*inputs, None, None, None, *pasts], {"num_heads": 4}, domain=_MS, num_outputs=3
    )
    assert infer_contrib_outputs(node, _OPSETS)
    assert [out.shape for out in node.outputs] == [ir.Shape(["B", "S", 32]), *[ir.Shape(["B", 4, None, 8])] * 2]
    proto = _model(_mha(*_WITH_PAST, outputs=_PRESENTS), [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 32]), *_PAST])
    assert _runtime_shapes(proto, [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 32]), *_PAST])[1] == [2, 4, 10, 8]


def test_presents_written_into_a_past_buffer_get_no_shape():
    # With past_sequence_length, ONNX Runtime appends into the past's buffer: the presents are the past's
    # [B, 4, 10, 8], not [B, 4, 10 + 7, 8]. The output keeps its shape.
    buffers = [("pk", ["B", 4, 10, 8]), ("pv", ["B", 4, 10, 8])]
    inputs = [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 32]), *buffers, ("psl", [1], _I32)]
    proto = _model(_mha(*_WITH_PAST, "psl", outputs=_PRESENTS), inputs)
    assert _inferred(proto) == [["B", "S", 32], None, None]
    assert _runtime_shapes(proto, inputs) == [[2, 5, 32], [2, 4, 10, 8], [2, 4, 10, 8]]


# Layouts ONNX Runtime refuses: before, the output got a shape.
_REFUSED = {
    # "Expect rank of key and value be same, and either 3 or 4"
    "a 3-D key with a BNSH value": (_mha("q", "k", "v"), [_Q, ("k", ["B", "L", 32]), ("v", ["B", 4, "L", 8])]),
    "a 2-D value": (_mha("q", "k", "v"), [_Q, ("k", ["B", "L", 32]), ("v", ["L", 32])]),
    # "Input 'query' is expected to have 3 or 5 dimensions"
    "a 2-D query": (_mha("q", "k", "v"), [("q", ["S", 32]), ("k", ["L", 32]), ("v", ["L", 32])]),
    # "Input 'past_key' and 'past_value' shall be both present or both absent"
    "past_key alone": (
        _mha("q", "k", "v", "", "", "", "pk", outputs=_PRESENTS),
        [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 32]), _PAST[0]],
    ),
    "BNSH key and value of two head sizes": (
        _mha("q", "k", "v"),
        [_Q, ("k", ["B", 4, "L", 8]), ("v", ["B", 4, "L", 4])],
    ),  # "Input 'key' and 'value' shall have same shape"
    # A width not a multiple of num_heads (ORT fails reshaping it into heads).
    "a value of width 30 for 4 heads": (
        _mha("q", "k", "v", outputs=_PRESENTS),
        [_Q, ("k", ["B", "L", 32]), ("v", ["B", "L", 30])],
    ),
    # "Input 'query' and 'key' shall have same dim 2 (hidden_size)"; "Input 'key' and 'value' shall have same
    # shape (batch_size, num_heads, kv_sequence_length, head_size)", head_size of the query's 16 over 4 heads.
    "a query narrower than the key": (
        _mha("q", "k", "v"),
        [("q", ["B", "S", 16]), ("k", ["B", "L", 32]), ("v", ["B", "L", 32])],
    ),
    "a query narrower than a BNSH key's heads": (
        _mha("q", "k", "v"),
        [("q", ["B", "S", 16]), ("k", ["B", 4, "L", 8]), ("v", ["B", 4, "L", 8])],
    ),
}


def _attention(inputs: str = "x w b", outputs: tuple[str, ...] = ("y",), **attributes) -> onnx.NodeProto:
    return oh.make_node("Attention", inputs.split(" "), list(outputs), domain=_MS, **{"num_heads": 4, **attributes})


def _weights(width: int) -> list[onnx.TensorProto]:
    return [oh.make_tensor("w", _F, [16, width], [0.1] * 16 * width), oh.make_tensor("b", _F, [width], [0.0] * width)]


_X = ("x", ["B", "S", 16])
# Attention's refusals, each with its weights' width: before, the output got a shape.
_ATTENTION_REFUSED = {
    "Attention on a 2-D input": (_attention(), [("x", ["S", 16])], 96),  # "expected to have 3 dimensions"
    "Attention of 32 hidden over 5 heads": (_attention(num_heads=5), [_X], 96),  # "divisible by num_heads"
    "Attention of a query's size not the key's": (_attention(qkv_hidden_sizes=[32, 16, 32]), [_X], 80),
    # "Input 'past' expect k_hidden_size == v_hidden_size"
    "Attention with a past, of a key's size not the value's": (
        _attention("x w b  past", ("y", "present"), qkv_hidden_sizes=[32, 32, 16]),
        [_X, ("past", [2, "B", 4, "P", 4])],
        80,
    ),
}


@pytest.mark.parametrize("name", [*_REFUSED, *_ATTENTION_REFUSED])
def test_a_layout_onnx_runtime_refuses_gets_no_shape(name):
    if name in _REFUSED:
        (node, inputs), initializers = _REFUSED[name], []
    else:
        node, inputs, width = _ATTENTION_REFUSED[name]
        initializers = _weights(width)
    proto = _model(node, inputs, initializers)
    assert all(shape is None for shape in _inferred(proto))
    with pytest.raises(RuntimeRefusedError):
        _runtime_shapes(proto, inputs)


def test_attention_s_accepted_sizes_keep_their_shape():
    # The refusals above leave these alone: qkv_hidden_sizes with a narrower value, and equal sizes with a past.
    cases = [
        (_attention(qkv_hidden_sizes=[32, 32, 16]), [_X], 80, ["B", "S", 16]),
        (_attention("x w b  past", ("y", "present")), [_X, ("past", [2, "B", 4, "P", 8])], 96, ["B", "S", 32]),
    ]
    for node, inputs, width, expected in cases:
        proto = _model(node, inputs, _weights(width))
        assert _inferred(proto)[0] == expected
        assert _runtime_shapes(proto, inputs)[0] == _as_run(expected)
