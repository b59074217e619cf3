"""A hostile review of ebf63b8, 4ade8f3, c2f3117, 1856820, bc03323 and 38864ab (2026-12-03, session 42b).

Each finding was a strict xfail asserting the behaviour the commits (or the README) promise; those fixed since are
plain tests (the row rule and float16 ones are still strict xfails where marked).

Findings:
- ``passes/op_simplification.py``: dropping ``MaterializeReshapeShape`` left five onnxscript rules that trust a
  declared shape the same way (``--passes simplify-ops --no-verify`` writes a wrong or failing model):
  * ``ReshapeReshape`` writes the second Reshape's target from the declared output shape: ``Reshape(Reshape(x,
    [-1]), [-1, 4])`` of ``x [N, 8]`` whose graph output is declared ``[1, 16]`` (stale) becomes
    ``Reshape(x, [1, 16])``: [1, 16] where the original gives [4, 4] (x of [2, 8]).
  * ``Flatten2Reshape`` copies the declared output dims into the Reshape target: ``Flatten(x [N, 2, 4])``
    declared ``[1, 8]`` becomes ``Reshape(x, [1, 8])``, which ONNX Runtime refuses at batch 2.
  * ``ExpandIdentity`` compares the constant shape with the input's *declared* shape: ``Expand(t, [3, 4])`` of a
    ``t`` declared ``[3, 4]`` in value_info but computed ``[1, 4]`` is removed: [1, 4] for [3, 4].
  * ``SqueezeReshape1d`` trusts a declared rank 1: ``Reshape(Squeeze(t), [-1])`` of a ``t`` declared ``[K]`` but
    computed ``[1, 5]`` becomes ``t``: [1, 5] for [5].
  * ``NormalizePadFormatConv`` computes explicit pads from the declared output shape: ``Conv(x [1, 1, 8, 8],
    auto_pad=SAME_UPPER, 3x3)`` whose output is declared ``[1, 1, 10, 10]`` gets ``pads=[2, 2, 2, 2]``: [1, 1, 10,
    10] for [1, 1, 8, 8].
- ``optimizer/model_io.py`` ``deserialize``: a ``sparse_initializer`` (valid ONNX; ORT runs it) raises no
  SerdeError: onnx-ir drops it silently, so the Add reading it reads a value nothing defines; with
  ``--no-verify`` a RuntimeError traceback from ``clone_graph`` (CLI exit 1), with verification "ONNX Runtime
  cannot run the input model (... Node input 'w' is not a graph input ...)", blaming the model.
- ``optimizer/verify.py`` ``_row_rms``: pooling narrow rows up to 64 values lets one row stray up to
  ``sqrt(1 + (1.25**2 - 1) * group)`` times its twin's distance (was 1.25x): ~2.7x for rows of 6 (groups of 11),
  ~6.1x for rows of 1 (an output ``[64, 1]``: the whole batch is one group). One anchor of ``[1, 22, 6]`` 2.5x
  off its twin scores 1.22; one sample of ``[64, 1]`` 5x off scores 1.17: both excused.
- ``passes/quantization/float16.py`` ``_casts_into_their_subgraphs``:
  * the commit's own case (``tests/test_review_real_models3._if_with_pow``) is "applied" with a model
    ``onnx.checker.check_model(full_check=True)`` rejects: the main graph's ``two`` initializer stays float32
    while the converter's value_info declares it float16 (graphopt's loader checks without full_check);
  * a Cast reading a Loop body's *input* (loop-carried state read by a Pow) is not moved (``homes`` holds node
    outputs and initializers only): "no valid graph", no float16;
  * the same in a Scan body (a Pow on the scanned row): ``graph.sort()`` raises "Graph contains a cycle" (pass
    failed with a traceback in the log);
  * a Pow in a Loop body and one in an If inside it: the Loop body is rebuilt from copies of its nodes
    (``_copy_of``), so ``homes`` still points the If branches' names at the detached old branch protos; the
    Casts moved there are lost: "Pow node reads 'e_m_cast_to_fp32', which nothing defines", no float16;
  * both If branches naming their Pow's input alike (``m``): every Cast goes to the first branch, the other
    branch's Pow reads ``m_cast_to_fp32`` which it does not define: "no valid graph".
- ``passes/_utils.py`` ``nothing_found_note``: the count of nested layers is labelled with every op type looked
  for, not those found: quantize-static on one MatMul in a Loop body says "1 Attention/Conv/Gemm/MatMul stand in
  the body" (the note before c2f3117 said "1 stand").
- ``passes/fusion/matmul.py`` ``MatMulAddFusion`` (``held_ops_mean_fused``, c2f3117): on a native ``Gemm`` (a
  ``torch.nn.Linear`` export) ``fuse-matmul-add`` says "nothing left to fuse: the graph already holds 1 Gemm
  (fused before this run)", the claim c2f3117 removed for fuse-conv-affine's Conv.

What held: ``CastIdentity`` with a stale dtype (ORT refuses the original), ``SlicesSplit`` and
``TransposeIdentity``/``TransposeTranspose`` (no declared shape read); sequence and optional outputs, sparse
tensor graph inputs (one-line "cannot generate"), a ZipMap output (main graph: named; in an If branch: one
generic line), a sparse ``Constant`` (one line, optimize with and without verification); an If nested in a Loop
body and Pow reading an outer value (fp16 applied, outputs close on both branches, though full_check fails as
above); ``nothing_found_note`` for prune-ffn, prune-heads, prune-ffn-heads, prune-channels, factorize-lowrank,
quantize-dynamic and quantize-static on a MatMul in a Loop body (no crash; the body is named; beside the op list
above, a lone MatMul is counted as a would-be FFN layer); merge-matmul-nbits on a lone MatMulNBits says nothing
false; fuse-layer-norm on a native LayerNormalization says "fused before this run" (debatable: it is the fused op).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import UnsupportedModelError
from optimizer.verify import INT8_ROW_EXCESS, int8_row_excess

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), value_info=(), opsets=(("", 17),)) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _proto(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)


def _i64(name: str, *values: int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _vi(name: str, shape, dtype=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _stale_reshape_reshape():
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r"]), helper.make_node("Reshape", ["r", "s2"], ["y"])]
    model = _model(nodes, [_vi("x", ["N", 8])], [_vi("y", [1, 16])], [_i64("s1", -1), _i64("s2", -1, 4)])
    return model, {"x": np.arange(16, dtype=np.float32).reshape(2, 8)}


def _stale_flatten():
    nodes = [helper.make_node("Flatten", ["x"], ["y"], axis=1)]
    model = _model(nodes, [_vi("x", ["N", 2, 4])], [_vi("y", [1, 8])])
    return model, {"x": np.arange(16, dtype=np.float32).reshape(2, 2, 4)}


def _stale_expand():
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Expand", ["t", "s"], ["y"])]
    model = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["A", "B"])], [_i64("s", 3, 4)], [_vi("t", [3, 4])])
    return model, {"x": np.arange(4, dtype=np.float32).reshape(1, 4)}


def _stale_squeeze_reshape():
    nodes = [
        helper.make_node("Relu", ["x"], ["t"]),
        helper.make_node("Squeeze", ["t"], ["q"]),
        helper.make_node("Reshape", ["q", "s"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", ["P", "Q"])], [_vi("y", ["A"])], [_i64("s", -1)], [_vi("t", ["K"])])
    return model, {"x": np.arange(5, dtype=np.float32).reshape(1, 5)}


def _stale_same_conv():
    weight = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / 9, "W")
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER")]
    model = _model(nodes, [_vi("x", [1, 1, 8, 8])], [_vi("y", [1, 1, 10, 10])], [weight])
    return model, {"x": np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)}


@pytest.mark.parametrize(
    "build",
    [_stale_reshape_reshape, _stale_flatten, _stale_expand, _stale_squeeze_reshape, _stale_same_conv],
    ids=lambda b: b.__name__,
)
def test_simplify_ops_does_not_trust_a_declared_shape(build):
    model, feeds = build()
    onnx.checker.check_model(model, full_check=False)
    expected = _run(model, feeds)
    out, _ = optimize_with_report(model, ["simplify-ops"], options={"verify": False})
    try:
        got = _run(_proto(out), feeds)
    except Exception as error:  # noqa: BLE001 - the failure to run is the finding
        raise AssertionError(f"simplify-ops wrote a model ONNX Runtime cannot run: {str(error)[:200]}") from error
    assert [g.shape for g in got] == [e.shape for e in expected], "simplify-ops changed the output's shape"
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def _sparse_initializer_model() -> onnx.ModelProto:
    values = numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 3], np.int64)), [4])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g", [_vi("x", [4])], [_vi("y", [4])], sparse_initializer=[sparse]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)  # as graphopt's loader checks it (full_check's type inference takes it sparse)
    return model


def test_a_sparse_initializer_is_kept_or_refused_in_one_line():
    model = _sparse_initializer_model()
    feeds = {"x": np.zeros(4, np.float32)}
    expected = _run(model, feeds)  # ONNX Runtime runs it: [1, 0, 0, 2]
    try:
        out, _ = optimize_with_report(model, ["simplify-ops"], options={"verify": False})
    except UnsupportedModelError:
        return  # one line naming what onnx-ir cannot hold: fine
    except Exception as error:  # noqa: BLE001 - anything else is the finding
        raise AssertionError(f"{type(error).__name__}: {str(error)[:120]}") from error
    np.testing.assert_array_equal(_run(_proto(out), feeds)[0], expected[0])


@pytest.mark.parametrize(
    ("shape", "row", "factor"),
    [((1, 22, 6), (0, 3), 2.5), ((64, 1), (7,), 5.0)],
    ids=["anchor_row_of_6_at_2.5x", "one_sample_of_64_scalars_at_5x"],
)
def test_one_narrow_row_far_off_its_twin_is_not_excused(shape, row, factor):
    rng = np.random.default_rng(0)
    before = rng.normal(size=shape)
    twin_noise = rng.choice([-1.0, 1.0], size=before.shape) * 0.01  # every value one rounding step off
    twin = before + twin_noise
    result = before + twin_noise[::-1]  # as far off, elsewhere: a correct int8 rewrite
    result[row] = before[row] + factor * twin_noise[row]  # one token's (sample's) scale that much too wide
    excess = int8_row_excess({"y": twin}, {"y": result}, {"y": before}, ["y"])
    assert excess is not None and excess > INT8_ROW_EXCESS, f"excess {excess:.3f}: the wrong row is excused"


def _if_with_pow_shared_names() -> onnx.ModelProto:
    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Mul", ["x", f"{name}_s"], ["m"]), helper.make_node("Pow", ["m", "two"], [f"{name}_y"])],
            name,
            [],
            [_vi(f"{name}_y", ["N", 8])],
            [numpy_helper.from_array(np.full(8, scale, np.float32), f"{name}_s")],
        )

    nodes = [
        helper.make_node("Greater", ["k", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 0.5), else_branch=branch("else", 2.0)),
    ]
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    inits = [zero, numpy_helper.from_array(np.array(2.0, np.float32), "two")]
    return _model(nodes, [_vi("x", ["N", 8]), _vi("k", [], TensorProto.INT64)], [_vi("y", ["N", 8])], inits)


def _loop_state_pow() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Pow", ["s_in", "two"], ["p"]),
            helper.make_node("Mul", ["p", "half"], ["s_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("s_in", ["N", 8])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("s_out", ["N", 8])],
        [numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Loop", ["k", "", "x"], ["y"], body=body)]
    return _model(nodes, [_vi("x", ["N", 8]), _vi("k", [], TensorProto.INT64)], [_vi("y", ["N", 8])], [two])


def _scan_pow() -> onnx.ModelProto:
    body = helper.make_graph(
        [
            helper.make_node("Pow", ["row", "two"], ["p"]),
            helper.make_node("Add", ["acc", "p"], ["acc2"]),
            helper.make_node("Identity", ["p"], ["sout"]),
        ],
        "sbody",
        [_vi("acc", [8]), _vi("row", [8])],
        [_vi("acc2", [8]), _vi("sout", [8])],
    )
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Scan", ["a0", "x"], ["acc", "y"], body=body, num_scan_inputs=1)]
    return _model(nodes, [_vi("x", ["N", 8]), _vi("a0", [8])], [_vi("acc", [8]), _vi("y", ["N", 8])], [two])


def _loop_pow_and_if_pow() -> onnx.ModelProto:
    """A Pow in a Loop body and one in each branch of an If in that body."""

    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("Mul", ["p2", f"{name}_s"], [f"{name}_m"]),
                helper.make_node("Pow", [f"{name}_m", "two"], [f"{name}_y"]),
            ],
            name,
            [],
            [_vi(f"{name}_y", ["N", 8])],
            [numpy_helper.from_array(np.full(8, scale, np.float32), f"{name}_s")],
        )

    body = helper.make_graph(
        [
            helper.make_node("Mul", ["s_in", "half"], ["q"]),
            helper.make_node("Pow", ["q", "two"], ["p"]),
            helper.make_node("Mul", ["p", "half"], ["p2"]),
            helper.make_node("Greater", ["i", "one"], ["c"]),
            helper.make_node("If", ["c"], ["s_if"], then_branch=branch("t", 2.0), else_branch=branch("e", 3.0)),
            # Bounded: powers over three trips (generated inputs give a Loop's count 3) stay in float16's range.
            helper.make_node("Tanh", ["s_if"], ["s_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("s_in", ["N", 8])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("s_out", ["N", 8])],
        [
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(0.9, np.float32), "half"),
        ],
    )
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    nodes = [helper.make_node("Loop", ["k", "", "x"], ["y"], body=body)]
    return _model(nodes, [_vi("x", ["N", 8]), _vi("k", [], TensorProto.INT64)], [_vi("y", ["N", 8])], [two])


def _own_if_with_pow() -> onnx.ModelProto:
    from tests.test_review_real_models3 import _if_with_pow

    return _if_with_pow()


_X = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
_FP16_CASES = {
    "if_pow_commit_case": (_own_if_with_pow, [{"x": _X, "k": np.array(1)}, {"x": _X, "k": np.array(0)}]),
    "if_branches_share_a_name": (_if_with_pow_shared_names, [{"x": _X, "k": np.array(1)}, {"x": _X, "k": np.array(0)}]),
    "loop_state_read_by_pow": (_loop_state_pow, [{"x": _X, "k": np.array(3)}]),
    "scan_row_read_by_pow": (_scan_pow, [{"x": _X, "a0": np.zeros(8, np.float32)}]),
    # Inputs whose powers stay in float16's range (at _X the float32 original reaches 7.7e10: float16 overflows
    # and verification rightly rolls the conversion back), and above its smallest values: from tanh(_X) / 2
    # three trips of squares reach 1e-12, which float16 kernels flush to zero (the deployed model's outputs were
    # zero where the original's were 1e-6, and the check of the model as float16 kernels compute it, added in
    # review s55, rolls that back too).
    "pow_in_loop_body_and_in_its_if": (_loop_pow_and_if_pow, [{"x": np.tanh(_X) * 1.5, "k": np.array(3)}]),
}


# The converter renames values by name across scopes, so a Scan body input named like the Scan's graph output
# ('acc') was read as the main graph's output Cast (a cycle; the pass failed): optimize renames such body values
# when it loads a model (optimizer.model_io.rename_shadowing_values), and the case converts.
@pytest.mark.parametrize("case", list(_FP16_CASES))
def test_float16_of_a_pow_in_a_subgraph_is_valid_and_applied(case):
    build, feed_sets = _FP16_CASES[case]
    model = build()
    onnx.checker.check_model(model, full_check=True)
    out, report = optimize_with_report(model, ["convert-float16"], inputs=feed_sets[0], fp16=True, target="cuda")
    record = next(r for r in report.passes if r.name == "convert-float16")
    assert record.status == "applied", f"{record.status}: {record.detail}"
    proto = _proto(out)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise AssertionError(f"float16 result fails onnx's full check: {str(error)[:160]}") from error
    for feeds in feed_sets:
        for got, expected in zip(_run(proto, feeds), _run(model, feeds)):
            np.testing.assert_allclose(got.astype(np.float32), expected, rtol=2e-2, atol=2e-2)


def test_fuse_matmul_add_does_not_claim_a_native_gemm_was_fused_before():
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=(4, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b"),
    ]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1)]  # torch.nn.Linear's own export
    model = _model(nodes, [_vi("x", ["N", 8])], [_vi("y", ["N", 4])], weights)
    feeds = {"x": rng.normal(size=(2, 8)).astype(np.float32)}
    _, report = optimize_with_report(model, ["fuse-matmul-add"], inputs=feeds)
    notes = [note for record in report.passes for note in record.notes]
    assert not any("fused before this run" in note for note in notes), notes


def test_nothing_found_note_names_only_the_ops_that_stand_in_the_body():
    weight = numpy_helper.from_array(np.eye(8, dtype=np.float32), "W")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "W"], ["s_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "loop_body",
        [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("s_in", ["N", 8])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("s_out", ["N", 8])],
    )
    nodes = [helper.make_node("Loop", ["k", "", "x"], ["y"], body=body)]
    model = _model(nodes, [_vi("x", ["N", 8]), _vi("k", [], TensorProto.INT64)], [_vi("y", ["N", 8])], [weight])
    feeds = {"x": np.ones((2, 8), np.float32), "k": np.array(2)}
    _, report = optimize_with_report(model, ["quantize-static"], inputs=feeds, quantize="static")
    note = next(n for r in report.passes for n in r.notes if "in the body" in n)
    # Measured: "...; 1 Attention/Conv/Gemm/MatMul stand in the body of a Loop, If or Scan ('loop_body'), ..."
    standing = note.split(";", 1)[1]
    assert not any(op in standing for op in ("Attention", "Conv", "Gemm")), note


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "no-verify"])
def test_a_folded_label_table_comes_back_from_the_api_as_a_proto(verify):
    # fold-constants makes the Identity of a string initializer a constant (an ir.Tensor over numpy strings):
    # simplify-ops' shape inference asked it its nbytes (a TypeError, the pass failed with the graph's inputs
    # changed) and the API's ir.to_proto raised a SerdeError.
    model = onnx.parser.parse_model(
        """
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y, string[3] names) <string[3] labels = {"cat", "dog", "bird"}> {
          y = Relu(x)
          names = Identity(labels)
        }"""
    )
    out, report = optimize_with_report(model, options={"verify": verify})
    assert all(record.status != "failed" for record in report.passes), [(r.name, r.detail) for r in report.passes]
    names = _run(out, {"x": np.ones((2, 4), np.float32)})[1]
    assert list(names) == ["cat", "dog", "bird"]
