"""Review s62 (late, second look at b4deca6: LongRoPE's exception to the probes' refusal).

Finding: EmbedLayerNormalization's computed position ids (and a computed segment index of zeros) were checked with
ones for token ids, and nothing required them to read no token id's value: ``arange(S) + (max(input_ids) > 4090)``
is ``0..S-1`` at every probe, so it was fused as the op's default positions and reported verified (generated ids
rarely reach 4091 of 4096), off by 3.0 on a row holding id 4095. b4deca6 made the one-element spelling pass too
(``_position_reduces`` took any integer input's ReduceMax for position ids: checked at ids 0 and ``--max-sequence``
- 1, not the vocabulary's); the elementwise one (``input_ids > 4090``) passed before it. Computed indices must now
read no values but a mask's, and the exception reads only an input named like position ids.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from passes.fusion._probe import probe_lengths
from passes.fusion.embed_layer_norm import EmbedLayerNormFusion
from tests.helpers import run

VOCAB, POSITIONS, HIDDEN, THRESHOLD = 4096, 80, 4, 4090


def _model(elementwise: bool, segment: bool = False) -> ir.Model:
    """``LayerNorm(wte[ids] + wpe[arange(S) + (max(ids) > THRESHOLD)])`` (or ``ids > THRESHOLD`` elementwise); with
    ``segment``, positions ``arange(S)`` and a third lookup ``wse[ids > THRESHOLD]`` (zeros at every probe)."""
    rng = np.random.default_rng(0)
    consts = {
        "wte": rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32),
        "wpe": rng.standard_normal((POSITIONS, HIDDEN)).astype(np.float32),
        "wse": rng.standard_normal((2, HIDDEN)).astype(np.float32),
        "gamma": np.ones(HIDDEN, np.float32),
        "beta": np.zeros(HIDDEN, np.float32),
        "zero": np.array(0, np.int64),
        "one": np.array(1, np.int64),
        "threshold": np.array(THRESHOLD, np.int64),
        "axis0": np.array([0], np.int64),
    }
    n = helper.make_node
    nodes = [
        n("Shape", ["input_ids"], ["shape"]),
        n("Gather", ["shape", "one"], ["S"], axis=0),
        n("Range", ["zero", "S", "one"], ["range"]),
        n("Unsqueeze", ["range", "axis0"], ["arange"]),
        n("Gather", ["wte", "input_ids"], ["words"]),
    ]
    if elementwise or segment:
        nodes.append(n("Greater", ["input_ids", "threshold"], ["big"]))
    else:
        nodes += [
            n("ReduceMax", ["input_ids"], ["largest"], keepdims=0),
            n("Greater", ["largest", "threshold"], ["big"]),
        ]
    nodes.append(n("Cast", ["big"], ["shift"], to=TensorProto.INT64))
    if segment:
        nodes += [
            n("Gather", ["wpe", "arange"], ["places"]),
            n("Gather", ["wse", "shift"], ["segments"]),
            n("Add", ["words", "places"], ["partial"]),
            n("Add", ["partial", "segments"], ["sum"]),
        ]
    else:
        nodes += [
            n("Add", ["arange", "shift"], ["positions"]),
            n("Gather", ["wpe", "positions"], ["places"]),
            n("Add", ["words", "places"], ["sum"]),
        ]
    nodes.append(n("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "embeddings",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", HIDDEN])],
        [numpy_helper.from_array(array, name) for name, array in consts.items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


def _wrong_by(model: ir.Model, fused: ir.Model) -> float:
    ids = np.array([[3, VOCAB - 1, 7, 9]], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return float(np.abs(run(model, feeds)["y"] - run(fused, feeds)["y"]).max())


def _check(model: ir.Model) -> None:
    fusion = EmbedLayerNormFusion(max_sequence=64)
    result = fusion(model.clone())
    difference = _wrong_by(model, result.model)
    assert difference < 1e-5, f"fused {fusion.fused_count}, off by {difference:.3g} on a row holding id {VOCAB - 1}"
    if fusion.fused_count == 0:
        assert result.refusals, "left unfused without a reason"


def test_positions_chosen_by_the_largest_token_id_are_not_fused_as_the_token_index():
    _check(_model(elementwise=False))


def test_positions_shifted_by_token_ids_elementwise_are_not_fused_as_the_token_index():
    _check(_model(elementwise=True))


def test_a_segment_index_read_off_token_ids_is_not_taken_for_zeros():
    _check(_model(elementwise=True, segment=True))


def test_an_ordering_of_the_largest_token_id_is_refused_by_the_probes():
    model = _model(elementwise=False)
    condition = next(node for node in model.graph if node.op_type == "Greater").outputs[0]
    inputs = [model.graph.inputs[0]]
    found = probe_lengths([condition], 64, model=model, inputs=inputs)
    assert isinstance(found, str) and "cannot bracket" in found, found
