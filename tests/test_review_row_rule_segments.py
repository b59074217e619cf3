"""Hostile review of 988b132: ``kernel_rounding.rounds`` / ``outputs_after_rounding`` and the segment check's row
rule that excuses a missed segment output only where a rounding node is among its ancestors in the cut model
(``Verifier._check_twin_by_segment`` -> ``_within_row_excess(..., rounded)``), and the int4 twin's ``unrounded``
variant built with int8 layers too (``Int4QuantizationPass._twin``).

Findings (a strict xfail when found; fixed since: the verifier's walk skips the select's computed input,
``verify._selects_own``):
1. The restriction does not hold where the verifier has a mask input (``keep_own``: every encoder and decoder
   fed an attention_mask). ``_cut_at(..., keep_own=True)`` makes each checkpoint's readers read
   ``Where(own, computed, fed)``, so the ancestor walk of ``outputs_after_rounding`` goes on through ``computed``
   into every earlier segment and counts a segment as rounded when any earlier one rounds. On llama_kv_legacy,
   int4 at level 0 with one int8 layer (layer 0's down_proj) and a tampered block in layer 1: 7 of the 13 cut
   outputs count as rounded with ``keep_own``, 3 without. No verdict difference reproduced (the tampers tried,
   one block x1.1 / x1.2 / x1.3 / x2, give the same status with the walk stopping at the Where: applied / rolled
   back by the sum / by the sum / by the segment), so this is the mechanism only. It also makes the walk
   quadratic: a 20 000-node chain cut at 499 checkpoints takes 6.0 s with ``keep_own``, 0.03 s without.

What held (2026-12-02, 2 shared cores; 988b132 against a worktree of 2879c68, statuses identical everywhere):
- Through ``optimize_with_report`` (quantize record): resnet_legacy static per channel / with --quantize-outputs
  (applied), resnet_dynamo per tensor (unchanged at both); PP-OCR's classifier with ppocr_lines calibration:
  static per channel, per tensor, --quantize-outputs (applied); llama_kv_legacy dynamic --activation-scale row,
  --smooth 0.5; bert_legacy dynamic row, --quantize static / dynamic (QAttention; 8 layers int8); int4
  --min-cosine 0.9999 (llama, gpt2_kv_dynamo, level 0 and 4; HQQ + 4 outlier channels + --quantize-outputs:
  unchanged at both), 0.999 and 0.99 (llama levels 4 and 0, gpt2, HQQ: applied); MiniLM (minilm_sentences):
  int4 --min-cosine 0.999 (unchanged at both), dynamic row, static (applied).
- Segment check forced on correct results (``Verifier._check_twin_by_segment``, bare ``make_inputs(seed=3)``):
  PP-OCR static per channel / per tensor / --quantize-outputs (36 segments), resnet static --quantize-outputs
  (2; plain resnet has no checkpoint outside a QDQ unit at either commit), llama_kv_legacy and gpt2_kv_dynamo:
  static per channel / per tensor, dynamic per tensor / per row / smooth 0.5, int4 level 4 and 0, HQQ level 4
  + 4 outlier channels + --quantize-outputs (9-10 segments), MiniLM dynamic / row / int4 level 4 / static (13):
  all pass at both commits, and ``check_twin`` passes too.
- int4 with int8 layers forced through ``scheme`` (the new level-0 check with int8 layers), applied at both:
  gpt2_kv_dynamo one / seven int8 layers at level 4, one at level 0, HQQ block 64; llama_kv_legacy two int8
  down_projs (block 16), one (block 128 symmetric), layer 0's MLP int8 with HQQ + 4 outlier channels +
  --quantize-outputs; MiniLM one / six int8 layers at level 4, one at level 0. Cost of the new level-0 run on
  MiniLM with int8 layers: 9.7 -> 12.2 s and 9.8 -> 14.7 s per run (the llama/gpt2 fixtures: < 0.7 s more).
  Wrong: one block of layer 1's down_proj x1.15 / x1.3 beside an int8 layer 0 down_proj rolled back at level
  0 and 4; every block scale of it x(1 + 0.05 / 0.15 N(0,1)) at level 0 rolled back.
- ``rounds``: per-row dynamic writes ``QuantizeLinear`` (in the set) before ``MatMulIntegerToFloat``, the int8
  fallback ``DynamicQuantizeLinear``, HQQ's offsets and the outlier channels' float MatMuls sit beside
  MatMulNBits in the same segment, so those outputs still reach a rounding node.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.kernel_rounding import outputs_after_rounding
from optimizer.verify import _computed, _cut_at, _selects_own


def _value(name: str, dtype=ir.DataType.FLOAT) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape([2, 4]))


def _const(name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape))
    value.const_value = ir.tensor(array, name=name)
    return value


def _rounded_then_float() -> ir.Model:
    """x -> QuantizeLinear -> DequantizeLinear -> Relu = ``c`` (a checkpoint) -> Add -> y: the segment from ``c``
    to ``y`` has no rounding node."""
    x = _value("x")
    scale, zero = _const("scale", np.array(0.1, np.float32)), _const("zero", np.array(0, np.int8))
    one = _const("one", np.ones((2, 4), np.float32))
    quantize = ir.Node("", "QuantizeLinear", [x, scale, zero], name="q")
    dequantize = ir.Node("", "DequantizeLinear", [quantize.outputs[0], scale, zero], name="dq")
    relu = ir.Node("", "Relu", [dequantize.outputs[0]], name="relu")
    add = ir.Node("", "Add", [relu.outputs[0], one], name="add")
    for node, name in ((quantize, "xq"), (dequantize, "xd"), (relu, "c"), (add, "y")):
        node.outputs[0].name = name
        node.outputs[0].shape = ir.Shape([2, 4])
        node.outputs[0].type = ir.TensorType(ir.DataType.INT8 if name == "xq" else ir.DataType.FLOAT)
    graph = ir.Graph(
        [x],
        [add.outputs[0]],
        nodes=[quantize, dequantize, relu, add],
        initializers=[scale, zero, one],
        opset_imports={"": 17},
    )
    return ir.Model(graph, ir_version=8)


def test_a_segment_without_rounding_is_not_counted_as_rounded():
    rounded = outputs_after_rounding(_cut_at(_rounded_then_float(), ["c"]))
    assert rounded == {_computed("c")}


def test_a_segment_without_rounding_is_not_counted_as_rounded_with_a_mask():
    # Fixed since: the verifier's walk skips the select's computed input (``verify._selects_own``).
    cut = _cut_at(_rounded_then_float(), ["c"], keep_own=True)
    rounded = outputs_after_rounding(cut, _selects_own)
    assert "y" not in rounded, sorted(rounded)
