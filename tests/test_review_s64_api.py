"""Review s64 (passes outside graphopt's pipeline, the Python API): arguments a pass or the API cannot honour are
refused where they are given, with the words the CLI uses, not taken and then failed on (or silently obeyed as
"nothing to do") deep inside a run.

In a plain ``onnx_ir.passes.PassManager`` nothing checks a pass's arguments before it runs (the pipeline checks its
``Options`` first) and nothing keeps a pass's refusals (the manager returns a plain ``PassResult``):

- a fusion built for a target graphopt does not know (``AttentionFusion(target="gpu")``, ``"CUDA"``) declined every
  match, "target gpu has no kernel for ...", which the manager dropped: the model came back unfused with
  ``modified=False`` and no word; ``Int4QuantizationPass(target="gpu")`` raised ``KeyError: 'gpu'``;
- a length-probing fusion given a ``max_sequence`` that is no positive count (0, -5, 2.5, "8") was built, and then
  raised from inside numpy ("high <= 0", "negative dimensions are not allowed") or a comparison once it ran;
- ``optimizer.Options(tagret="cpu")``, the reusable value README shows, raised the dataclass's ``TypeError`` where
  ``optimize(tagret="cpu")`` is an ``OptionError`` naming the nearest option; ``default_pass_names("gpu")`` returned
  ``[]``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from optimizer.errors import OptionError
from optimizer.registry import all_passes
from tests.helpers import FIXTURES


def _attention(target):
    from passes.fusion.attention import AttentionFusion

    return AttentionFusion(target=target)


def _layer_norm(target):
    from passes.fusion.layer_norm import LayerNormFusion

    return LayerNormFusion(target)


def _conv_padding(target):
    from passes.conv_padding import SplitConvPaddingPass

    return SplitConvPaddingPass(target)


def _int4(target):
    from passes.quantization.int4 import Int4QuantizationPass

    return Int4QuantizationPass(target=target)


def _dynamic(target):
    from passes.quantization.dynamic import DynamicQuantizationPass

    return DynamicQuantizationPass(timing_target=target)


def _lowrank(target):
    from passes.factorization.lowrank import LowRankFactorizationPass

    return LowRankFactorizationPass(0.3, target=target)


_BUILT_FOR = {
    "fuse-attention": _attention,
    "fuse-layer-norm": _layer_norm,
    "split-conv-padding": _conv_padding,
    "quantize-int4": _int4,
    "quantize-dynamic": _dynamic,
    "factorize-lowrank": _lowrank,
}


@pytest.mark.parametrize("target", ["gpu", "CUDA", None])
@pytest.mark.parametrize("build", list(_BUILT_FOR.values()), ids=list(_BUILT_FOR))
def test_a_pass_built_for_a_target_graphopt_does_not_know_is_refused_when_built(build, target):
    with pytest.raises(ValueError, match=r"target .*: expected one of cpu, cuda"):
        build(target)


@pytest.mark.parametrize("build", list(_BUILT_FOR.values()), ids=list(_BUILT_FOR))
def test_the_targets_graphopt_knows_still_build_every_pass(build):
    for target in ("cpu", "cuda"):
        build(target)


def test_a_fusion_built_for_an_unknown_target_in_a_pass_manager_no_longer_leaves_the_model_unfused_unsaid():
    # What a user saw before: the manager's result says only modified=False (the fusion's reason is dropped).
    from passes.fusion.gelu import GeluFusion

    model = ir.load(FIXTURES / "bert_dynamo.onnx")
    assert ir.passes.PassManager([GeluFusion("cpu")])(model).modified  # the Gelu there fuses on a known target
    with pytest.raises(ValueError, match="'GPU': expected one of cpu, cuda"):
        ir.passes.PassManager([GeluFusion("GPU")])


def _length_fusions():
    from passes.fusion.embed_layer_norm import EmbedLayerNormFusion
    from passes.fusion.group_query_attention import GroupQueryAttentionFusion
    from passes.fusion.packed_attention import PackedAttentionFusion
    from passes.fusion.rotary_embedding import RotaryEmbeddingFusion

    return {
        "fuse-rotary-embedding": lambda n: RotaryEmbeddingFusion("cpu", max_sequence=n),
        "fuse-rotary-embedding (cache_length)": lambda n: RotaryEmbeddingFusion("cpu", n),
        "fuse-group-query-attention": lambda n: GroupQueryAttentionFusion("cpu", n),
        "pack-qkv": lambda n: PackedAttentionFusion("cpu", n),
        "fuse-embed-layer-norm": lambda n: EmbedLayerNormFusion("cpu", n),
    }


@pytest.mark.parametrize("length", [0, -5, 2.5, "8", True])
@pytest.mark.parametrize("fusion", list(_length_fusions()))
def test_a_length_probing_fusion_given_no_positive_count_of_tokens_is_refused_when_built(fusion, length):
    with pytest.raises(ValueError, match=r"(max_sequence|cache_length) .*: expected a positive number of tokens"):
        _length_fusions()[fusion](length)


@pytest.mark.parametrize("fusion", list(_length_fusions()))
def test_a_length_probing_fusion_takes_any_positive_integer_count(fusion):
    assert _length_fusions()[fusion](np.int64(64)) is not None
    assert _length_fusions()[fusion](1) is not None


def test_a_rotary_fusion_given_max_sequence_0_failed_inside_numpy_once_it_ran():
    # The case behind the check above, end to end: the Llama KV fixture after the cleanup passes, as a PassManager
    # runs them; max_sequence=0 was taken, and the run raised numpy's "high <= 0" while building the tables.
    from optimizer.protocol import PassContext

    registry = {spec.name: spec for spec in all_passes()}
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    cleanup = ["remove-identity", "fold-constants", "simplify-ops", "simplify-shapes"]
    ir.passes.PassManager([registry[name].factory(PassContext()) for name in cleanup])(model)
    from passes.fusion.rotary_embedding import RotaryEmbeddingFusion

    assert RotaryEmbeddingFusion("cpu", max_sequence=4096)(model.clone()).modified  # it fuses at a real length
    with pytest.raises(ValueError, match="max_sequence 0: expected a positive number of tokens"):
        RotaryEmbeddingFusion("cpu", max_sequence=0)


def test_options_built_by_hand_name_the_nearest_option_as_optimize_does():
    with pytest.raises(OptionError, match=r"unknown option 'tagret' \(did you mean 'target'\?\)"):
        optimizer.Options(tagret="cpu")
    with pytest.raises(OptionError, match=r"unknown option 'tagret' \(did you mean 'target'\?\)"):
        optimizer.optimize(ir.load(FIXTURES / "mvp_legacy.onnx"), tagret="cpu")
    with pytest.raises(OptionError, match="by name"):
        optimizer.Options("cuda")
    options = optimizer.Options(target="cuda", fp16=True)  # README's reusable value still builds
    assert options.target == "cuda" and options.fp16


def test_default_pass_names_of_an_unknown_target_is_an_option_error_not_an_empty_pipeline():
    with pytest.raises(OptionError, match="--target gpu: expected one of cpu, cuda"):
        optimizer.default_pass_names("gpu")
    assert optimizer.default_pass_names("cpu") and optimizer.default_pass_names("cuda")


def test_a_pass_in_a_pass_manager_logs_why_it_left_something_alone(caplog):
    # The manager's result holds no refusals: "3 of 3 embedding tables stay float" reached no one.
    from passes.quantization.embedding import EmbeddingQuantizationPass

    model = ir.load(FIXTURES / "bert_legacy.onnx")
    with caplog.at_level("DEBUG", logger="passes"):
        result = ir.passes.PassManager([EmbeddingQuantizationPass()])(model)
    assert not result.modified and not hasattr(result, "refusals")
    logged = [record.getMessage() for record in caplog.records if record.name == "passes.quantization.embedding"]
    assert logged == [
        "EmbeddingQuantizationPass: 3 of 3 embedding tables stay float: under 65,536 values: the saving "
        "is not worth three extra nodes"
    ]


@pytest.mark.parametrize("size", [-1, 0, 2.5, "2"])
def test_bind_dims_built_by_hand_refuses_a_size_that_is_no_positive_integer(size):
    # {"batch": -1} wrote a -1 size into the inputs (a size to ONNX's inference), 0 an empty batch, 2.5 a batch of 2,
    # each with modified=True and no word; --dim refuses all four.
    from passes.dim_binding import BindDimsPass

    with pytest.raises(ValueError, match=r"--dim batch=.*: expected a positive integer size"):
        BindDimsPass({"batch": size})


def test_bind_dims_still_binds_a_positive_size_numpy_integers_included():
    from passes.dim_binding import BindDimsPass

    result = BindDimsPass({"batch": np.int64(2)})(ir.load(FIXTURES / "bert_legacy.onnx"))
    assert result.modified and [v.shape[0] for v in result.model.graph.inputs] == [2, 2, 2]
