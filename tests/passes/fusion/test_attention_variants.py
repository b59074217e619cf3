"""Metamorphic tests of the attention fusions: other spellings of the same attention fuse the same way.

Each variant (``_attention_graphs.variant``) rewrites every attention block of a graph
into another spelling of the same computation, as other exporters or versions write it:
the key's transposes merged into one or split into several, the scale on Q, K, both, the
3-D projection or the scores (before or after the mask), Div instead of Mul, the mask as
a Where or the dynamo export's GatherND/And chain, ``FusedMatMul`` for Q @ K^T, static
Reshape targets. For every variant of the hand-built models and of exported fixtures
(after the default cleanup passes), ``fuse-attention`` must fuse every block, and
``pack-qkv`` must pack every block whose projections are packable, with the original's
outputs on a batch with a padded sequence.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.inputs import make_inputs, symbolic_dims
from passes.fusion.attention import AttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from tests.helpers import FIXTURES, op_types, run
from tests.passes.fusion._attention_graphs import attention_model, model_inputs, static_targets, variant

VARIANTS = {
    "key one perm": {"key": "one"},
    "key two perms": {"key": "two"},
    "key three perms": {"key": "three"},
    "key FusedMatMul transB": {"key": "fused"},
    "query two perms": {"query": "two"},
    "scale on q": {"scale": "q"},
    "scale on k": {"scale": "k"},
    "scale on q and k": {"scale": "both"},
    "scale on the q projection": {"scale": "q_hidden"},
    "scale on the scores": {"scale": "scores"},
    "scale after the mask": {"scale": "after_mask"},
    "div by the reciprocal": {"scale_op": "div"},
    "div on q": {"scale": "q", "scale_op": "div"},
    "mask added first": {"mask": "add_swapped"},
    "mask as where -inf": {"mask": "where_inf"},
    "mask as where finfo.min": {"mask": "where_min"},
    "mask as negated where": {"mask": "where_negated"},
    "mask from gathernd and": {"mask": "gathernd"},
    "output two perms": {"output": "two"},
    "all at once": {"key": "three", "query": "two", "scale": "after_mask", "mask": "where_inf", "output": "two"},
}
HAND_BUILT = {
    "padding": {"mask": "input"},
    "causal": {"mask": "causal"},
    "bias bnsh": {"mask": "bias", "key_form": "bnsh"},
    "conv1d": {"mask": "causal", "projection": "conv1d"},
}
# These tests are about spellings, not lengths (test_packed_attention's): masks are probed up to
# 256 tokens, not --max-sequence's 4096, which costs a 4096 x 4096 evaluation per variant.
_PROBED_LENGTH = 256
# Exported fixtures and whether their projections pack (Llama's rotary embedding sits in between).
FIXTURE_PACKS = {"bert_legacy": True, "bert_dynamo": True, "gpt2_legacy": True, "llama_dynamo": False}


def _check(original: ir.Model, spelled: ir.Model, feeds: dict, packs: bool) -> None:
    """Both stages fuse every block of ``spelled``, and every model on the way computes what ``original`` does."""
    blocks = op_types(original).count("Softmax")
    expected = run(original, feeds)
    spelled = spelled.clone()  # the passes rewrite in place; the cached models stay as they are

    def same(model: ir.Model) -> None:
        actual = run(model, feeds)
        for name in expected:
            np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)

    same(spelled)  # the variant itself computes the same thing
    stage1 = AttentionFusion()(spelled)
    assert not [line for line in stage1.refusals if "left unfused" in line], stage1.refusals
    assert op_types(stage1.model).count("MultiHeadAttention") == blocks
    same(stage1.model)
    stage2 = PackedAttentionFusion(max_sequence=_PROBED_LENGTH)(stage1.model)
    assert op_types(stage2.model).count("Attention") == (blocks if packs else 0), stage2.refusals
    same(stage2.model)


# The GatherND mask reads a 2-D attention_mask input, which the float-bias model does not have.
HAND_BUILT_CASES = [
    (base, name)
    for base in sorted(HAND_BUILT)
    for name in sorted(VARIANTS)
    if not (VARIANTS[name].get("mask") == "gathernd" and HAND_BUILT[base]["mask"] == "bias")
]


@pytest.mark.parametrize(("base", "name"), HAND_BUILT_CASES)
def test_hand_built_variants_fuse_alike(base, name):
    model = attention_model(**HAND_BUILT[base])
    _check(model, variant(model, **VARIANTS[name]), model_inputs(model), packs=True)


@pytest.mark.parametrize("base", sorted(HAND_BUILT))
def test_hand_built_static_reshape_targets_fuse_alike(base):
    model = attention_model(**HAND_BUILT[base])
    _check(model, static_targets(model), model_inputs(model), packs=True)


@functools.cache
def _before_attention(fixture: str, static: bool = False) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """The fixture after the default pipeline's passes before ``fuse-attention``, and padded inputs for it."""
    model = ir.load(FIXTURES / f"{fixture}.onnx")
    dims = {name: size for name, size in {"batch": 2, "sequence": 9}.items() if name in symbolic_dims(model)}
    feeds = make_inputs(model, dims)
    if "attention_mask" in feeds:
        feeds["attention_mask"][0, -3:] = 0
    names = optimizer.default_pass_names("cpu")
    names = names[: names.index("fuse-attention")]
    options = {"static_shapes": True, "dims": dims} if static else {}
    return optimizer.optimize(model, names, verify=False, **options), feeds


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("fixture", sorted(FIXTURE_PACKS))
def test_exported_variants_fuse_alike(fixture, name):
    model, feeds = _before_attention(fixture)
    _check(model, variant(model, **VARIANTS[name]), feeds, packs=FIXTURE_PACKS[fixture])


@pytest.mark.parametrize("fixture", sorted(FIXTURE_PACKS))
def test_exported_static_shapes_fuse_alike(fixture):
    # --static-shapes: Reshape targets become literal sizes ([2, 9, -1, 16], allowzero=1 on dynamo exports).
    model, feeds = _before_attention(fixture)
    static, _ = _before_attention(fixture, static=True)
    _check(model, static, feeds, packs=FIXTURE_PACKS[fixture])
