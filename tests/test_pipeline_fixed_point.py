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
from optimizer.inputs import make_inputs
from tests.helpers import FIXTURES, assert_same_outputs, default_pipeline


def _histogram(model: ir.Model) -> Counter:
    return Counter((node.domain or "", node.op_type) for node in model.graph.all_nodes())


# llama_legacy: the causal mask was expanded by fuse-attention (ONNX's inference gives a Range's length a
# fresh symbol) and the rotary heads split read a Constant node per layer. llama_dynamo, gptneo_dynamo:
# Ranges reading equal scalars held in distinct initializers, merged by CSE only once deduplicated.
# gpt2_dynamo, gpt2_kv_dynamo: fuse-attention split its output back to [B, N, S, d] ahead of the head
# merge GPT-2's Conv1D flattens to [B*S, N*dv] (Transpose + Reshape [-1, N*dv]); a second run's
# simplify-ops cancelled the two Transposes.
@pytest.mark.parametrize("name", ["llama_legacy", "llama_dynamo", "gptneo_dynamo", "gpt2_dynamo", "gpt2_kv_dynamo"])
def test_a_second_default_run_changes_nothing(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    once, _ = default_pipeline(name)  # verified, shared with tests/test_respelled_fixtures.py
    for dims in ({"batch": 1, "sequence": 7}, {"batch": 3, "sequence": 12}):
        assert_same_outputs(model, once, make_inputs(model, dims), rtol=1e-4, atol=1e-5)
    twice = optimize(once)
    assert _histogram(twice) == _histogram(once)
