"""Review of the exact segment check (``Verifier.check`` with a ``base``, commit f72d61e): what it lets through.

Each test here is a wrong or correct exact pass for which the fallback's verdict is wrong:

- A cut at an attention's masked scores (``scores * scale + mask`` with the exporters' fill,
  ``finfo(float32).min`` or -1e9) is compared at a tolerance relative to that tensor's RMS, which
  the fill makes astronomically large: any finite change to the unmasked scores passes there, and
  the next segment starts from the pass input's scores. A rewrite that drops the attention scale
  (a 2x change of the model's outputs) is verified; with a -1e4 fill (GPT-2, BERT), one 5 % off.
- Once one pass is verified segment by segment, the model misses the original end to end, so
  every later exact pass misses it too: one that adds no node (nothing to cut around) is rolled
  back, however exact.
- Each pass verified segment by segment is held to its own input, not to the original: passes
  that are each within the tolerance add up past it, and the result is reported verified.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.options import Options
from optimizer.pipeline import _run_one
from optimizer.protocol import PassContext, PassSpec
from optimizer.runtime import run_model
from optimizer.verify import DEFAULT_TOLERANCES, Verifier
from tests.test_exact_segments import _chain, _inputs, _SplitPass, _weights

SEQUENCE, WIDTH = 6, 8
_FLOAT = ir.DataType.FLOAT


def _attention(fill: float, rewrite: str | None = None) -> ir.Model:
    """One causal attention head, ``softmax(q k^T * scale + mask) v``, the mask an initializer holding ``fill``
    above the diagonal (as the exporters build it). ``rewrite`` replaces the scale and mask nodes by new ones:

    - ``"unscaled-add"``: one new Add ``scores + mask`` under the masked scores' name (the scale forgotten);
    - ``"renamed-mul"``: a new Mul whose output has a new name, with the scale squared; the kept Add reads it.
    """
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", type=ir.TensorType(_FLOAT), shape=ir.Shape(["batch", SEQUENCE, WIDTH]))
    arrays = {
        "wq": rng.standard_normal((WIDTH, WIDTH)).astype(np.float32),
        "wk": rng.standard_normal((WIDTH, WIDTH)).astype(np.float32),
        "wv": rng.standard_normal((WIDTH, WIDTH)).astype(np.float32),
        "scale": np.array(1 / np.sqrt(WIDTH), np.float32),
        "scale_squared": np.array(1 / WIDTH, np.float32),
        "mask": np.triu(np.full((SEQUENCE, SEQUENCE), fill, np.float32), 1),
    }
    weights = {name: ir.Value(name=name, const_value=ir.tensor(array)) for name, array in arrays.items()}
    graph = ir.Graph([x], [], nodes=[], initializers=list(weights.values()), opset_imports={"": 18}, name="head")

    def node(op: str, inputs: list[ir.Value], output: str, name: str, **attributes) -> ir.Value:
        created = ir.Node("", op, inputs, attributes=[ir.Attr(k, *v) for k, v in attributes.items()], name=name)
        created.outputs[0].name = output
        graph.append(created)
        return created.outputs[0]

    q = node("MatMul", [x, weights["wq"]], "q", "project_q")
    k = node("MatMul", [x, weights["wk"]], "k", "project_k")
    v = node("MatMul", [x, weights["wv"]], "v", "project_v")
    kt = node("Transpose", [k], "k_t", "transpose_k", perm=(ir.AttributeType.INTS, [0, 2, 1]))
    scores = node("MatMul", [q, kt], "scores", "q_k")
    if rewrite == "unscaled-add":
        masked = node("Add", [scores, weights["mask"]], "masked", "add_mask_fused")
    elif rewrite == "renamed-mul":
        scaled = node("Mul", [scores, weights["scale_squared"]], "scaled_fused", "scale_fused")
        masked = node("Add", [scaled, weights["mask"]], "masked", "add_mask")
    else:
        scaled = node("Mul", [scores, weights["scale"]], "scaled", "scale")
        masked = node("Add", [scaled, weights["mask"]], "masked", "add_mask")
    probs = node("Softmax", [masked], "probs", "softmax", axis=(ir.AttributeType.INT, -1))
    y = node("MatMul", [probs, v], "y", "p_v")
    y.type, y.shape = ir.TensorType(_FLOAT), ir.Shape(["batch", SEQUENCE, WIDTH])
    graph.outputs.append(y)
    return ir.Model(graph, ir_version=10)


def _attention_inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((2, SEQUENCE, WIDTH)).astype(np.float32)}


class _Rewrite(ir.passes.FunctionalPass):
    """An "exact" pass that returns a prepared model."""

    def __init__(self, build):
        super().__init__()
        self.build = build

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(self.build(), modified=True)


@pytest.mark.parametrize("rewrite", ["unscaled-add", "renamed-mul"])
@pytest.mark.parametrize("fill", [float(np.finfo(np.float32).min), -1e9], ids=["finfo-min", "minus-1e9"])
def test_a_wrong_attention_scale_next_to_the_mask_is_rolled_back(fill, rewrite):
    original, wrong = _attention(fill), _attention(fill, rewrite)
    inputs = _attention_inputs()
    before, after = run_model(original, inputs)["y"], run_model(wrong, inputs)["y"]
    # The premise: the rewrite changes the model's answer by a third of its RMS, nothing like rounding.
    assert np.abs(after - before).max() > 0.3 * np.sqrt(np.mean(before**2))
    verifier = Verifier(original, [inputs])
    assert not verifier.check(wrong).ok  # end to end (before f72d61e, the whole verdict): rolled back
    spec = PassSpec("fold-attention-scale", lambda context: _Rewrite(lambda: _attention(fill, rewrite)), "test")
    result, record = _run_one(original, len(list(original.graph)), spec, PassContext(Options()), verifier)
    assert record.status == "rolled back" and result is original, (
        f"a wrong attention scale {record.status}: {record.notes}; the masked scores' cut compares at 1e-4 of "
        f"an RMS that the mask's fill makes ~{abs(fill) * 0.4:.0e}"
    )


@pytest.mark.parametrize(("fill", "factor"), [(-1e4, 1.05), (-3000.0, 1.02)])
def test_an_attention_scale_a_few_percent_off_next_to_a_moderate_mask_is_rolled_back(fill, factor):
    # -1e4 is GPT-2's masked_bias and BERT's extended mask. Masked scores are fill + score, so some are
    # a little under 1e4 in magnitude: a floor taken over the elements below a fixed 1e4 still counts them.
    original = _attention(fill)
    inputs = {"x": _attention_inputs()["x"] * 0.5}

    def off() -> ir.Model:
        wrong = _attention(fill, "renamed-mul")
        wrong.graph.initializers["scale_squared"].const_value = ir.tensor(np.array(factor / np.sqrt(WIDTH), np.float32))
        return wrong

    before, after = run_model(original, inputs)["y"], run_model(off(), inputs)["y"]
    assert np.abs(after - before).max() > 0.02 * np.sqrt(np.mean(before**2))  # 2.6 % and 6.5 % of its RMS
    verifier = Verifier(original, [inputs])
    spec = PassSpec("fold-attention-scale", lambda context: _Rewrite(off), "test")
    result, record = _run_one(original, len(list(original.graph)), spec, PassContext(Options()), verifier)
    assert record.status == "rolled back" and result is original, f"{record.status}: {record.notes}"


class _Unchanged(ir.passes.InPlacePass):
    """An exact pass that adds no node and changes no value (a dead-node sweep, an initializer merge)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=True)


def test_an_exact_pass_after_a_segment_verified_one_is_kept():
    weights = _weights()
    original = _chain(weights)
    verifier = Verifier(original, [_inputs()])
    context = PassContext(Options())
    split = PassSpec("split-matmuls", lambda c: _SplitPass(weights), "test")
    fused, first = _run_one(original, len(list(original.graph)), split, context, verifier)
    assert first.status == "applied" and any("segment by segment" in note for note in first.notes)
    sweep = PassSpec("remove-unused", lambda c: _Unchanged(), "test")
    result, record = _run_one(fused, first.nodes_after, sweep, context, verifier)
    # Bit for bit the same values as its input, yet it misses the original as much as its input did.
    assert record.status == "applied", f"an exact no-op was rolled back: {record.detail}"


def _linear(factor: float, name: str) -> ir.Model:
    """``y = 2 * (x @ (W * factor))``, the MatMul named ``name``, its output ``h`` (shallow: nothing amplifies)."""
    weight = np.random.default_rng(5).standard_normal((WIDTH, WIDTH)).astype(np.float32)
    x = ir.Value(name="x", type=ir.TensorType(_FLOAT), shape=ir.Shape(["batch", WIDTH]))
    w = ir.Value(name="w", const_value=ir.tensor((weight.astype(np.float64) * factor).astype(np.float32)))
    two = ir.Value(name="two", const_value=ir.tensor(np.array(2, np.float32)))
    product = ir.Node("", "MatMul", [x, w], name=name)
    double = ir.Node("", "Mul", [product.outputs[0], two], name="double")
    product.outputs[0].name, double.outputs[0].name = "h", "y"
    y = double.outputs[0]
    y.type, y.shape = ir.TensorType(_FLOAT), ir.Shape(["batch", WIDTH])
    graph = ir.Graph([x], [y], nodes=[product, double], initializers=[w, two], opset_imports={"": 18})
    return ir.Model(graph, ir_version=10)


def test_exact_passes_each_within_the_tolerance_do_not_add_up_past_it():
    step = 0.6 * DEFAULT_TOLERANCES["float32"].rtol
    original = _linear(1.0, "matmul")
    inputs = {"x": np.random.default_rng(6).standard_normal((4, WIDTH)).astype(np.float32)}
    verifier = Verifier(original, [inputs])
    context = PassContext(Options())
    model, nodes, statuses = original, len(list(original.graph)), []
    for round_ in range(1, 5):  # each pass re-creates the MatMul (a new node) with its weight nudged by 1 + step
        build = (lambda r: lambda: _linear((1 + step) ** r, f"matmul_{r}"))(statuses.count("applied") + 1)
        spec = PassSpec(f"nudge-{round_}", lambda c, build=build: _Rewrite(build), "test")
        model, record = _run_one(model, nodes, spec, context, verifier)
        nodes = record.nodes_after
        statuses.append(record.status)
    # Before f72d61e every exact pass was held to the original: the second nudge (1.2x rtol) was rolled back.
    end_to_end = Verifier(original, [inputs]).check(model)
    assert end_to_end.ok, f"{statuses}, each within {step:.1e} of its input; the result: {end_to_end.first_failure}"
