"""Review s75 (late75b): a late review of three merges: ids beside scores and draws renamed through
``Cast``/``Reshape``/``Transpose``/``Expand`` (``optimizer.draws.draw_aliases``, 65ecc4d), the int8 layer probe's
bounded rows (``optimizer.layer_probe.probe_rows``, 7c16db1) and ``PackedAttentionFusion(static_masks=True)``
(4165d65).

1. **A static mask's bias that reads how many tokens are real**: ``_static_rows`` at 8 tokens held rows of 1, 2, 4, 5,
   7 and 8 real tokens, so a bias that masks a real token more where 6 (or 3) are was read as a padding mask, packed
   as ``mask_index`` and verified (the samples hold no such row), wrong on every row of 6 real tokens. Each count of
   real tokens now has a row; a dynamic batch takes them in runs of bounded size.

Held (checked, no change): a draw renamed through a ``Cast`` that is no no-op (float → float16, float → int32 and
back), a ``Reshape`` to another shape or a ``Transpose`` of a real ``perm`` pairs the draws, but the result's outputs
then differ in type, shape or value and it is rolled back; ``probe_rows`` gives the rows it gave before, and a
45,411-input layer is probed in about 31 runs, not one a channel.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

import tests.test_review_s75_static as static
from optimizer.verify import Verifier
from passes.fusion.packed_attention import _static_rows
from tests.helpers import assert_same_outputs

_N = helper.make_node
_F = TensorProto.FLOAT


def _masks_more_where(real: int):
    """``_bias_nodes`` whose padding bias also masks key 0 where exactly ``real`` tokens are real."""
    bias_nodes = static._bias_nodes

    def nodes(kind: str, seq: int):
        nodes, weights = bias_nodes("padding", seq)
        nodes[-1].output[0] = "padding_bias"
        weights["real"], weights["first_key"] = np.array(real, np.float32), np.eye(1, seq, dtype=np.float32)
        nodes += [
            _N("ReduceSum", ["m", "axis_1"], ["count"]),
            _N("Equal", ["count", "real"], ["hit"]),
            _N("Cast", ["hit"], ["flag"], to=_F),
            _N("Mul", ["flag", "fill"], ["masked"]),
            _N("Mul", ["masked", "first_key"], ["more"]),
            _N("Unsqueeze", ["more", "axes_12"], ["more_4d"]),
            _N("Add", ["padding_bias", "more_4d"], ["mask_bias"]),
        ]
        return nodes, weights

    return nodes


@pytest.mark.parametrize(("real", "batch"), [(6, 1), (3, 1), (6, 2)])
def test_a_static_bias_that_masks_more_at_one_count_of_real_tokens_stays_a_bias(monkeypatch, real, batch):
    monkeypatch.setattr(static, "_bias_nodes", _masks_more_where(real))
    model = static._static_model("counted", batch, 8)
    node, refusals, after = static._packed(model)
    assert node.inputs[3] is None and node.inputs[5] is not None, refusals  # was mask_index, wrong on these rows
    assert len(refusals) == 1 and "not what a padding (or causal + padding) mask implies" in refusals[0], refusals
    row = np.r_[np.ones(real, np.int64), np.zeros(8 - real, np.int64)]
    x = np.random.default_rng(0).standard_normal((batch, 8, static.HIDDEN)).astype(np.float32)
    assert_same_outputs(model, after, {"x": x, "attention_mask": np.tile(row, (batch, 1))}, rtol=1e-4, atol=1e-5)


def test_the_static_rows_hold_each_count_of_real_tokens():
    for length in range(2, 40):
        assert set(_static_rows(length).sum(axis=1)) == set(range(1, length + 1)), length


def test_a_dynamic_batch_at_a_static_512_tokens_is_still_packed():
    # 515 rows of 512 tokens are more than the elements one probe may evaluate: they are fed in two runs.
    node, refusals, _ = static._packed(static._static_model("padding", "B", 512))
    assert node.inputs[3] is not None and refusals == []


def _drawn(renaming: list, out: tuple[int, list[int]], fused: list, fused_out: tuple[int, list[int]]):
    """A ``RandomNormalLike`` of ``x`` renamed by ``renaming`` to the output ``y`` (``out``: its type and shape), beside
    ``z = Relu(x)``, and a result in which ``fused`` draws ``y`` (of ``fused_out``) with no renaming op after it."""

    def model(nodes: list, y: tuple[int, list[int]]) -> ir.Model:
        graph = helper.make_graph(
            [*nodes, _N("Relu", ["x"], ["z"])],
            "drawn",
            [helper.make_tensor_value_info("x", _F, [2, 4])],
            [helper.make_tensor_value_info("y", *y), helper.make_tensor_value_info("z", _F, [2, 4])],
        )
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))

    return model([_N("RandomNormalLike", ["x"], ["n"]), *renaming], out), model(fused, fused_out)


_TO_FLOAT16 = _drawn(
    [_N("Cast", ["n"], ["y"], to=TensorProto.FLOAT16)],
    (TensorProto.FLOAT16, [2, 4]),
    [_N("RandomNormalLike", ["x"], ["y"])],
    (_F, [2, 4]),
)
_TRANSPOSED = _drawn(
    [_N("Transpose", ["n"], ["y"], perm=[1, 0])],
    (_F, [4, 2]),
    [_N("Transpose", ["x"], ["xt"], perm=[1, 0]), _N("RandomNormalLike", ["xt"], ["y"])],
    (_F, [4, 2]),
)


@pytest.mark.parametrize("case", [_TO_FLOAT16, _TRANSPOSED], ids=["cast_to_float16_removed", "transposed_before"])
def test_a_draw_renamed_through_an_op_that_changes_it_is_rolled_back(case):
    model, candidate = case
    x = {"x": np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)}
    assert not Verifier(model, [x]).check(candidate).ok
