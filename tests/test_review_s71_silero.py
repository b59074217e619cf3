"""Review s71 (silero): silero-vad 6.2.3's own ``silero_vad.onnx`` (spox: ``input [None, None]``, ``state [2, None,
128]``, ``sr []``, the LSTM's ``h``/``c`` read from ``state`` inside nested ``If``s) on generated inputs.

1. A valid model refused: an unnamed dim past the first axis was drawn as a length (128), so the state's batch was
   128 beside the audio's 1 and ONNX Runtime's LSTM refused every set ("give real inputs with --inputs FILE.npz,
   or pass --no-verify"). Fixed: an unnamed dim that reaches a recurrent op's batch axis (``recurrent_batch_axes``:
   through ``Gather``/``Unsqueeze``/``Squeeze``/``Identity``/``Slice``/``Split`` along other axes, into ``If``
   branches that capture it and out through the ``If``'s outputs) is drawn as a batch (1). The set of two rows along
   unnamed leading dims joins such a state along that axis too (it held one row beside two audio rows and was
   dropped). Given data (``--inputs``, ``--calibration``, ``compare``) is cut so too: the rows of ``input`` along
   axis 0 with the state's along axis 1 (read as a fixed batch of 2 beside a table, 16 windows were "2 samples").
2. Generated inputs never ran Silero's 16 kHz branch. The samples axis has no name, so every set held 128 samples,
   too few for the 16 kHz STFT's ``Conv`` (256 at least), and ``sr`` was left drawn off 16000 in every set: the 8 kHz
   branch alone was verified. Fixed in review s71 (branch): verification adds a set holding ``sr`` at 16000 with the
   samples drawn longer (``tests/test_review_s71_branch.py``).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer import api
from optimizer.inputs import make_inputs, recurrent_batch_axes
from optimizer.samples import fixed_batch_size, holds_samples, split_samples

_N = helper.make_node
_HIDDEN = 4
_FEATURES = 8


def _branch(name: str, node: onnx.NodeProto, output: str) -> onnx.GraphProto:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)])


def _state_through_if_into_lstm(state_shape=(2, None, _HIDDEN), transpose_state=False) -> onnx.ModelProto:
    """Silero's spelling in small: ``input [None, None]`` (audio rows, samples) and ``state [2, None, 4]`` (h and c,
    rows, hidden); ``h``/``c`` are ``Gather``s of ``state`` captured by an ``If``'s branches (``Unsqueeze`` to the
    LSTM's ``[1, rows, 4]`` in the branch taken, ``Identity`` in the other, as the exporter writes both)."""
    then_branch = helper.make_graph(
        [_N("Unsqueeze", ["h", "zero_axis"], ["h3"]), _N("Unsqueeze", ["c", "zero_axis"], ["c3"])],
        "then",
        [],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, _HIDDEN]) for n in ("h3", "c3")],
    )
    else_branch = helper.make_graph(
        [_N("Identity", ["h"], ["h2"]), _N("Identity", ["c"], ["c2"])],
        "else",
        [],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, _HIDDEN]) for n in ("h2", "c2")],
    )
    state = "state_t" if transpose_state else "state"
    nodes = [
        *([_N("Transpose", ["state"], ["state_t"], perm=[1, 0, 2])] if transpose_state else []),
        _N("Slice", ["input", "zero_axis", "features", "one_axis"], ["frame"]),
        _N("Unsqueeze", ["frame", "zero_axis"], ["x"]),
        _N("Gather", [state, "zero"], ["h"], axis=0),
        _N("Gather", [state, "one"], ["c"], axis=0),
        _N("Shape", ["h"], ["h_shape"]),
        _N("Size", ["h_shape"], ["h_rank"]),
        _N("Equal", ["h_rank", "two"], ["is_2d"]),
        _N("If", ["is_2d"], ["h0", "c0"], then_branch=then_branch, else_branch=else_branch),
        _N("LSTM", ["x", "W", "R", "", "", "h0", "c0"], ["y", "y_h", "y_c"], hidden_size=_HIDDEN),
        _N("Concat", ["y_h", "y_c"], ["state_n"], axis=0),
        _N("ReduceMean", ["y"], ["level"], axes=[0, 1, 3], keepdims=0),
    ]
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes,
        "silero_like",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, list(state_shape)),
        ],
        [
            helper.make_tensor_value_info("level", TensorProto.FLOAT, [None]),
            helper.make_tensor_value_info("state_n", TensorProto.FLOAT, [2, None, _HIDDEN]),
        ],
        [
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array(2, np.int64), "two"),
            numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
            numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
            numpy_helper.from_array(np.array([_FEATURES], np.int64), "features"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * _HIDDEN, _FEATURES)).astype(np.float32), "W"),
            numpy_helper.from_array(rng.standard_normal((1, 4 * _HIDDEN, _HIDDEN)).astype(np.float32), "R"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_an_unnamed_state_batch_through_an_if_into_an_lstm_is_drawn_as_a_batch():
    model = ir.from_proto(_state_through_if_into_lstm())
    assert recurrent_batch_axes(model) == {"state": {1}}
    inputs = make_inputs(model)
    assert inputs["input"].shape == (1, 128)
    assert inputs["state"].shape == (2, 1, _HIDDEN)


def test_an_unnamed_state_batch_moved_by_a_transpose_is_followed():
    # [rows, 2, 4], moved to [2, rows, 4] before the Gathers: the rows are still the LSTM's batch.
    model = ir.from_proto(_state_through_if_into_lstm((None, 2, _HIDDEN), transpose_state=True))
    assert recurrent_batch_axes(model) == {}  # the leading unnamed dim is a batch already
    assert make_inputs(model)["state"].shape == (1, 2, _HIDDEN)
    model = ir.from_proto(_state_through_if_into_lstm((2, None, _HIDDEN), transpose_state=True))
    # Transposed, the unnamed axis 1 of [2, None, 4] lands on the Gather's axis: it is no batch, and stays a length.
    assert recurrent_batch_axes(model) == {}
    assert make_inputs(model)["state"].shape == (2, 128, _HIDDEN)


def test_a_model_whose_state_batch_has_no_name_is_verified_on_one_row_and_two(tmp_path):
    source = tmp_path / "silero_like.onnx"
    onnx.save(_state_through_if_into_lstm(), source)
    before = source.read_bytes()
    _, report = api.optimize_with_report(source, ["fold-constants"], output=tmp_path / "out.onnx")
    assert report.verified
    assert report.passes[0].status == "applied"
    assert report.input_sets == [
        "generated (input [1, 128], state [2, 1, 4])",
        "generated, two rows along unnamed leading dims (input [2, 128], state [2, 2, 4])",
    ], report.input_sets
    assert not report.warnings, report.warnings
    assert source.read_bytes() == before


def test_given_rows_of_an_unnamed_state_are_cut_along_its_batch_axis():
    model = ir.from_proto(_state_through_if_into_lstm())
    assert fixed_batch_size(model) is None  # not a fixed batch of 2
    holds = holds_samples(model)
    assert holds.axis("input") == 0 and holds.axis("state") == 1
    rng = np.random.default_rng(0)
    arrays = {
        "input": rng.standard_normal((5, 64)).astype(np.float32),
        "state": rng.standard_normal((2, 5, _HIDDEN)).astype(np.float32),
    }
    parts = split_samples(arrays, 2, model)
    assert [part["input"].shape[0] for part in parts] == [2, 2, 1], [p["input"].shape for p in parts]
    assert [part["state"].shape for part in parts] == [(2, 2, _HIDDEN), (2, 2, _HIDDEN), (2, 1, _HIDDEN)]
    np.testing.assert_array_equal(parts[2]["state"], arrays["state"][:, 4:])


def _sr_branches(width_16k: int = 256, width_8k: int = 64) -> onnx.ModelProto:
    """Silero's ``If(Equal(sr, 16000))`` in small: the 16 kHz branch frames the samples by a ``width_16k``-wide
    ``Conv`` (fewer samples are refused), the other by a ``width_8k``-wide one."""
    rng = np.random.default_rng(1)

    def framing(name: str, width: int) -> onnx.GraphProto:
        weight = numpy_helper.from_array(rng.standard_normal((2, 1, width)).astype(np.float32), f"{name}_w")
        nodes = [
            _N("Constant", [], [f"{name}_kernel"], value=weight),
            _N("Unsqueeze", ["input", "one_axis"], [f"{name}_x"]),
            _N("Conv", [f"{name}_x", f"{name}_kernel"], [f"{name}_frames"], strides=[width]),
            _N("ReduceMean", [f"{name}_frames"], [f"{name}_level"], axes=[2], keepdims=0),
        ]
        return helper.make_graph(
            nodes, name, [], [helper.make_tensor_value_info(f"{name}_level", TensorProto.FLOAT, [None, 2])]
        )

    graph = helper.make_graph(
        [
            _N("Equal", ["sr", "sixteen_k"], ["is_16k"]),
            _N("If", ["is_16k"], ["level"], then_branch=framing("k16", width_16k), else_branch=framing("k8", width_8k)),
        ],
        "sr_branches",
        [
            helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, None]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("level", TensorProto.FLOAT, [None, 2])],
        [
            numpy_helper.from_array(np.array(16000, np.int64), "sixteen_k"),
            numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_generated_inputs_run_the_branch_the_compared_constant_selects():
    # Before: every set held 128 samples, too few for the 16 kHz branch, and sr off 16000 (review s71, branch:
    # ``_add_longer_compared_constants``; tests/test_review_s71_branch.py).
    _, report = api.optimize_with_report(_sr_branches(), ["remove-identity"])
    assert any("'sr' at 16000 held at longer lengths" in label for label in report.input_sets), report.input_sets
