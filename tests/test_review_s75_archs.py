"""Review s75 (architectures from transformers configs, both exporters): what the default pipeline fuses in
architectures the fixtures do not spell (DeBERTa-v2, MPNet, ELECTRA, MobileBERT, RoBERTa, ConvBERT, SqueezeBERT,
BigBird, Data2Vec, CANINE, Swin, BEiT, DINOv2, Qwen3, GPT-NeoX, GPT-J, Gemma-2, OLMo-2, StableLM, Mamba), checked
on inputs graphopt never saw (docs/benchmarks.md, *Architectures from transformers configs, review s75*).

The same model exported without dynamic axes (``torch.onnx.export`` without ``dynamic_axes``: ``attention_mask
[2, 9]``), or with ``--static-shapes``, keeps its padding mask as ``attention_bias`` on the packed ``Attention``
(ONNX Runtime refuses the probe rows of other shapes), and ``pack-qkv`` said "it is not what a padding (or causal
+ padding) mask implies on the probed rows", which is false: no probe ran. It now says that no probe ran and why.
Its rotaries' cos/sin are constant ``[1, 1, 9, d]`` tables there (the legacy exporter folds them), and
``fuse-rotary-embedding`` said "cos/sin of a padded batch have an unexpected shape"; it now names the constant
tables and their length.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.passes.fusion._attention_graphs import BATCH, SEQ, attention_model, static_targets


def test_a_static_mask_that_no_probe_can_run_on_says_so_not_that_it_is_no_padding_mask():
    model = static_targets(attention_model(mask="input"))
    (refusal,) = PackedAttentionFusion()(AttentionFusion()(model.clone()).model).refusals
    assert "it is not what a padding" not in refusal
    assert refusal.startswith("1 of 1 packed with the mask kept as attention_bias: ONNX Runtime refuses the bias")
    assert f"its dims are static, [{BATCH}, {SEQ}]" in refusal and "was not seen" in refusal


def _constant_table_rotary(sequence: int = 5, heads: int = 2, size: int = 8) -> ir.Model:
    """rotate_half of static ``[2, heads, sequence, size]`` heads with cos/sin folded into ``[1, 1, sequence, size]``
    constants, as the legacy exporter writes a model exported without dynamic axes."""
    angles = np.outer(np.arange(sequence), 1.0 / (10000 ** (np.arange(0, size, 2) / size)))
    table = np.concatenate([angles, angles], -1)[None, None].astype(np.float32)
    initializers = [
        numpy_helper.from_array(np.cos(table), "cos"),
        numpy_helper.from_array(np.sin(table), "sin"),
        *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("zero", 0), ("half", size // 2))),
        *(numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("end", size), ("axis", 3))),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "zero", "half", "axis"], ["x1"]),
        helper.make_node("Slice", ["x", "half", "end", "axis"], ["x2"]),
        helper.make_node("Neg", ["x2"], ["negated"]),
        helper.make_node("Concat", ["negated", "x1"], ["rotated"], axis=-1),
        helper.make_node("Mul", ["x", "cos"], ["x_cos"]),
        helper.make_node("Mul", ["rotated", "sin"], ["rotated_sin"]),
        helper.make_node("Add", ["x_cos", "rotated_sin"], ["y"]),
    ]
    shape = [2, heads, sequence, size]
    graph = helper.make_graph(
        nodes,
        "constant_table_rotary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializers,
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_constant_rotary_tables_of_a_static_export_are_named_in_the_refusal():
    result = RotaryEmbeddingFusion()(_constant_table_rotary())
    assert not result.modified
    (refusal,) = result.refusals
    assert "unexpected shape" not in refusal
    assert "cos/sin are constant tables of 5 positions that read no input" in refusal
