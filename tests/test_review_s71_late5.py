"""Review s71 (late 5): padded rows in quantization statistics (``padding.token_rows``) and the note on a compared
constant no verification set holds (2026-12-07). Each test failed before its fix (the xfail before any).

1. An encoder-decoder whose decoder length is the encoder's by chance: the encoder's mask (``paddings`` matches by
   shape) dropped the decoder's real rows from the int8 ranges, SmoothQuant's peaks, outlier channels and GPTQ's rows.
2. The note on a branch never verified said ONNX Runtime refused the longer lengths, where they were never drawn:
   past ``--max-sequence`` or past the input size limit.
3. ``compare`` cut or tiled given and generated rows to each ``--batch`` beside a recurrent state fed whole (Silero's
   ``state [2, None, 4]`` beside ``input [batch, T]``: "the model does not take a batch of 1", exit 2), and cut a
   sequence-major ``x [None, None, 8]`` along its steps: "batch 1" timed all 5 rows.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from optimizer import api, inputs
from optimizer.compare.comparison import _batch_axes, _with_batch
from optimizer.padding import token_rows
from passes.quantization import calibration
from tests.test_review_s71_late3 import _named_batch_beside_unnamed_state, _sequence_major_gru
from tests.test_review_s71_silero import _HIDDEN, _sr_branches


def _model(signature: str, body: str, weights: dict[str, np.ndarray]) -> ir.Model:
    proto = onnx.parser.parse_model(f'<ir_version: 8, opset_import: ["" : 17]>\ng {signature}\n{{\n{body}\n}}')
    for name, value in weights.items():
        proto.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _encoder_decoder() -> ir.Model:
    """Encoder ids and their mask ``[batch, encoder]``, decoder ids ``[batch, decoder]`` (no mask of their own), the
    decoder's queries over the encoder's keys; embedding row 9 holds 100."""
    table = np.vstack([np.linspace(-1, 1, 36).reshape(9, 4), np.full((1, 4), 100.0)]).astype(np.float32)
    return _model(
        "(int64[batch, encoder] input_ids, int64[batch, encoder] attention_mask, "
        "int64[batch, decoder] decoder_input_ids) => (float[batch, decoder, 4] logits)",
        """
        enc_e = Gather(table, input_ids)
        enc_h = MatMul(enc_e, w)
        dec_e = Gather(table, decoder_input_ids)
        dec_h = MatMul(dec_e, w)
        enc_t = Transpose<perm = [0, 2, 1]>(enc_h)
        scores = MatMul(dec_h, enc_t)
        mf = Cast<to = 1>(attention_mask)
        inv = Sub(one, mf)
        bias = Mul(inv, neg)
        bias3 = Unsqueeze(bias, axis1)
        masked = Add(scores, bias3)
        probs = Softmax<axis = -1>(masked)
        logits = MatMul(probs, enc_h)
        """,
        {
            "table": table,
            "w": np.eye(4, dtype=np.float32),
            "one": np.array(1, np.float32),
            "neg": np.array(-1e4, np.float32),
            "axis1": np.array([1], np.int64),
        },
    )


def test_a_decoder_as_long_as_its_encoder_keeps_its_real_rows():
    model = _encoder_decoder()
    batch = {
        "input_ids": np.array([[1, 2, 3, 4], [5, 6, 9, 9]]),  # the second row's last two (pads) embed 100
        "attention_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]]),
        "decoder_input_ids": np.array([[1, 2, 3, 4], [1, 2, 9, 9]]),  # real decoder tokens there: 100
    }
    ranges = calibration.calibrate(model, ["enc_e", "dec_e"], [batch])
    assert ranges["dec_e"][1] == 100.0  # before: 1.0, the decoder's real rows left out by the encoder's mask
    assert ranges["enc_e"][1] < 100.0  # the encoder's pads are still left out
    assert token_rows(model, ["enc_e", "dec_e", "logits"]) == {"enc_e"}


def _tabular_feature_mask() -> ir.Model:
    """``x [batch, features]`` embedded per feature to ``[batch, features, 4]``, with an int 0/1 ``feature_mask`` of
    the features present (no attention reads it)."""
    return _model(
        "(float[batch, features] x, int64[batch, features] feature_mask) => (float[batch, 4] y)",
        """
        x3 = Unsqueeze(x, axis2)
        h = Mul(x3, scale)
        mf = Cast<to = 1>(feature_mask)
        m3 = Unsqueeze(mf, axis2)
        kept = Mul(h, m3)
        p = MatMul(kept, w)
        y = ReduceSum<keepdims = 0>(p, axis1)
        """,
        {
            "scale": np.ones((1, 1, 4), np.float32),
            "w": np.eye(4, dtype=np.float32),
            "axis1": np.array([1], np.int64),
            "axis2": np.array([2], np.int64),
        },
    )


def test_a_tabular_feature_mask_leaves_the_rows_of_absent_features_in():
    model = _tabular_feature_mask()
    x = np.full((2, 4), 0.5, np.float32)
    x[1, 3] = 7.0  # an absent feature's value: h still holds it (the mask is applied after)
    batch = {"x": x, "feature_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 0]])}
    assert calibration.calibrate(model, ["h"], [batch])["h"][1] == 7.0


def test_the_unverified_branch_note_says_max_sequence_stopped_the_longer_lengths():
    # Before: "ONNX Runtime refused the input model on it with the generated shapes, longer ones too", where no longer
    # length was drawn (256 is past --max-sequence 128).
    model = _sr_branches()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
    _, report = api.optimize_with_report(model, ["remove-identity", "fuse-rotary-embedding"], max_sequence=128)
    (note,) = [w for w in report.warnings if "'sr' at 16000" in w]
    assert "longer ones too" not in note and "256 is past --max-sequence 128" in note, note


def test_the_unverified_branch_note_says_the_size_limit_stopped_the_longer_lengths(monkeypatch: pytest.MonkeyPatch):
    # 128 samples fit, 256 do not: no longer set is drawn, and the note blamed ONNX Runtime.
    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 128 * 4 + 64)
    _, report = api.optimize_with_report(_sr_branches(), ["remove-identity"])
    (note,) = [w for w in report.warnings if "'sr' at 16000" in w]
    assert "longer ones too" not in note and "input size limit" in note, (note, report.input_sets)


def test_compare_cuts_a_recurrent_state_with_the_rows_of_each_batch():
    model = ir.from_proto(_named_batch_beside_unnamed_state())
    rows = {"input": np.zeros((5, 64), np.float32), "state": np.zeros((2, 5, _HIDDEN), np.float32)}
    cut = _with_batch(rows, 1, 5, _batch_axes(model, ["batch"]))
    assert (cut["input"].shape, cut["state"].shape) == ((1, 64), (2, 1, _HIDDEN))  # before: the state's 5 rows


def test_compare_cuts_a_sequence_major_input_along_its_rows():
    model = _sequence_major_gru()
    rows = {"x": np.zeros((6, 5, 8), np.float32), "h0": np.zeros((1, 5, _HIDDEN), np.float32)}
    cut = _with_batch(rows, 2, 5, _batch_axes(model, []))
    assert (cut["x"].shape, cut["h0"].shape) == ((6, 2, 8), (1, 2, _HIDDEN))  # before: both whole, 5 rows
