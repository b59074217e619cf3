"""Hostile review of today's verification changes: 7c97d60 (``Verifier.check_twin`` sends an int8/int4 result that
meets its twin only by the row rule through ``_check_twin_by_segment``), ac72fef (a level-4 int4 result with no
int8 layer is also run under ``at_level_zero`` against ``twin.unrounded()``; ``_recover_grid`` keeps uint8 zero
points only where rounding them moves no weight past ``_GRID_EXACTNESS``) and 60f2f3c's ``_add_prefill``
(``optimizer/api.py``: a KV decoder is also verified on the prefill, every cache empty).

Findings, worst first (strict xfails when found; 1 fixed since: the int4 twin has an unrounded variant with int8
layers too, and segment by segment the row rule excuses only segments a kernel rounds in; 2 fixed in a later stop:
each quantized layer is also run alone on probe rows no kernel rounds, ``optimizer.layer_probe``, which rolls
both back; the twin's own checks behind it still pass them):
1. A wrong int4 result with one int8 layer is verified. The level-0 check of ac72fef runs only where
   ``twin.unrounded`` exists, and ``Int4QuantizationPass._twin`` builds it only for a level-4 result with no
   int8 layer; with one (what ``--min-cosine`` writes for a sensitive layer; here forced through ``scheme``), the
   twin's kind is ``"int4"``, the row rule applies, and one block of ``mm1`` with its scale x1.3 is applied
   ("max |Δ| 1.83e-01 ... past it only where integer rounding took the other side of a tie"); on llama_kv_legacy
   layer 0's down_proj block x1.15 beside an int8 layer 1 down_proj is applied (rolled back without it). Also at
   ``--int4-accuracy-level 0``: an int8 layer makes the twin ``"int4"`` (row rule) instead of ``"int4-float"``,
   so the row rule forgives a layer that rounds nothing. (x1.5 is rolled back by the segment check.)
2. One layer's gain a few % off is still verified through the pipeline. llama_kv_legacy, layer 0's q_proj:
   int4 level 4 with every block scale x1.01 / x1.02 / x1.03 is applied (twin max |Δ| 2.2e-4 / 4.4e-4 /
   6.6e-4; the level-0 run of ac72fef stays within the int4-float tolerance, the segment sum sees no gain:
   q_proj's output is no checkpoint, the gain acts through the softmax), only x1.05 is rolled back; 7c97d60's
   own test catches x1.01 with a bare ``Verifier(model, [make_inputs(seed=3)])`` (random caches, sharper
   attention: segment error 1.6e-3), not on the pipeline's sets (the cache the model builds). Dynamic int8 with
   q_proj's weight scale x1.02 misses its twin end to end (present.1.key 0.0115, 5 % rel; the correct result
   3e-7) and is applied because every segment passes (same at b074922).

Noted, not filed: a layer the budget gave float inputs (``int4-float-input``, level 0) written at level 4 is
verified (the level-0 run sets every kernel to 0; the row rule passes the extra rounding), twin max |Δ| 1.8e-2.
Not reproduced: a result that misses end to end at level 4 goes to the segment check and returns before the
level-0 run (``check_twin``'s early ``return self._check_twin_by_segment``), so a correct-looking deep model
whose ties cascade would skip the new check; no fixture misses end to end at level 4.

What held (2026-12-02, onnxruntime as installed, 2 shared cores; HEAD 11a6493 against a worktree of b074922):
- False rollbacks: none; every run applied at both commits (quantize record): llama_kv_legacy / dynamo /
  optimum / genai and gpt2_kv_legacy / dynamo / optimum with dynamic, static, int4 level 4 RTN, GPTQ, HQQ + 4
  outlier channels + --quantize-outputs, --min-cosine 0.999, --symmetric --block-size 128 (49 runs); bert,
  vit, gptneo, mvp legacy, llama / distilbert / gpt2 dynamo: dynamic, int4, int4 + 4 outlier channels (resnet:
  unchanged at both); static int8 on bert, vit, gptneo, mvp legacy, llama / gpt2 / distilbert dynamo (HEAD only:
  applied); MiniLM (real sentences): dynamic, static, int4 RTN, GPTQ (--min-cosine 0.999: unchanged at
  both); PP-OCR (real lines): static, dynamic, int4; the pipeline's own GQA output of llama_kv_legacy re-run
  with dynamic / int4 / static. The default pipeline's pass statuses on gpt2_kv_legacy, gpt2_kv_optimum,
  llama_kv_optimum, llama_kv_genai: identical.
- Tampers rolled back at HEAD (no int8 layer): one block x1.3 / x2 / x4 in ``mm1`` (4 x 256 stack), one block
  x1.3 in each of 12 layers, four blocks of one layer; a layer with float inputs (``int4-float-input``) beside a
  tampered one. Dynamic int8 on the stack: one column's int8 values x1.3, weight scale x1.01 / x1.03; static
  int8: a column x1.3, weight scale x1.01 / x1.03; Llama dynamic: a column x1.3 in down_proj / v_proj, q_proj or
  k_proj scale x1.05.
- The prefill: added and run by the original on every KV fixture (llama/gpt2 legacy, dynamo, optimum,
  llama_kv_genai); --dims batch 3 (2 tokens after 5), user --inputs with a cache at batch 2 with a left-padded
  row, --max-sequence 16 (8 tokens); --static-shapes adds none; a model whose past is fixed at 16 positions
  gets none, no traceback anywhere.
- Cost (time inside ``Verifier.check_twin``, outermost calls; b074922 -> HEAD; whole run in brackets):
  llama_kv_legacy int4 0.2 -> 0.9-1.0 s (6.0 -> 6.3-8.9 s), dynamic 0.2 -> 0.2 s; gpt2_kv_legacy int4
  0.1-0.2 -> 0.7-0.8 s (2.8-6.1 -> 5.0-7.0 s); MiniLM int4 5.9 -> 12.4 s (19.6 -> 25.3 s), dynamic 5.2 ->
  11.3 s (17.5 -> 27.0 s): about 2x on MiniLM, the segment check now running where the row rule passed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from optimizer.api import optimize, optimize_with_report
from passes.quantization import int4
from tests.helpers import FIXTURES, split_pipeline, without_layer_probe
from tests.test_review_int4 import _record, _stack, _tamper_scales


def _tamper_block_with_an_int8_layer(
    monkeypatch, int8_layer: str = "mm3", layer_name: str = "mm1", factor: float = 1.3
) -> None:
    """``layer_name``'s first block written with its scale times ``factor`` (the twin keeps the pass's own values,
    as a packing bug would), and ``int8_layer`` given the int8 scheme as the budget gives a sensitive layer."""
    scheme = int4.Int4QuantizationPass.scheme

    def int8_scheme(self, layer):
        return "int8" if layer.node.name == int8_layer else scheme(self, layer)

    _tamper_scales(
        monkeypatch, layer_name, lambda scales: scales.__setitem__((0, 0), scales[0, 0] * np.float32(factor))
    )
    monkeypatch.setattr(int4.Int4QuantizationPass, "scheme", int8_scheme)


def test_one_blocks_scale_off_beside_an_int8_layer_is_rolled_back_at_level_4(monkeypatch):
    _tamper_block_with_an_int8_layer(monkeypatch)
    _, report = optimize_with_report(_stack(), quantize="int4", quantize_outputs=True, int4_accuracy_level=4)
    record = _record(report)
    assert any("1 layers int8" in note for note in record.notes), record.notes
    assert record.status == "rolled back", record.twin


def test_one_blocks_scale_off_beside_an_int8_layer_is_rolled_back_at_level_0(monkeypatch):
    _tamper_block_with_an_int8_layer(monkeypatch)
    _, report = optimize_with_report(_stack(), quantize="int4", quantize_outputs=True, int4_accuracy_level=0)
    record = _record(report)
    assert any("1 layers int8" in note for note in record.notes), record.notes
    assert record.status == "rolled back", record.twin


def test_one_blocks_scale_off_without_an_int8_layer_is_rolled_back(monkeypatch):
    without_layer_probe(monkeypatch)  # which catches it first; this is the level-0 check behind it
    # The same tamper, no int8 layer: the level-0 check (ac72fef) rolls it back.
    _tamper_block_with_an_int8_layer(monkeypatch, int8_layer="none")
    _, report = optimize_with_report(_stack(), quantize="int4", quantize_outputs=True, int4_accuracy_level=4)
    record = _record(report)
    assert record.status == "rolled back"
    assert "accuracy_level 0" in record.detail


LLAMA_DOWN = "/model/model/layers.{}/mlp/down_proj/MatMul"


def test_a_decoders_block_scale_off_beside_an_int8_layer_is_rolled_back(monkeypatch):
    # Without the int8 layer the same tamper is rolled back ("with its MatMulNBits at accuracy_level 0").
    _tamper_block_with_an_int8_layer(monkeypatch, LLAMA_DOWN.format(1), LLAMA_DOWN.format(0), 1.15)
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    _, report = optimize_with_report(model, passes=["quantize-int4"], int4_accuracy_level=4)
    record = _record(report)
    assert any("1 layers int8" in note for note in record.notes), record.notes
    assert record.status == "rolled back", record.twin


LLAMA_Q = "/model/model/layers.0/self_attn/q_proj/MatMul"


def _scale_q_proj(monkeypatch, factor: float) -> None:
    """Layer 0's q_proj written with every int4 block scale times ``factor``: one layer's gain off, as a packing
    bug would leave it; the twin keeps the pass's own values."""
    written = int4.Int4QuantizationPass.quantize_layer

    def quantize_layer(self, graph, layer):
        written(self, graph, layer)
        if layer.node.name != LLAMA_Q or self._probe is not None:
            return
        value = graph.initializers[f"{LLAMA_Q}.scales"]
        value.const_value = ir.tensor(value.const_value.numpy() * np.float32(factor), name=value.name)

    monkeypatch.setattr(int4.Int4QuantizationPass, "quantize_layer", quantize_layer)


def test_q_projs_scales_a_few_percent_high_are_rolled_back_through_the_pipeline(monkeypatch):
    # 7c97d60 / test_review_systematic catch 1 % and 5 % on make_inputs(seed=3) with a bare Verifier; through
    # optimize_with_report (the cache the model builds, the second binding, the prefill) 1.01, 1.02 and 1.03
    # were applied (twin max |Δ| 2.2e-4 / 4.4e-4 / 6.6e-4: the twin's checks still pass them) and only 1.05
    # rolled back, until q_proj was run alone on probe rows.
    _scale_q_proj(monkeypatch, 1.02)
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    _, report = optimize_with_report(model, passes=["quantize-int4"], int4_accuracy_level=4)
    record = _record(report)
    assert record.status == "rolled back", record.twin


def test_q_projs_int8_scale_off_that_misses_end_to_end_is_rolled_back(monkeypatch):
    from passes.quantization import dynamic

    written = dynamic._quantize_matmul

    def quantize_matmul(graph, layer, *args, **kwargs):
        written(graph, layer, *args, **kwargs)
        if layer.node.name == LLAMA_Q:
            value = graph.initializers[f"{LLAMA_Q}.weight_scale"]
            value.const_value = ir.tensor(value.const_value.numpy() * np.float32(1.02), name=value.name)

    monkeypatch.setattr(dynamic, "_quantize_matmul", quantize_matmul)
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    # quantize="dynamic" in two runs (the same passes in the same order): the passes before the quantizer unverified
    # (tests/test_respelled_fixtures.py verifies the default pipeline on this fixture), then the quantizer, verified.
    first, rest = split_pipeline("quantize-dynamic", quantize="dynamic")
    _, report = optimize_with_report(optimize(model, first, verify=False), rest, quantize="dynamic")
    record = _record(report, "quantize-dynamic")
    assert record.status == "rolled back", record.twin
