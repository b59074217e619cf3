"""Metamorphic: every rewrite of the default pipeline fires alike on a fixture and on the same fixture respelled.

``tests.real_models.respelled`` writes a graph as another exporter might (other node and value names, the
operands of Add/Mul swapped, a division by a scalar constant as a product, another topological order). A
fusion that keyed on a name, an operand position or the node order would fire on one spelling only; the
result's op counts must be the same (a division counted as the product it was respelled into), and nothing
may be rolled back on either.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.inputs import make_inputs
from tests.helpers import FIXTURES, default_pipeline, run
from tests.real_models import respelled

NAMES = [
    "bert_legacy",
    "gpt2_dynamo",
    "llama_dynamo",
    "llama_kv_legacy",
    "gpt2_kv_dynamo",
    "gptneo_dynamo",
    "vit_dynamo",
    "resnet_legacy",
]


def _ops(model: ir.Model) -> Counter:
    ops = Counter(node.op_type for node in model.graph)
    ops["Mul"] += ops.pop("Div", 0)
    return ops


@pytest.mark.parametrize("name", NAMES)
def test_the_default_pipeline_fires_alike_on_a_respelled_fixture(name):
    proto = onnx.load(FIXTURES / f"{name}.onnx")
    results = []
    # The fixture as exported through the shared run (tests.helpers.default_pipeline), then respelled.
    for result, report in (default_pipeline(name), optimize_with_report(ir.from_proto(respelled(proto)))):
        assert [r.name for r in report.passes if r.status not in ("applied", "unchanged")] == [], report.passes
        results.append(result)
    assert _ops(results[1]) == _ops(results[0])
    # And the two results compute the same (on the original's generated inputs).
    feeds = make_inputs(ir.from_proto(proto), seed=0)
    first, second = run(results[0], feeds), run(results[1], feeds)
    for key in first:
        np.testing.assert_allclose(second[key], first[key], rtol=1e-4, atol=1e-4, err_msg=key)
