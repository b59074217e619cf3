"""Review of the twin check segment by segment: attacks on ``Verifier._check_twin_by_segment`` that must fail."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from optimizer.runtime import collect_values
from optimizer.verify import _cut_at, _segment_checkpoints
from passes.quantization.static import StaticQuantizationPass
from tests.passes.quantization.graphs import convnet, mlp, samples

# ONNX Runtime's integer kernels: what a static int8 result deploys as.
_INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger", "MatMulIntegerToFloat")


def _deployed_ops(model: ir.Model, path) -> list[str]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sorted(node.op_type for node in onnx.load(str(path)).graph.node if node.op_type in _INTEGER_OPS)


@pytest.mark.parametrize("build", [convnet, mlp])
def test_cutting_a_static_result_keeps_every_integer_kernel_it_deploys(build, tmp_path):
    # DQ -> Conv -> Relu -> Q: ONNX Runtime drops the Relu (its Q already clips at zero) and fuses
    # the rest into QLinearConv. A cut at the Relu's output would check a float Conv instead.
    model = build()
    result = StaticQuantizationPass(samples=samples(model, 16), quantize_outputs=True)(model.clone())
    names = _segment_checkpoints(result.model, result.twin, model)
    values = collect_values(result.twin.model, names, [samples(model, 2, seed=3)])[0] if names else {}
    deployed = _deployed_ops(result.model, tmp_path / "deployed.onnx")
    assert deployed
    assert _deployed_ops(_cut_at(result.model, names, values), tmp_path / "cut.onnx") == deployed
