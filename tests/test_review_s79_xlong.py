"""Review s79 (xlong): float16 verified past the generated lengths. A float16 result was checked at the lengths the
generated sets hold (128 and 257 tokens; a decoder's positions up to 511), and a rotary table's angles computed in
float16 from positions were within the twin's tolerance there and 9.7x past it at 2,048 (review s79 mut's strict xfail,
``tests/test_review_s79_mut.py``). Now the values a model computes from positions and constants alone are also checked
at ``--max-sequence``, on the part of the graph that computes them (``optimizer.position_values``): here with the
positions given as ``position_ids``, as a decoder takes them, and a correct conversion checked there and kept.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

import optimizer.verify as verify
import passes.quantization.float16 as float16
from optimizer.api import optimize_with_report
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK

_WIDTH = 8


def _position_ids_rotary() -> ir.Model:
    """``h * cos + h * sin`` of the angles ``Cast(position_ids) * inv_freq``, as a decoder computes its rotary table
    from the positions it is given (Llama's ``position_ids[:, :, None] * inv_freq``)."""
    inv_freq = (1.0 / 10000 ** (np.arange(0, _WIDTH, 2) / _WIDTH)).astype(np.float32)
    weight = np.random.default_rng(0).standard_normal((_WIDTH, _WIDTH)).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["position_ids"], ["positions"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["positions", "last"], ["column"]),
            helper.make_node("Mul", ["column", "inv_freq"], ["half"]),
            helper.make_node("Concat", ["half", "half"], ["angles"], axis=-1),
            helper.make_node("Cos", ["angles"], ["cos"]),
            helper.make_node("Sin", ["angles"], ["sin"]),
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Mul", ["h", "cos"], ["h_cos"]),
            helper.make_node("Mul", ["h", "sin"], ["h_sin"]),
            helper.make_node("Add", ["h_cos", "h_sin"], ["y"]),
        ],
        "position_ids_rotary",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _WIDTH]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _WIDTH])],
        [
            numpy_helper.from_array(inv_freq, "inv_freq"),
            numpy_helper.from_array(np.array([2], np.int64), "last"),
            numpy_helper.from_array(weight, "W"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _float16(model: ir.Model, **options):
    (result, report) = optimize_with_report(model, passes=["convert-float16"], target="cuda", fp16=True, **options)
    (record,) = report.passes
    return result, record


def test_float16_angles_of_position_ids_wrong_only_past_the_sets_are_rolled_back():
    # The conversion that keeps no angle float32 (the pass before review s68 figures2): its angles at position 4,095
    # are rounded to a step of 2 radians in float16, at 256 to 0.125.
    with mock.patch.object(float16, "_positions_kept", lambda model, blocked: []):
        _, record = _float16(_position_ids_rotary())
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert "'sequence' at 4096" in record.detail, record.detail


def test_a_correct_float16_rotary_is_checked_at_the_longest_length_and_kept():
    cut = mock.Mock(wraps=verify.position_cut)
    with mock.patch.object(verify, "position_cut", cut):
        _, record = _float16(_position_ids_rotary())
    assert record.status == STATUS_APPLIED, record.detail
    assert {"cos", "sin"} <= set(cut.call_args.args[1]), cut.call_args
    assert cut.call_args.args[2]["sequence"] == 4096  # --max-sequence's default: no position table ends it


def test_float16_at_a_length_the_user_fixed_draws_nothing_longer():
    # --dim sequence=16: the result runs at 16 tokens, which the sets hold; no longer length is drawn.
    cut = mock.Mock(wraps=verify.position_cut)
    with mock.patch.object(verify, "position_cut", cut):
        _, record = _float16(_position_ids_rotary(), dims={"sequence": 16})
    assert record.status == STATUS_APPLIED, record.detail
    assert not cut.called


def test_fp16_takes_max_sequence_as_the_length_it_checks_positions_at():
    # A model that never runs past 300 tokens: --max-sequence bounds the check (it needed a fusion pass before, and a
    # float16 conversion had no way to say so but --dim, which fixes the length).
    cut = mock.Mock(wraps=verify.position_cut)
    with mock.patch.object(verify, "position_cut", cut):
        _, record = _float16(_position_ids_rotary(), max_sequence=300)
    assert record.status == STATUS_APPLIED, record.detail
    assert cut.call_args.args[2]["sequence"] == 300
