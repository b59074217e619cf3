"""Hostile review (s57) of ``--static-shapes`` with ``--dim`` end to end.

Findings (fixed here):
1. A decoder with a key/value cache under ``--static-shapes`` (its pasts bound at ``--dim past_sequence=5``, or at
   the verification inputs' 128) given no ``--calibration``: the generated samples were made prefills, every cache
   empty, which the bound model refuses, so every approximate pass (``--quantize dynamic|static|int4``, ``--fp16``,
   ``--prune-ffn``) was rolled back with "ONNX Runtime cannot run the result: ... Got: 0 Expected: 5", blaming its
   own result, and the warning said the samples were prefills. They are now drawn at the sizes the bound model
   takes (prefills only where those take an empty cache), as ``_fill_static_batch`` says generated samples are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizer.api import optimize_with_report

FIXTURES = Path(__file__).parent / "fixtures"
DIMS = {"batch": 2, "sequence": 3, "past_sequence": 5}


def _record(report, name):
    return next(record for record in report.passes if record.name == name)


def _feeds(past: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    batch, sequence = DIMS["batch"], DIMS["sequence"]
    feeds = {
        "input_ids": rng.integers(0, 100, (batch, sequence)),
        "attention_mask": np.ones((batch, past + sequence), np.int64),
        "position_ids": np.tile(np.arange(past, past + sequence), (batch, 1)),
    }
    for layer in range(2):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal((batch, 4, past, 16)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("quantize", ["dynamic", "int4"])
def test_generated_calibration_of_a_static_decoder_is_drawn_at_its_bound_cache(quantize):
    model = onnx.load(FIXTURES / "gpt2_kv_legacy.onnx")
    result, report = optimize_with_report(
        model,
        passes=["bind-dims", "fold-constants", f"quantize-{quantize}"],
        quantize=quantize,
        dims=DIMS,
        static_shapes=True,
    )
    record = _record(report, f"quantize-{quantize}")
    assert record.status == "applied", record.detail
    warning = next(w for w in report.warnings if "no --calibration data" in w)
    assert "prefills" not in warning
    session = ort.InferenceSession(result.SerializeToString(), providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = _feeds(DIMS["past_sequence"])
    got, want = session.run(None, feeds)[0], original.run(None, feeds)[0]
    cosine = float(np.dot(got.ravel(), want.ravel()) / np.linalg.norm(got) / np.linalg.norm(want))
    assert cosine > 0.99
    with pytest.raises(Exception, match="invalid dimensions"):
        session.run(None, _feeds(DIMS["past_sequence"] + 1))


def test_generated_calibration_of_a_decoder_is_still_prefills_without_static_shapes():
    _, report = optimize_with_report(
        onnx.load(FIXTURES / "gpt2_kv_legacy.onnx"),
        passes=["fold-constants", "quantize-dynamic"],
        quantize="dynamic",
        dims=DIMS,
    )
    assert _record(report, "quantize-dynamic").status == "applied"
    assert any("a decoder's are prefills of their tokens" in warning for warning in report.warnings)
