"""Review (s59): the exact passes and fusions on respelled graphs.

Finding 1 (a missed fusion, nothing wrong shipped): ``simplify-ops`` wrote an ``Einsum`` as ``MatMul`` only where its
batch letters lead all three terms in one order and the product's rows and columns end them
(``bhqd,bhkd->bhqk``, ``passes._canonical_forms._batched_product``). Hugging Face's Funnel Transformer writes
``torch.einsum("bind,bjnd->bnij", q, k)`` and ``torch.einsum("bnij,bjnd->bind", p, v)`` on the ``[B, S, N, d]`` head
splits (both torch exporters write ``torch.einsum`` as an ONNX ``Einsum`` of the same equation), Keras'
``MultiHeadAttention`` ``einsum('aecd,abcd->acbe', key, query)`` and ``einsum('acbe,aecd->abcd', p, v)``
(``_build_attention_equation``): the same products with the heads' transposes folded into the equation. Every
``Einsum`` stayed, ``fuse-attention`` found no ``MatMul`` and bert_legacy respelled so lost both its ``Attention``
ops, with no word in the report. Fixed: an ``Einsum`` that is a batched matrix product up to the order of its axes
becomes ``MatMul`` with the ``Transpose``s that order its operands and its output, which ``fuse-attention`` composes;
and where the graph transposes the attention's output to ``[B, S, N, d]`` without merging the heads (Keras' context
einsum), ``fuse-attention`` hands it the op's output split per token, not split per head and transposed back (which a
second run cancelled: no fixed point).

Finding 2 (a wrong rewrite, caught by verification): ``fuse-layer-norm`` and ``fuse-rms-norm`` took the norm's epsilon
and exponents as any one-element constant (``_checks.scalar``). One with more dims than the input (a ``[1, 1, 1, 1]``
epsilon, square's or root's exponent beside ``[B, S, D]``) broadcasts the decomposed norm's output to
``[1, B, S, D]``; the fused op gives ``[B, S, D]``. Verification rolled the pass back ("shape (1, 128, 8) instead of
(1, 1, 128, 8)"); under ``--no-verify`` the model shipped with another output shape. Fixed: such a constant is
refused, with the reason in the report (``_checks.widening_constant``), as attention's scales already were
(``_layout.scalar_factor``).

Finding 3 (a missed fusion, refused with a reason): ``fuse-rotary-embedding`` read rotate_half only on a head split
after its transpose (``[B, N, S, d]``, ``[B or 1, 1, S, d]`` tables). The original Qwen (``modeling_qwen.py``,
``apply_rotary_pos_emb`` on the ``[B, S, N, d]`` split, ``rotary_pos_emb`` ``[1, S, 1, d]``, then ``permute``) and
Flax's Llama rotate before the transpose; every ``RotaryEmbedding`` was lost ("x is a 4-D tensor, but cos/sin are not
[B or 1, 1, S, d] tables"), though the interleaved rotation (GPT-J's) was already read in that layout. Fixed: such a
head split is rotated on its projection and split back as it was, its tables read and probed as ``[B or 1, S, 1, d]``
(``rotary_embedding._SEQUENCE_FIRST``).
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_ir as ir
import pytest
from onnx import helper

from optimizer.api import optimize_with_report
from optimizer.inputs import make_inputs
from passes.op_simplification import SimplifyOpsPass
from tests.helpers import FIXTURES, assert_same_outputs, run
from tests.respelling import add_initializer, clone, close, optimized, producers, rotate_halves, users
from tests.test_review_s46_respellings import _attention_products


def _perm(node: onnx.NodeProto) -> list[int]:
    return list(next(a for a in node.attribute if a.name == "perm").ints)


def _einsum_attention(qk: str | None, pv: str | None):
    """bert_legacy with Q @ K^T as ``Einsum(qk)`` of the scaled ``[B, S, N, d]`` head splits (the key first where
    ``qk`` names it first, as Keras does) and probs @ V as ``Einsum(pv)`` of the probabilities and V's ``[B, T, N, d]``
    head split, its ``[B, S, N, d]`` result transposed back for the merge of the heads that follows."""

    def respell(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto = clone(proto)
        found = producers(proto)
        before: dict[str, list[onnx.NodeProto]] = {}
        after: dict[str, onnx.NodeProto] = {}
        for index, (scores, probs_product) in enumerate(_attention_products(proto)):
            if qk is not None:
                splits = []
                for side, perm in ((0, [0, 2, 1, 3]), (1, [0, 2, 3, 1])):
                    mul = found[scores.input[side]]
                    transpose = found[mul.input[0]]
                    assert mul.op_type == "Mul" and _perm(transpose) == perm
                    # A Mul of its own: the transposed head split has other readers (the SDPA export's shapes).
                    name = f"s59_split_{index}_{side}"
                    splits.append(helper.make_node("Mul", [transpose.input[0], mul.input[1]], [name]))
                before[scores.output[0]] = splits
                query, key = (split.output[0] for split in splits)
                del scores.input[:]
                scores.input.extend([key, query] if qk.startswith("ae") else [query, key])
                scores.op_type = "Einsum"
                scores.attribute.append(helper.make_attribute("equation", qk))
            if pv is not None:
                transpose = found[probs_product.input[1]]
                assert _perm(transpose) == [0, 2, 1, 3]
                probs_product.input[1] = transpose.input[0]
                probs_product.op_type = "Einsum"
                probs_product.attribute.append(helper.make_attribute("equation", pv))
                heads_last = probs_product.output[0]
                probs_product.output[0] = heads_last + "_s59"
                after[probs_product.output[0]] = helper.make_node(
                    "Transpose", [probs_product.output[0]], [heads_last], perm=[0, 2, 1, 3]
                )
        nodes = []
        for node in proto.graph.node:
            nodes.extend(before.get(node.output[0], []))
            nodes.append(node)
            if node.output[0] in after:
                nodes.append(after[node.output[0]])
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        return proto

    return respell


_CASES = {
    "funnel_qk": ("bind,bjnd->bnij", None),
    "funnel_pv": (None, "bnij,bjnd->bind"),
    "keras_qk": ("aecd,abcd->acbe", None),
    "keras_both": ("aecd,abcd->acbe", "acbe,aecd->abcd"),
}


@functools.cache
def _baseline():
    proto = onnx.load(FIXTURES / "bert_legacy.onnx")
    feeds = make_inputs(ir.from_proto(proto), seed=0)
    expected = run(ir.from_proto(proto), feeds)
    fused, trouble, outputs = optimized(proto, None, feeds)
    assert trouble == [] and fused.get("Attention") == 2, fused
    close(expected, outputs, 1e-4)
    return proto, feeds, expected, fused


@pytest.mark.parametrize("case", list(_CASES))
def test_einsum_attention_in_funnel_and_keras_layouts_fuses_alike(case):
    proto, feeds, expected, fused = _baseline()
    spelled = _einsum_attention(*_CASES[case])(proto)
    onnx.checker.check_model(spelled)
    close(expected, run(ir.from_proto(spelled), feeds), 1e-5)  # the respelling computes the original
    got, trouble, outputs = optimized(spelled, None, feeds)
    assert (got, trouble) == (fused, [])
    close(expected, outputs, 1e-4)


@pytest.mark.parametrize(
    ("equation", "a", "b", "ops"),
    [
        ("bind,bjnd->bnij", [2, 4, 3, 5], [2, 6, 3, 5], ["Transpose", "Transpose", "MatMul"]),
        ("bnij,bjnd->bind", [2, 3, 4, 6], [2, 6, 3, 5], ["Transpose", "MatMul", "Transpose"]),
        ("ibnd,jbnd->bnij", [4, 2, 3, 5], [6, 2, 3, 5], ["Transpose", "Transpose", "MatMul"]),  # XLNet's
        ("aecd,abcd->acbe", [2, 6, 3, 5], [2, 4, 3, 5], ["Transpose", "Transpose", "MatMul"]),
        ("acbe,aecd->abcd", [2, 3, 4, 6], [2, 6, 3, 5], ["Transpose", "MatMul", "Transpose"]),
        ("bqd,bkd->bkq", [2, 4, 5], [2, 6, 5], ["Transpose", "MatMul"]),
        ("bqd,bkd->qbk", [2, 4, 5], [2, 6, 5], ["Transpose", "MatMul", "Transpose"]),
    ],
)
def test_an_einsum_that_is_a_matrix_product_up_to_its_axes_order_is_a_matmul(equation, a, b, ops):
    model = ir.from_proto(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)],
                "g",
                [
                    helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, a),
                    helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, b),
                ],
                [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
            ),
            opset_imports=[helper.make_opsetid("", 17)],
        )
    )
    after = SimplifyOpsPass()(model.clone()).model
    assert sorted(node.op_type for node in after.graph) == sorted(ops)
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal(a).astype(np.float32), "b": rng.standard_normal(b).astype(np.float32)}
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-6)


# -- 2. A norm's one-element constant of more dims than its input -------------------------------------------------


def _norm(kind: str, widened: str) -> onnx.ModelProto:
    """An RMS or layer norm of ``x [b, s, 8]``, its ``widened`` constant (eps, two or half) of shape [1, 1, 1, 1]."""
    rng = np.random.default_rng(0)
    shapes = {name: [1, 1, 1, 1] if name == widened else [] for name in ("eps", "two", "half")}
    values = {"eps": 1e-5, "two": 2.0, "half": -0.5}
    inits = [
        helper.make_tensor(name, onnx.TensorProto.FLOAT, shapes[name], [value]) for name, value in values.items()
    ] + [helper.make_tensor("g", onnx.TensorProto.FLOAT, [8], rng.standard_normal(8).tolist())]
    n = helper.make_node
    if kind == "rms":
        nodes = [n("Pow", ["x", "two"], ["sq"]), n("ReduceMean", ["sq"], ["var"], axes=[-1])]
        centered = "x"
    else:
        nodes = [
            n("ReduceMean", ["x"], ["mu"], axes=[-1]),
            n("Sub", ["x", "mu"], ["d"]),
            n("Pow", ["d", "two"], ["sq"]),
            n("ReduceMean", ["sq"], ["var"], axes=[-1]),
        ]
        centered = "d"
    nodes += [
        n("Add", ["var", "eps"], ["v"]),
        n("Pow", ["v", "half"], ["inv"]),
        n("Mul", [centered, "inv"], ["normed"]),
        n("Mul", ["normed", "g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "norm",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("widened", ["eps", "two", "half"])
@pytest.mark.parametrize(
    ("kind", "passes", "name"), [("rms", None, "fuse-rms-norm"), ("layer", ["+fuse-layer-norm"], "fuse-layer-norm")]
)
def test_a_norm_constant_that_raises_the_rank_is_refused_with_a_reason(kind, passes, name, widened):
    proto = _norm(kind, widened)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)}
    expected = run(ir.from_proto(proto), feeds)
    assert expected["y"].shape == (1, 2, 3, 8)
    result, report = optimize_with_report(ir.from_proto(proto), passes, verify=False)
    (record,) = [p for p in report.passes if p.name == name]
    assert record.status == "unchanged", (record.status, record.detail)
    assert any("more than its input" in reason for reason in record.refusals), record.refusals
    close(expected, run(result, feeds), 1e-6)


@pytest.mark.parametrize(("kind", "passes"), [("rms", None), ("layer", ["+fuse-layer-norm"])])
def test_a_norm_with_scalar_constants_still_fuses(kind, passes):
    proto = _norm(kind, "none")
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)}
    fused, trouble, outputs = optimized(proto, passes, feeds)
    assert fused == {"SimplifiedLayerNormalization" if kind == "rms" else "LayerNormalization": 1} and trouble == []
    close(run(ir.from_proto(proto), feeds), outputs, 1e-5)


# -- 3. rotate_half on the [B, S, N, d] head split, before its transpose -----------------------------------------


def _rotated_before_transpose(proto: onnx.ModelProto, *, one_position: bool = False) -> onnx.ModelProto:
    """Each rotate_half of a transposed head split ``Transpose(x_split, (0, 2, 1, 3))`` done on ``x_split`` itself, its
    ``[B, S, d]`` tables unsqueezed at axis 2, the rotated split transposed after (the original Qwen's order);
    ``one_position``: the tables' first row for every token (a near miss: no rotary of positions)."""
    proto = clone(proto)
    found, readers = producers(proto), users(proto)
    axis2 = add_initializer(proto, "s59_axis2", np.array([2], np.int64))
    bounds = (("zero", 0), ("one", 1), ("axis1", 1))
    starts, ends, axes1 = (add_initializer(proto, f"s59_{name}", np.array([v], np.int64)) for name, v in bounds)
    before: dict[str, list[onnx.NodeProto]] = {}
    after: dict[str, onnx.NodeProto] = {}
    tables: dict[str, str] = {}
    for concat, _, lo, hi in list(rotate_halves(proto)):
        x = lo.input[0]
        transpose = found[x]
        assert transpose.op_type == "Transpose" and _perm(transpose) == [0, 2, 1, 3]
        (mul_sin,) = readers[concat.output[0]]
        (add,) = readers[mul_sin.output[0]]
        mul_cos = found[next(v for v in add.input if v != mul_sin.output[0])]
        cos = next(v for v in mul_cos.input if v != x)
        new = []
        for table in (cos, mul_sin.input[1]):
            if table not in tables:
                unsqueeze = found[table]
                assert unsqueeze.op_type == "Unsqueeze"
                source = unsqueeze.input[0]
                if one_position:
                    new.append(helper.make_node("Slice", [source, starts, ends, axes1], [table + "_s59_first"]))
                    source = table + "_s59_first"
                tables[table] = table + "_s59_bs1d"
                new.append(helper.make_node("Unsqueeze", [source, axis2], [tables[table]]))
        before[mul_cos.output[0]] = new
        mul_cos.input[:] = [transpose.input[0], tables[cos]]
        mul_sin.input[1] = tables[mul_sin.input[1]]
        lo.input[0] = hi.input[0] = transpose.input[0]
        rotated = add.output[0]
        add.output[0] = rotated + "_s59_bsnd"
        after[add.output[0]] = helper.make_node("Transpose", [add.output[0]], [rotated], perm=[0, 2, 1, 3])
    assert after, "no rotate_half found"
    nodes = []
    for node in proto.graph.node:
        nodes.extend(before.get(node.output[0], []))
        nodes.append(node)
        if node.output[0] in after:
            nodes.append(after[node.output[0]])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    del proto.graph.value_info[:]  # the rotated values' recorded [B, N, S, d] shapes no longer hold
    return proto


@functools.cache
def _llama(name: str):
    proto = onnx.load(FIXTURES / f"{name}.onnx")
    feeds = make_inputs(ir.from_proto(proto), seed=0)
    expected = run(ir.from_proto(proto), feeds)
    fused, trouble, outputs = optimized(proto, None, feeds)
    assert trouble == [] and fused.get("RotaryEmbedding") == 4, fused
    return proto, feeds, expected, fused


@pytest.mark.parametrize("name", ["llama_legacy", "llama_dynamo"])
def test_rotate_half_before_the_heads_transpose_fuses_alike(name):
    proto, feeds, expected, fused = _llama(name)
    spelled = _rotated_before_transpose(proto)
    close(expected, run(ir.from_proto(spelled), feeds), 1e-5)  # the respelling computes the original
    got, trouble, outputs = optimized(spelled, None, feeds)
    assert (got, trouble) == (fused, [])
    close(expected, outputs, 1e-4)


def test_tables_of_one_position_before_the_transpose_are_no_rotary():
    proto, feeds, _, _ = _llama("llama_legacy")
    spelled = _rotated_before_transpose(proto, one_position=True)
    expected = run(ir.from_proto(spelled), feeds)
    result, report = optimize_with_report(ir.from_proto(spelled), None)
    assert "RotaryEmbedding" not in {node.op_type for node in result.graph}
    (record,) = [p for p in report.passes if p.name == "fuse-rotary-embedding"]
    assert record.refusals, record
    close(expected, run(result, feeds), 1e-4)


def _qwen_rotary_model(rotary_dim: int) -> ir.Model:
    """The original Qwen's rotary on ``x = Reshape(h [B, S, 3*8], [0, 0, 3, 8])``, before any transpose:
    ``Concat(t * cos + rotate_half(t) * sin, x[..., r:])``, ``t = x[..., :r]``, with ``[B, S, 1, r]`` tables of
    ``position_ids`` (the whole head where ``r`` is 8, the Concat then left out)."""
    heads, size, r = 3, 8, rotary_dim
    inv = (1.0 / 10000 ** (np.arange(0, r, 2) / r)).astype(np.float32)
    consts = {
        "inv": inv.reshape(1, 1, -1),
        "split": np.array([0, 0, heads, size], np.int64),
        "axis2": np.array([2], np.int64),
        "axl": np.array([-1], np.int64),
        "s0": np.array([0], np.int64),
        "mid": np.array([r // 2], np.int64),
        "r": np.array([r], np.int64),
        "end": np.array([size], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Reshape", ["h", "split"], ["x"]),
        n("Cast", ["position_ids"], ["pos_f"], to=onnx.TensorProto.FLOAT),
        n("Unsqueeze", ["pos_f", "axl"], ["pos"]),
        n("Mul", ["pos", "inv"], ["fr"]),
        n("Concat", ["fr", "fr"], ["tab"], axis=-1),
        n("Cos", ["tab"], ["cos3"]),
        n("Sin", ["tab"], ["sin3"]),
        n("Unsqueeze", ["cos3", "axis2"], ["cos"]),
        n("Unsqueeze", ["sin3", "axis2"], ["sin"]),
    ]
    t = "x"
    if r < size:
        nodes += [n("Slice", ["x", "s0", "r", "axl"], ["t"]), n("Slice", ["x", "r", "end", "axl"], ["passed"])]
        t = "t"
    nodes += [
        n("Slice", [t, "s0", "mid", "axl"], ["lo"]),
        n("Slice", [t, "mid", "r", "axl"], ["hi"]),
        n("Neg", ["hi"], ["nhi"]),
        n("Concat", ["nhi", "lo"], ["rot"], axis=-1),
        n("Mul", [t, "cos"], ["a"]),
        n("Mul", ["rot", "sin"], ["b"]),
        n("Add", ["a", "b"], ["y" if r == size else "rotated"]),
    ]
    if r < size:
        nodes.append(n("Concat", ["rotated", "passed"], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "qwen_rotary",
        [
            helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["batch", "sequence", heads * size]),
            helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "sequence", heads, size])],
        [onnx.numpy_helper.from_array(value, name) for name, value in consts.items()],
    )
    proto = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return ir.from_proto(proto)


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_a_head_split_rotated_before_its_transpose_is_fused(rotary_dim):
    from passes.fusion.rotary_embedding import RotaryEmbeddingFusion

    model = _qwen_rotary_model(rotary_dim)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert result.modified, result
    (rotary,) = [node for node in result.model.graph if node.op_type == "RotaryEmbedding"]
    assert rotary.attributes.get_int("num_heads") == 3
    rng = np.random.default_rng(0)
    for sequence in (5, 9):
        positions = np.stack([np.arange(sequence), np.arange(sequence) + 3])
        feeds = {"h": rng.standard_normal((2, sequence, 24)).astype(np.float32), "position_ids": positions}
        assert_same_outputs(model, result.model, feeds, rtol=1e-5, atol=1e-5)


def test_a_keras_multi_head_attention_block_fuses():
    """Keras' ``MultiHeadAttention`` with its ``tf.einsum``s kept as ``Einsum`` nodes: ``EinsumDense`` projections
    (``abc,cde->abde``, which stay Einsums), the query scaled, ``aecd,abcd->acbe`` scores, ``acbe,aecd->abcd``
    context, ``abcd,cde->abe`` output."""
    batch, sequence, heads, size = 2, 5, 4, 8
    width = heads * size
    rng = np.random.default_rng(0)
    weights = {f"W{c}": rng.standard_normal((width, heads, size)) * 0.2 for c in "qkv"}
    weights |= {f"b{c}": rng.standard_normal((heads, size)) * 0.1 for c in "qkv"}
    weights |= {"Wo": rng.standard_normal((heads, size, width)) * 0.2, "bo": rng.standard_normal(width)}
    weights["scale"] = np.array(1 / np.sqrt(size))
    n = helper.make_node
    nodes = []
    for c in "qkv":
        nodes += [n("Einsum", ["x", f"W{c}"], [f"{c}0"], equation="abc,cde->abde"), n("Add", [f"{c}0", f"b{c}"], [c])]
    nodes += [
        n("Mul", ["q", "scale"], ["qs"]),
        n("Einsum", ["k", "qs"], ["scores"], equation="aecd,abcd->acbe"),
        n("Softmax", ["scores"], ["p"], axis=-1),
        n("Einsum", ["p", "v"], ["o"], equation="acbe,aecd->abcd"),
        n("Einsum", ["o", "Wo"], ["y0"], equation="abcd,cde->abe"),
        n("Add", ["y0", "bo"], ["y"]),
    ]
    hidden = ["batch", "sequence", width]
    graph = helper.make_graph(
        nodes,
        "keras_mha",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, hidden)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, hidden)],
        [onnx.numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"x": rng.standard_normal((batch, sequence, width)).astype(np.float32)}
    fused, trouble, outputs = optimized(proto, None, feeds)
    assert fused == {"MultiHeadAttention": 1} and trouble == [], (fused, trouble)
    close(run(ir.from_proto(proto), feeds), outputs, 1e-5)
    # The fixed point: the op's output goes to the [B, S, N, d] the graph transposes the heads into, not through a
    # Transpose to [B, N, S, d] and the graph's own back, which a second run's simplify-ops cancelled.
    once, _ = optimize_with_report(ir.from_proto(proto), None)
    twice, report = optimize_with_report(ir.from_proto(ir.to_proto(once)), None)
    assert [p.name for p in report.passes if p.status != "unchanged"] == []
    assert sorted(n.op_type for n in once.graph) == sorted(n.op_type for n in twice.graph)
