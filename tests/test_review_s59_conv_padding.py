"""Review of split-conv-padding: its timings run at ``--threads`` (and ``--threads`` is not refused on the default
CPU pipeline, which times them), and a Conv that ONNX Runtime runs as int8 (a float weight behind a single-scale
DequantizeLinear, quantized again after) is not split: a Pad between would keep it float, 1.78x slower."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer import exit_codes
from optimizer.options import Options
from optimizer.protocol import PassContext
from passes import catalog
from passes.conv_padding import PaddingSpeed, SplitConvPaddingPass
from tests._cli_models import run_cli


def _tall_conv_proto(height: int = 64) -> onnx.ModelProto:
    """``x [1, 4, height, 1]`` → Conv (8 filters of 9×1, pads 4/4) → ``y``, every size static."""
    weight = np.random.default_rng(0).standard_normal((8, 4, 9, 1)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[4, 0, 4, 0], name="conv")],
        "tall",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, height, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, height, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_catalog_hands_threads_to_split_conv_padding():
    context = PassContext(options=Options(threads=1))
    spec = next(spec for spec in catalog.CATALOG if spec.name == "split-conv-padding")
    assert spec.factory(context).speed.threads == 1
    assert spec.kernels_timed(context.options)


def test_threads_on_the_default_cpu_pipeline_set_the_padding_timings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    measured: list[int] = []

    def measure(self, shape):
        measured.append(self.threads)
        return 0.5

    monkeypatch.setattr(PaddingSpeed, "_time", measure)
    onnx.save(_tall_conv_proto(), tmp_path / "tall.onnx")
    code, _, err = run_cli(["optimize", tmp_path / "tall.onnx", "-o", tmp_path / "out.onnx", "--threads", "1"], capsys)
    assert code == exit_codes.OK, err
    assert measured == [1]
    keys = json.loads((tmp_path / "cache" / PaddingSpeed.CACHE_FILE).read_text())
    assert all("|1 threads|" in key for key in keys), keys


def _qdq_conv() -> ir.Model:
    """``Q → DQ → Conv (float 9×1 weight, pads 4/4) → Q → DQ``: ONNX Runtime quantizes the weight (QLinearConv)."""
    weight = np.random.default_rng(0).standard_normal((8, 8, 9, 1)).astype(np.float32) * 0.05
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q_in"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
            helper.make_node("Conv", ["xd", "w"], ["c"], pads=[4, 0, 4, 0], name="conv"),
            helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q_out"),
            helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"], name="dq_out"),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 64, 1])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel()),
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.02]),
            helper.make_tensor("z", TensorProto.UINT8, [], [128]),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_a_conv_onnx_runtime_runs_as_int8_is_not_split(tmp_path):
    timed: list = []

    def measure(shape):
        timed.append(shape)
        return 0.5

    speed = PaddingSpeed("cpu", 1, path=tmp_path / "timings.json", measure=measure)
    result = SplitConvPaddingPass(speed=speed)(_qdq_conv())
    assert not result.modified and not timed
    assert any("runs it as int8" in line for line in result.refusals), result.refusals
