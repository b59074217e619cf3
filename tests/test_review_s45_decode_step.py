"""Review s45 (draft)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.protocol import NotedResult
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer
from tests.helpers import FIXTURES
from tests.test_verification_holes import _with_mutant


class _IgnoreMaskAtOneTokenPass(ir.passes.InPlacePass):
    """A "fusion" that drops the attention mask where one new token is fed (as an SDPA path taken only for a
    query of one row does): right at every set of several tokens, wrong at each step of a padded batch."""

    def call(self, model):
        graph = model.graph
        mask = next(value for value in graph.inputs if value.name == "attention_mask")
        ids = next(value for value in graph.inputs if value.name == "input_ids")
        users = list(mask.uses())
        index = add_initializer(graph, "sequence_axis", np.array([1], np.int64))
        one = add_initializer(graph, "one_token", np.array([1], np.int64))
        shape = ir.node("Shape", [ids])
        length = ir.node("Gather", [shape.outputs[0], index], {"axis": 0})
        single = ir.node("Equal", [length.outputs[0], one])
        mask_shape = ir.node("Shape", [mask])
        ones = ir.node("ConstantOfShape", [mask_shape.outputs[0]], {"value": ir.tensor(np.array([1], np.int64))})
        chosen = ir.node("Where", [single.outputs[0], ones.outputs[0], mask])
        added = [shape, length, single, mask_shape, ones, chosen]
        graph.insert_before(graph[0], added)
        for user, i in users:
            user.replace_input_with(i, chosen.outputs[0])
        return NotedResult(model, True)
