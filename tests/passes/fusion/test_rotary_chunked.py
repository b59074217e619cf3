"""fuse-rotary-embedding on the rotation written on each head's two halves (GPT-OSS's, transformers' ``GptOss``)::

    x1, x2 = chunk(x, 2, dim=-1)                                  # one Split, or two Slices
    y = cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)   # cos/sin [B or 1, 1, S, d/2]

which is RotaryEmbedding (non-interleaved, over the whole head) with cos/sin's columns as its caches. It was
neither fused nor named in any note (decoder review). The near misses must be refused with their reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.dim_binding import BindDimsPass
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import assert_same_outputs, op_types, run
from tests.real_models import respelled
from tests.respelling import optimized

_N = helper.make_node
HEADS, SIZE = 3, 8
HALF = SIZE // 2
END = np.iinfo(np.int64).max


def _chunks(spelling: str, x: str = "x") -> list[onnx.NodeProto]:
    """``x1, x2`` (``lo``, ``hi``): ``torch.chunk`` as one Split (the dynamo export's, after ``simplify-ops``) or
    two Slices (the legacy export's); ``swapped`` takes them the wrong way round (a near miss)."""
    if spelling == "split":
        return [_N("Split", [x], ["lo", "hi"], axis=-1, num_outputs=2)]
    lo, hi = (("half", "end"), ("zero", "half")) if spelling == "swapped" else (("zero", "half"), ("half", "end"))
    return [
        _N("Slice", [x, lo[0], lo[1], "last"], ["lo"]),
        _N("Slice", [x, hi[0], hi[1], "last"], ["hi"]),
    ]


def _rotation(commuted: bool = False, axis: int = -1) -> list[onnx.NodeProto]:
    """``y = Concat(lo * cos - hi * sin, hi * cos + lo * sin)``; ``commuted`` swaps every Mul's and the Add's
    operands (another exporter's order)."""

    def mul(a: str, b: str, out: str) -> onnx.NodeProto:
        return _N("Mul", [b, a] if commuted else [a, b], [out])

    return [
        mul("lo", "cos", "lo_cos"),
        mul("hi", "sin", "hi_sin"),
        _N("Sub", ["lo_cos", "hi_sin"], ["first"]),
        mul("hi", "cos", "hi_cos"),
        mul("lo", "sin", "lo_sin"),
        _N("Add", ["lo_sin", "hi_cos"] if commuted else ["hi_cos", "lo_sin"], ["second"]),
        _N("Concat", ["first", "second"], ["y"], axis=axis),
    ]


def _rotate_half() -> list[onnx.NodeProto]:
    """``y = x * cos + Concat(-hi, lo) * sin``: Hugging Face's rotate_half, over ``[B, 1, S, d]`` tables."""
    return [
        _N("Neg", ["hi"], ["neg_hi"]),
        _N("Concat", ["neg_hi", "lo"], ["rotated"], axis=-1),
        _N("Mul", ["x", "cos"], ["x_cos"]),
        _N("Mul", ["rotated", "sin"], ["rotated_sin"]),
        _N("Add", ["x_cos", "rotated_sin"], ["y"]),
    ]


def _model(
    spelling: str = "split",
    *,
    commuted: bool = False,
    axis: int = -1,
    positions: str = "position_ids",
    head_split: bool = True,
    form: str = "chunked",
    tables: str = "4d",
) -> onnx.ModelProto:
    """The chunked rotation of ``x`` (a head split of ``h [B, S, N*d]``, or a ``[B, N, S, d]`` input) with
    ``[B, 1, S, d/2]`` tables of ``positions``: ``position_ids``' values, or ``input_ids``' values (a near miss:
    token ids are no positions). ``form="rotate_half"`` rotates as Hugging Face's rotate_half (tables of two
    equal halves); ``tables="3d"`` multiplies the ``[B, S, ·]`` tables before their Unsqueeze (a near miss)."""
    inv = (1.0 / 10000 ** (np.arange(0, SIZE, 2) / SIZE)).astype(np.float32)
    consts = {
        "inv": inv,
        "heads": np.array([0, 0, HEADS, SIZE], np.int64),
        "ax1": np.array([1], np.int64),
        "ax_last": np.array([-1], np.int64),
        "zero": np.array([0], np.int64),
        "half": np.array([HALF], np.int64),
        "end": np.array([END], np.int64),
        "last": np.array([-1], np.int64),
    }
    nodes = [
        _N("Cast", [positions], ["pos_f"], to=TensorProto.FLOAT),
        _N("Unsqueeze", ["pos_f", "ax_last"], ["pos"]),
        # [B, S, d/2]: each frequency once, not Concat(freqs, freqs) as rotate_half's
        _N("Mul", ["pos", "inv"], ["freqs" if form == "chunked" else "half_freqs"]),
    ]
    if form == "rotate_half":
        nodes.append(_N("Concat", ["half_freqs", "half_freqs"], ["freqs"], axis=-1))
    nodes += [
        _N("Cos", ["freqs"], ["cos3" if tables == "4d" else "cos"]),
        _N("Sin", ["freqs"], ["sin3" if tables == "4d" else "sin"]),
    ]
    if tables == "4d":
        nodes += [_N("Unsqueeze", ["cos3", "ax1"], ["cos"]), _N("Unsqueeze", ["sin3", "ax1"], ["sin"])]
    if head_split:
        nodes += [
            _N("Reshape", ["h", "heads"], ["heads_bsnd"]),
            _N("Transpose", ["heads_bsnd"], ["x"], perm=[0, 2, 1, 3]),
        ]
        first = helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", HEADS * SIZE])
    else:
        first = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", HEADS, "sequence", SIZE])
    nodes += [*_chunks(spelling), *(_rotation(commuted, axis) if form == "chunked" else _rotate_half())]
    inputs = [first, helper.make_tensor_value_info(positions, TensorProto.INT64, ["batch", "sequence"])]
    out_shape = ["batch", HEADS, "sequence", SIZE] if axis == -1 else ["batch", 2 * HEADS, "sequence", HALF]
    graph = helper.make_graph(
        nodes,
        "chunked_rotary",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(value, name) for name, value in consts.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto)
    return proto


def _feeds(proto: onnx.ModelProto, sequence: int, batch: int = 2) -> dict[str, np.ndarray]:
    """Random activations; positions offset per row (a left-padded row's, a past's), or ``[1, S]``."""
    rng = np.random.default_rng(sequence)
    names = [v.name for v in proto.graph.input]
    shape = (batch, sequence, HEADS * SIZE) if "h" in names else (batch, HEADS, sequence, SIZE)
    positions = np.arange(sequence)[None] + np.array([[0], [13]])[:batch]
    return {names[0]: rng.standard_normal(shape).astype(np.float32), names[1]: positions.astype(np.int64)}


@pytest.mark.parametrize("head_split", [True, False], ids=["head_split", "per_head"])
@pytest.mark.parametrize(
    ("spelling", "commuted"), [("split", False), ("slices", False), ("split", True), ("slices", True)]
)
def test_the_chunked_rotation_is_fused_and_computes_the_original(spelling, commuted, head_split):
    model = ir.from_proto(_model(spelling, commuted=commuted, head_split=head_split))
    fusion = RotaryEmbeddingFusion(cache_length=64)
    result = fusion(model.clone())
    assert fusion.fused_count == 1, result.refusals
    after = result.model
    assert not {"Cos", "Sin", "Split", "Slice", "Sub", "Concat"} & set(op_types(after))
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.attributes.get_int("interleaved") == 0
    assert "rotary_embedding_dim" not in rotary.attributes  # the whole head: the caches' 2 * d/2 columns
    assert rotary.inputs[2].const_value.numpy().shape == (64, HALF)
    proto = _model(spelling, commuted=commuted, head_split=head_split)
    for sequence in (1, 5, 9):
        assert_same_outputs(model, after, _feeds(proto, sequence), rtol=1e-5, atol=1e-5)
    # A [1, S] position_ids (broadcast over the batch by the original) is expanded for the fused op.
    feeds = _feeds(proto, 6)
    feeds["position_ids"] = feeds["position_ids"][1:]
    assert_same_outputs(model, after, feeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spelling", ["split", "slices"])
def test_the_default_pipeline_fuses_a_respelled_chunked_rotation_alike(spelling):
    # Metamorphic: other value names, Add/Mul operands swapped, another node order; verified by the pipeline.
    proto = _model(spelling)
    feeds = _feeds(proto, 7)
    expected = run(ir.from_proto(proto), feeds)
    for spelled in (proto, respelled(proto)):
        fused, trouble, outputs = optimized(spelled, None, feeds)
        assert fused == {"RotaryEmbedding": 1}
        assert trouble == []
        np.testing.assert_allclose(outputs["y"], expected["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "refusal"),
    [
        pytest.param(
            lambda: _model("swapped"),
            "not a chunked rotation: the halves are not x[..., :d/2] and x[..., d/2:]",
            id="halves_swapped",
        ),
        pytest.param(
            lambda: _model(axis=1),
            "a chunked rotation's halves are not concatenated on the last axis",
            id="joined_on_the_heads_axis",
        ),
        pytest.param(
            lambda: _model(positions="input_ids"),
            "cos/sin read the values of an input (token ids?), not only its shape",
            id="tables_of_token_ids",
        ),
    ],
)
def test_a_near_miss_is_refused_with_its_reason(build, refusal):
    fusion = RotaryEmbeddingFusion(cache_length=64)
    result = fusion(ir.from_proto(build()))
    assert "RotaryEmbedding" not in op_types(result.model)
    assert any(refusal in line for line in result.refusals), result.refusals


def test_static_shapes_build_the_chunked_caches_a_run_at_a_time():
    # --static-shapes (bind-dims) pins position_ids to [2, 5]: the half-width caches are evaluated 5 positions
    # at a time and checked at positions drawn below their end (``_pinned_tables``), as rotate_half's.
    bound = BindDimsPass({"batch": 2, "sequence": 5})(ir.from_proto(_model("slices"))).model
    model = ir.passes.common.ShapeInferencePass()(bound).model
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 1, fusion.refusals
    (rotary,) = [n for n in after.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[2].const_value.numpy().shape == (64, HALF)
    hidden = np.random.default_rng(0).standard_normal((2, 5, HEADS * SIZE)).astype(np.float32)
    for positions in (np.array([[59, 60, 61, 62, 63], [0, 1, 2, 3, 4]]), np.array([[40, 3, 63, 17, 0], [8] * 5])):
        assert_same_outputs(model, after, {"h": hidden, "position_ids": positions}, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["chunked", "rotate_half"])
def test_tables_whose_batch_broadcasts_over_the_heads_are_refused(form):
    # cos/sin [B, S, ·] multiply the [B, N, S, d] heads as [1, B, S, ·]: batch row b's positions rotate head b
    # (the original runs at a batch of 1 or N only). Each batch row's tables are the caches' rows for its
    # positions, so the probes passed them, and both forms were fused (the chunked one 3.9 off at a batch of 3
    # over 3 heads).
    proto = _model(form=form, tables="3d")
    fusion = RotaryEmbeddingFusion(cache_length=64)
    result = fusion(ir.from_proto(proto))
    assert "RotaryEmbedding" not in op_types(result.model)
    assert any("their batch broadcasts over the heads" in line for line in result.refusals), result.refusals
