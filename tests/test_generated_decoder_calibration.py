"""Generated calibration samples for a causal LM with a key/value cache are prefills (every cache empty), as text
calibration is fed: drawn over a random past of 128 positions, no sample held the short contexts every generation
starts with, and static int8 of a tiny Llama was verified at cosine 0.9999 while a one-token prompt from an empty
cache gave 0.965 (its attention outputs there twice the calibrated range; 0.9997 with prefills)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from optimizer.api import _samples
from optimizer.generation import recognise_causal_lm

FIXTURES = Path(__file__).parent / "fixtures"


def test_generated_calibration_of_a_decoder_is_prefills():
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    layout = recognise_causal_lm(model)
    samples, warning = _samples(model, None, None, [])
    ids = samples[layout.input_ids]
    assert ids.shape[0] == 16 and ids.shape[1] > 1
    for pair in layout.cache:
        assert samples[pair.past].shape[pair.sequence_axis] == 0, pair.past
    np.testing.assert_array_equal(samples[layout.attention_mask], np.ones(ids.shape))
    assert "a decoder's are prefills of their tokens, every cache empty" in warning


def test_generated_calibration_of_an_encoder_is_unchanged():
    model = ir.load(FIXTURES / "bert_legacy.onnx")
    _, warning = _samples(model, None, None, [])
    assert "prefills" not in warning
