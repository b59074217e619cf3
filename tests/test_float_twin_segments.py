"""Pruning's and low-rank's float32 twins are checked segment by segment, between the activations their rewritten
layers read, where end to end a deep model's rounding cascades past the original's float noise (PP-OCRv4's
recognizer after ``--prune-ffn 0.3``: 7.3e-5 on a softmax row, 4x its noise 6.8e-5, a correct result rolled back).
A wrong realization still fails its segment."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper

from optimizer.protocol import Twin
from optimizer.verify import Verifier, _segment_checkpoints
from passes.factorization.lowrank import LowRankFactorizationPass
from passes.pruning.channels import ChannelPruningPass
from passes.pruning.ffn import FfnPruningPass
from tests.passes.factorization import graphs as lowrank_graphs
from tests.passes.factorization.graphs import FakeSpeed
from tests.passes.pruning.graphs import feeds, ffn_stack, images, inverted_residual

HIDDEN = 16
LAYERS, GAIN = 24, 4.5  # _tail's chain: ORT's rewrites move y 4e-4 to 9e-4, under the noise cap


def _chaotic(down_change=None) -> ir.Model:
    """``x`` → Tanh → one residual FFN block → twelve ``Tanh(3 · h Q)`` layers (Q orthogonal) → ``y``.

    The chain amplifies a difference of a few float32 steps at its input to far past float32's tolerance at
    ``y``, as thirty layers do in a deep model; ``down_change`` alters the FFN's down projection weight."""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((HIDDEN, 32)) * 0.3).astype(np.float32)
    down = (rng.standard_normal((32, HIDDEN)) * 0.3).astype(np.float32)
    if down_change is not None:
        down = down_change(down.copy())
    init = [helper.make_tensor("up", TensorProto.FLOAT, up.shape, up.ravel())]
    init.append(helper.make_tensor("down", TensorProto.FLOAT, down.shape, down.ravel()))
    nodes = [
        helper.make_node("Tanh", ["x"], ["h0"]),
        helper.make_node("MatMul", ["h0", "up"], ["u"]),
        helper.make_node("Relu", ["u"], ["r"]),
        helper.make_node("MatMul", ["r", "down"], ["d"]),
        helper.make_node("Add", ["d", "h0"], ["h1"]),
    ]
    last = "h1"
    for i in range(12):
        q = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0].astype(np.float32) * 3.0
        init.append(helper.make_tensor(f"q{i}", TensorProto.FLOAT, q.shape, q.ravel()))
        nodes.append(helper.make_node("MatMul", [last, f"q{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        last = f"t{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chaotic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", HIDDEN])],
        init,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _input_sets() -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(seed).standard_normal((8, HIDDEN)).astype(np.float32)} for seed in (1, 2)]


def test_a_float32_twin_missed_end_to_end_by_rounding_is_checked_segment_by_segment():
    model = _chaotic()
    twin = Twin(model.clone(), "float32", "the input (test)", checkpoints=("h0", "h1"))
    # A realization that sums the down projection in another order: a relative 1e-5 on its weights, a few float32
    # steps, which the twelve layers after it amplify past float32's tolerance at the output.
    candidate = _chaotic(lambda w: w * np.float32(1 + 1e-5))
    verifier = Verifier(model, _input_sets())
    verdict = verifier.check_twin(candidate, twin, base=model)
    assert verdict.ok, verdict.first_failure
    assert verdict.twin_segments == 3 and "output 'y'" in verdict.twin_end_to_end


def test_a_wrong_float32_realization_fails_its_segment():
    model = _chaotic()
    twin = Twin(model.clone(), "float32", "the input (test)", checkpoints=("h0", "h1"))

    def a_kept_neuron_zeroed(weight):
        weight[3] = 0.0
        return weight

    for wrong in (_chaotic(a_kept_neuron_zeroed), _chaotic(lambda w: w * np.float32(1.001))):
        verdict = Verifier(model, _input_sets()).check_twin(wrong, twin, base=model)
        assert not verdict.ok
        assert "checked segment by segment between 2 pruned or factorized layers' inputs" in verdict.first_failure


def test_pruning_twins_cut_at_what_the_pruned_blocks_read():
    model = ffn_stack((1.0, 0.5))
    result = FfnPruningPass(0.25, samples=feeds(model, 16))(model.clone())
    # each block's up projection's input, and its down projection's output (a MatMul: its bias goes after it)
    assert result.twin.checkpoints == ("x", "d0", "r0", "d1")
    assert _segment_checkpoints(result.model, result.twin, model) == ["d0", "r0", "d1"]  # a graph input is no cut


def test_channel_pruning_twins_leave_out_the_tensors_a_cut_narrows():
    # The depthwise Conv reads the expansion channels (narrower in the result): the twin's full-width value
    # there would not fit the result; the expand Conv's input (the block's input) does.
    model = inverted_residual()
    result = ChannelPruningPass(0.25, samples=images(16, seed=1))(model.clone())
    assert result.modified
    assert set(result.twin.checkpoints) == {"sc", "r0"}
    assert _segment_checkpoints(result.model, result.twin, model) == ["sc", "r0"]


def test_low_rank_twins_cut_at_the_factorized_layers_inputs():
    model = lowrank_graphs.projections(rank=8)
    x = lowrank_graphs.inputs(128, count=16)
    result = LowRankFactorizationPass(0.5, samples={"x": x}, speed=FakeSpeed())(model.clone())
    assert result.modified
    assert result.twin.checkpoints == ("x", "h")
    assert _segment_checkpoints(result.model, result.twin, model) == ["h"]


def _tail(q_change=None) -> ir.Model:
    """``x`` → Tanh (``h0``) → ``LAYERS`` ``Tanh(GELU(h Q))`` layers (Q orthogonal × ``GAIN``, GELU written with
    Erf) → ``y``: ONNX Runtime fuses each written-out GELU into its Gelu kernel at ORT_ENABLE_ALL, whose rounding the
    chain amplifies; ``q_change`` alters the last Q."""
    rng = np.random.default_rng(3)
    scalars = [("half", 0.5), ("one", 1.0), ("root2", float(np.sqrt(2.0))), ("two", 2.0)]
    init = [helper.make_tensor(name, TensorProto.FLOAT, [], [value]) for name, value in scalars]
    nodes, last = [helper.make_node("Tanh", ["x"], ["h0"])], "h0"
    for i in range(LAYERS):
        q = np.linalg.qr(rng.standard_normal((HIDDEN, HIDDEN)))[0].astype(np.float32) * GAIN
        if i == LAYERS - 1 and q_change is not None:
            q = q_change(q)
        init.append(helper.make_tensor(f"q{i}", TensorProto.FLOAT, q.shape, q.ravel()))
        nodes += [
            helper.make_node("MatMul", [last, f"q{i}"], [f"m{i}"]),
            helper.make_node("Div", [f"m{i}", "root2"], [f"d{i}"]),
            helper.make_node("Erf", [f"d{i}"], [f"e{i}"]),
            helper.make_node("Add", [f"e{i}", "one"], [f"p{i}"]),
            helper.make_node("Mul", [f"m{i}", f"p{i}"], [f"g{i}"]),
            helper.make_node("Mul", [f"g{i}", "half"], [f"n{i}"]),
            helper.make_node("Tanh", [f"n{i}"], [f"t{i}"]),
        ]
        last = f"t{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", HIDDEN])],
        init,
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_segment_is_held_to_its_own_float_noise_where_the_whole_models_row_is_quieter(monkeypatch):
    # The end-to-end noise of a row is one draw: a segment whose ops ONNX Runtime rewrites (here every MatMul + Add
    # into a Gemm, amplified by the chain) may move a row further than 4x that row's draw with nothing pruned in it
    # (PP-OCRv4's CTC head after a pruned attention block: 4.75e-5 where 4.7e-5 was allowed). Emulated by a draw of 0;
    # the GELUs ONNX Runtime fuses move the chain's output by its own rounding.
    model = _tail()
    twin = Twin(model.clone(), "float32", "the input (test)", checkpoints=("h0",))
    monkeypatch.setattr(Verifier, "noise", property(lambda self: [{} for _ in self.input_sets]))
    verdict = Verifier(model, _input_sets()).check_twin(_tail(), twin, base=model)
    assert verdict.ok, verdict.first_failure
    wrong = Verifier(model, _input_sets()).check_twin(_tail(lambda q: q * np.float32(1.001)), twin, base=model)
    assert not wrong.ok
