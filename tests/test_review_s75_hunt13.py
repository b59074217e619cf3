"""Review s75, hunt 13: real decoders and seq2seq models from PyPI (tg2fa-translit's character ``nn.Transformer``,
Tajik Cyrillic to Persian script, exported as an encoder and a decoder step; annalog's SMILES transformer), each finding
reproduced here on a tiny model of the same structure.

Found: (1) PyTorch's ``nn.Transformer`` is sequence-major (``batch_first=False``): exported at batch 1 its encoder
reads ``src [src_len, 1]`` beside a square ``src_mask [src_len, src_len]``. No input leads with a batch, and no input
fixes one at axis 0, so every array was read as holding samples along axis 0: calibration files of different lengths
were joined along the sequence, and ``--quantize dynamic|static|int4`` refused the user's data ("ONNX Runtime cannot run
the original model on the first samples of --calibration"), each file of which the model runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.samples import has_no_batch


def _model(nodes, inputs, outputs, initializers) -> ir.Model:
    graph = helper.make_graph(
        nodes, "hunt13", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in initializers]
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(proto)
    return ir.from_proto(proto)


@pytest.fixture(scope="module")
def sequence_major_encoder() -> ir.Model:
    """tg2fa's encoder as torch 2.13's exporter writes it at batch 1: ``src [src_len, 1]`` token ids embedded, a
    square boolean ``src_mask [src_len, src_len]`` (true where a key is hidden) summing the unmasked keys, and two
    projections: ``memory [src_len, 1, 8]``."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(12, 8)).astype(np.float32)
    weight = rng.normal(size=(8, 8)).astype(np.float32)
    return _model(
        [
            helper.make_node("Gather", ["table", "src"], ["emb"]),  # [S, 1, 8]
            helper.make_node("Squeeze", ["emb", "one"], ["flat"]),  # [S, 8]
            helper.make_node("Where", ["src_mask", "zero", "unit"], ["keep"]),  # [S, S]
            helper.make_node("MatMul", ["keep", "flat"], ["mixed"]),
            helper.make_node("MatMul", ["mixed", "w"], ["proj"]),
            helper.make_node("Relu", ["proj"], ["act"]),
            helper.make_node("MatMul", ["act", "w2"], ["out"]),
            helper.make_node("Unsqueeze", ["out", "one"], ["memory"]),
        ],
        [
            helper.make_tensor_value_info("src", TensorProto.INT64, ["src_len", 1]),
            helper.make_tensor_value_info("src_mask", TensorProto.BOOL, ["src_len", "src_len"]),
        ],
        [helper.make_tensor_value_info("memory", TensorProto.FLOAT, ["src_len", 1, 8])],
        [
            ("table", table),
            ("w", weight),
            ("w2", weight.T.copy()),
            ("one", np.array([1], np.int64)),
            ("zero", np.array(0.0, np.float32)),
            ("unit", np.array(1.0, np.float32)),
        ],
    )


def _sentence(rng: np.random.Generator, length: int) -> dict[str, np.ndarray]:
    return {
        "src": rng.integers(0, 12, size=(length, 1)).astype(np.int64),
        "src_mask": np.zeros((length, length), bool),
    }


def test_sequence_major_model_with_a_square_mask_has_no_batch_on_axis_0(sequence_major_encoder):
    """``src_len`` leads both inputs and is also ``src_mask``'s second dim: it is no batch, and each file is one
    sample (it was read as rows of samples, every array cut and joined along its sequence)."""
    assert has_no_batch(sequence_major_encoder)


def test_dynamic_int8_of_a_sequence_major_encoder_takes_files_of_several_lengths(sequence_major_encoder, tmp_path):
    """Calibration files of 5, 7 and 9 tokens, each of which the model runs: quantized and verified, where the files
    were joined along the sequence and the run refused "ONNX Runtime cannot run the original model on the first
    samples of --calibration"."""
    from optimizer.api import optimize_with_report

    rng = np.random.default_rng(1)
    folder = tmp_path / "cal"
    folder.mkdir()
    for k, length in enumerate((5, 7, 9, 6)):
        np.savez(folder / f"{k}.npz", **_sentence(rng, length))
    inputs = _sentence(rng, 8)
    result, report = optimize_with_report(
        sequence_major_encoder,
        ["quantize-dynamic"],
        inputs=inputs,
        calibration=str(folder),
        min_cosine=0.9,
    )
    assert report.passes[-1].status == "applied", report.passes[-1].detail
    assert any("Quantize" in node.op_type for node in result.graph)
