"""``compare --profile``'s time per operator type: warm-up runs left out, a subgraph's kernels counted once."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto
from onnx import helper as h

from optimizer.compare.profiling import time_per_op_type


def _kernel(name: str, op: str, ts: float, dur: float) -> dict:
    return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "tid": 1, "args": {"op_name": op}}


def _run(ts: float, dur: float) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur, "tid": 1}


def _write(tmp_path, events) -> str:
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events))
    return str(path)


def test_an_if_counts_its_own_time_not_its_branchs_kernels(tmp_path):
    # As ONNX Runtime writes them: the branch's kernels first, then the If that spans them.
    events = [
        _run(100, 1000),
        _kernel("ReduceSum_0", "ReduceSum", 110, 200),
        _kernel("Mul_0", "Mul", 400, 300),
        _kernel("Relu_1", "Relu", 710, 200),
        _kernel("If_2", "If", 390, 560),
    ]
    times = time_per_op_type(_write(tmp_path, events), 1)
    assert times == pytest.approx({"ReduceSum": 0.2, "Mul": 0.3, "Relu": 0.2, "If": 0.06})


def test_nested_ifs_each_count_their_own_time(tmp_path):
    events = [
        _run(0, 1000),
        _kernel("inner_Add", "Add", 300, 100),
        _kernel("If_inner", "If", 290, 120),
        _kernel("If_outer", "If", 280, 150),
    ]
    times = time_per_op_type(_write(tmp_path, events), 1)
    assert times == pytest.approx({"Add": 0.1, "If": 0.05})


def test_warm_up_runs_are_left_out(tmp_path):
    events = [_run(0, 5000), _kernel("Mul_0", "Mul", 10, 4900), _run(6000, 200), _kernel("Mul_0", "Mul", 6010, 150)]
    events += [_run(7000, 200), _kernel("Mul_0", "Mul", 7010, 250)]
    assert time_per_op_type(_write(tmp_path, events), 2, warmup=1) == pytest.approx({"Mul": 0.2})
    assert not (tmp_path / "trace.json").exists()


def test_on_onnx_runtimes_own_trace_the_operators_add_up_to_no_more_than_the_runs(tmp_path):
    """A model whose work is all in an If's branch: summed with the If and its branch both, and with the first run's
    allocations, the operators took about twice the measured runs' time."""
    then = h.make_graph(
        [h.make_node("Mul", ["x", "x"], ["y1"]), h.make_node("Relu", ["y1"], ["y"])],
        "then",
        [],
        [h.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    other = h.make_graph([h.make_node("Neg", ["x"], ["y"])], "else", [], [h.make_tensor_value_info("y", 1, None)])
    graph = h.make_graph(
        [
            h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            h.make_node("Greater", ["s", "z"], ["c"]),
            h.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other),
        ],
        "g",
        [h.make_tensor_value_info("x", TensorProto.FLOAT, [512, 512])],
        [h.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array(0, np.float32), "z")],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix = True, str(tmp_path / "t")
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.ones((512, 512), np.float32)
    for _ in range(2 + 10):
        session.run(None, {"x": x})
    path = session.end_profiling()
    runs = [event for event in json.loads(open(path).read()) if event.get("name") == "model_run"][2:]
    per_run_ms = sum(event["dur"] for event in runs) / len(runs) / 1000
    times = time_per_op_type(path, 10, warmup=2)
    assert {"Mul", "Relu", "If"} <= set(times)
    assert sum(times.values()) <= per_run_ms * 1.02, (times, per_run_ms)
    assert times["If"] < times["Mul"], times
