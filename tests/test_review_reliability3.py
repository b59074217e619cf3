"""Review of ec70714 (undefined_input checks node order), fbc1399 (remove_dead_nodes deletes body
initializers) and 8991b36 (GatherND index components bounded per table axis): strict xfails for what
the review confirmed. Reproduction scripts lived in /tmp/rev_rel/. The two findings about generated index inputs
are fixed since (tests/test_inputs_index_arithmetic.py covers their neighbours)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxruntime as ort
import pytest

from optimizer.inputs import make_inputs
from optimizer.pipeline import run_pipeline, undefined_input
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_FAILED
from tests.helpers import parse_model

BRANCH_COPIES_OUTER = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (bool c, float[2] x) => (float[2] y) {
      r = Relu(x)
      y = If(c) <
        then_branch = t () => (float[2] a) { a = Identity(r) },
        else_branch = e () => (float[2] b) { b = Neg(x) }
      >
    }"""


def test_a_branch_returning_an_outer_value_fails_without_verification():
    """Found in review (fixed since): undefined_input let a subgraph output be a value of the graphs around
    it; onnx.checker ('Graph output ... is not an output of any node in graph') and ONNX Runtime ('Subgraph
    output ... is not produced by any node') reject it, so under --no-verify such a result was written."""
    # onnx-ir 1.1's own IdentityEliminationPass (graphopt's remove-identity guards against exactly this) makes the
    # then-branch return the outer Relu's value, renamed 'a': a file onnx.checker rejects.
    result = parse_model(BRANCH_COPIES_OUTER)
    assert common_passes.IdentityEliminationPass()(result).modified
    with pytest.raises(onnx.checker.ValidationError, match="is not an output of any node"):
        onnx.checker.check_model(ir.to_proto(result))
    assert undefined_input(result) is not None
    model = parse_model(BRANCH_COPIES_OUTER)
    spec = PassSpec("onnx-ir-identity", lambda options: common_passes.IdentityEliminationPass(), "test", frozenset())
    _, report = run_pipeline(model, [spec], verifier=None)
    assert report.passes[0].status == STATUS_FAILED


POSITIONS_BEHIND_A_BATCH_INDEX = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (int64[1,S] position_ids) => (float[1,S,4] y) <float[1,64,4] table = {ONES}, int64[1] last = {-1},
                                                      int64[1,1,1] zero = {0}> {
      column = Unsqueeze(position_ids, last)
      shape = Shape(column)
      batch = Expand(zero, shape)
      index = Concat <axis = -1> (batch, column)
      y = GatherND(table, index)
    }""".replace("ONES", ", ".join(["1.0"] * 256))


def test_positions_behind_a_batch_index_of_unknown_width_still_vary():
    """Review finding (fixed since): 8991b36 let a GatherND tuple component behind an index of unrecorded width (an
    Expand of a constant) sit at any table axis, so position_ids got the smallest, the batch axis of 1: every
    generated position was 0 and verification never exercised positions (no note said so); the code before drew
    0..127 and failed at 64. The Expand's width is now read from its target (Shape of the Unsqueeze(-1): 1)."""
    proto = onnx.parser.parse_model(POSITIONS_BEHIND_A_BATCH_INDEX)
    onnx.checker.check_model(proto)
    inputs = make_inputs(ir.from_proto(proto))
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    assert inputs["position_ids"].max() > 0


FLATTENED_ADVANCED_INDEX = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (int64[2,S] position_ids) => (float[2,S,4] y) <float[128,4] table = {ONES}, int64 rows = {64},
                                                      int64[2,1] batch = {0, 1}> {
      start = Mul(batch, rows)
      flat = Add(start, position_ids)
      y = Gather(table, flat)
    }""".replace("ONES", ", ".join(["1.0"] * 512))


def test_a_flattened_advanced_index_runs_on_generated_inputs():
    """Review finding (fixed since): generated index inputs were followed through shape ops only, never through
    Add/Mul by constants: torch's legacy exporter spells table[batch, position_ids] on a [2, 64, 4] table as this
    flat Gather, the positions were drawn 0..127 and the input model failed on graphopt's own inputs (before
    8991b36 too). The row offsets 0 and 64 now leave positions below 64."""
    proto = onnx.parser.parse_model(FLATTENED_ADVANCED_INDEX)
    onnx.checker.check_model(proto)
    inputs = make_inputs(ir.from_proto(proto))
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    assert np.all(inputs["position_ids"] < 64)
