"""merge-matmul-nbits: sibling MatMulNBits over one input merged into one over their columns, then Split."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.options import Options
from optimizer.runtime import run_model
from passes._utils import add_initializer, constant_array
from passes.fusion.matmul_nbits_merge import MatMulNBitsMergeFusion
from passes.quantization._blockwise import quantize_hqq, quantize_rtn
from passes.quantization.int4 import Int4QuantizationPass
from tests.helpers import computed_op_types
from tests.passes.quantization.graphs import samples, weights

K = 64


def _projections(widths=(32, 16, 16), hidden: int = K) -> ir.Model:
    """``x [B, S, hidden]`` read by one float MatMul per width (q, k, v ...), each output a graph output."""
    names = [f"p{index}" for index in range(len(widths))]
    nodes = [helper.make_node("MatMul", ["x", f"w_{name}"], [name], name=f"proj_{name}") for name in names]
    graph = helper.make_graph(
        nodes,
        "siblings",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "S", n]) for name, n in zip(names, widths)],
        [
            numpy_helper.from_array(weights(hidden, n, seed=index), f"w_{name}")
            for index, (name, n) in enumerate(zip(names, widths))
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _nbits(
    hidden: int, columns: list[dict], *, shared_weight: bool = False, opset: int = 18, named: bool = True
) -> ir.Model:
    """Hand-written MatMulNBits over ``x``: each dict gives ``n``, ``block`` and optionally ``zero_points``
    (``"uint8"`` / ``"float"``), ``bias``, ``level``, ``correction`` (a constant table multiplied by
    ``c = x @ P``, added to the product, either operand order: ``"left"`` / ``"right"``)."""
    nodes, initializers, outputs = [], [], []
    nodes.append(helper.make_node("MatMul", ["x", "P"], ["c"], name="block_sums"))
    initializers.append(numpy_helper.from_array(weights(hidden, 4, seed=99), "P"))
    for index, spec in enumerate(columns):
        n, block = spec["n"], spec.get("block", 32)
        weight = (
            quantize_hqq(weights(hidden, n, seed=index), block)
            if spec.get("zero_points") == "float"
            else (quantize_rtn(weights(hidden, n, seed=index), block, symmetric=spec.get("zero_points") is None))
        )
        inputs = ["x", f"B{index}", f"s{index}"]
        initializers += [
            numpy_helper.from_array(weight.packed(), f"B{index}"),
            numpy_helper.from_array(weight.scales.reshape(-1).astype(np.float32), f"s{index}"),
        ]
        if spec.get("zero_points") == "uint8":
            initializers.append(numpy_helper.from_array(weight.packed_zero_points().reshape(-1), f"z{index}"))
            inputs.append(f"z{index}")
        elif spec.get("zero_points") == "float":
            zero = weight.zero_points.reshape(-1).astype(np.float32)
            initializers.append(numpy_helper.from_array(zero, f"z{index}"))
            inputs.append(f"z{index}")
        if spec.get("bias"):
            while len(inputs) < 5:  # zero_points and g_idx absent
                inputs.append("")
            initializers.append(numpy_helper.from_array(weights(n, seed=50 + index), f"b{index}"))
            inputs.append(f"b{index}")
        product = f"y{index}" if not spec.get("correction") else f"prod{index}"
        attributes = {"K": hidden, "N": n, "bits": 4, "block_size": block}
        if spec.get("level"):
            attributes["accuracy_level"] = spec["level"]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                inputs,
                [product],
                domain="com.microsoft",
                name=f"nb{index}" if named else "",
                **attributes,
            )
        )
        if spec.get("correction"):
            initializers.append(numpy_helper.from_array(weights(4, n, seed=70 + index), f"T{index}"))
            nodes.append(helper.make_node("MatMul", ["c", f"T{index}"], [f"corr{index}"], name=f"corr{index}"))
            pair = [product, f"corr{index}"] if spec["correction"] == "right" else [f"corr{index}", product]
            nodes.append(helper.make_node("Add", pair, [f"y{index}"], name=f"add{index}"))
        outputs.append(helper.make_tensor_value_info(f"y{index}", TensorProto.FLOAT, ["B", "S", n]))
    if shared_weight:  # a lookup reading the first projection's packed weight, as a tied table does
        nodes.append(helper.make_node("Identity", ["B0"], ["table"], name="lookup"))
        outputs.append(helper.make_tensor_value_info("table", TensorProto.UINT8, None))
    graph = helper.make_graph(
        nodes,
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", hidden])],
        outputs,
        initializers,
    )
    imports = [helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)]
    return ir.from_proto(helper.make_model(graph, opset_imports=imports, ir_version=9))


def _feeds(hidden: int = K, rows: int = 3) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(5).standard_normal((2, rows, hidden)).astype(np.float32)}


def _assert_identical(before: ir.Model, after: ir.Model, feeds) -> None:
    """Each column is computed as before: equal to float32 rounding at most (measured bit-identical)."""
    expected, actual = run_model(before, feeds), run_model(after, feeds)
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)


def _nbits_nodes(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if node.op_type == "MatMulNBits"]


@pytest.mark.parametrize("level", [0, 4])
def test_quantize_int4s_siblings_merge_into_one_product_and_a_split(level):
    model = _projections()
    quantized = Int4QuantizationPass(accuracy_level=level, quantize_outputs=True)(model.clone()).model
    merged = MatMulNBitsMergeFusion()(quantized.clone())
    assert merged.modified
    nodes = _nbits_nodes(merged.model)
    assert len(nodes) == 1 and nodes[0].attributes.get_int("N") == 64
    assert computed_op_types(merged.model).count("Split") == 1
    assert [value.name for value in merged.model.graph.outputs] == ["p0", "p1", "p2"]
    _assert_identical(quantized, merged.model, _feeds())


def test_exact_corrections_of_one_input_merge_with_their_products():
    # HQQ's float zero points become uint8 ones plus block offsets, and outlier channels a float
    # correction: Add(MatMulNBits(x), MatMul(c, T)) per layer, c shared by the readers of x.
    model = _projections()
    batch = samples(model, 8, S=5)
    batch["x"][..., 3] *= 40.0  # one outlier channel
    quantized = Int4QuantizationPass(method="hqq", quantize_outputs=True, outlier_channels=1, samples=batch)(
        model.clone()
    ).model
    assert sum(node.op_type == "Add" for node in quantized.graph) == 3
    merged = MatMulNBitsMergeFusion()(quantized.clone()).model
    types = computed_op_types(merged)
    assert types.count("MatMulNBits") == 1 and types.count("Add") == 1 and types.count("Split") == 1
    _assert_identical(quantized, merged, {"x": batch["x"][:2]})


@pytest.mark.parametrize("order", ["right", "left"])
def test_mixed_zero_points_and_biases_are_filled_with_the_kernels_defaults(order):
    model = _nbits(
        K,
        [
            {"n": 32, "zero_points": "uint8", "correction": order},
            {"n": 16, "bias": True, "correction": order},  # symmetric: no zero points stored (default 8)
            {"n": 24, "zero_points": "uint8", "correction": order},
        ],
    )
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    assert computed_op_types(merged).count("MatMulNBits") == 1
    assert computed_op_types(merged).count("Add") == 1
    _assert_identical(model, merged, _feeds())


def test_corrections_from_different_inputs_stay_on_the_split_outputs():
    model = _nbits(K, [{"n": 32, "correction": "right"}, {"n": 16}])
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    types = computed_op_types(merged)
    assert types.count("MatMulNBits") == 1 and types.count("Add") == 1 and types.count("MatMul") == 2
    _assert_identical(model, merged, _feeds())


def test_different_block_sizes_or_levels_are_separate_groups():
    model = _nbits(
        K, [{"n": 32, "block": 32}, {"n": 16, "block": 16}, {"n": 16, "block": 32, "level": 4}, {"n": 8, "block": 16}]
    )
    merged = MatMulNBitsMergeFusion()(model.clone())
    # block 16 (two) merge; block 32 at levels 0 and 4 do not
    assert merged.modified and len(_nbits_nodes(merged.model)) == 3
    _assert_identical(model, merged.model, _feeds())


def test_a_weight_another_node_reads_is_refused_with_the_reason():
    model = _nbits(K, [{"n": 32}, {"n": 16}, {"n": 16}], shared_weight=True)
    fusion = MatMulNBitsMergeFusion()
    merged = fusion(model.clone())
    assert merged.modified and len(_nbits_nodes(merged.model)) == 2  # the other two merged
    assert any("read by another node" in line for line in fusion._tally.lines())


def test_float_zero_points_beside_uint8_ones_are_refused():
    model = _nbits(K, [{"n": 32, "zero_points": "float"}, {"n": 16, "zero_points": "uint8"}])
    fusion = MatMulNBitsMergeFusion()
    assert not fusion(model.clone()).modified
    assert any("float zero points beside uint8" in line for line in fusion._tally.lines())


def test_a_lone_matmulnbits_is_left_alone_without_a_note():
    model = _nbits(K, [{"n": 32}])
    fusion = MatMulNBitsMergeFusion()
    result = fusion(model)
    assert not result.modified and not result.notes


def test_the_default_cpu_pipeline_merges_after_quantize_int4():
    model = _projections()
    optimized, report = optimize_with_report(model, options=Options(quantize="int4", quantize_outputs=True))
    assert "merge-matmul-nbits" in [row.name for row in report.passes if row.status == "applied"]
    assert computed_op_types(optimized).count("MatMulNBits") == 1
    feeds = _feeds()
    expected = run_model(Int4QuantizationPass(quantize_outputs=True)(model.clone()).model, feeds)
    actual = run_model(optimized, feeds)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6, atol=1e-6)


def test_before_opset_13_the_split_sizes_are_an_attribute():
    model = _nbits(K, [{"n": 32}, {"n": 16}], opset=12)
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    split = next(node for node in merged.graph if node.op_type == "Split")
    assert len(split.inputs) == 1 and list(split.attributes["split"].value) == [32, 16]
    onnx.checker.check_model(ir.to_proto(merged))
    _assert_identical(model, merged, _feeds())


def test_unnamed_groups_get_names_of_their_own():
    model = _nbits(K, [{"n": 32}, {"n": 16}], named=False)
    extra = ir.Value(name="x2", shape=ir.Shape(["B", "S", K]), type=model.graph.inputs[0].type)
    model.graph.inputs.append(extra)
    for node in [node for node in model.graph if node.op_type == "MatMulNBits"]:  # a second unnamed group on x2
        copies = [add_initializer(model.graph, f"{v.name}_copy", constant_array(v)) for v in node.inputs[1:]]
        again = ir.Node(node.domain, node.op_type, [extra, *copies], attributes=list(node.attributes.values()))
        model.graph.append(again)
        again.outputs[0].name = f"{node.outputs[0].name}_again"
        model.graph.outputs.append(again.outputs[0])
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    assert computed_op_types(merged).count("MatMulNBits") == 2 and computed_op_types(merged).count("Split") == 2
    names = [node.name for node in merged.graph if node.op_type in ("MatMulNBits", "Split")]
    values = [output.name for node in merged.graph for output in node.outputs]
    assert len(set(names)) == len(names) and len(set(values)) == len(values)
    feeds = {**_feeds(), "x2": _feeds()["x"] * 0.5}
    _assert_identical(model, merged, feeds)


def test_a_weight_that_is_also_a_graph_input_is_refused():
    model = _nbits(K, [{"n": 32}, {"n": 16}, {"n": 16}])
    model.graph.inputs.append(model.graph.initializers["B0"])  # overridable at run time, as some exporters write
    fusion = MatMulNBitsMergeFusion()
    merged = fusion(model.clone())
    assert len(_nbits_nodes(merged.model)) == 2
    assert any("graph input or output" in line for line in fusion._tally.lines())


def test_members_without_zero_points_do_not_join_float_zero_points():
    # A float zero point takes ONNX Runtime's float path: a member filled with 8.0 would change its arithmetic.
    model = _nbits(K, [{"n": 32, "zero_points": "float"}, {"n": 16}, {"n": 24, "zero_points": "uint8"}])
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    nodes = _nbits_nodes(merged)
    assert len(nodes) == 2 and sorted(node.attributes.get_int("N") for node in nodes) == [32, 40]
    _assert_identical(model, merged, _feeds())


def test_a_graph_of_contrib_ops_only_gets_the_default_domain_for_its_split():
    model = _nbits(K, [{"n": 32}, {"n": 16}])
    model.graph.remove(next(node for node in model.graph if node.op_type == "MatMul"), safe=True)
    del model.opset_imports[""]
    merged = MatMulNBitsMergeFusion()(model.clone()).model
    assert merged.opset_imports[""] >= 13
    onnx.checker.check_model(ir.to_proto(merged))
