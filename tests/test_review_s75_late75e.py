"""Review s75, late75e: a late review of hunt 13's sequence-major export at batch 1 read as having no batch
(``optimizer.samples._leads_only_with_sequence``), hunt 12's one-value input that is no ``make-inputs`` template
(``SampleData.every_input_repeated``), and the pipeline's rollback of an approximate result fitted to the samples
(``optimizer.pipeline._run_one`` marks the verifier fitted only under ``verdict.ok``).

Found: (1) hunt 13 read every model whose each input leads with a dim some input holds later as having no batch,
also where each input holds its own first dim later (one name for every unknown dim, ``x [?, 3, ?, ?]``; dynamo's
duck-sized ``input_ids [s0, s0]``): 40 images in one file, cut into 16-row batches before, became one sample fed whole,
with nothing to hold out. (2) hunt 12 took an input holding one value in all for no template, so ``make-inputs``'
template of a model whose inputs each take one value (``x [batch, 1]``: ``[[0.0]]``) was taken for real calibration.
(3) the missing test: a rolled-back result fitted to the samples leaves the verifier unfitted.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.samples import has_no_batch, holds_samples, open_samples, samples_in, split_samples


def _model(inputs: list[tuple[str, int, list]], nodes=None, initializers=(), out: list | None = None) -> ir.Model:
    first = inputs[0][0]
    graph = helper.make_graph(
        nodes or [helper.make_node("Relu", [first], ["out"])],
        "late75e",
        [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(array, name) for name, array in initializers],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


_ONE_NAME_EVERYWHERE = {
    "one name for every unknown dim": (
        [("x", TensorProto.FLOAT, ["?", 3, "?", "?"])],
        {"x": np.zeros((40, 3, 4, 4), np.float32)},
    ),
    "duck-sized at batch = length": (
        [("input_ids", TensorProto.FLOAT, ["s0", "s0"]), ("attention_mask", TensorProto.FLOAT, ["s0", "s0"])],
        {"input_ids": np.zeros((40, 12), np.float32), "attention_mask": np.ones((40, 12), np.float32)},
    ),
}


@pytest.mark.parametrize("case", sorted(_ONE_NAME_EVERYWHERE))
def test_inputs_that_each_hold_their_first_dim_later_still_hold_rows(case):
    """Each input holds its own first dim later as well: no sequence-major ``src [S, 1]`` beside a square mask, whose
    ``src`` holds ``S`` at axis 0 alone. Measured before the fix: ``has_no_batch`` True, and 40 rows were 1 sample
    fed whole (before hunt 13, and now again, 40 samples in batches of 16)."""
    inputs, arrays = _ONE_NAME_EVERYWHERE[case]
    model = _model(inputs)
    assert not has_no_batch(model)
    assert samples_in(arrays, holds_samples(model)) == 40
    assert [samples_in(batch, holds_samples(model)) for batch in split_samples(arrays, model=model)] == [16, 16, 8]


def test_a_sequence_major_encoder_at_batch_1_still_has_no_batch():
    """Hunt 13's reading stands where the sequence's own input holds it at axis 0 alone (``src [src_len, 1]``)."""
    model = _model(
        [("src", TensorProto.INT64, ["src_len", 1]), ("src_mask", TensorProto.BOOL, ["src_len", "src_len"])],
        [helper.make_node("Cast", ["src"], ["out"], to=TensorProto.FLOAT)],
    )
    assert has_no_batch(model)


def test_a_sequence_major_encoder_bound_by_static_shapes_still_has_no_batch():
    """Bound by ``--static-shapes`` (``src [9, 1]``, ``src_mask [9, 9]``), it is read on its inputs as declared.
    Measured before the fix: the declared inputs hold no samples (``sample_inputs``), so the bound model was read as it
    is, a fixed batch of 9 (the sequence): one held-out sentence of 9 tokens was reported "on the 9 held-out
    samples"."""
    from optimizer.inputs import DECLARED_SHAPE
    from optimizer.samples import fixed_batch_size

    model = _model(
        [("src", TensorProto.INT64, [9, 1]), ("src_mask", TensorProto.BOOL, [9, 9])],
        [helper.make_node("Cast", ["src"], ["out"], to=TensorProto.FLOAT)],
    )
    for value, declared in zip(model.graph.inputs, (["src_len", 1], ["src_len", "src_len"])):
        value.meta[DECLARED_SHAPE] = ir.Shape(declared)
    sentence = {"src": np.zeros((9, 1), np.int64), "src_mask": np.zeros((9, 9), bool)}
    assert has_no_batch(model) and fixed_batch_size(model) is None
    assert samples_in(sentence, holds_samples(model)) == 1


@pytest.fixture(scope="module")
def one_value_template(tmp_path_factory) -> tuple[ir.Model, str]:
    """``make-inputs``' template of a one-feature regressor ``x [batch, 1]``: ``x [[0.0]]``."""
    from optimizer.input_skeleton import write_input_skeleton

    model = _model([("x", TensorProto.FLOAT, ["batch", 1])], out=["batch", 1])
    folder = tmp_path_factory.mktemp("template")
    onnx.save(ir.to_proto(model), folder / "model.onnx")
    write_input_skeleton(str(folder / "model.onnx"), str(folder / "template.npz"), {})
    return model, str(folder / "template.npz")


def test_make_inputs_template_of_one_value_inputs_is_taken_for_one(one_value_template):
    """Measured before the fix: ``every_input_repeated`` False (``repeated`` empty), so calibration took the
    template and ``compare`` said nothing of it; before hunt 12 it was refused as the template."""
    from optimizer.api import _refuse_or_note_repeated
    from optimizer.compare.comparison import _repeated_note
    from optimizer.errors import InputSpecError

    model, path = one_value_template
    data = open_samples(path, model)
    assert data.every_input_repeated()
    with pytest.raises(InputSpecError, match="make-inputs' template"):
        _refuse_or_note_repeated(data, [])
    assert "'x' holds one value repeated" in (_repeated_note(data) or "")


def test_one_given_value_beside_a_varying_input_is_still_no_template():
    """Hunt 12's case stands: ``speed [1]`` beside a ``style`` that varies is a value given."""
    model = _model(
        [("style", TensorProto.FLOAT, [1, 8]), ("speed", TensorProto.FLOAT, [1])],
        [helper.make_node("Mul", ["style", "speed"], ["out"])],
    )
    style = np.arange(8, dtype=np.float32).reshape(1, 8)
    data = open_samples({"style": style, "speed": np.array([1.0], np.float32)}, model)
    assert not data.every_input_repeated() and not data.repeated_floats()


def _linear(weight: np.ndarray) -> ir.Model:
    return _model(
        [("x", TensorProto.FLOAT, ["batch", 4])], [helper.make_node("MatMul", ["x", "w"], ["out"])], [("w", weight)]
    )


class _FittedPass(ir.passes.FunctionalPass):
    """An approximate pass whose result was fitted to the samples (``fitted_to_samples``) and to the checked ones
    (``fitted_to_checked``), its weight ``weight``, twinned exactly."""

    def __init__(self, weight: np.ndarray) -> None:
        super().__init__()
        self.weight = weight

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from optimizer.protocol import NotedResult, Twin

        twin = Twin(_linear(self.weight), "float32", "the input with the fitted weight")
        return NotedResult(
            _linear(self.weight), modified=True, twin=twin, fitted_to_samples=True, fitted_to_checked="its fit"
        )


@pytest.mark.parametrize("kept", [False, True], ids=["rolled-back", "applied"])
def test_a_rolled_back_fitted_result_leaves_the_verifier_unfitted(kept):
    """Rolled back, a fit to the samples leaves nothing for later results to carry: the verifier is not marked
    fitted (later approximate passes would be measured on the held-out samples alone) nor fitted on the checked
    ones (their figure would say so). Applied, it is both. Fails if those lines leave ``if verdict.ok``."""
    from optimizer.options import Options
    from optimizer.pipeline import _run_one
    from optimizer.protocol import PassContext, PassSpec
    from optimizer.verify import Verifier

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(4, 4)).astype(np.float32)
    fitted = weight * (1 + 1e-4) if kept else rng.normal(size=(4, 4)).astype(np.float32)  # cosine ~0.5: rolled back
    original = _linear(weight)
    verifier = Verifier(original, [{"x": rng.normal(size=(20, 4)).astype(np.float32)}])
    spec = PassSpec("fitted", lambda context: _FittedPass(fitted), "test", approximate=True)
    result, record = _run_one(original, 1, spec, PassContext(Options()), verifier)
    assert record.status == ("applied" if kept else "rolled back"), record.detail
    assert (result is not original) is kept
    assert verifier._fitted is kept
    assert verifier.fitted_on_checked == (["fitted"] if kept else [])
