"""Review s75 (late 74b): a second look at session 74's reliability changes. Static calibration in two runs and its
check for samples that meet (``passes/quantization/calibration.py``: which graphs are taken to keep their samples apart
without the check), saving a model whose small tensors are external data (``optimizer.runtime.save_model_file``), kernel
timing of a model with external weights in a folder of its own (``passes/_kernel_timing.py``) and the twin check's
int8 checkpoints dequantized when read (``optimizer.verify._DequantizedOnRead``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer import runtime
from passes.quantization import calibration


def _model(nodes, inputs) -> ir.Model:
    graph = helper.make_graph(
        [*nodes, helper.make_node("Relu", ["s"], ["y"])],
        "samples_meet",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _whole_batch_ranges(model, batches):
    return calibration.tensor_ranges(runtime.collect_values(model, ["s"], batches), "minmax")


def test_a_softmax_over_the_batch_axis_with_a_recorded_rank_is_calibrated_as_the_batch_whole():
    """``Softmax(x [batch, 4], axis=0)``: ``_from_axis_one`` read axis 0 of a rank-2 input as past the samples' axis
    (``0 + 2 >= 1``, a rule for negative axes), so the graph was taken to keep its samples apart, ran one sample a run,
    and its Softmax was calibrated to exactly (1.0, 1.0) for the batch's (0.08, 1.0)."""
    model = _model([helper.make_node("Softmax", ["x"], ["s"], axis=0)], {"x": ["batch", 4]})
    batches = [{"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}]
    whole = _whole_batch_ranges(model, batches)
    assert whole["s"][0] < 0.5  # the batch's Softmax spreads each column over its 3 samples
    assert calibration.calibrate(model, ["s"], batches, "minmax") == whole


def test_a_convolution_by_an_activation_kernel_is_calibrated_as_the_batch_whole():
    """``Conv(x [batch, 2, 6, 6], z [batch, 2, 3, 3])`` (a Siamese tracker's cross-correlation with its template's
    features as the kernel) makes each of the batch's output channels from one sample's kernel over every sample: taken
    for a convolution by constant weights, it ran one sample a run and its ranges were (-36, 44) for the batch's
    (-187, 237)."""
    model = _model([helper.make_node("Conv", ["x", "z"], ["s"])], {"x": ["batch", 2, 6, 6], "z": ["batch", 2, 3, 3]})
    rng = np.random.default_rng(0)
    scale = np.arange(1, 5, dtype=np.float32).reshape(4, 1, 1, 1)
    batches = [
        {
            "x": rng.standard_normal((4, 2, 6, 6)).astype(np.float32) * scale,
            "z": rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * scale[::-1],
        }
    ]
    ranges, _ = calibration.calibrate_with_means(model, ["s"], [], batches)
    assert ranges == _whole_batch_ranges(model, batches)
