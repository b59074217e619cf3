"""The default pipeline reaches its fixed point in one run: optimizing its own output changes nothing.

A second run that still removes nodes means the first stopped early: a fusion wrote something an
earlier cleanup would have removed (a Constant node, an Expand only ORT's symbolic shapes prove
a no-op), or a fact came too late for the pass that needed it.
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir
import pytest

from optimizer.api import optimize
from tests.helpers import FIXTURES


def _histogram(model: ir.Model) -> Counter:
    return Counter((node.domain or "", node.op_type) for node in model.graph.all_nodes())


# llama_legacy: the causal mask was expanded by fuse-attention (ONNX's inference gives a Range's length a
# fresh symbol) and the rotary heads split read a Constant node per layer. llama_dynamo, gptneo_dynamo:
# Ranges reading equal scalars held in distinct initializers, merged by CSE only once deduplicated.
@pytest.mark.parametrize("name", ["llama_legacy", "llama_dynamo", "gptneo_dynamo"])
def test_a_second_default_run_changes_nothing(name):
    once = optimize(ir.load(FIXTURES / f"{name}.onnx"))
    twice = optimize(once)
    assert _histogram(twice) == _histogram(once)
