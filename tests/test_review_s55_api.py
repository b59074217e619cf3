"""A hostile review of graphopt's passes used as onnx-ir passes and of ``--static-shapes``/``--dim`` (session 55).

Findings, each fixed and tested here:

1. ``bind-dims`` wrote a graph output's dim as the bound size wherever the output's dim had a bound input dim's
   name, even where the model computes another size there: an encoder exported with ``y: [batch, seq, 4]`` for a
   stride-2 ``Slice`` of ``x: [batch, seq, 4]`` came out of ``--static-shapes --dim seq=8`` declaring ``y: [1, 8,
   4]`` for the ``[1, 4, 4]`` it computes (ONNX Runtime only warns; the report said applied and verified). It
   now leaves a dim symbolic where ONNX's shape inference, after binding the inputs, computes another size, and
   says so. Used on its own, it also bound a dim only outputs carry (``NonZero``'s count) and reported a change,
   where its docstring says it refuses dims no input uses.
2. ``--static-shapes`` with generated calibration samples (an approximate pass, no ``--calibration``) drew them
   at the default sizes, not at those it fixes: with ``--inputs`` of sequence 10, or ``--max-sequence 64``, the
   samples held 128 tokens and the int8 pass was rolled back, blaming its own result ("ONNX Runtime cannot run
   the result: ... Got: 128 Expected: 10"). Given ``--calibration`` samples of another length than the model is
   fixed at were rolled back the same way; they are now a one-line ``InputSpecError``.
3. README: "Every graphopt pass returns an ``optimizer.protocol.NotedResult``": seven (remove-identity,
   simplify-ops, merge-subexpressions, lift-constants, share-transposed-initializers, deduplicate-initializers,
   remove-unused) returned a plain ``PassResult``, without ``notes`` or ``refusals``.

Held (checked, no test here): every exact registered pass applied to bert, resnet, a GPT-2 and a Llama KV decoder,
to models with local functions (attribute references, nested functions, a function called twice) and to -1 dims,
then again to its own result: ``modified=False`` left the model identical (up to initializer order),
``modified=True`` changed it, outputs unchanged on ONNX Runtime; the default pipeline in an ``onnx_ir``
``PassManager`` (``steps=2``) after ``InlinePass``, ``ShapeInferencePass`` or ``LiftConstantsToInitializersPass``;
``onnx_ir.load`` and ``onnx.load`` + ``ir.from_proto`` giving the same result; ``optimize`` applied to its own
output (nothing more to do) and then with ``static_shapes=True``; the README's Python API examples; a bound KV
decoder refusing another batch or length; ``--dim`` naming a dim the model lacks, or a -1 dim (one line, exit 2).

Also mended: ``--static-shapes`` on a model whose inputs have no named dims (tf2onnx's -1) declined with "none of
[] is a symbolic input dim"; it now says there is no named dim to bind.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest

import optimizer
from optimizer.errors import InputSpecError
from optimizer.inputs import make_inputs
from optimizer.options import Options
from optimizer.protocol import NotedResult, PassContext
from optimizer.registry import all_passes
from passes.dim_binding import BindDimsPass
from tests.helpers import parse_model

FIXTURES = "tests/fixtures"

_STRIDED = """
    <ir_version: 9, opset_import: ["" : 18]>
    g (float[batch, seq, 4] x) => (float[batch, seq, 4] y, float[batch, seq, 4] z) {
      st = Constant<value = int64[1] {0}>()
      en = Constant<value = int64[1] {9223372036854775807}>()
      ax = Constant<value = int64[1] {1}>()
      sp = Constant<value = int64[1] {2}>()
      y = Slice(x, st, en, ax, sp)
      z = Relu(x)
    }"""


def _dims(value: ir.Value) -> list:
    return [dim if isinstance(dim, int) else dim.value for dim in value.shape]


def test_bind_dims_does_not_declare_an_output_size_the_model_does_not_compute():
    result = BindDimsPass({"batch": 1, "seq": 8})(parse_model(_STRIDED))
    assert result.modified
    y, z = result.model.graph.outputs
    assert _dims(z) == [1, 8, 4]
    assert _dims(y) == [1, "seq", 4]  # it computes 4 rows there, not 8
    assert any("'y'" in note and "seq" in note for note in result.notes), result.notes


def test_static_shapes_output_interface_matches_what_onnx_runtime_computes():
    model = onnx.parser.parse_model(_STRIDED)
    optimized = optimizer.optimize(model, static_shapes=True, dims={"batch": 1, "seq": 8})
    import onnxruntime as ort

    session = ort.InferenceSession(optimized.SerializeToString(), providers=["CPUExecutionProvider"])
    results = session.run(None, {"x": np.ones((1, 8, 4), np.float32)})
    for declared, array in zip(optimized.graph.output, results):
        dims = declared.type.tensor_type.shape.dim
        for dim, size in zip(dims, array.shape):
            assert not dim.HasField("dim_value") or dim.dim_value == size, (declared.name, array.shape)


def test_bind_dims_refuses_dims_that_only_outputs_carry():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[batch] x) => (int64[1, n] y) {
          y = NonZero(x)
        }""")
    result = BindDimsPass({"n": 3})(model)
    assert not result.modified
    assert _dims(result.model.graph.outputs[0]) == [1, "n"]
    assert result.refusals


def test_static_shapes_on_a_model_of_unnamed_dims_says_why_it_binds_nothing(tmp_path, capsys):
    from optimizer import cli

    model = onnx.parser.parse_model("""
        <ir_version: 9, opset_import: ["" : 18]>
        g (float[N, 4] x) => (float[N, 4] y) {
          y = Relu(x)
        }""")
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = -1  # tf2onnx's "any size"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code = cli.main(["optimize", str(path), "-o", str(tmp_path / "o.onnx"), "--static-shapes", "--strict"])
    out = capsys.readouterr()
    assert code == 3
    assert "none of []" not in out.out + out.err
    assert "no named symbolic dims" in out.out + out.err


def test_static_shapes_draws_generated_calibration_samples_at_the_sizes_it_fixes():
    path = f"{FIXTURES}/bert_legacy.onnx"
    model = ir.load(path)
    inputs = make_inputs(model, {"batch": 2, "sequence": 10}, seed=5)
    _, report = optimizer.optimize_with_report(onnx.load(path), static_shapes=True, inputs=inputs, quantize="dynamic")
    statuses = {row.name: row.status for row in report.passes}
    assert statuses["quantize-dynamic"] == "applied", report.passes


def test_static_shapes_refuses_calibration_of_another_length_in_one_line():
    path = f"{FIXTURES}/bert_legacy.onnx"
    model = ir.load(path)
    calibration = make_inputs(model, {"batch": 16, "sequence": 12}, seed=5)
    with pytest.raises(InputSpecError, match="sequence"):
        optimizer.optimize(
            onnx.load(path), static_shapes=True, dims={"sequence": 10}, quantize="dynamic", calibration=calibration
        )


def test_every_registered_exact_pass_returns_a_noted_result():
    model = ir.load(f"{FIXTURES}/bert_legacy.onnx")
    context = PassContext(Options(), dims={"batch": 1, "sequence": 8})
    for spec in all_passes():
        if spec.approximate or spec.needs:
            continue
        result = spec.factory(context)(model.clone())
        assert isinstance(result, NotedResult), spec.name
