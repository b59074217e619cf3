"""Every fusion pass on the exported transformer fixtures: counts and numerics.

With every transformer fusion on (the default pipeline plus the opt-in fusions that
ONNX Runtime also performs at load time or that measured slower on CPU,
docs/benchmarks.md), every attention block, layer norm,
GELU and rotary embedding of every fixture (both exporters) must be fused, and the
fused model must match the original on ONNX Runtime, including on a batch whose
first sequence is padded (so the attention mask is exercised).
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import optimizer
from optimizer.inputs import make_inputs, symbolic_dims
from tests.helpers import FIXTURES, assert_same_outputs

OPT_IN_FUSIONS = [
    "fuse-layer-norm",
    "fuse-gelu",
    "fuse-bias-gelu",
    "fuse-embed-layer-norm",
    "fuse-skip-layer-norm",
    "fuse-skip-rms-norm",
]
# family -> fused op counts on both exporters' graphs. Attention with packed QKV weights
# where Q, K and V project one input (GPT-2's Conv1D included); Llama's rotary
# embedding sits between projection and attention, so it gets MultiHeadAttention.
_EXPECTED = {
    "bert": {"Attention": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4, "BiasGelu": 2},
    "distilbert": {"Attention": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4, "BiasGelu": 2},
    "gpt2": {"Attention": 2, "SkipLayerNormalization": 5, "FastGelu": 2},
    "llama": {
        "MultiHeadAttention": 2,
        "RotaryEmbedding": 4,
        "SkipSimplifiedLayerNormalization": 4,
        "SimplifiedLayerNormalization": 1,
    },
    "vit": {"Attention": 2, "SkipLayerNormalization": 4, "LayerNormalization": 1, "BiasGelu": 2},
}
# Ops that must not survive: the pieces of attention, GELU and the norms.
_UNFUSED = {"Softmax", "Erf", "Tanh", "Pow", "ReduceMean", "Sqrt", "Gelu", "Sin", "Cos", "Neg"}


def _padded_inputs(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    graph = ir.from_proto(model)
    dims = {name: size for name, size in {"batch": 2, "sequence": 9}.items() if name in symbolic_dims(graph)}
    feeds = make_inputs(graph, dims)
    if "attention_mask" in feeds:
        feeds["attention_mask"][0, -3:] = 0
    return feeds


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("family", sorted(_EXPECTED))
def test_every_block_is_fused_and_outputs_match(family, exporter):
    original = onnx.load(FIXTURES / f"{family}_{exporter}.onnx")
    fused = optimizer.optimize(original, [f"+{name}" for name in OPT_IN_FUSIONS])
    ops = collections.Counter(node.op_type for node in fused.graph.node)
    assert {op: ops[op] for op in _EXPECTED[family]} == _EXPECTED[family]
    assert not _UNFUSED & set(ops), f"left unfused: {_UNFUSED & set(ops)}"
    if family == "gpt2":  # the causal + padding mask became the op's 2-D mask and its causal flag
        for node in (n for n in fused.graph.node if n.op_type == "Attention"):
            assert onnx.helper.get_node_attr_value(node, "unidirectional") == 1
    assert_same_outputs(ir.from_proto(original), ir.from_proto(fused), _padded_inputs(original), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_default_cpu_pipeline_fuses_attention_and_rotary(exporter):
    fused = optimizer.optimize(onnx.load(FIXTURES / f"llama_{exporter}.onnx"))
    ops = collections.Counter(node.op_type for node in fused.graph.node)
    assert ops["MultiHeadAttention"] == 2 and ops["RotaryEmbedding"] == 4
    assert ops["SimplifiedLayerNormalization"] == 5 and not ops["SkipSimplifiedLayerNormalization"]
