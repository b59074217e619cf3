"""Review s78 late78b: the NCHWc channel block pruning keeps (843f97b, review s78 t5blk), read against ONNX Runtime.

MLAS (``onnxruntime/core/mlas/lib/platform.cpp``) sets a block of 16 only inside its AVX2/FMA branch, where the CPU
has AVX-512F and the OS saves its state (XCR0); elsewhere on x86 the block is 8. ONNX Runtime 1.32 on this review's
Zen 4 pads every blocked Conv's filters up to 16 (its session-optimized model: a 40- or 44-channel 1×1 Conv and a
40-channel depthwise Conv run as 48, 20 and 24 as 32), so a kept count off 16 costs what the multiple of 16 above it
costs.
"""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.cpu_features import CpuFeatures
from passes.pruning import _base
from passes.pruning.channels import ChannelPruningPass


def test_avx512f_without_avx2_is_not_mlas_block_of_16():
    """MLAS reaches its AVX-512F kernels (and the block of 16) only after AVX2 and FMA: a CPU that reports
    AVX-512F without AVX2 runs the block of 8, so pruning there must keep multiples of 8."""
    assert CpuFeatures("x86", frozenset({"avx512f"})).nchwc_block == 8
    assert CpuFeatures("x86", frozenset({"avx2", "avx512f"})).nchwc_block == 16


@pytest.fixture(scope="module")
def narrow_model():
    from tests.passes.pruning.graphs import inverted_residual

    return inverted_residual(expand=6)  # 48 expansion channels per block: 0.15 keeps 41, kept whole (48)


@pytest.mark.parametrize(("ratio", "cut"), [(0.15, False), (0.3, True)])
def test_on_avx512_a_narrow_group_keeps_no_count_onnx_runtime_pads_back(monkeypatch, narrow_model, ratio, cut):
    """0.15 keeps 41 of 48 (nearer 48 than 32: left whole, where a multiple of 8 kept 40), 0.3 keeps 34 (32)."""
    monkeypatch.setattr(_base, "CHANNEL_MULTIPLE", None)
    monkeypatch.setattr(_base, "cpu_features", lambda: CpuFeatures("x86", frozenset({"avx2", "avx512f"})))
    calibration = {"x": np.random.default_rng(1).standard_normal((8, 3, 12, 12)).astype(np.float32)}
    pruning = ChannelPruningPass(ratio, samples=calibration, repair=False)
    pruning(narrow_model.clone())
    assert bool(pruning.pruned) == cut, pruning.pruned
    # 40 of 48 runs as 48 there (padded to 3 blocks): only 16, 32 or the whole 48 are counts that mean what they say.
    assert all(kept % 16 == 0 for kept, _ in pruning.pruned.values()), pruning.pruned


def test_the_detected_block_is_the_one_onnx_runtime_pads_to_here(tmp_path):
    """On the machine the suite runs on, the block detection names is the one this ONNX Runtime pads a 24-channel
    Conv to (its session-optimized model: 32 filters with the block of 16, 24 with 8); a machine whose ONNX Runtime
    blocks nothing (ARM without its opt-in NEON NCHWc kernels) is skipped."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, load, numpy_helper

    from optimizer.cpu_features import detect

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in ((24, 16, 1, 1), (16, 24, 1, 1))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["h"]), helper.make_node("Conv", ["h", "w1"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)],
    )
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # its warning that a saved NCHWc model is for this machine only
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = load(options.optimized_model_filepath)
    shapes = {init.name: list(init.dims) for init in optimized.graph.initializer}
    blocked = [
        shapes[n.input[1]][0] for n in optimized.graph.node if n.domain == "com.microsoft.nchwc" and n.op_type == "Conv"
    ]
    if not blocked:
        pytest.skip("this ONNX Runtime runs no Conv in its NCHWc layout here")
    assert {16: 32, 8: 24}[detect().nchwc_block] == blocked[0], (detect(), blocked)
