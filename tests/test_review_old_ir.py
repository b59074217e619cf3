"""Review of b3c1197 (an IR < 4 model's initializers listed as inputs are constants, written as IR 4) and 3e4a367
(simplify-shapes: a Reshape/Expand target element that is ``Shape(data)[axis]`` of its own data is a copy/keep).

What held (reproductions in /tmp/rev_ir3/, run from the repository root with the venv's python): ONNX Runtime 1.32
refuses a feed for an IR-3 initializer listed as an input at opsets 7, 9, 13 and 21 ("Invalid input name"; feed.py);
bert_legacy, distilbert_legacy, gpt2_legacy and resnet_legacy re-saved as IR 3 (every initializer added to the
inputs; mk.py) optimize with the default pipeline to the IR 8 exports' node counts (43, 41, 91, 17), written as IR 4
with the same inputs as the original, outputs equal in ORT at [1, 7] and [3, 4] (cmp.py); gpt2_legacy IR 3 with
external data likewise; ``make-inputs`` lists only the real inputs; ``--inputs`` with an initializer's name warns
"matches no graph input: ignored" in optimize and compare; IR 4 adds nothing but that relaxation and BFLOAT16
(onnx.proto). For 3e4a367, Expand targets longer (``[2] ++ Shape(x)``) and shorter (``Shape(x, start=1)``,
``start=-2``) than the data, a negative Gather index, ``Shape(x, start=1, end=2)`` at position 0 (refused) and a
reversed Slice (refused) all match ORT at several shapes, 1s and 0s included (own_dim_cases.py).

Findings, each a strict xfail below:
- b3c1197, low: ONNX then required every graph's initializers to be inputs, subgraphs' too; only the main graph's
  are taken off, so an IR-3 Loop body or If branch keeps its initializer as an input and the IR-4 file fails
  onnx's full check ("Graph has 4 inputs but 3 were provided") where the IR-3 file passed. ORT 1.32 still runs it,
  with the same outputs (loop.py, subgraph.py).
- older than both commits, low (fixed since): simplify-shapes reads ``Shape(x, start=-1)``'s axes from x's recorded
  rank; a value_info that lies about it (rank 1 for a [2, 3] x; onnx's full check refuses such a model, ORT runs it)
  makes ``Reshape(x, Concat(Shape(x, start=-1), [-1]))`` a copy: [2, 3] where the original gives [3, 2]
  (rank_lie.py; 3e4a367~1 the same through the symbols).
- older than both commits, very low (fixed since): a Reshape with ``allowzero=1`` whose target is ``[Shape(x)[0],
  -1]`` loses ``allowzero``; at a zero-sized x [0, 3, 4] the original runs ([0, 12]) and the rewrite fails in ORT
  (``-1`` beside a copied 0; own_dim_cases.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from passes.shape_simplification import ShapeSimplificationPass


def _run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _loop_with_body_initializer() -> onnx.ModelProto:
    """IR 3: ``Loop`` adding a body initializer ``step`` (listed as a body input, as IR 3 required) n times to x * w."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("step", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [1]),
        ],
        [numpy_helper.from_array(np.array([3.0], np.float32), "step")],
    )
    initializers = [
        numpy_helper.from_array(np.array([2.0], np.float32), "w"),
        numpy_helper.from_array(np.array(4, np.int64), "n"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["x2"]), helper.make_node("Loop", ["n", "", "x2"], ["y"], body=body)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [1]),
            helper.make_tensor_value_info("n", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=3)


def test_an_old_ir_loop_body_initializer_leaves_a_model_onnx_accepts(tmp_path):
    """Review finding (fixed since): b3c1197 took only the main graph's initializers off its inputs: an IR-3 Loop
    body kept its initializer as a body input and the IR-4 file failed onnx's full check (Graph has 4 inputs but
    3 were provided)."""
    path, output = tmp_path / "loop.onnx", tmp_path / "out.onnx"
    original = _loop_with_body_initializer()
    onnx.checker.check_model(original, full_check=True)
    onnx.save(original, path)
    optimize_with_report(path, output=output, passes=["remove-unused"])
    written = onnx.load(output)
    assert written.ir_version == 4
    feeds = {"x": np.array([1.0], np.float32)}
    np.testing.assert_array_equal(_run(str(output), feeds), _run(str(path), feeds))  # ORT runs both: [14]
    onnx.checker.check_model(written, full_check=True)


def test_a_shape_with_negative_start_is_read_at_the_run_time_rank():
    """Review finding (fixed since): older than 3e4a367, simplify-shapes read Shape(x, start=-1)'s axes from x's
    recorded rank; a value_info that lies (rank 1 for a [2, 3] x) turned Reshape(x, [Shape(x, start=-1), -1])
    into a copy. The axes are now read at the rank ONNX Runtime's symbolic inference derives from the inputs."""
    nodes = [
        helper.make_node("Identity", ["x0"], ["x"]),
        helper.make_node("Shape", ["x"], ["s"], start=-1),
        helper.make_node("Concat", ["s", "m1"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x0", TensorProto.FLOAT, ["a", "b"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["p", "q"])],
        [numpy_helper.from_array(np.array([-1], np.int64), "m1")],
        value_info=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    feeds = {"x0": np.arange(6, dtype=np.float32).reshape(2, 3)}
    expected = _run(model, feeds)
    assert expected.shape == (3, 2)
    result = ShapeSimplificationPass()(ir.from_proto(model))
    np.testing.assert_array_equal(_run(ir.to_proto(result.model), feeds), expected)


def test_an_allowzero_reshape_of_its_own_dim_keeps_a_zero_sized_batch():
    """Review finding (fixed since): older than 3e4a367, an allowzero=1 Reshape to [Shape(x)[0], -1] lost allowzero;
    at a zero-sized x [0, 3, 4] the original gives [0, 12] in ORT and the rewrite failed. Such a -1, which x's dims
    do not fix, is now refused beside a copied dim."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["d0"]),
        helper.make_node("Concat", ["d0", "m1"], ["t"], axis=0),
        helper.make_node("Reshape", ["x", "t"], ["y"], allowzero=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([0], np.int64), "i0"),
            numpy_helper.from_array(np.array([-1], np.int64), "m1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    simplified = ir.to_proto(ShapeSimplificationPass()(ir.from_proto(model)).model)
    for shape in [(2, 3, 4), (0, 3, 4)]:
        feeds = {"x": np.zeros(shape, np.float32)}
        np.testing.assert_array_equal(_run(simplified, feeds), _run(model, feeds))
