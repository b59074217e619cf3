"""Models whose outputs are computed from random draws (a VAE's sampling, a training-mode noise layer).

ONNX Runtime draws the same numbers from run to run of one graph, so the original looked deterministic, but other
numbers once a rewrite changed the graph (an ``Identity`` removed before ``RandomNormalLike``): every rewrite was
rolled back as wrong ("max abs error 1.83"). Outputs computed from a draw are now found by the graph's structure and
named in a warning, the others verified as before; a model whose every output is drawn is refused in one line.
Since review s74 (draws) the exact check feeds the main graph's draws and compares those outputs too
(``tests/test_review_s74_draws.py``); a model whose every output a draw in a branch reaches is still refused.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.api import optimize_with_report
from optimizer.errors import InvalidModelError
from optimizer.inputs import make_inputs
from optimizer.verify import Verifier


def _model(*, deterministic_output: bool, in_branch: bool = False) -> ir.Model:
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "W")
    draw = helper.make_node("RandomNormalLike", ["h2"], ["noise"], scale=1.0)
    if in_branch:  # the draw inside an If's branches
        branch = helper.make_graph(
            [helper.make_node("RandomNormalLike", ["h2"], ["drawn"], scale=1.0)],
            "branch",
            [],
            [helper.make_tensor_value_info("drawn", TensorProto.FLOAT, None)],
        )
        draw = helper.make_node("If", ["always"], ["noise"], then_branch=branch, else_branch=branch)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Identity", ["h"], ["h2"]),
        draw,
        helper.make_node("Add", ["h2", "noise"], ["y"]),
        helper.make_node("Relu", ["h2"], ["z"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])]
    if deterministic_output:
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8]))
    graph = helper.make_graph(
        nodes,
        "noisy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        outputs,
        [weight, numpy_helper.from_array(np.array(True), "always")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


@pytest.mark.parametrize("in_branch", [False, True])
def test_a_drawn_output_is_named_and_the_others_verified(in_branch):
    _, report = optimize_with_report(_model(deterministic_output=True, in_branch=in_branch), ["remove-identity"])
    (record,) = report.passes
    assert record.status == "applied", record.detail
    assert any("'y' of the input model is computed from random draws" in w for w in report.warnings), report.warnings
    assert not any("'z'" in w for w in report.warnings)


def test_a_model_whose_every_output_is_drawn_is_refused_in_one_line():
    # A draw in a branch is not fed (review s74 draws: one of the main graph is, and its output compared).
    with pytest.raises(InvalidModelError, match="every output of the input model .y. is computed from random draws"):
        optimize_with_report(_model(deterministic_output=False, in_branch=True), ["remove-identity"])


def test_a_wrong_rewrite_of_the_deterministic_output_is_still_caught():
    model = _model(deterministic_output=True)
    verifier = Verifier(model, [make_inputs(model, {"batch": 2})])
    wrong = model.clone()
    next(node for node in wrong.graph if node.op_type == "Relu").op_type = "Abs"
    result = verifier.check(wrong)
    assert not result.ok and "'z'" in result.first_failure, result.first_failure
    assert verifier.check(model.clone()).ok
