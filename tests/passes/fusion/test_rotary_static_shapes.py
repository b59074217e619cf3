"""fuse-rotary-embedding after ``--static-shapes``: a static ``position_ids`` still takes any position value.

``bind-dims`` fixes ``position_ids: [1, 128]``, and ONNX Runtime refuses any other size before running a node,
so cos/sin could not be evaluated at the caches' 4,096 positions and every rotary was refused. The values of
``position_ids`` stay free, so the caches are evaluated 128 positions at a time (up to where a position table
ends), then checked at positions drawn below their end.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import optimizer
from passes.dim_binding import BindDimsPass
from passes.fusion.rotary_embedding import RotaryEmbeddingFusion
from tests.helpers import FIXTURES, assert_same_outputs, op_types, run
from tests.passes.fusion.test_rotary_embedding import _position_table_model
from tests.passes.fusion.test_rotary_positions import HIDDEN, _decoder_rotary

_BATCH, _SEQUENCE = 2, 5


def _static(model: ir.Model, sequence: int = _SEQUENCE) -> ir.Model:
    """``model`` with its batch and sequence bound (bind-dims, as ``--static-shapes`` runs it), shapes inferred."""
    bound = BindDimsPass({"batch": _BATCH, "sequence": sequence})(model).model
    return ir.passes.common.ShapeInferencePass()(bound).model


def _hidden_feeds(positions: np.ndarray) -> dict[str, np.ndarray]:
    hidden = np.random.default_rng(0).standard_normal((_BATCH, _SEQUENCE, HIDDEN)).astype(np.float32)
    return {"hidden": hidden, "position_ids": positions.astype(np.int64)}


def _shift_by_smallest(node: ir.Node, index: int) -> None:
    """``node`` reads ``positions + ReduceMin(positions)`` as its input ``index`` (a near miss of a table read)."""
    positions = node.inputs[index]
    smallest = ir.node("ReduceMin", [positions], {"keepdims": 1})
    shifted = ir.node("Add", [positions, smallest.outputs[0]])
    node.graph.insert_before(node, [smallest, shifted])
    node.replace_input_with(index, shifted.outputs[0])


def test_static_position_ids_take_every_position_below_the_caches_end():
    model = _static(_decoder_rotary())
    assert list(model.graph.inputs[1].shape) == [_BATCH, _SEQUENCE]
    fusion = RotaryEmbeddingFusion(cache_length=64)
    after = fusion(model.clone()).model
    assert fusion.fused_count == 2, fusion.refusals
    assert not {"Cos", "Sin", "Neg"} & set(op_types(after))
    caches = {tuple(n.inputs[2].const_value.shape) for n in after.graph if n.op_type == "RotaryEmbedding"}
    assert caches == {(64, 4)}
    for positions in (
        np.stack([np.arange(59, 64), np.arange(_SEQUENCE)]),
        np.array([[40, 3, 63, 17, 0], [8, 8, 8, 8, 8]]),
    ):
        assert_same_outputs(model, after, _hidden_feeds(positions), rtol=1e-5, atol=1e-5)


def test_caches_end_where_a_position_table_ends_behind_static_position_ids():
    # 20 rows, positions fed 5 at a time: the fifth run (20..24) is refused, the table ends at 20.
    model = _static(_position_table_model(rows=20), sequence=6)
    result = RotaryEmbeddingFusion(cache_length=64)(model.clone())
    assert result.modified and op_types(result.model).count("RotaryEmbedding") == 1, result.refusals
    assert result.notes[0].startswith("rotary caches end at 20 positions")
    (rotary,) = [n for n in result.model.graph if n.op_type == "RotaryEmbedding"]
    assert rotary.inputs[2].const_value.shape == (20, 4)
    x = np.random.default_rng(1).standard_normal((_BATCH, 2, 6, 8)).astype(np.float32)
    positions = np.array([[19, 18, 0, 5, 12, 19], [14, 15, 16, 17, 18, 19]])
    assert_same_outputs(model, result.model, {"x": x, "position_ids": positions}, rtol=1e-5, atol=1e-5)


def test_tables_that_read_other_positions_of_the_run_are_left_alone():
    # Angles of position_ids + min(position_ids): each run of consecutive positions shifts its own rows
    # (row p of run k is p + 5k), which the caches built run by run would hide; drawn positions show it.
    model = _decoder_rotary()
    _shift_by_smallest(next(n for n in model.graph if n.op_type == "Cast"), 0)
    model = _static(model)
    assert run(model, _hidden_feeds(np.zeros((_BATCH, _SEQUENCE))))  # the near miss runs
    result = RotaryEmbeddingFusion(cache_length=64)(model)
    assert not result.modified
    assert any("not the caches' rows for their positions" in line for line in result.refusals), result.refusals


@pytest.mark.parametrize("name", ["llama_kv_legacy", "llama_kv_dynamo"])
def test_the_static_shapes_pipeline_fuses_the_rotary_of_both_llama_exports(name):
    model = ir.load(FIXTURES / f"{name}.onnx")
    after, report = optimizer.optimize_with_report(model.clone(), static_shapes=True)
    (record,) = [r for r in report.passes if r.name == "fuse-rotary-embedding"]
    assert record.status == "applied", (record.status, report.failures())
    assert op_types(after).count("RotaryEmbedding") == 4
    # Any position below --max-sequence, the last ones included, as the original computes them.
    rng = np.random.default_rng(0)
    feeds = {}
    for value in after.graph.inputs:
        shape = list(value.shape)
        if value.name == "input_ids":
            feeds[value.name] = rng.integers(1, 256, shape)
        elif value.name == "attention_mask":
            feeds[value.name] = np.ones(shape, np.int64)
        elif value.name == "position_ids":
            feeds[value.name] = (4096 - shape[1] + np.arange(shape[1]))[None].repeat(shape[0], 0)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    bound = BindDimsPass({"batch": 1, "sequence": 128, "past_sequence": 128, "total_sequence": 256})(model).model
    assert_same_outputs(bound, after, feeds, rtol=1e-3, atol=1e-4)


def test_caches_ending_at_a_table_are_noted_once_however_many_pairs_read_it():
    # GPT-J's dynamo export gathers cos/sin once per layer: the same note came once per pair.
    proto = ir.serde.serialize_model(_position_table_model(rows=20))
    renamed = {name: f"{name}_2" for name in ("cos3", "sin3", "cos", "sin", "lo", "hi", "nhi", "rot", "a", "b", "y")}
    for node in list(proto.graph.node):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed.get(name, name) for name in node.input]
        copy.output[:] = [renamed.get(name, name) for name in node.output]
        proto.graph.node.append(copy)
    proto.graph.output.append(onnx.helper.make_tensor_value_info("y_2", onnx.TensorProto.FLOAT, None))
    result = RotaryEmbeddingFusion(cache_length=64)(ir.from_proto(onnx.shape_inference.infer_shapes(proto)))
    assert op_types(result.model).count("RotaryEmbedding") == 2
    assert [note[:40] for note in result.notes] == [
        "rotary caches end at 20 positions, where",
        "position_ids index the fused op's cos/si",
    ]


def test_a_static_sequence_longer_than_the_caches_is_refused():
    # A review: 40 static positions over 32-row caches fused, and ONNX Runtime's RotaryEmbedding then refused
    # every call ("Updating cos_cache and sin_cache ... is not currently supported"): the graph takes no other shape.
    model = _static(_decoder_rotary(), sequence=40)
    result = RotaryEmbeddingFusion(cache_length=32)(model)
    assert not result.modified
    assert any("hold 40 positions, more than the 32 the caches cover" in line for line in result.refusals), (
        result.refusals
    )


def test_caches_of_a_refused_pair_are_not_noted_as_ending():
    # A review: the "caches end at 20 positions" note was printed for a pair then refused, so nothing was fused.
    model = _position_table_model(rows=20)
    _shift_by_smallest(next(n for n in model.graph if n.op_type == "Gather"), 1)  # the cos table's only
    result = RotaryEmbeddingFusion(cache_length=64)(_static(model, sequence=6))
    assert not result.modified, result.notes
    assert not any(line.startswith("rotary caches end") for line in result.notes)
