"""Review s59: a float32 twin whose checkpoint is the output of a Gemm (or Conv) consumer with a repaired bias.

Pruning's twin added a repaired bias change after its consumer (``_add_after``), but the repair stores the new bias in
a Gemm's C or a Conv's B. The consumer's output then holds the old bias in the twin and the new one in the result.
When another pruned block reads that output (a residual block's input, also read by its skip, so never narrowed),
that output is a checkpoint. So a deep model that missed end to end by rounding (checked segment by segment) was
rolled back as "differs from its twin ... max abs error 1.96" on a correct result. The same model with MatMul + Add
consumers (the change goes after the MatMul in both) passed. Low-rank's twin did the same for a Gemm's C: the next
layer's checkpoint was the twin's own ``<g>.bias_changed``, which the result does not hold, so the cut was lost."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.runtime import collect_values
from optimizer.verify import Verifier, _segment_checkpoints
from passes.factorization.lowrank import LowRankFactorizationPass
from passes.pruning.ffn import FfnPruningPass
from tests.passes.factorization.graphs import FakeSpeed, low_rank

HIDDEN, INNER, CHAIN = 16, 32, 12


def _blocks(down0: str) -> ir.Model:
    """``x`` → FFN block 0 (its down projection a Gemm with C, or a MatMul and a bias Add: ``down0``) → ``g0``, read
    by FFN block 1 and its residual Add → twelve ``Sin(3 · h Q)`` layers (Q orthogonal) that amplify a float32 step
    at their input past the tolerance at ``y``, as a deep model does."""
    rng = np.random.default_rng(0)
    arrays = {
        "up0": rng.standard_normal((HIDDEN, INNER)) * 0.3,
        "ub0": rng.standard_normal(INNER) * 0.1,
        "down0": rng.standard_normal((INNER, HIDDEN)) * 0.3,
        "db0": rng.standard_normal(HIDDEN) * 0.1,
        "up1": rng.standard_normal((HIDDEN, INNER)) * 0.3,
        "ub1": rng.standard_normal(INNER) * 0.1,
        "down1": rng.standard_normal((INNER, HIDDEN)) * 0.3,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "up0"], ["u0m"], name="up_proj0"),
        helper.make_node("Add", ["u0m", "ub0"], ["u0"], name="up_bias0"),
        helper.make_node("Relu", ["u0"], ["h0"], name="relu0"),
    ]
    if down0 == "Gemm":
        nodes.append(helper.make_node("Gemm", ["h0", "down0", "db0"], ["g0"], name="down_proj0"))
    else:
        nodes.append(helper.make_node("MatMul", ["h0", "down0"], ["d0"], name="down_proj0"))
        nodes.append(helper.make_node("Add", ["d0", "db0"], ["g0"], name="down_bias0"))
    nodes += [
        helper.make_node("MatMul", ["g0", "up1"], ["u1m"], name="up_proj1"),
        helper.make_node("Add", ["u1m", "ub1"], ["u1"], name="up_bias1"),
        helper.make_node("Relu", ["u1"], ["h1"], name="relu1"),
        helper.make_node("MatMul", ["h1", "down1"], ["d1"], name="down_proj1"),
        helper.make_node("Add", ["d1", "g0"], ["r1"], name="residual1"),
    ]
    last = "r1"
    for i in range(CHAIN):
        arrays[f"q{i}"] = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0] * 3.0
        nodes.append(helper.make_node("MatMul", [last, f"q{i}"], [f"m{i}"], name=f"chain{i}"))
        nodes.append(helper.make_node("Sin", [f"m{i}"], [f"s{i}"], name=f"chain_sin{i}"))
        last = f"s{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "blocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", HIDDEN])],
        [numpy_helper.from_array(a.astype(np.float32), name) for name, a in arrays.items()],
    )
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _rows(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((count, HIDDEN)).astype(np.float32)}


@pytest.mark.parametrize("down0", ["MatMul", "Gemm"])
def test_a_repaired_gemm_consumers_output_is_the_same_checkpoint_in_twin_and_result(down0):
    model = _blocks(down0)
    result = FfnPruningPass(0.25, samples=_rows(32, seed=5), repair=True)(model.clone())
    assert result.modified and "repaired weights and biases" in result.twin.description
    assert "g0" in _segment_checkpoints(result.model, result.twin, model)  # block 1's input: read by up_proj1
    sets = [_rows(8, seed) for seed in (1, 2)]
    verdict = Verifier(model, sets).check_twin(result.model, result.twin, base=model)
    assert verdict.ok, verdict.first_failure  # the Gemm's: "max abs error 1.96" segment by segment
    assert verdict.twin_segments  # missed end to end (the chain's rounding), passed by segment
    twin_g0 = collect_values(result.twin.model, ["g0"], sets[:1])[0]["g0"]
    result_g0 = collect_values(result.model, ["g0"], sets[:1])[0]["g0"]
    np.testing.assert_allclose(result_g0, twin_g0, rtol=1e-5, atol=1e-5)  # the Gemm's was off by the bias change


def test_low_rank_gemms_repaired_bias_is_in_the_twins_c_and_its_output_a_checkpoint():
    # Three Gemms in a row: the second and third are repaired (their inputs changed), and each reads the one before.
    k, rng = 128, np.random.default_rng(0)
    arrays, nodes, last = {}, [], "x"
    for i in range(3):
        weight = low_rank(k, k, 8, seed=10 + i) + 0.01 * rng.standard_normal((k, k)).astype(np.float32)
        arrays[f"w{i}"], arrays[f"c{i}"] = weight.T.copy(), (rng.standard_normal(k) * 0.1).astype(np.float32)
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"c{i}"], [f"g{i}"], name=f"layer{i}", transB=1))
        last = f"g{i}"
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("g2", TensorProto.FLOAT, ["B", k])],
        [numpy_helper.from_array(a, name) for name, a in arrays.items()],
    )
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.random.default_rng(5).standard_normal((64, k)).astype(np.float32)
    result = LowRankFactorizationPass(0.5, samples={"x": x}, repair=True, speed=FakeSpeed())(model.clone())
    assert result.modified and "repaired bias changes added" in result.twin.description
    assert result.twin.checkpoints == ("x", "g0", "g1")  # was ("x", "g0", "g1.bias_changed"): no cut at g1
    assert _segment_checkpoints(result.model, result.twin, model) == ["g0", "g1"]
    feeds = [{"x": np.random.default_rng(1).standard_normal((8, k)).astype(np.float32)}]
    twin, mine = (collect_values(m, ["g0", "g1"], feeds)[0] for m in (result.twin.model, result.model))
    for name in ("g0", "g1"):
        np.testing.assert_allclose(mine[name], twin[name], rtol=1e-4, atol=1e-4)
