"""Late review s72 (late5) of padding's feature masks and token axes (3a97b53) and generated inputs' new rules
(a280cdd). Each test failed before its fix.

1. A mask read as a feature mask (``optimizer.padding.is_feature_mask``: the graph only multiplies values by it, an
   audio model's ``input_values * attention_mask`` too) no longer got verification's padded copy
   (``optimizer.api._ensure_padding``): with the user's inputs all ones, a rewrite wrong only where the mask holds a
   0 (it dropped the mask) verified; before 3a97b53 the padded copy caught it.
2. A padding mask beside tokens whose length an exporter names per input (``x [batch, x_len, 4]`` beside
   ``attention_mask [batch, mask_len]``) was read as a feature mask (``_beside_token_ids`` matched the same name
   only): the second binding no longer padded its rows apart, and a rewrite masking every row with the first row's
   mask verified (``tests/test_review_s63_lengths_apart.py`` failed at 8de9f7c).
3. ``token_axes`` read a batch of 1 squeezed off ``[1, channels, tokens]`` as token rows (``(0, 1)``): its rows are
   channels, and where as many as the tokens, calibration left out the channels at the padded positions' indices.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from optimizer import padding
from optimizer.pipeline import STATUS_ROLLED_BACK
from passes.quantization import calibration
from tests.helpers import weighted_proto


def _masked_audio() -> onnx.ModelProto:
    """wav2vec-style ``input_values [batch, samples]`` zeroed at the padded samples by ``attention_mask``."""
    return weighted_proto(
        "(float[2, 16] input_values, int64[2, 16] attention_mask) => (float[2, 16] y)",
        """
        scaled = Mul(input_values, scale)
        mf = Cast<to = 1>(attention_mask)
        kept = Mul(scaled, mf)
        y = Add(kept, shift)
        """,
        {
            "scale": np.full((1, 1), 2.0, np.float32),
            "shift": np.full((1, 1), 0.5, np.float32),
            "ones": np.ones((1, 1), np.float32),
        },
    )


def _optimize_with_rewrite_on(model: onnx.ModelProto, rewrite, inputs, folder):
    from unittest import mock

    import optimizer.api as api
    from optimizer.protocol import PassSpec
    from tests.helpers import _Rewrite

    spec = PassSpec("rewrite", lambda context: _Rewrite(rewrite), "a test rewrite")
    source = folder / "in.onnx"
    onnx.save(model, source)
    with mock.patch.object(api, "resolve", lambda names, options: [spec]):
        _, report = api.optimize_with_report(source, [], output=folder / "out.onnx", inputs=inputs)
    return report


def test_a_rewrite_dropping_an_audio_mask_is_rolled_back_on_inputs_without_padding(tmp_path):
    def drop_the_mask(model: ir.Model) -> None:
        (mul,) = [node for node in model.graph if node.op_type == "Mul" and node.outputs[0].name == "kept"]
        mul.replace_input_with(1, model.graph.initializers["ones"])  # exact wherever the mask holds 1

    assert padding.is_feature_mask(ir.from_proto(_masked_audio()).graph.inputs[1])  # the rule under review
    rng = np.random.default_rng(0)
    inputs = {
        "input_values": rng.standard_normal((2, 16)).astype(np.float32),
        "attention_mask": np.ones((2, 16), np.int64),  # a batch of equal lengths: nothing padded
    }
    report = _optimize_with_rewrite_on(_masked_audio(), drop_the_mask, inputs, tmp_path)
    (result,) = report.passes
    assert result.status == STATUS_ROLLED_BACK, result


def test_a_padding_mask_beside_tokens_of_a_length_named_otherwise_is_no_feature_mask():
    model = ir.from_proto(
        weighted_proto(
            "(float[batch, x_len, 4] x, int64[batch, mask_len] attention_mask) => (float[batch, x_len, 4] y)",
            """
            mf = Cast<to = 1>(attention_mask)
            m3 = Unsqueeze(mf, last)
            y = Mul(x, m3)
            """,
            {"last": np.array([-1], np.int64)},
        )
    )
    assert not padding.is_feature_mask(model.graph.inputs[1])
    batch = {"x": np.ones((2, 3, 4), np.float32), "attention_mask": np.array([[1, 1, 0], [0, 1, 1]])}
    assert padding.mask_inputs(model, batch) == ["attention_mask"]


def test_a_batch_of_one_squeezed_off_channels_first_tokens_keeps_every_channels_row():
    # ``[1, tokens, 8]`` transposed to ``[1, 8, tokens]`` (a Conv1d's layout), its batch of 1 squeezed off: the rows of
    # ``[8, tokens]`` are channels, and as many as the tokens; read as token rows, channel 7's row left out where the
    # mask pads position 7.
    table = np.zeros((10, 8), np.float32)
    table[:, 7] = 100.0  # channel 7 holds 100 at every token
    model = ir.from_proto(
        weighted_proto(
            "(int64[1, 8] input_ids, int64[1, 8] attention_mask) => (float[8, 4] y)",
            """
            e = Gather(table, input_ids)
            mf = Cast<to = 1>(attention_mask)
            m3 = Unsqueeze(mf, last)
            h = Mul(e, m3)
            channels = Transpose<perm = [0, 2, 1]>(h)
            rows = Squeeze(channels, first)
            y = MatMul(rows, w)
            """,
            {
                "table": table,
                "last": np.array([-1], np.int64),
                "first": np.array([0], np.int64),
                "w": np.ones((8, 4), np.float32),
            },
        )
    )
    assert padding.token_axes(model, ["rows"]).get("rows") != (0, 1)
    batch = {"input_ids": np.arange(8)[None], "attention_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 0]])}
    assert calibration.calibrate(model, ["rows"], [batch])["rows"][1] == 100.0  # channel 7 at its real tokens
