"""Review s63: coincidences of generated verification inputs that let a wrong rewrite verify.

Generated ``position_ids`` counted ``0..S-1`` (after the past) on every row, even on a row whose start the padded
copy or the second binding pads, where Hugging Face feeds ``cumsum(mask) - 1``: a rewrite that dropped the
``position_ids`` input for an ``arange`` of the length was verified.

A one-element flag an ``If`` reads as its condition (Optimum's merged decoder's ``use_cache_branch``) was drawn 0 or 1
per set: with every dim fixed there is one set, so one branch never ran and a rewrite wrong in it was verified (with
two sets, when both draws agreed, alike).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import optimizer
from optimizer.padding import padded_copy
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_ROLLED_BACK


def _embedding_model() -> ir.Model:
    """``(wte[input_ids] + wpe[position_ids]) * attention_mask``: a decoder's embeddings, masked."""
    rng = np.random.default_rng(0)
    tables = [
        onnx.numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "wte"),
        onnx.numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32), "wpe"),
        onnx.numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    nodes = [
        helper.make_node("Gather", ["wte", "input_ids"], ["tokens"]),
        helper.make_node("Gather", ["wpe", "position_ids"], ["places"]),
        helper.make_node("Add", ["tokens", "places"], ["embedded"]),
        helper.make_node("Cast", ["attention_mask"], ["kept"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["kept", "last"], ["kept3"]),
        helper.make_node("Mul", ["embedded", "kept3"], ["y"]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
        for name in ("input_ids", "attention_mask", "position_ids")
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])
    graph = helper.make_graph(nodes, "embeddings", inputs, [output], tables)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


class _PositionsAsArange(ir.passes.InPlacePass):
    """A wrong "exact" rewrite: the position lookup reads ``arange(S)`` instead of ``position_ids``."""

    def call(self, model):
        graph = model.graph
        positions = next(value for value in graph.inputs if value.name == "position_ids")
        ids = next(value for value in graph.inputs if value.name == "input_ids")
        lookup = next(node for node in graph if node.op_type == "Gather" and node.inputs[1] is positions)
        length = ir.node("Shape", [ids], attributes={"start": 1, "end": 2})
        zero = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(0, np.int64))})
        one = ir.node("Constant", [], attributes={"value": ir.tensor(np.array(1, np.int64))})
        scalar = ir.node("Squeeze", [length.outputs[0]])
        counted = ir.node("Range", [zero.outputs[0], scalar.outputs[0], one.outputs[0]])
        for node in (length, zero, one, scalar, counted):
            graph.insert_before(lookup, node)
        lookup.replace_input_with(1, counted.outputs[0])
        return ir.passes.PassResult(model, True)


def _with_mutant(monkeypatch, factory):
    import optimizer.api as api

    resolve = api.resolve

    def resolve_with_mutant(names, options):
        options = dataclasses.replace(options, min_cosine=None, max_error=None)
        return [*resolve(names, options), PassSpec("mutant", lambda context: factory(), "mutant", approximate=False)]

    monkeypatch.setattr(api, "resolve", resolve_with_mutant)


def test_a_rewrite_dropping_position_ids_for_an_arange_is_rolled_back(monkeypatch):
    _with_mutant(monkeypatch, _PositionsAsArange)
    _, report = optimizer.optimize_with_report(_embedding_model(), passes=["remove-identity"])
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "position_ids counted from the first real token on row 1" in record.detail


def test_the_embeddings_themselves_still_verify():
    _, report = optimizer.optimize_with_report(_embedding_model())
    assert report.verified
    assert all(record.status != STATUS_ROLLED_BACK for record in report.passes)


def test_a_left_padded_row_counts_positions_as_hugging_face_does():
    mask = np.ones((2, 12), np.int64)
    positions = np.tile(np.arange(4, 12), (2, 1))  # a past of 4, 8 new tokens
    padded, how = padded_copy({"attention_mask": mask, "position_ids": positions}, ["attention_mask"])
    # Row 1's first 4 of 12 positions padded (a third: a quarter would leave both rows 9 real tokens): its new tokens
    # sit at 0..7, row 2's (right-padded) stay.
    np.testing.assert_array_equal(padded["position_ids"][0], np.arange(0, 8))
    np.testing.assert_array_equal(padded["position_ids"][1], positions[1])
    assert padded["position_ids"].dtype == positions.dtype
    assert "position_ids counted from the first real token on row 1" in how
    # Padded positions get 1 (transformers' generate), never -1.
    one_row = {"attention_mask": np.ones((1, 16)), "position_ids": np.arange(16)[None]}
    single, _ = padded_copy(one_row, ["attention_mask"])
    np.testing.assert_array_equal(single["position_ids"][0], [1, 1, *range(12), 1, 1])


def test_positions_of_another_layout_are_left_as_generated():
    mask = np.ones((2, 8), np.int64)
    offset = np.tile(np.arange(2, 10), (2, 1))  # offset below a table: not past + s
    broadcast = np.arange(8)[None]  # [1, S] fed for a batch: one row for all
    for positions in (offset, broadcast):
        padded, how = padded_copy({"attention_mask": mask, "position_ids": positions}, ["attention_mask"])
        assert padded["position_ids"] is positions
        assert "position_ids" not in how


def _flagged_model(dtype: int) -> ir.Model:
    """``If(use_cache_branch, x * 2, x * 3)``: Optimum's merged decoder's flag, reduced."""
    branches = {
        f"{branch}_branch": helper.make_graph(
            [helper.make_node("Mul", ["x", f"{branch}_factor"], [f"{branch}_y"])],
            branch,
            [],
            [helper.make_tensor_value_info(f"{branch}_y", TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(np.array(factor, np.float32), f"{branch}_factor")],
        )
        for branch, factor in (("then", 2.0), ("else", 3.0))
    }
    condition = "use_cache_branch" if dtype == TensorProto.BOOL else "flag"
    nodes = []
    if dtype != TensorProto.BOOL:
        nodes.append(helper.make_node("Cast", ["use_cache_branch"], ["flag"], to=TensorProto.BOOL))
    nodes.append(helper.make_node("If", [condition], ["y"], **branches))
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"]),
        helper.make_tensor_value_info("use_cache_branch", dtype, [1]),
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence"])
    graph = helper.make_graph(nodes, "flagged", inputs, [output])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


class _WrongInOneBranch(ir.passes.InPlacePass):
    """A wrong "exact" rewrite inside one branch of the ``If``: its factor becomes 5."""

    def __init__(self, branch: str) -> None:
        super().__init__()
        self.branch = branch

    def call(self, model):
        node = next(node for node in model.graph if node.op_type == "If")
        factor = next(iter(node.attributes[self.branch].value.initializers.values()))
        factor.const_value = ir.tensor(np.array(5.0, np.float32))
        return ir.passes.PassResult(model, True)


@pytest.mark.parametrize("dtype", [TensorProto.BOOL, TensorProto.INT64])
@pytest.mark.parametrize("branch", ["then_branch", "else_branch"])
def test_a_rewrite_wrong_in_the_branch_a_flag_does_not_take_is_rolled_back(monkeypatch, dtype, branch):
    # Every dim fixed: one generated set, where the flag was drawn once and the other branch never ran.
    _with_mutant(monkeypatch, lambda: _WrongInOneBranch(branch))
    model = _flagged_model(dtype)
    _, report = optimizer.optimize_with_report(model, passes=["remove-identity"], dims={"batch": 1, "sequence": 16})
    assert report.passes[-1].status == STATUS_ROLLED_BACK, report.input_sets


def test_a_flagged_model_left_as_it_is_verifies_on_both_branches():
    _, report = optimizer.optimize_with_report(_flagged_model(TensorProto.BOOL), dims={"batch": 1, "sequence": 16})
    assert report.verified
    assert report.input_sets == [
        "generated (batch=1, sequence=16)",
        "generated, use_cache_branch drawn (batch=1, sequence=16)",
    ]
