"""GPT-Neo's local (sliding-window) attention through the default pipeline: never fused as causal.

GPT-Neo alternates global layers (a causal mask) with local ones (each query sees the
last 256 keys). Both masks are ``[1, 1, 512, 512]`` bool buffers sliced to the sequence,
so the local one is causal on every sequence of 256 tokens or fewer: a mask kind probed
on short sequences alone would turn it into ``unidirectional=1``, exact at the
verification lengths and wrong from 257 tokens on. The fixtures are exported by
``tests/fixtures/export_fixtures.py`` (both exporters).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

import optimizer
from tests.helpers import FIXTURES, assert_same_outputs

WINDOW, POSITIONS = 256, 512


def _inputs(batch: int, sequence: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((batch, sequence), np.int64)
    mask[-1, sequence - 5 :] = 0  # the last row right-padded
    return {"input_ids": rng.integers(0, 1000, (batch, sequence)), "attention_mask": mask}


def _causal_flags(model: ir.Model) -> list[int]:
    return [n.attributes.get_int("unidirectional", 0) for n in model.graph if n.op_type == "Attention"]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_local_layers_stay_local_past_the_window(exporter):
    model = ir.load(FIXTURES / f"gptneo_{exporter}.onnx")
    optimized, report = optimizer.optimize_with_report(model, raise_errors=True)
    assert not report.failures(), report.failures()
    fused = [n.op_type for n in optimized.graph if n.op_type in ("Attention", "MultiHeadAttention")]
    assert len(fused) == 2 and "Softmax" not in {n.op_type for n in optimized.graph}
    # At most the global layer is causal; the local layer keeps its banded bias.
    assert sum(_causal_flags(optimized)) <= 1
    for sequence in (WINDOW + 44, POSITIONS):  # past the window, and the whole table
        assert_same_outputs(model, optimized, _inputs(2, sequence), rtol=1e-4, atol=1e-5)


def test_the_local_layer_is_refused_as_causal_and_the_global_one_packs_causal():
    model = ir.load(FIXTURES / "gptneo_dynamo.onnx")
    optimized, report = optimizer.optimize_with_report(model, raise_errors=True)
    assert _causal_flags(optimized) == [1, 0]
    (pack,) = [record for record in report.passes if record.name == "pack-qkv"]
    assert pack.refusals == [
        "1 of 2 packed with the mask kept as attention_bias: it is not what a causal + padding mask implies at "
        f"{POSITIONS} tokens, though it is at 7 and 13 (a sliding window, or a table that changes past them)"
    ]
