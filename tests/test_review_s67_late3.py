"""Hostile review of the last session's unreviewed changes (session 67, late3): the draft over a long past
verification adds for decoders with a key/value cache (c1be66b, ee7b4fb), pack-qkv under ``--quantize int4``
(9fd50df), compare's top-1 through Identity/Dropout (53d7711) and the new-user refusals (ff1da88).

Findings (each one's test failed on e5fa87a):
- ``optimize`` verifies a rewrite wrong only at a draft over a long past of several rows, or with a padded row: the
  draft set was the first set's one unpadded row (a batch of left-padded prompts checking its drafts never ran), and
  on GPT-2 in Optimum's layout no padded set of several rows has a long past to cut one from.
- ``quantize-int4`` named in ``--passes`` left pack-qkv packing (its Q, K and V float): it stepped aside only for
  ``--quantize int4``.
- ``compare`` took a Softmax over another axis than the last for class scores, and its top-1 (the argmax over the
  last axis) for a figure.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from tests._tiny_lm import build, verifier_optimize_builds
from tests.test_review_s66_dec import _wrong_at_a_draft_over_a_long_past


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny LM and the verifier ``optimize`` builds for it."""
    source = build(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    return source, verifier_optimize_builds(source)


@pytest.mark.parametrize("extra", ["has_pads", "several_rows"])
def test_a_rewrite_wrong_only_at_a_batched_draft_over_a_long_past_is_not_verified(tiny, tmp_path, extra):
    # A speculative decoder checking drafts for a batch of left-padded prompts: the draft set was the first set's
    # one unpadded row, and every set of several rows or with pads held one new token or about as many as the past.
    source, verifier = tiny
    assert verifier.check(ir.load(str(source))).ok
    wrong = ir.load(_wrong_at_a_draft_over_a_long_past(tmp_path / "wrong.onnx", source, extra))
    assert not verifier.check(wrong).ok, verifier.labels


def test_pack_qkv_steps_aside_for_quantize_int4_named_in_passes():
    # quantize-int4 named in --passes (or a recipe's passes) runs as --quantize int4 does, but pack-qkv read the
    # option alone: it packed, and the packed Q, K and V stayed float (the BERT fixture: 6 layers int4, 2 float).
    from collections import Counter

    import optimizer
    from tests.helpers import FIXTURES

    result, report = optimizer.optimize_with_report(
        ir.load(FIXTURES / "bert_legacy.onnx"), ["+quantize-int4"], verify=False
    )
    ops = Counter(node.op_type for node in result.graph)
    assert ops["Attention"] == 0 and ops["MultiHeadAttention"] == 2, ops
    record = next(p for p in report.passes if p.name == "pack-qkv")
    assert any("left unpacked for quantize-int4 (--quantize int4)" in line for line in record.refusals), record.refusals


@pytest.mark.parametrize("opset", [11, 17])
def test_only_a_softmax_over_the_last_axis_holds_class_scores_for_top1(opset):
    """Top-1 is the argmax over the last axis: a Softmax over the classes along axis 1 of ``[n, 3, 5]`` (a segmenter's
    ``[batch, classes, H, W]``), read through an Identity, is no row of class scores there (its figure was the
    agreement of the argmax over the width); one over the last axis is. Before opset 13 a Softmax's default axis is 1
    and it normalizes every axis from there on (its ``[n, 15]`` rows), which is no row of the last axis either."""
    from optimizer.class_scores import class_score_outputs as _score_outputs

    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], axis=1),
        helper.make_node("Identity", ["s"], ["over_classes"]),
        helper.make_node("Softmax", ["x"], ["default_axis"]),
        helper.make_node("Softmax", ["x"], ["last"], axis=2),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3, 5])],
        [
            helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            for name in ("over_classes", "default_axis", "last")
        ],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    assert _score_outputs(model) == ({"last", "default_axis"} if opset >= 13 else {"last"})


def test_an_optimum_decoder_gets_a_padded_draft_over_a_long_past(tmp_path):
    # GPT-2 in Optimum's layout: the padded second binding has a past of 31 (its total of 64 halved), so no set of
    # several padded rows has a long past to cut a draft from: the unpadded draft's rows are repeated instead, row 1's
    # past padded at its start.
    from tests.helpers import FIXTURES

    source = FIXTURES / "gpt2_kv_optimum.onnx"
    verifier = verifier_optimize_builds(source)
    wrong = ir.load(_wrong_at_a_draft_over_a_long_past(tmp_path / "wrong.onnx", source, "has_pads"))
    assert not verifier.check(wrong).ok, verifier.labels
