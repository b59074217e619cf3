"""Review (s44, last): 70403b9 (the default domain spelled "ai.onnx" read as "", reconstruction as the combined cut's
default importance, Drift.relative_error, temporary_folder's retries, inference opsets for an "ai.onnx" import).

Findings (strict xfails):

1. ``model_io.default_domain_spelled_empty`` keeps the ``""`` import's version when a model imports the default
   domain under both spellings, but ONNX Runtime reads such a model at the version listed *last* (and onnx's
   checker at ``""``'s). A model importing ``""`` at 13 then ``"ai.onnx"`` at 11 passes the checker and ORT runs
   its ``Softmax(axis=1)`` at opset 11 (over the flattened trailing axes); graphopt rewrites it to ``""`` 13 alone
   and the written model computes Softmax-13 (over axis 1 only): every output value changes, silently (the
   verification compares against the already-renamed model). As an ``onnx_ir.Model`` (no checker) an
   ``{"": 11, "ai.onnx": 13}`` model that ORT runs is even refused as one "ONNX Runtime cannot run".
2. ``runtime.temporary_folder`` no longer removes its folder when a signal (KeyboardInterrupt) lands between
   ``os.mkdir`` returning and ``made = folder``: the folder is left behind, which de4af31's layout (name chosen
   before the ``try``, ``rmtree`` of that name in the ``finally``) prevented; the docstring still promises it.

Held (checked, no test): a model spelled "ai.onnx" only, with nodes in If branches: read and written with "",
outputs equal, the caller's ``ir.Model`` keeps {"ai.onnx": 17} (the rename works on a clone; onnx-ir itself
normalizes a node's "ai.onnx" domain to ""); functions importing "ai.onnx", and model-local functions whose
domain is "ai.onnx": ONNX Runtime refuses these models as given, so the rename cannot break a runnable one; both
spellings at the same version, or "" listed last: same versions as ORT's. Reconstruction by default on the
combined cut: runs on heads-only (MHA, packed Attention), FFN-only, one and two calibration samples (fewer rows
than inputs: each layer noted and ranked by activation), with a --min-cosine budget (it finds a cut where
activation finds none on the MHA block); grouped-query heads are left whole either way; with ``repair=False`` it
is activation; generated samples stay magnitude; held-out cosine on the test encoder is no worse than activation's
for 2-48 calibration samples; ``--print-config`` writes no importance; CLI help and README's Importance paragraph
say the combined cut's default (docs/benchmarks.md's 2026-12-01 section still says "`activation` remains the
default", dated before the change, with the change noted in the 12-03 section). Drift: the worst output alone is
named; one value per sample but not the worst: no name; worse per-sample rows elsewhere drop the name; a zero
original with an error: relative error inf at cosine 0; every caller builds Drift with two values or keywords.
inference_opsets / inferred_at_inference_opset: an "ai.onnx" 13 import is read at 14 and restored in its order.
"""

from __future__ import annotations

import signal
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import optimizer.runtime as runtime


def _softmax_imported_twice() -> onnx.ModelProto:
    """Softmax(axis=1) on [2, 3, 4]; imports "" at 13, then "ai.onnx" at 11 (ONNX Runtime reads the last: 11)."""
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["y"], axis=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4])],
    )
    imports = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx", 11)]
    return helper.make_model(graph, opset_imports=imports, ir_version=8)


def _run(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.mark.parametrize("given_as", ["path", "ir"])
def test_a_model_importing_both_spellings_computes_what_onnx_runtime_computed(tmp_path, given_as):
    from optimizer.api import optimize_with_report

    proto = _softmax_imported_twice()
    onnx.checker.check_model(proto, full_check=True)  # a valid model by onnx's checker
    feed = {"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)}
    expected = _run(proto, feed)  # ONNX Runtime: Softmax-11, over the flattened axes 1 and 2
    assert np.allclose(expected.reshape(2, -1).sum(axis=1), 1.0)
    if given_as == "path":
        onnx.save(proto, tmp_path / "m.onnx")
        optimize_with_report(tmp_path / "m.onnx", output=tmp_path / "out.onnx")
        written = onnx.load(tmp_path / "out.onnx")
    else:
        optimized, _ = optimize_with_report(ir.from_proto(proto))
        written = ir.to_proto(optimized)
    np.testing.assert_allclose(_run(written, feed), expected, atol=1e-6)


def test_temporary_folder_is_removed_when_a_signal_lands_just_after_it_is_made(tmp_path, monkeypatch):
    """SIGINT raised at the first line temporary_folder runs once its folder exists (as Ctrl-C may land)."""
    monkeypatch.setattr(runtime.tempfile, "tempdir", str(tmp_path))
    body = runtime.temporary_folder.__wrapped__.__code__
    fired = []

    def tracer(frame, event, arg):
        if frame.f_code is not body:
            return None

        def local(frame, event, arg):
            if event == "line" and not fired and any(tmp_path.iterdir()):
                fired.append(frame.f_lineno)
                signal.raise_signal(signal.SIGINT)
            return local

        return local

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with pytest.raises(KeyboardInterrupt):
            with runtime.temporary_folder("graphopt-review-"):
                pass
    finally:
        sys.settrace(previous)
        signal.signal(signal.SIGINT, handler)
    assert fired
    assert list(tmp_path.iterdir()) == []
