"""A hostile review of how approximate passes are verified (pruning, low-rank; 2026-12-02).

The promise under test: no pruned or factorized model ships wrong while the report says
"verified". An approximate result is checked against its twin (the pass's input with its
declared decisions applied, built without the rewrite), then against the accuracy budget.
Each strict xfail below is a way that promise, or the matcher's own proof of what it cuts,
breaks today; the reason says where. A finding fixed since is a plain test whose docstring
starts "Review finding (fixed since)".

What held (tried, no fault found):

- The twin is independent of the slicing: on bert_legacy's prune-ffn (calibration, repair),
  a result whose down projection keeps two rows swapped was rolled back ("differs from its
  twin", 0.047), and one whose repaired bias was scaled by 0.98 too (1.1e-3); a weight
  scaled by 1.0005 passed, within float32 tolerance as designed.
- onnx.checker's full check and strict shape inference accept the FFN, head and channel cuts
  of bert, gpt2, vit and resnet (legacy) with and without repair; the pipeline applied
  prune-ffn-heads on bert_legacy, gpt2_legacy, llama_dynamo, vit_dynamo and prune-channels
  on resnet_legacy with twin errors at float32 rounding.
- A value of the FFN hidden layer read inside an If branch counts as a reader (onnx-ir
  records the subgraph's use): the group is refused.
- Two nodes with one name: ONNX Runtime refuses the input model, a one-line error.
- A weight tied between an FFN's up and down projections (x @ W → Relu → Gemm(·, W, transB=1)) is cut
  consistently: the result matches its twin exactly, with and without repair (its size is a finding below).
- Low-rank: an Add of a per-row constant ``[M, 1]`` after a factorized MatMul is not taken
  for its bias (``bias_add`` checks the last axis), and with repair the result matched its
  twin (2.4e-7); with calibration rows of rank 8 out of 128 (whitening nearly singular) the
  twin error stayed at 2e-8. Float16 weights are left whole (refused, not written float32).

Not tried here: the twin check's float32 tolerance is widened by the original's own float noise
(``Verifier.noise``, capped at 1 % of an output's RMS), so on a deep model whose ONNX Runtime rewrites are
noisy a realization off its twin by less than that cap passes; the small fixtures show no such noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer.parameters import count_parameters as parameter_count
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from passes.pruning.ffn import FfnPruningPass
from passes.pruning.heads import HeadPruningPass
from tests.passes.pruning import graphs
from tests.passes.pruning.twins import assert_matches_twin

D, H = 16, 64


def _ffn(down: list, extra: list = (), *, rows=("batch", D), out=D, dtype=np.float32, opset: int = 17) -> ir.Model:
    """``x`` → MatMul ``up`` → Relu → ``h``, then the ``down`` nodes (reading ``h``) writing ``y``."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    init = [
        numpy_helper.from_array((rng.standard_normal((D, H)) / 4).astype(dtype), "W1"),
        numpy_helper.from_array((rng.standard_normal((H, out)) / 8).astype(dtype), "W2"),
        *[numpy_helper.from_array(array.astype(dtype), name) for name, array in extra],
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["u"], name="up"),
        helper.make_node("Relu", ["u"], ["h"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes + down,
        "ffn",
        [helper.make_tensor_value_info("x", elem, list(rows))],
        [helper.make_tensor_value_info("y", elem, [rows[0], out])],
        init,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


@pytest.mark.parametrize("spelling", ["matmul_add", "gemm_c"])
def test_the_repair_keeps_a_per_row_constant_per_row(spelling):
    """Review finding (fixed since): passes/pruning/_base.py::_bias took any constant of `width` elements after the
    consumer for its per-output bias, whatever its shape: the repair wrote its bias into an Add of [M, 1] (or a
    Gemm's C of [M, 1]), one value per row, while the twin adds the change per output column, so the realization
    computed something else (rolled back as 'differs from its twin'; written as is under --no-verify). Now only a
    constant that broadcasts along the output's last axis is a bias (``passes._layers.is_feature_bias``, the rule
    quantization and low-rank use); the repair's bias gets an Add of its own and the per-row constant stays as it was.
    """
    rows = np.random.default_rng(1).standard_normal((D, 1))
    if spelling == "matmul_add":
        down = [
            helper.make_node("MatMul", ["h", "W2"], ["d"], name="down"),
            helper.make_node("Add", ["d", "per_row"], ["y"], name="per_row_add"),
        ]
    else:
        down = [helper.make_node("Gemm", ["h", "W2", "per_row"], ["y"], name="down")]
    # A static batch of 16 rows with 16 outputs: the per-row constant has as many values as the outputs.
    model = _ffn(down, [("per_row", rows)], rows=(D, D))
    samples = {"x": np.random.default_rng(5).standard_normal((D, D)).astype(np.float32)}
    result = FfnPruningPass(0.5, samples=samples)(model)
    assert result.modified and any("after repair" in note for note in result.notes)
    assert_matches_twin(result, {"x": np.random.default_rng(6).standard_normal((D, D)).astype(np.float32)})
    per_row = [node.inputs[-1] for node in result.model.graph if node.inputs and node.inputs[-1].name == "per_row"]
    assert per_row and np.array_equal(constant_array(per_row[0]), rows.astype(np.float32))


def test_a_consumer_reading_the_hidden_layer_as_its_bias_is_left_whole():
    """Review finding (fixed since): passes/pruning/_groups.py::outside_reader exempted the consumer at every input
    slot, so a Gemm reading the hidden layer as A and as its C (h @ W + h) was a group: its C was cut with A and ONNX
    Runtime refused the result (Invalid bias shape for broadcast) instead of the matcher refusing with a reason. Only
    the consumer's data input (input 0) is exempt now."""
    model = _ffn([helper.make_node("Gemm", ["h", "W2", "h"], ["y"], name="down")], out=H)
    groups, refused = FfnPruningPass(0.5).find_groups(model.graph)
    assert not groups and refused["down"] == "h is also read by down; its channels cannot be cut"


def test_a_float16_model_is_repaired_in_float16():
    """Review finding (fixed since): passes/pruning/_base.py::_refit wrote the repaired weight and bias as float32
    whatever the model's dtype: on a float16 model with --calibration, MatMul(float16, float32) made ONNX Runtime
    refuse the result and the cut, which is fine without repair, was rolled back with a type error. The repair now
    writes the weight's own dtype, and (checked here) still does better than no repair."""
    model = _ffn(
        [
            helper.make_node("MatMul", ["h", "W2"], ["d"], name="down"),
            helper.make_node("Add", ["d", "b2"], ["y"], name="down_bias"),
        ],
        [("b2", np.random.default_rng(2).standard_normal(D) / 8)],
        dtype=np.float16,
    )
    calibration = {"x": np.random.default_rng(1).standard_normal((64, D)).astype(np.float16)}
    result, report = optimizer.optimize_with_report(
        model, passes=["prune-ffn"], calibration=calibration, prune_ffn=0.25, min_cosine=0.5
    )
    record = report.passes[-1]
    assert record.status == STATUS_APPLIED, record.detail
    assert {value.const_value.dtype for value in result.graph.initializers.values()} == {ir.DataType.FLOAT16}
    repaired = next(note for note in record.notes if "after repair" in note)
    unrepaired = next(note for note in record.notes if note.startswith("without repair:"))
    assert _cosine(repaired) > _cosine(unrepaired), record.notes


def _cosine(note: str) -> float:
    return float(note.split("cosine ")[1].split(",")[0].split(" (worst sample")[0])


def _with_fault(monkeypatch, name: str, fault) -> None:
    """Run the real pass ``name``, then ``fault(result model)`` before the verifier sees it."""
    import optimizer.api as api

    resolve = api.resolve

    class Faulty(ir.passes.InPlacePass):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def call(self, model):
            result = self.inner(model)
            if result.modified:
                fault(result.model)
            return result

    def resolve_with_fault(names, options):
        specs = resolve(names, options)
        return [
            dataclasses.replace(spec, factory=lambda context, f=spec.factory: Faulty(f(context)))
            if spec.name == name
            else spec
            for spec in specs
        ]

    monkeypatch.setattr(api, "resolve", resolve_with_fault)


DORMANT = 16


def _dormant_ffn() -> ir.Model:
    """An FFN whose first 16 neurons fire only where ``x[:, 0]`` is above 20: never on N(0, 1) inputs."""
    rng = np.random.default_rng(0)
    up = (rng.standard_normal((D, H)) / 4).astype(np.float32)
    bias = np.zeros(H, np.float32)
    up[:, :DORMANT], up[0, :DORMANT], bias[:DORMANT] = 0.0, 1 + rng.random(DORMANT), -20.0
    down = (rng.standard_normal((H, D)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["u"], name="up"),
        helper.make_node("Add", ["u", "b1"], ["ub"], name="up_bias"),
        helper.make_node("Relu", ["ub"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "W2"], ["y"], name="down"),
    ]
    graph = helper.make_graph(
        nodes,
        "dormant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array(a, n) for n, a in (("W1", up), ("b1", bias), ("W2", down))],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def _halve_a_dormant_row(model: ir.Model) -> None:
    """The fault: the realization writes one kept dormant neuron's down-projection row halved."""
    nodes = {node.name: node for node in model.graph}
    up, down = constant_array(nodes["up"].inputs[1]), constant_array(nodes["down"].inputs[1]).copy()
    dormant = [j for j in range(up.shape[1]) if np.count_nonzero(up[:, j]) == 1]
    assert dormant, "the cut kept no dormant neuron"
    down[dormant[0]] *= 0.5
    nodes["down"].replace_input_with(1, add_initializer(model.graph, "W2.faulty", down))


def test_a_result_off_its_twin_on_the_calibration_data_is_rolled_back(monkeypatch):
    """Review finding (fixed since): ``Verifier.check_twin`` ran the twin only on the verification input sets
    (generated N(0, 1) floats here), never on the --calibration samples the pass fitted and the budget is measured
    on: a realization wrong only in neurons those inputs never fire was reported verified with max |Δ| 0 from its
    twin. The first batches of real calibration samples are now twin-checked too."""
    _with_fault(monkeypatch, "prune-ffn", _halve_a_dormant_row)
    x = np.random.default_rng(1).standard_normal((64, D)).astype(np.float32)
    x[:, 0] += 22.0  # real data carries the feature the dormant neurons read
    _, report = optimizer.optimize_with_report(
        _dormant_ffn(), passes=["prune-ffn"], calibration={"x": x}, prune_ffn=0.25
    )
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.twin
    assert "differs from its twin" in record.detail and "on calibration samples (batch 1)" in record.detail


def test_a_shape_reader_whose_width_reaches_the_output_is_no_group():
    """Review finding (fixed since): passes/pruning/_groups.py::outside_reader let any Shape reader of the hidden
    layer through ('whatever it computes follows from it'): a width read by Shape that reaches the output
    (y / sqrt(width)) changes with the cut, which the twin (full width) does not, so the matcher cut on a guess the
    twin check then refuted. A Shape (or Size) that may pass on the width now leaves the group whole, with a note."""
    model = _ffn(
        [
            helper.make_node("MatMul", ["h", "W2"], ["d"], name="down"),
            helper.make_node("Shape", ["h"], ["width_shape"], name="width_of_h", start=-1),
            helper.make_node("Cast", ["width_shape"], ["width"], to=TensorProto.FLOAT, name="width"),
            helper.make_node("Sqrt", ["width"], ["root"], name="root"),
            helper.make_node("Div", ["d", "root"], ["y"], name="scale"),
        ],
        opset=18,
    )
    result = FfnPruningPass(0.5)(model)
    x = np.random.default_rng(3).standard_normal((4, D)).astype(np.float32)
    assert not result.modified or assert_matches_twin(result, {"x": x}) is None
    assert not result.modified
    assert "down left whole: h's width is read by width_of_h (Shape): the cut would change what it computes" in (
        result.refusals
    )


@pytest.mark.parametrize(
    ("start", "end", "picked", "cut"),
    [
        (0, None, 0, True),  # GPT-2's x.size()[:-1]: Shape, then Gather of the batch dim
        (0, None, -2, True),
        (0, -1, 0, True),  # a Shape that leaves the width out
        (0, None, 1, False),  # the width
        (0, None, -1, False),
        (-1, None, 0, False),
    ],
)
def test_a_shape_reader_is_let_through_only_where_it_provably_never_passes_on_the_width(start, end, picked, cut):
    """The hidden layer's shape read by Shape → Gather (a run-time Reshape target for the output, as GPT-2's Conv1D
    writes it): where the picked dim is not the width, the cut changes nothing it computes and the group is cut."""
    attributes = {"start": start} if end is None else {"start": start, "end": end}
    model = _ffn(
        [
            helper.make_node("MatMul", ["h", "W2"], ["d"], name="down"),
            helper.make_node("Constant", [], ["picked"], value=numpy_helper.from_array(np.array([picked]))),
            helper.make_node("Constant", [], ["last"], value=numpy_helper.from_array(np.array([-1]))),
            helper.make_node("Shape", ["h"], ["dims"], name="dims_of_h", **attributes),
            helper.make_node("Gather", ["dims", "picked"], ["dim"], name="pick", axis=0),
            helper.make_node("Concat", ["dim", "last"], ["target"], name="target", axis=0),
            helper.make_node("Reshape", ["d", "target"], ["y"], name="reshape"),
        ],
        opset=18,
    )
    model.graph.node("relu").outputs[0].shape = ir.Shape(["batch", H])  # the rank the exporters record
    x = np.random.default_rng(3).standard_normal((4, D)).astype(np.float32)
    result = FfnPruningPass(0.5)(model)
    assert result.modified == cut, result.refusals
    if cut:
        assert_matches_twin(result, {"x": x})
    else:
        assert any("width is read by dims_of_h" in reason for reason in result.refusals), result.refusals


def test_heads_pruning_leaves_weights_shared_by_several_layers_whole():
    """Review finding (fixed since): passes/pruning/heads.py (and channels.py) lacked ffn.py's _shared_weight
    refusal: two attention layers sharing their Q/K/V/O weights (ALBERT-style) each got their own pruned copy, so
    prune-heads made the model larger (3,136 → 3,680 parameters here) and reported it applied. Every pruning pass
    now refuses such a group through ``_groups.shared_constant``."""
    model = graphs.attention_ffn()
    nodes = {node.name: node for node in model.graph}
    for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
        nodes[f"{projection}1"].replace_input_with(1, nodes[f"{projection}0"].inputs[1])
    for name in ("wq1", "wk1", "wv1", "wo1"):
        model.graph.initializers.pop(name)
    before = parameter_count(model)
    result = HeadPruningPass(0.25, samples=graphs.feeds(model, 8))(model)
    assert not result.modified or parameter_count(result.model) < before, result.notes
    assert not result.modified and len(result.refusals) == 2 and "shared by several layers" in result.refusals[0]


def test_a_bias_the_repair_adds_is_cut_with_the_next_group():
    """Review finding (fixed since): passes/pruning/_base.py::_refit gave a consumer without a bias a new one
    (_bias's insert_add, or a Gemm/Conv C/B input), full width, after the groups were found: where that consumer is
    also the next group's producer (a bias-free MLP, x@W0 → Relu → @W1 → Relu → @W2), the next cut sliced its
    columns but not the new bias, and ONNX Runtime refused the result, so a cut that is fine without repair was
    rolled back. The groups that cut the consumer's output channels now cut the bias the repair added too."""
    rng = np.random.default_rng(0)
    shapes = {"W0": (D, H), "W1": (H, H), "W2": (H, D)}
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["a0"], name="fc0"),
        helper.make_node("Relu", ["a0"], ["r0"], name="relu0"),
        helper.make_node("MatMul", ["r0", "W1"], ["a1"], name="fc1"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "W2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array((rng.standard_normal(s) / 4).astype(np.float32), n) for n, s in shapes.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    calibration = {"x": rng.standard_normal((64, D)).astype(np.float32)}
    _, report = optimizer.optimize_with_report(
        model, passes=["prune-ffn"], calibration=calibration, prune_ffn=0.25, min_cosine=0.5
    )
    record = report.passes[-1]
    assert record.status == STATUS_APPLIED, record.detail
    assert any("after repair" in note for note in record.notes), record.notes


def test_ffn_pruning_of_a_weight_tied_between_up_and_down_does_not_grow_the_model():
    """Review finding (fixed since): passes/pruning/ffn.py::_shared_weight counted only readers outside the group's
    cuts, so a weight tied between the up projection and the down projection (x @ W → Relu → Gemm(·, W, transB=1))
    was cut twice into two copies: 25 % of the neurons removed stored 1,536 weights where the input had 1,024. A
    constant two of the group's own cuts read is refused now (``_groups.shared_constant``)."""
    weight = (np.random.default_rng(0).standard_normal((D, H)) / 4).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["u"], name="encode"),
        helper.make_node("Relu", ["u"], ["h"], name="relu"),
        helper.make_node("Gemm", ["h", "W"], ["y"], name="decode", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array(weight, "W")],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    before = parameter_count(model)
    result = FfnPruningPass(0.25)(model)
    assert not result.modified or parameter_count(result.model) < before, result.notes
    assert result.refusals == [
        "decode left whole: its weight W is read by 2 of the layers it cuts (tied between them): each would keep "
        "its own pruned copy"
    ]
