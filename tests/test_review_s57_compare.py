"""A hostile review of ``graphopt compare`` (2026-12-07): each case refused a valid comparison, failed a gate on
identical outputs, or printed a wrong figure before.

An input whose first dim is fixed beside a batch (``t [1]`` beside ``x [batch, 4]``) was tiled to each
``--batch`` (or cut to it), and ONNX Runtime refused the model. An array of ``--inputs`` that matches no graph
input, said to be ignored, counted as samples: 6 samples beside a stray ``meta [1]`` were "1 samples", a
fixed-batch model's valid inputs were refused as no multiple of its batch, and a stray empty array refused the
data. A sequence output whose tensors differ in shape was never compared, so a model compared with itself
failed ``--min-cosine``. An int64 output that became int32 with the same values failed ``--min-cosine`` as
"differs" where the table said its largest error was 0.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer import exit_codes
from tests._cli_models import run_cli

_FAST = ["--time-budget", "0.5", "--iterations", "10", "--warmup", "0", "--threads", "1", "-q"]


def _save(path, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _value(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_an_input_of_a_fixed_size_beside_the_batch_is_fed_whole_at_every_batch(tmp_path, capsys):
    # y = x * t, t [1] beside x [batch, 4]: --batch 4 tiled t to [4] and ONNX Runtime refused it (exit 2).
    model = _save(
        tmp_path / "temperature.onnx",
        [helper.make_node("Mul", ["x", "t"], ["y"])],
        [_value("x", TensorProto.FLOAT, ["batch", 4]), _value("t", TensorProto.FLOAT, [1])],
        [_value("y", TensorProto.FLOAT, ["batch", 4])],
    )
    code, _, err = run_cli(["compare", model, model, "--batch", "1,4", *_FAST, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert [b["batch"] for b in json.loads((tmp_path / "r.json").read_text())["providers"][0]["batches"]] == [1, 4]
    # y = x[:, :3] * s, s [3] beside 3 samples of x: even the default --batch 1 cut s to [1].
    scaled = _save(
        tmp_path / "scaled.onnx",
        [helper.make_node("Slice", ["x", "start", "end", "axes"], ["xs"]), helper.make_node("Mul", ["xs", "s"], ["y"])],
        [_value("x", TensorProto.FLOAT, ["batch", 4]), _value("s", TensorProto.FLOAT, [3])],
        [_value("y", TensorProto.FLOAT, ["batch", 3])],
        [
            numpy_helper.from_array(np.array([0], np.int64), "start"),
            numpy_helper.from_array(np.array([3], np.int64), "end"),
            numpy_helper.from_array(np.array([1], np.int64), "axes"),
        ],
    )
    np.savez(tmp_path / "in.npz", x=np.ones((3, 4), np.float32), s=np.array([1, 2, 3], np.float32))
    code, _, err = run_cli(
        ["compare", scaled, scaled, "--inputs", tmp_path / "in.npz", "--batch", "1,6", *_FAST], capsys
    )
    assert code == 0, err


def test_an_array_that_matches_no_input_counts_no_samples(tmp_path, capsys):
    relu = [helper.make_node("Relu", ["x"], ["y"])]
    dynamic = _save(
        tmp_path / "dynamic.onnx",
        relu,
        [_value("x", TensorProto.FLOAT, ["batch", 4])],
        [_value("y", TensorProto.FLOAT, ["batch", 4])],
    )
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "stray.npz", x=x, meta=np.zeros(1, np.float32))
    argv = ["compare", dynamic, dynamic, "--inputs", tmp_path / "stray.npz", *_FAST, "--json", tmp_path / "r.json"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    provider = report["providers"][0]
    assert provider["accuracy"][0]["samples"] == 6
    assert "(6 samples)" in provider["accuracy_data"], provider["accuracy_data"]  # was "(1 samples)"
    assert any("'meta' matches no graph input: ignored" in w for w in report["warnings"])
    # A stray empty array refused the data: "the arrays hold no samples (axis 0 is empty)".
    np.savez(tmp_path / "empty.npz", x=x, meta=np.zeros(0, np.float32))
    code, _, err = run_cli(["compare", dynamic, dynamic, "--inputs", tmp_path / "empty.npz", *_FAST], capsys)
    assert code == 0, err
    # A model that fixes its batch at 2, 4 samples and a stray [3]: refused as "3 samples ... a multiple of 2".
    fixed = _save(
        tmp_path / "fixed.onnx",
        relu,
        [_value("x", TensorProto.FLOAT, [2, 4])],
        [_value("y", TensorProto.FLOAT, [2, 4])],
    )
    np.savez(tmp_path / "fixed.npz", x=x[:4], note=np.zeros(3, np.float32))
    code, _, err = run_cli(["compare", fixed, fixed, "--inputs", tmp_path / "fixed.npz", *_FAST], capsys)
    assert code == 0, err


def _sequence_model(path, scale: float):
    """``s = SplitToSequence(x * scale, [2, 3])``: a sequence of a ``[batch, 2]`` and a ``[batch, 3]``."""
    return _save(
        path,
        [
            helper.make_node("Mul", ["x", "k"], ["xk"]),
            helper.make_node("SplitToSequence", ["xk", "split"], ["s"], axis=1),
        ],
        [_value("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array(scale, np.float32), "k"),
            numpy_helper.from_array(np.array([2, 3], np.int64), "split"),
        ],
    )


def test_a_sequence_output_is_compared_tensor_by_tensor(tmp_path, capsys):
    before = _sequence_model(tmp_path / "before.onnx", 1.0)
    same = _sequence_model(tmp_path / "same.onnx", 1.0)
    code, _, err = run_cli(
        ["compare", before, same, *_FAST, "--min-cosine", "0.99", "--json", tmp_path / "r.json"], capsys
    )
    # Was 5: "output 's' is a sequence of 2 in AFTER, a sequence of 2 in BEFORE: its accuracy is not compared".
    assert code == 0, err
    accuracy = json.loads((tmp_path / "r.json").read_text())["providers"][0]["accuracy"]
    assert [(a["name"], a["exact"]) for a in accuracy] == [("s[0]", True), ("s[1]", True)]
    scaled = _sequence_model(tmp_path / "scaled.onnx", 2.0)
    code, _, err = run_cli(["compare", before, scaled, *_FAST, "--min-cosine", "0.99"], capsys)
    assert code == exit_codes.LESS_ACCURATE and "output 's[0]' is scaled" in err, err


def _index_model(path, elem):
    nodes = [helper.make_node("ArgMax", ["x"], ["i64"], axis=1, keepdims=0)]
    if elem != TensorProto.INT64:
        nodes.append(helper.make_node("Cast", ["i64"], ["idx"], to=elem))
    else:
        nodes[0].output[0] = "idx"
    return _save(path, nodes, [_value("x", TensorProto.FLOAT, ["batch", 4])], [_value("idx", elem, ["batch"])])


def test_an_integer_output_of_another_dtype_with_the_same_values_passes_the_cosine_gate(tmp_path, capsys):
    before = _index_model(tmp_path / "before.onnx", TensorProto.INT64)
    after = _index_model(tmp_path / "after.onnx", TensorProto.INT32)
    code, out, err = run_cli(["compare", before, after, *_FAST[:-1], "--min-cosine", "0.99"], capsys)
    # Was 5: "output 'idx' (int64) differs and has no cosine similarity", beside max abs 0 in the table.
    assert code == 0, err
    assert "output 'idx' is int32[1] in AFTER, int64[1] in BEFORE" in out  # the dtype change is still said


def test_a_batch_bound_by_dim_but_not_timed_is_said(tmp_path, capsys):
    # compare --dim batch=3 with the default --batch 1: timed and scored at batch 1, and nothing said so.
    model = _save(
        tmp_path / "relu.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [_value("x", TensorProto.FLOAT, ["batch", 4])],
        [_value("y", TensorProto.FLOAT, ["batch", 4])],
    )
    code, _, err = run_cli(["compare", model, model, "--dim", "batch=3", *_FAST, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any("--dim batch=3: inputs are drawn at that batch, then tiled or cut to --batch 1" in w for w in warnings)
    code, _, err = run_cli(
        ["compare", model, model, "--dim", "batch=3", "--batch", "3", *_FAST, "--json", tmp_path / "r3.json"], capsys
    )
    assert code == 0, err
    assert not any("--dim batch=3" in w for w in json.loads((tmp_path / "r3.json").read_text())["warnings"])
