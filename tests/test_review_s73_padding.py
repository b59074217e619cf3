"""Review s73 (padding): session 72's padding and feature-mask rules against masks as exporters write them. Each test
failed before its fix (the guards, marked so, hold the rule's other side).

1. wav2vec2's ``hidden_states[mask_time_indices] = masked_spec_embed`` (both exporters write ``NonZero`` →
   ``ScatterND``; dynamo also counts the mask to size what it scatters): an int64 ``mask_time_indices``, as Hugging
   Face's pretraining example feeds it, was a padding mask, so the frames it does not mask (the real audio's) were
   hidden from verification and left out of the statistics (``optimizer.padding.is_feature_mask``). And its 0s at
   both ends of a row stood for the padding of an ``attention_mask`` of ones: no padded copy padded that one
   (``optimizer.api._ensure_padding``). A mask named otherwise that transformers 4 fills where it masks
   (``inverted.masked_fill(inverted.bool(), min)``) was no attention mask (``reads_as_attention_mask``).
2. ``token_axes`` read the dynamo exporter's ``Reshape`` of ``[batch, heads, sequence, d]`` to itself as a flattening
   (its heads taken for the tokens, the attention's output before its heads merge lost its token rows), and a
   ``Gather`` of one position (``h[:, 0]``, a [CLS] pooling) as keeping the layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from optimizer import padding
from optimizer.padding import mask_inputs
from optimizer.pipeline import STATUS_ROLLED_BACK
from passes.quantization import calibration
from tests.helpers import optimize_with_rewrite, weighted_proto

_FIXTURES = Path(__file__).resolve().parent / "fixtures"


# -- 1. a mask of the positions a model overwrites (index_put) -------------------------------------------------------

# How each exporter writes ``index_put``: the legacy one at every element of the mask expanded to ``h``'s shape, its
# values as many as the positions; dynamo at each masked frame, its rows as many as a ReduceSum of the mask counts.
_INDEX_PUT = {
    "legacy": """
        size = Shape(h)
        everywhere = Expand(m3, size)
        found = NonZero(everywhere)
        positions = Transpose<perm = [1, 0]>(found)
        count = Shape<start = 0, end = 1>(positions)
        values = Expand(embedding, count)
        """,
    "dynamo": """
        found = NonZero(masked)
        positions = Transpose<perm = [1, 0]>(found)
        flat = Reshape(masked, minus_one)
        flat64 = Cast<to = 7>(flat)
        count = ReduceSum<keepdims = 1>(flat64)
        rows = Concat<axis = 0>(count, four)
        values = Expand(embedding, rows)
        """,
}


def _masked_frames(exporter: str = "legacy") -> onnx.ModelProto:
    """``h [batch, frames, 4]`` from audio frames ``x``, overwritten by an embedding where ``mask_time_indices`` (int64
    0/1) is 1."""
    return weighted_proto(
        "(float[batch, frames] x, int64[batch, frames] mask_time_indices) => (float[batch, frames, 4] y)",
        f"""
        x3 = Unsqueeze(x, axis2)
        h = Mul(x3, scale)
        masked = Cast<to = 9>(mask_time_indices)
        m3 = Unsqueeze(masked, axis2)
        {_INDEX_PUT[exporter]}
        y = ScatterND(h, positions, values)
        """,
        {
            "scale": np.arange(1, 5, dtype=np.float32).reshape(1, 1, 4),
            "other_scale": np.arange(2, 6, dtype=np.float32).reshape(1, 1, 4),
            "embedding": np.array([0.25], np.float32),
            "axis2": np.array([2], np.int64),
            "minus_one": np.array([-1], np.int64),
            "four": np.array([4], np.int64),
        },
    )


_FRAMES = {
    "x": np.array([[9.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], np.float32),
    "mask_time_indices": np.array([[0, 1, 1, 0], [0, 0, 1, 0]]),
}


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_mask_of_the_frames_overwritten_is_no_padding_mask(exporter):
    model = ir.from_proto(_masked_frames(exporter))
    assert padding.is_feature_mask(model.graph.inputs[1])
    assert mask_inputs(model, _FRAMES) == []  # before: the frames it does not mask were padding
    # The first frame (masked 0, the largest value) counts in the range: it was left out as a pad.
    assert calibration.calibrate(model, ["h"], [_FRAMES])["h"][1] == 36.0


def test_a_rewrite_wrong_only_at_the_frames_not_masked_is_rolled_back(tmp_path):
    def rescale(model: ir.Model) -> None:
        (mul,) = [node for node in model.graph if node.op_type == "Mul" and node.outputs[0].name == "h"]
        mul.replace_input_with(1, model.graph.initializers["other_scale"])  # the masked frames are overwritten anyway

    report = optimize_with_rewrite(_masked_frames(), rescale, tmp_path)
    (result,) = report.passes
    assert result.status == STATUS_ROLLED_BACK, result  # before: verified, every frame it changed hidden as padding


@pytest.mark.parametrize(
    "reads",
    [
        # wav2vec2's encoder zeroes its padded frames so: ``hidden_states[~attention_mask] = 0``.
        "kept = Not(masked)\nm3 = Unsqueeze(kept, axis2)\nsize = Shape(h)\neverywhere = Expand(m3, size)\n"
        "found = NonZero(everywhere)\npositions = Transpose<perm = [1, 0]>(found)\n"
        "count = Shape<start = 0, end = 1>(positions)\nvalues = Expand(zero, count)\n"
        "y = ScatterND(h, positions, values)",
        # Unpadding: the real tokens' rows gathered (``h[attention_mask.bool()]``).
        "flat = Reshape(masked, minus_one)\nfound = NonZero(flat)\nrows = Reshape(found, minus_one)\n"
        "flat_h = Reshape(h, rows_of_4)\ny = Gather(flat_h, rows)",
    ],
)
def test_guard_a_padding_mask_read_through_nonzero_otherwise_stays_a_padding_mask(reads):
    output = "float[batch, frames, 4] y" if "ScatterND" in reads else "float[n, 4] y"
    model = ir.from_proto(
        weighted_proto(
            f"(float[batch, frames] x, int64[batch, frames] attention_mask) => ({output})",
            f"""
            x3 = Unsqueeze(x, axis2)
            h = Mul(x3, scale)
            masked = Cast<to = 9>(attention_mask)
            {reads}
            """,
            {
                "scale": np.ones((1, 1, 4), np.float32),
                "zero": np.zeros((1,), np.float32),
                "axis2": np.array([2], np.int64),
                "minus_one": np.array([-1], np.int64),
                "rows_of_4": np.array([-1, 4], np.int64),
            },
        )
    )
    batch = {"x": np.ones((2, 4), np.float32), "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]])}
    assert not padding.is_feature_mask(model.graph.inputs[1]) and mask_inputs(model, batch) == ["attention_mask"]


def test_a_feature_masks_zeros_do_not_stand_for_the_padding_of_an_attention_mask(tmp_path):
    # Pooled over the frames an attention_mask keeps (a mean: a padding mask), beside mask_time_indices.
    proto = _masked_frames()
    pooled = onnx.parser.parse_graph(
        """g (float[batch, frames, 4] y, int64[batch, frames] attention_mask) => (float[batch, 4] pooled) {
        kept_frames = Cast<to = 1>(attention_mask)
        a3 = Unsqueeze(kept_frames, axis2)
        kept = Mul(y, a3)
        total = ReduceSum<keepdims = 0>(kept, axis1)
        frames_kept = ReduceSum<keepdims = 1>(kept_frames, axis1)
        pooled = Div(total, frames_kept)
        }"""
    )
    proto.graph.input.append(pooled.input[1])
    proto.graph.node.extend(pooled.node)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1], np.int64), "axis1"),
            numpy_helper.from_array(np.ones(1, np.float32), "one"),
        ]
    )
    del proto.graph.output[:]
    proto.graph.output.extend(pooled.output)
    for value in [*proto.graph.input, *proto.graph.output]:  # static: no generated set beside the inputs given
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_value = {"batch": 2, "frames": 8}[dim.dim_param]
    onnx.checker.check_model(proto)

    def count_every_frame(model: ir.Model) -> None:
        (mul,) = [node for node in model.graph if node.op_type == "Mul" and node.outputs[0].name == "kept"]
        mul.replace_input_with(1, model.graph.initializers["one"])  # exact where the attention_mask pads nothing

    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((2, 8)).astype(np.float32),
        "mask_time_indices": np.array([[0, 1, 1, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0, 0]]),  # 0 at both ends
        "attention_mask": np.ones((2, 8), np.int64),  # a batch of equal lengths: nothing padded
    }
    from unittest import mock

    import optimizer.api as api
    from optimizer.protocol import PassSpec
    from tests.helpers import _Rewrite

    spec = PassSpec("rewrite", lambda context: _Rewrite(count_every_frame), "a test rewrite")
    onnx.save(proto, tmp_path / "in.onnx")
    with mock.patch.object(api, "resolve", lambda names, options: [spec]):
        _, report = api.optimize_with_report(tmp_path / "in.onnx", [], output=tmp_path / "out.onnx", inputs=inputs)
    (result,) = report.passes
    assert result.status == STATUS_ROLLED_BACK, result  # before: verified, no set padding the attention_mask


def test_a_mask_named_otherwise_filled_where_it_masks_is_an_attention_mask():
    # transformers 4's extended mask: inverted = 1 - mask, then inverted.masked_fill(inverted.bool(), min), added to the
    # scores. Named otherwise (the legacy exporter's unnamed inputs), it was no mask: not padded, nothing hidden.
    model = ir.from_proto(
        weighted_proto(
            "(int64[batch, seq] ids, int64[batch, seq] am) => (float[batch, seq, 4] y)",
            """
            h = Gather(table, ids)
            m4 = Unsqueeze(am, axes12)
            mf = Cast<to = 1>(m4)
            inverted = Sub(one, mf)
            filled = Cast<to = 9>(inverted)
            bias = Where(filled, lowest, inverted)
            kt = Transpose<perm = [0, 2, 1]>(h)
            scores = MatMul(h, kt)
            s4 = Unsqueeze(scores, axis1)
            masked = Add(s4, bias)
            probs = Softmax<axis = -1>(masked)
            h4 = Unsqueeze(h, axis1)
            o = MatMul(probs, h4)
            y = Squeeze(o, axis1)
            """,
            {
                "table": np.arange(40, dtype=np.float32).reshape(10, 4) / 40,
                "axes12": np.array([1, 2], np.int64),
                "axis1": np.array([1], np.int64),
                "one": np.array(1.0, np.float32),
                "lowest": np.array(np.finfo(np.float32).min, np.float32),
            },
        )
    )
    batch = {"ids": np.array([[1, 2, 3], [4, 5, 6]]), "am": np.array([[1, 1, 1], [1, 1, 0]])}
    assert padding.reads_as_attention_mask(model.graph.inputs[1]) and mask_inputs(model, batch) == ["am"]


# -- 2. the layout of token rows through a reshape to the same dims, and a gather of one position -------------------


def test_the_dynamo_attention_output_before_its_heads_merge_keeps_its_token_rows():
    model = ir.load(_FIXTURES / "bert_dynamo.onnx")
    # view_3: [batch, 4, sequence, 16], the attention's MatMul reshaped to the same dims (allowzero=1); transpose_3 puts
    # the heads after the tokens, [batch, sequence, 4, 16].
    assert padding.token_axes(model, ["view_3", "transpose_3"]) == {"view_3": (0, 2), "transpose_3": (0, 1)}
    assert "transpose_3" in padding.token_rows(model, ["transpose_3"])  # before: its pad rows counted in the ranges


def _picked(position: str) -> ir.Model:
    return ir.from_proto(
        weighted_proto(
            "(int64[batch, tokens] input_ids, int64[batch, tokens] attention_mask) => (float[batch, 4] picked)",
            f"""
            e = Gather(table, input_ids)
            mf = Cast<to = 1>(attention_mask)
            m3 = Unsqueeze(mf, axis2)
            h = Mul(e, m3)
            qkv = Reshape(h, heads)
            {position}
            """,
            {
                "table": np.ones((10, 12), np.float32),
                "axis1": np.array([1], np.int64),
                "axis2": np.array([2], np.int64),
                "heads": np.array([0, 0, 3, 4], np.int64),
                "first": np.array(0, np.int64),
            },
        )
    )


def test_a_gather_of_one_position_holds_no_token_rows():
    model = _picked("picked = Gather<axis = 1>(h, first)")  # [batch, 12]: the first token's, a [CLS] pooling
    assert padding.token_axes(model, ["picked"]) == {}  # before: (0, 1), its 12 columns read as tokens


def test_guard_a_gather_of_one_of_packed_qkv_keeps_the_token_rows():
    model = _picked("q = Gather<axis = 2>(qkv, first)\npicked = ReduceSum<keepdims = 0>(q, axis1)")
    assert padding.token_axes(model, ["q"]) == {"q": (0, 1)}
