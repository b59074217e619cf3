"""A hostile review (session 69, late 4) of the merge on models without a batch dim and weights stored as int8
(``optimizer.samples.has_no_batch``, ``passes._utils.weight_array``).

1. Fixed: a model with a batch whose dim is not named like one and also leads an input of rank 1 (torch's dynamo export
   names it ``s13``: ``x [s13, 8]`` beside ``t [s13]``; a diffusion model's ``timestep``, an ASR model's lengths) was
   read as having no batch: ``_batch_like_dims`` guesses no dim that a rank-1 input leads, so none was left to hold
   samples. 40 rows of ``--inputs`` were one sample fed whole (scored as one, a note saying "no batch dim"), and
   ``compare`` timed the 128 generated rows as "batch 1" (before the merge: "timed at the 128 rows its inputs hold").

2. Fixed: a graph network that reads its nodes only through ``ScatterElements`` (each edge summed into its target node)
   was not seen as indexed by ``edge_index`` (``_index_bounds`` followed ``Gather``/``GatherND`` alone), so its
   ``num_nodes`` stayed a guessed batch: ``compare --inputs`` cut ``x`` into 16 nodes beside 60 edges and said "ONNX
   Runtime cannot run it" (the merge's first finding, left for this spelling). ``ScatterElements``/``ScatterND``
   indices are now read as ``Gather``/``GatherND`` indices are (generated within the rows they write, too).

3. Fixed: a layer stored int8 whose bias is stored int8 too (a Conv's, more than 64 values), or a MatMul reading such a
   weight through ``Transpose`` (torch's spelling of a Linear), was refused by ``find_layers`` ("bias is not a
   constant", "weight is not a constant"): before the merge ``fold-constants`` folded both (under 8,192 values) and
   ``--quantize static`` took them; the merge kept the ``Cast`` and the layers stayed float. (The quantizers' twin then
   failed on the bias: ``AttributeError``.)

4. Fixed (said, not avoided): ``--prune-channels`` and ``--lowrank`` on a weight stored int8 write the cut or factored
   weight in float32: "parameters 7,392 → 5,548" for a file 2.7 times larger, ``--lowrank 0.5`` "65,536 → 32,768
   parameters" for 64 → 128 kB, with nothing said. Their notes now give the bytes.

5. Open (xfail): a graph network bound by ``--static-shapes`` is read on its inputs as declared, where no node is left
   to show that ``edge_index`` indexes its nodes: its nodes count as samples again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.samples import has_no_batch, open_samples, output_sample_axes, split_samples
from passes._utils import dequantized_weight


def _per_row_scale_model(dim: str = "s13") -> onnx.ModelProto:
    """torch's dynamo export of ``(x * t[:, None]) @ W``: ``x [s13, 8]``, ``t [s13]``, the batch named ``s13``."""
    weight = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["t", "axes"], ["column"]),
            helper.make_node("Mul", ["x", "column"], ["scaled"]),
            helper.make_node("MatMul", ["scaled", "w"], ["y"]),
        ],
        "per_row_scale",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [dim, 8]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [dim]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4])],
        [numpy_helper.from_array(np.array([1], np.int64), "axes"), numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_batch_that_also_leads_a_rank_one_input_is_a_batch() -> None:
    model = ir.from_proto(_per_row_scale_model())
    assert not has_no_batch(model)
    assert output_sample_axes(model) == {}  # not {"y": None}: one sample a row
    rng = np.random.default_rng(1)
    rows = {"x": rng.normal(size=(40, 8)).astype(np.float32), "t": rng.normal(size=40).astype(np.float32)}
    data = open_samples(rows, model, flag="--inputs")
    assert data.count == 40  # 1 before: the 40 rows fed whole as one sample
    assert [len(batch["x"]) for batch in split_samples(data, model=model)] == [16, 16, 8]


def test_compare_times_such_a_model_at_the_rows_it_runs(tmp_path: Path) -> None:
    from optimizer.compare import CompareSettings, compare

    path = tmp_path / "per_row_scale.onnx"
    onnx.save(_per_row_scale_model(), path)
    settings = CompareSettings(time_budget=0.1, iterations=2, warmup=1, threads=1)
    report = compare(path, path, settings=settings)
    # "batch 1" after the merge, for a run of every generated row (one sample, it said).
    assert [batch.batch for batch in report.providers[0].batches] != [1]


def _dequantized(name: str, stored: np.ndarray, scale: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``name = Cast(name_q) * name_s``: a weight stored int8, dequantized by hand (tinyocr's PP-OCRv6 recognizer)."""
    nodes = [
        helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}_f", f"{name}_s"], [name]),
    ]
    return nodes, [
        numpy_helper.from_array(stored, f"{name}_q"),
        numpy_helper.from_array(np.float32(scale), f"{name}_s"),
    ]


def _int8_layers_model(kind: str) -> onnx.ModelProto:
    """A first layer whose weights are stored int8 (``conv_bias``: a Conv's weight and its 96-value bias;
    ``transposed``: a MatMul reading ``Transpose(W)``, as torch's exporters spell a Linear), then Relu and a float
    layer. Each is under 8,192 values: before the merge ``fold-constants`` folded them to float32 and ``--quantize
    static`` took the layer."""
    rng = np.random.default_rng(0)
    if kind == "conv_bias":
        weight, weight_init = _dequantized("W", rng.integers(-127, 128, size=(96, 8, 3, 3)).astype(np.int8), 0.01)
        bias, bias_init = _dequantized("B", rng.integers(-127, 128, size=96).astype(np.int8), 0.01)
        nodes = [*weight, *bias, helper.make_node("Conv", ["X", "W", "B"], ["H"], pads=[1, 1, 1, 1])]
        nodes.append(helper.make_node("Conv", ["R", "W2"], ["Y"]))
        last = (rng.normal(size=(4, 96, 1, 1)) * 0.05).astype(np.float32)
        shapes, init = (["batch", 8, 8, 8], ["batch", 4, 8, 8]), weight_init + bias_init
    else:
        weight, init = _dequantized("W", rng.integers(-127, 128, size=(16, 32)).astype(np.int8), 0.01)
        nodes = [*weight, helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0])]
        nodes += [helper.make_node("MatMul", ["X", "Wt"], ["H"]), helper.make_node("MatMul", ["R", "W2"], ["Y"])]
        last = (rng.normal(size=(16, 4)) * 0.1).astype(np.float32)
        shapes = (["batch", 32], ["batch", 4])
    nodes.insert(-1, helper.make_node("Relu", ["H"], ["R"]))
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, shapes[0])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, shapes[1])],
        [*init, numpy_helper.from_array(last, "W2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("kind", ["conv_bias", "transposed"])
def test_a_layer_whose_bias_or_transposed_weight_is_stored_int8_is_found(kind: str) -> None:
    from passes._layers import find_layers

    model = ir.from_proto(_int8_layers_model(kind))
    layers, refused = find_layers(model.graph, ["conv", "matmul"])
    # Refused as "bias is not a constant" / "weight is not a constant": the quantizers left the layer float.
    assert not refused and len(layers) == 2
    first = next(layer for layer in layers if layer.node.inputs[0].name == "X")
    np.testing.assert_array_equal(first.weight.shape, (96, 8, 3, 3) if kind == "conv_bias" else (32, 16))


def test_static_quantization_rewrites_a_conv_whose_bias_is_stored_int8(tmp_path: Path) -> None:
    from optimizer import api

    path, calibration = tmp_path / "in.onnx", tmp_path / "calibration.npz"
    onnx.save(_int8_layers_model("conv_bias"), path)
    np.savez(calibration, X=np.random.default_rng(1).normal(size=(16, 8, 8, 8)).astype(np.float32))
    _, report = api.optimize_with_report(
        str(path), output=str(tmp_path / "out.onnx"), quantize="static", calibration=str(calibration), raise_errors=True
    )
    record = next(record for record in report.passes if record.name == "quantize-static")
    assert record.status == "applied", (record.status, record.detail, record.notes)


def test_pruning_a_weight_stored_int8_says_it_is_written_in_float32(tmp_path: Path) -> None:
    from optimizer import api

    path, calibration, output = tmp_path / "in.onnx", tmp_path / "calibration.npz", tmp_path / "out.onnx"
    onnx.save(_int8_layers_model("conv_bias"), path)
    np.savez(calibration, X=np.random.default_rng(1).normal(size=(64, 8, 8, 8)).astype(np.float32))
    _, report = api.optimize_with_report(
        str(path), output=str(output), prune_channels=0.25, calibration=str(calibration)
    )
    record = next(record for record in report.passes if record.name == "prune-channels")
    assert record.status == "applied", (record.status, record.detail, record.notes)
    assert output.stat().st_size > 2 * path.stat().st_size  # "parameters 7,392 → 5,548", in 2.7 times the bytes
    assert any("written in float32" in note for note in record.notes), record.notes


def test_factorizing_a_weight_stored_int8_says_it_is_written_in_float32() -> None:
    from passes._utils import initializer_bytes
    from passes.factorization.lowrank import LowRankFactorizationPass
    from tests.passes.factorization.graphs import FakeSpeed

    rng = np.random.default_rng(0)
    product = rng.normal(size=(256, 16)) @ rng.normal(size=(16, 256))  # of rank 16: factorized at a small rank
    scale = float(np.abs(product).max() / 127)
    weight, init = _dequantized("W", np.round(product / scale).astype(np.int8), scale)
    nodes = [*weight, helper.make_node("MatMul", ["X", "W"], ["H"]), helper.make_node("Relu", ["H"], ["R"])]
    nodes.append(helper.make_node("MatMul", ["R", "W2"], ["Y"]))
    init.append(numpy_helper.from_array((rng.normal(size=(256, 4)) * 0.05).astype(np.float32), "W2"))
    graph = helper.make_graph(
        nodes,
        "lowrank",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])],
        init,
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    before = initializer_bytes(model)
    samples = {"X": rng.normal(size=(64, 256)).astype(np.float32)}
    result = LowRankFactorizationPass(0.5, speed=FakeSpeed(), samples=samples)(model)
    assert result.modified
    assert initializer_bytes(result.model) > 1.5 * before  # "65,536 → 32,768 parameters", 68 → 132 kB
    assert any("written in float32" in note for note in result.notes), result.notes


def _scattering_graph_model() -> onnx.ModelProto:
    """A graph network that reads its nodes only through ``ScatterElements``: each edge's features ``edge_attr
    [num_edges, 8]`` summed into its target node (row 1 of ``edge_index [2, num_edges]``) of ``x [num_nodes, 8]``, then
    a MatMul."""
    nodes = [
        helper.make_node("Gather", ["edge_index", "one"], ["target"], axis=0),
        helper.make_node("Unsqueeze", ["target", "last"], ["column"]),
        helper.make_node("Shape", ["edge_attr"], ["edge_shape"]),
        helper.make_node("Expand", ["column", "edge_shape"], ["index"]),
        helper.make_node("ScatterElements", ["x", "index", "edge_attr"], ["summed"], axis=0, reduction="add"),
        helper.make_node("MatMul", ["summed", "w"], ["y"]),
    ]
    init = [
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "last"),
        numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32), "w"),
    ]
    graph = helper.make_graph(
        nodes,
        "scattering_graph",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["num_nodes", 8]),
            helper.make_tensor_value_info("edge_attr", TensorProto.FLOAT, ["num_edges", 8]),
            helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "num_edges"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["num_nodes", 8])],
        init,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_compare_on_a_graph_network_that_scatters_into_its_nodes_runs_each_graph(tmp_path: Path) -> None:
    from optimizer.compare import CompareSettings, compare

    path, folder = tmp_path / "graph.onnx", tmp_path / "graphs"
    onnx.save(_scattering_graph_model(), path)
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number, (nodes, edges) in enumerate([(40, 60), (25, 30)]):
        graph = {
            "x": rng.normal(size=(nodes, 8)).astype(np.float32),
            "edge_attr": rng.normal(size=(edges, 8)).astype(np.float32),
            "edge_index": rng.integers(0, nodes, (2, edges)),
        }
        np.savez(folder / f"{number:02d}.npz", **graph)
    assert has_no_batch(ir.from_proto(_scattering_graph_model()))
    settings = CompareSettings(time_budget=0.1, iterations=2, warmup=1, threads=1)
    # Cut into 16 nodes beside 60 edges: "ONNX Runtime cannot run it ... indices element out of data bounds".
    report = compare(path, path, settings=settings, inputs=folder)
    assert [batch.batch for batch in report.providers[0].batches] == [1]


@pytest.mark.xfail(
    strict=True,
    reason="has_no_batch reads a --static-shapes bound model on its inputs as declared (_as_declared: a model of the "
    "inputs alone, no nodes), where no integer input indexes anything: a graph network whose num_nodes is only guessed "
    "a batch (x [num_nodes, 8], edge_index [2, num_edges]) is read as batched again once bound, and its nodes are "
    "counted and scored as 40 samples, not one graph (to trace the real graph at two sizes, undo its bound shapes)",
)
def test_a_graph_network_bound_by_static_shapes_still_holds_one_sample_a_graph() -> None:
    from optimizer.inputs import DECLARED_SHAPE
    from tests.test_review_s64_hunt import _graph_model

    model = ir.from_proto(_graph_model())
    assert has_no_batch(model)
    for value, shape in zip(model.graph.inputs, ([40, 8], [2, 60])):
        value.meta[DECLARED_SHAPE] = value.shape
        value.shape = ir.Shape(shape)
    rng = np.random.default_rng(0)
    graphs = [{"x": rng.normal(size=(40, 8)).astype(np.float32), "edge_index": rng.integers(0, 40, (2, 60))}] * 3
    assert open_samples(graphs, model, flag="--calibration").count == 3  # 120: one sample a node


@pytest.mark.parametrize("kind", ["conv_bias", "gemm"])
def test_a_bias_change_folds_into_a_layer_stored_int8(kind: str) -> None:
    # A repair's bias change for a Conv whose weight and bias are stored int8 (or a Gemm whose weight is) was not
    # folded into the layer (``fold_into_bias`` read both the old way: "not a constant"), so pruning and low-rank
    # added it after the layer instead, leaving the layer's output with the old bias (a twin's checkpoint there
    # differed by the whole change: rolled back). Session 70.
    from passes._layers import fold_into_bias

    if kind == "conv_bias":
        model = ir.from_proto(_int8_layers_model(kind))
        node = next(node for node in model.graph if node.op_type == "Conv" and node.inputs[0].name == "X")
        before, width = dequantized_weight(node.inputs[2]), 96
    else:
        rng = np.random.default_rng(0)
        weight, init = _dequantized("W", rng.integers(-127, 128, size=(32, 16)).astype(np.int8), 0.01)
        init.append(numpy_helper.from_array(np.ones(16, np.float32), "C"))
        graph = helper.make_graph(
            [*weight, helper.make_node("Gemm", ["X", "W", "C"], ["Y"])],
            "gemm",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 32])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 16])],
            init,
        )
        model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
        node = next(node for node in model.graph if node.op_type == "Gemm")
        before, width = np.ones(16, np.float32), 16
    change = np.linspace(-1, 1, width).astype(np.float32)
    assert fold_into_bias(model.graph, node, change, "twin_bias")
    np.testing.assert_allclose(node.inputs[2].const_value.numpy(), before + change, rtol=1e-6)
