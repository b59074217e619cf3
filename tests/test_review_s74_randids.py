"""Review s74 (randids): a late hostile review of two session-73 verification rules in ``optimizer.verify``: which
outputs are random (``_drawn_outputs``, ``_passes_on``, the five runs of ``Verifier._nondeterministic_outputs``) and
how float outputs computed from ids or integers are held (``compare_outputs``' ``exact``, ``_cast_integers``,
``class_scores.picked_ids``), probed on hand-built graphs and on torch 2.13 exports (keypoint heads, a detector's
``TopK`` post-process, a CTC greedy decoder, normalised coordinates; default passes, ``--quantize dynamic/static``).

1. **A draw in a model-local function was never known random**: ``_may_draw`` and ``_drawn_outputs`` read the main
   graph's nodes alone, so a model whose sampler is a function call was taken as deterministic without a run: its
   drawn output was compared, and every rewrite that changed the graph (remove-identity, fold-constants) was rolled
   back for the other numbers ONNX Runtime then drew, with no warning that the output is random. A call of a function
   whose body draws on every call now draws the outputs its draws reach (``verify._drawing_functions``).
2. **Torch's keypoints got no tie excuse**: ``stack([x, y], -1)`` of ``(idx % W).float()`` and ``(idx // W).float()``
   (both exporters write a ``Concat`` of ``Unsqueeze`` s), and the same divided by ``W``, are no ``Cast`` output, so a
   correct rewrite that flipped a heatmap's tie (a whole pixel, past the float tolerance) was rolled back; only a bare
   ``Cast(ArgMax % W)`` was excused (review s73 late4). ``_cast_integers`` now follows casts of integers through value
   moves, ``Concat`` and a constant scale or offset; a wrong width is still rolled back.
3. **A random output's distribution was not held** (a strict xfail until review s74 draws): skipped as random, a
   sampler whose noise a rewrite doubled verified, as would its mean moved or a Dropout's ratio changed; the report
   named the output as not compared, but called the model verified. The exact check now feeds the main graph's draws
   (``verify._FedDraws``) and compares every output.
4. **A draw multiplied by a computed zero made its output random** (a strict xfail until review s74 draws):
   ``_passes_on`` knows a constant 0 alone, so ``mean + (mean - mean) * noise`` was never compared (and a model of
   such outputs alone was refused as unverifiable); with the draw fed, it is compared.
5. **A draw read only in the branch a constant condition never takes made the ``If``'s outputs random**:
   ``_values_read`` read every branch; it now reads the taken one where the condition is a constant (as
   ``_passes_on`` does for a ``Where``), and an output the draw does reach through it stays random.

Probed and held (no test): ids ``TopK`` picks cast to float, a CTC decoder's ``ArgMax(...).float()`` and
``argmax.float() / 64`` on both exporters verify under the default passes and int8 (dynamic and static); a
``RandomNormal`` with a ``seed`` draws other numbers on each run of one session in ONNX Runtime 1.32 (random, rightly).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.verify import Verifier
from tests.test_review_s73_floatids import _TIED_X, _flipped_at_the_tie, _tied

_N = helper.make_node
_X = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) / 8}
_OPSET = helper.make_opsetid("", 18)


def _model(nodes: list, outputs: tuple, constants: dict[str, np.ndarray], functions: tuple = ()) -> ir.Model:
    """``mean = x @ W`` ([2, 4]) then ``nodes``, computing float ``outputs`` of ``[2, 4]``."""
    weight = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4)
    graph = helper.make_graph(
        [_N("MatMul", ["x", "W"], ["mean"]), *nodes],
        "sampler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 4]) for name in outputs],
        [numpy_helper.from_array(value, name) for name, value in {"W": weight, **constants}.items()],
    )
    opsets = [_OPSET, *([helper.make_opsetid("local", 1)] if functions else [])]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=9, functions=list(functions)))


def _function(name: str, nodes: list, outputs: list) -> object:
    return helper.make_function("local", name, ["a"], outputs, nodes, [_OPSET, helper.make_opsetid("local", 1)])


# ``Noisy(a)``: ``a`` plus a draw, and ``Relu(a)``, which no draw reaches.
_NOISY = _function(
    "Noisy",
    [_N("RandomNormalLike", ["a"], ["n"]), _N("Add", ["a", "n"], ["b"]), _N("Relu", ["a"], ["c"])],
    ["b", "c"],
)
# ``Outer(a)`` calls ``Noisy`` and returns its drawn output alone.
_OUTER = _function("Outer", [_N("Noisy", ["a"], ["b", "c"], domain="local")], ["b"])


def _without_identity(model: ir.Model) -> ir.Model:
    """``model`` with its ``Identity`` removed, as remove-identity does: a correct rewrite."""
    rewritten = ir.from_proto(ir.to_proto(model))
    identity = next(node for node in rewritten.graph if node.op_type == "Identity")
    identity.outputs[0].replace_all_uses_with(identity.inputs[0])
    rewritten.graph.remove(identity, safe=True)
    return rewritten


@pytest.mark.parametrize("nested", [False, True], ids=["call", "nested call"])
def test_a_draw_in_a_local_function_is_random_and_a_correct_rewrite_verifies(nested):
    call = _N("Outer", ["kept"], ["y"], domain="local") if nested else _N("Noisy", ["kept"], ["y", "z"], domain="local")
    functions = (_NOISY, _OUTER) if nested else (_NOISY,)
    outputs = ("y",) if nested else ("y", "z")
    nodes = [_N("Identity", ["mean"], ["kept"]), call, _N("Sigmoid", ["mean"], ["s"])]
    model = _model(nodes, (*outputs, "s"), {}, functions)
    verifier = Verifier(model, [_X])
    assert verifier.skipped == {"y"}  # nothing was skipped: 'y' was compared ('z' is deterministic)
    result = verifier.check(_without_identity(model))
    assert result.ok, result.first_failure  # rolled back: 'y' max abs error 2.9 exceeds rtol=0.0001


def _keypoints(width: int) -> ir.Model:
    """Torch's keypoint decoder over 8 tied scores (``_tied``): ``xy = stack([(p % width).float(), (p // width)
    .float()], 1)`` and ``xy / [width, 2]``, as both exporters write them (a ``Concat`` of ``Unsqueeze`` s)."""
    nodes = [
        _N("MatMul", ["x", "W"], ["heat"]),
        _N("ArgMax", ["heat"], ["p"], axis=1, keepdims=0),
        _N("Mod", ["p", "width"], ["m"]),
        _N("Div", ["p", "width"], ["d"]),
        _N("Cast", ["m"], ["col"], to=TensorProto.FLOAT),
        _N("Cast", ["d"], ["row"], to=TensorProto.FLOAT),
        _N("Unsqueeze", ["col", "axis"], ["col_1"]),
        _N("Unsqueeze", ["row", "axis"], ["row_1"]),
        _N("Concat", ["col_1", "row_1"], ["xy"], axis=1),
        _N("Div", ["col", "w"], ["col_n"]),
        _N("Div", ["row", "h"], ["row_n"]),
        _N("Unsqueeze", ["col_n", "axis"], ["col_2"]),
        _N("Unsqueeze", ["row_n", "axis"], ["row_2"]),
        _N("Concat", ["col_2", "row_2"], ["xy_norm"], axis=1),
    ]
    constants = {"width": np.array(width, np.int64), "axis": np.array([1], np.int64)}
    constants |= {"w": np.array(width, np.float32), "h": np.array(2.0, np.float32)}
    graph = helper.make_graph(
        nodes,
        "keypoints",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2]) for name in ("xy", "xy_norm")],
        [numpy_helper.from_array(_tied(), "W"), *(numpy_helper.from_array(v, k) for k, v in constants.items())],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[_OPSET], ir_version=9))


@pytest.mark.parametrize("wrong", [False, True], ids=["tie flip kept", "other width rolled back"])
def test_stacked_float_keypoints_are_held_at_their_ties(wrong):
    model = _keypoints(4)
    candidate = _keypoints(2) if wrong else _flipped_at_the_tie(model)
    verifier = Verifier(model, [_TIED_X])
    flipped = Verifier(candidate, [_TIED_X]).references[0]
    assert not np.array_equal(verifier.references[0]["xy"], flipped["xy"])
    result = verifier.check(candidate)
    assert result.ok is not wrong, result.first_failure  # the tie flip: 'xy_norm' max abs error 0.5 exceeds rtol
    assert bool(result.integer_flips) is not wrong


_STD = {"std": np.array(0.5, np.float32)}
_SAMPLED = [
    _N("RandomNormalLike", ["mean"], ["noise"]),
    _N("Mul", ["std", "noise"], ["spread"]),
    _N("Add", ["mean", "spread"], ["y"]),
    _N("Relu", ["mean"], ["z"]),
]


def test_a_random_outputs_noise_doubled_is_rolled_back():
    model = _model(_SAMPLED, ("y", "z"), _STD)
    verifier = Verifier(model, [_X])
    assert verifier.skipped == {"y"}
    doubled = ir.from_proto(ir.to_proto(model))
    doubled.graph.initializers["std"].const_value = ir.tensor(np.array(1.0, np.float32), name="std")
    assert not verifier.check(doubled).ok  # verified: 'y' is not compared


def test_a_draw_times_a_computed_zero_leaves_its_output_compared():
    tail = [
        _N("RandomNormalLike", ["mean"], ["noise"]),
        _N("Sub", ["mean", "mean"], ["zero"]),
        _N("Mul", ["zero", "noise"], ["none"]),
        _N("Add", ["mean", "none"], ["y"]),
        _N("Relu", ["mean"], ["z"]),
    ]
    model = _model(tail, ("y", "z"), {})
    verifier = Verifier(model, [_X])
    assert not verifier.outputs_never_compared()  # {'random': ['y']}: never compared
    same = ir.from_proto(ir.to_proto(model))
    next(node for node in same.graph if node.op_type == "Add").op_type = "Sub"  # mean - 0: a correct rewrite
    assert verifier.check(same).ok
    doubled = ir.from_proto(ir.to_proto(model))
    add = next(node for node in doubled.graph if node.op_type == "Add")
    add.replace_input_with(1, add.inputs[0])  # mean + mean
    assert not verifier.check(doubled).ok  # verified: 'y' was not compared


def _branch(name: str, node: object) -> object:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)])


@pytest.mark.parametrize("taken", [False, True], ids=["untaken", "taken"])
def test_a_draw_read_only_in_the_branch_a_constant_condition_never_takes_leaves_the_output_compared(taken):
    drawn = _branch("noisy", _N("Add", ["mean", "noise"], ["t"]))
    kept = _branch("kept", _N("Relu", ["mean"], ["e"]))
    nodes = [
        _N("RandomNormalLike", ["mean"], ["noise"]),
        _N("If", ["condition"], ["y"], then_branch=drawn, else_branch=kept),
        _N("Add", ["mean", "noise"], ["r"]),
        _N("Sigmoid", ["mean"], ["s"]),
    ]
    model = _model(nodes, ("y", "r", "s"), {"condition": np.array(taken)})
    assert Verifier(model, [_X]).skipped == ({"y", "r"} if taken else {"r"})  # 'y' was random in both
