"""A hostile review (session 69, late 7) of the last three merges (no batch dim, tokenizer masks and lengths, compare's
gates).

1. Fixed: a graph network that reads its nodes through ``GatherElements`` (torch's ``x.gather(0, index)``, its edges'
   sources tiled over the features) was not seen as indexed by ``edge_index``: ``_index_bounds`` followed ``Gather``,
   ``GatherND`` and the scatters alone. Its ``num_nodes`` (dynamo's ``s0``) stayed a guessed batch, ``compare --inputs``
   cut ``x`` into 16 nodes beside 60 edges and said "ONNX Runtime cannot run it" of the model.

2. Fixed: float per-row lengths (SpeechBrain's ``wav_lens``, fractions of each row) were drawn normal by verification,
   most of them negative, every frame of such a row masked; ``make-inputs`` wrote them as zeros, so a template whose
   audio the user filled in masked every frame (a mean over the frames: NaN). Both are now fractions: 1, the whole row
   (verification's last of two or more rows 0.75, as integer lengths are a quarter shorter).

3. Fixed: integer per-row lengths beside a batch torch's dynamo export names ``s0`` (``waveforms [s0, s1]``,
   ``waveforms_lens [s0]``) were drawn 0 or 1, as any integer: ``_row_length`` took a batch only where one is named
   like it or guessed by ``_batch_like_dims``, which guesses no dim that also leads a rank-1 input, though
   ``has_no_batch`` (the merge's ``_leading_dims``) reads ``s0`` as a batch. Every frame of such a speech front end
   was masked (a mean over them: inf), as for the named batch a review fixed before, and ``make-inputs`` wrote zeros.

4. Fixed: a decoder's static cache written at its positions (``ScatterND(cache, cache_position)``, HF's
   ``StaticCache.update``) had its generated ``cache_position`` bounded by the cache, since the merge reads scatter
   indices as a table's: 128 positions wrapped within a cache of 16 slots, each slot written eight times (undefined in
   ONNX), and ``optimize`` verified the model on a prefill it can never take. Before the merge ONNX Runtime refused
   the 128 positions and verification ran 16 tokens ("verified on shorter ones"); positions a scatter writes at count
   up unwrapped again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from optimizer.samples import has_no_batch, open_samples, split_samples


def _gathering_graph_model() -> onnx.ModelProto:
    """A graph network's messages ``x.gather(0, src.unsqueeze(1).repeat(1, 8)) @ W``: ``x [s0, 8]``, ``edge_index
    [2, s1]``, dynamo's names."""
    weight = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["edge_index", "zero"], ["src"], axis=0),
        helper.make_node("Unsqueeze", ["src", "one"], ["column"]),
        helper.make_node("Tile", ["column", "repeats"], ["index"]),
        helper.make_node("GatherElements", ["x", "index"], ["messages"], axis=0),
        helper.make_node("MatMul", ["messages", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "gathering_graph",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s0", 8]),
            helper.make_tensor_value_info("edge_index", TensorProto.INT64, [2, "s1"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["s1", 4])],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([1, 8], np.int64), "repeats"),
            numpy_helper.from_array(weight, "w"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _graph_rows() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(40, 8)).astype(np.float32), "edge_index": rng.integers(0, 40, size=(2, 60))}


def test_a_graph_network_that_gathers_elements_of_its_nodes_holds_one_sample_a_graph() -> None:
    model = ir.from_proto(_gathering_graph_model())
    assert has_no_batch(model)  # False before: num_nodes a guessed batch
    data = open_samples(_graph_rows(), model, flag="--inputs")
    assert [len(batch["x"]) for batch in split_samples(data, model=model)] == [40]  # [16, 16, 8] before
    generated = make_inputs(model)
    assert generated["edge_index"].max() < len(generated["x"])  # within the nodes it gathers


def test_compare_runs_such_a_graph_network_whole(tmp_path: Path) -> None:
    from optimizer.compare import CompareSettings, compare

    path, data = tmp_path / "gathering_graph.onnx", tmp_path / "graph.npz"
    onnx.save(_gathering_graph_model(), path)
    np.savez(data, **_graph_rows())
    settings = CompareSettings(time_budget=0.1, iterations=2, warmup=1, threads=1)
    report = compare(path, path, settings=settings, inputs=data)  # "ONNX Runtime cannot run it" before (index 39)
    assert [batch.batch for batch in report.providers[0].batches] == [1]


def _relative_lengths_model() -> onnx.ModelProto:
    """SpeechBrain's mean over each row's frames: ``sum(wavs[:, :round(wav_lens * T)]) / (wav_lens * T)``."""
    nodes = [
        helper.make_node("Shape", ["wavs"], ["shape"], start=1, end=2),
        helper.make_node("Squeeze", ["shape"], ["frames_i"]),
        helper.make_node("Cast", ["frames_i"], ["frames"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero", "frames", "one"], ["positions"]),
        helper.make_node("Mul", ["wav_lens", "frames"], ["length"]),
        helper.make_node("Unsqueeze", ["length", "axis"], ["column"]),
        helper.make_node("Less", ["positions", "column"], ["real"]),
        helper.make_node("Cast", ["real"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wavs", "mask"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis"], ["total"], keepdims=0),
        helper.make_node("Div", ["total", "length"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "relative_lengths",
        [
            helper.make_tensor_value_info("wavs", TensorProto.FLOAT, ["batch", "time"]),
            helper.make_tensor_value_info("wav_lens", TensorProto.FLOAT, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
        [
            numpy_helper.from_array(np.array(0, np.float32), "zero"),
            numpy_helper.from_array(np.array(1, np.float32), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "axis"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_float_lengths_are_generated_as_fractions_of_each_row() -> None:
    generated = make_inputs(ir.from_proto(_relative_lengths_model()), {"batch": 3, "time": 64})
    np.testing.assert_array_equal(generated["wav_lens"], [1, 1, 0.75])  # normal draws before, most negative


def test_make_inputs_writes_float_lengths_as_whole_rows(tmp_path: Path) -> None:
    import onnxruntime as ort

    from optimizer.input_skeleton import write_input_skeleton

    path = tmp_path / "relative_lengths.onnx"
    onnx.save(_relative_lengths_model(), path)
    line = write_input_skeleton(str(path), str(tmp_path / "t.npz"), {"batch": 2, "time": 64})
    template = dict(np.load(tmp_path / "t.npz"))
    np.testing.assert_array_equal(template["wav_lens"], [1, 1])  # zeros before
    assert "wav_lens float32[2] lengths as fractions of each row (1: whole)" in line, line
    template["wavs"] = np.ones_like(template["wavs"])  # the user's audio
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.isfinite(session.run(None, template)[0]).all()  # NaN before: every frame masked


def _dynamo_lengths_model() -> onnx.ModelProto:
    """A mean over each row's frames, ``sum(waveforms) / waveforms_lens``, with dynamo's names ``s0`` and ``s1``."""
    nodes = [
        helper.make_node("ReduceSum", ["waveforms", "axis"], ["total"], keepdims=0),
        helper.make_node("Cast", ["waveforms_lens"], ["lengths"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["total", "lengths"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamo_lengths",
        [
            helper.make_tensor_value_info("waveforms", TensorProto.FLOAT, ["s0", "s1"]),
            helper.make_tensor_value_info("waveforms_lens", TensorProto.INT64, ["s0"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["s0"])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_lengths_beside_a_dynamo_named_batch_are_each_rows_length() -> None:
    model = ir.from_proto(_dynamo_lengths_model())
    assert not has_no_batch(model)  # s0 is a batch (the merge's reading)
    generated = make_inputs(model, {"s0": 3, "s1": 64})
    np.testing.assert_array_equal(generated["waveforms_lens"], [64, 64, 48])  # [1, 1, 0] before


def _static_cache_model() -> onnx.ModelProto:
    """A decoder's static cache update, ``cache.index_copy_(2, cache_position, key)`` as ``ScatterND`` on the cache
    transposed: ``input_ids [s0, s1]``, ``cache_position [s1]``, ``past_key [s0, 1, 16, 4]`` (16 slots)."""
    table = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["hidden"]),
        helper.make_node("Unsqueeze", ["hidden", "one"], ["key"]),
        helper.make_node("Transpose", ["past_key"], ["slots"], perm=[2, 0, 1, 3]),
        helper.make_node("Transpose", ["key"], ["updates"], perm=[2, 0, 1, 3]),
        helper.make_node("Unsqueeze", ["cache_position", "last"], ["index"]),
        helper.make_node("ScatterND", ["slots", "index", "updates"], ["written"]),
        helper.make_node("Transpose", ["written"], ["present_key"], perm=[1, 2, 0, 3]),
    ]
    graph = helper.make_graph(
        nodes,
        "static_cache",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["s0", "s1"]),
            helper.make_tensor_value_info("cache_position", TensorProto.INT64, ["s1"]),
            helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["s0", 1, 16, 4]),
        ],
        [helper.make_tensor_value_info("present_key", TensorProto.FLOAT, ["s0", 1, 16, 4])],
        [
            numpy_helper.from_array(table, "embedding"),
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_positions_a_static_cache_is_written_at_do_not_wrap_within_it() -> None:
    model = ir.from_proto(_static_cache_model())
    assert not has_no_batch(model)  # the scatter's positions mark no batch of "nodes"
    positions = make_inputs(model, {"s0": 1, "s1": 32})["cache_position"]
    np.testing.assert_array_equal(positions, np.arange(32))  # 0..15, 0..15 before: two tokens written to each slot
    assert make_inputs(model, {"s0": 1, "s1": 8})["cache_position"].tolist() == list(range(8))
