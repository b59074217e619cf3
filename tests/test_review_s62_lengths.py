"""Review s62 (verification across lengths): a fact a fusion decides by evaluating a subgraph was probed at the
lengths ``_probe.probe_lengths`` names, which bisects each one-element comparison of the length between them; a
comparison that switches and switches back between two probed lengths was not seen.

Finding (each test failed before its fix): a mask, or a rotary table, chosen by ``(S + 5) % 16 == 0`` (true at 11,
27, 43, ... tokens; the constants name 5, 6, 16 and 17, the probes 2 to 8, 13, 16, 17 and 4096, and verification
runs at 128 and 257, where it is false everywhere) was fused as what it is at those lengths and reported verified:
``pack-qkv`` packed a mask that is padding alone at 11 tokens as causal (wrong by 3.7 at 11 tokens, 5.5 at 27),
``fuse-rotary-embedding`` baked the long table into its caches (wrong by 4.8 at 27 tokens), and
``fuse-group-query-attention`` made a bias open at 11 keys ``causal=1``. Bisection finds the switch of an ordering
of a value that only grows or only shrinks with the length; any other one-element comparison of it (an equality, a
remainder), or a one-element remainder of it with no comparison at all (a factor ``min((S + 5) % 16, 1)`` picking the
mask: packed causal, wrong by 3.7 at 11 tokens), is now a reason to refuse the fact (``_probe._switches_once``,
``_probe._PERIODIC``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import helper, numpy_helper

import optimizer
from passes._utils import add_initializer
from passes.fusion import _probe
from passes.fusion.group_query_attention import GroupQueryAttentionFusion
from tests.helpers import run
from tests.passes.fusion.test_rotary_embedding import _inputs as _rotary_inputs
from tests.passes.fusion.test_rotary_embedding import _rotary_model
from tests.test_review_s57_masks import _model as _mask_model
from tests.test_review_s60_dec import _constant, _opened, _staged


def _every_sixteenth(proto, length: str, condition: str, zero: str) -> None:
    """Replace the node computing ``condition`` by ``(length + 5) % 16 == 0`` (``zero`` an int64 0 in the graph)."""
    nodes = list(proto.graph.node)
    (index,) = [i for i, node in enumerate(nodes) if node.output[0] == condition]
    nodes[index : index + 1] = [
        helper.make_node("Add", [length, "five"], ["shifted"]),
        helper.make_node("Mod", ["shifted", "sixteen"], ["remainder"]),
        helper.make_node("Equal", ["remainder", zero], [condition]),
    ]
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(5, np.int64), "five"),
            numpy_helper.from_array(np.array(16, np.int64), "sixteen"),
        ]
    )
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _max_diff(before: ir.Model, after: ir.Model, feeds: dict[str, np.ndarray], real: np.ndarray | None = None) -> float:
    expected, actual = run(before, feeds), run(after, feeds)
    worst = 0.0
    for name, want in expected.items():
        got = actual[name]
        if real is not None:
            want, got = want[real], got[real]
        worst = max(worst, float(np.max(np.abs(got - want))))
    return worst


def test_a_mask_padding_alone_at_every_sixteenth_length_is_not_packed_causal():
    proto = ir.to_proto(_mask_model(switch=4))  # padding alone where "short" holds, causal + padding elsewhere
    _every_sixteenth(proto, "S", "short", "i0")
    packed_right_at(ir.from_proto(proto), (11, 27, 128))


def packed_right_at(model: ir.Model, lengths) -> None:
    """The default pipeline's result of ``model`` (a mask model of ``tests/test_review_s57_masks``) matches it at
    ``lengths`` tokens (row 2 right-padded by one), and ``pack-qkv`` refused the mask as one it cannot bracket."""
    result, report = optimizer.optimize_with_report(model.clone())
    (record,) = [p for p in report.passes if p.name == "pack-qkv"]
    rng = np.random.default_rng(0)
    for length in lengths:
        mask = np.ones((2, length), np.int64)
        mask[1, -1] = 0
        feeds = {"input_ids": rng.integers(0, 32, (2, length)), "attention_mask": mask}
        difference = _max_diff(model, result, feeds, mask.astype(bool))
        assert difference < 1e-4, f"pack-qkv {record.status}, yet off by {difference:.3g} at {length} tokens"
    assert any("cannot bracket" in reason for reason in record.refusals), record.refusals


def test_a_mask_picked_by_a_remainder_of_the_length_without_a_comparison_is_not_packed_causal():
    # The same mask, chosen by a factor f = min((S + 5) % 16, 1) (0 at 11, 27, ... tokens): padding + f * causal.
    proto = ir.to_proto(_mask_model(switch=4))
    nodes = [node for node in proto.graph.node if node.output[0] != "short"]
    (index,) = [i for i, node in enumerate(nodes) if node.output[0] == "kept"]
    nodes[index : index + 1] = [
        helper.make_node("Add", ["S", "five"], ["shifted"]),
        helper.make_node("Mod", ["shifted", "sixteen"], ["remainder"]),
        helper.make_node("Min", ["remainder", "i1"], ["factor_int"]),
        helper.make_node("Cast", ["factor_int"], ["factor"], to=1),
        helper.make_node("Sub", ["allowed", "padding_f"], ["gap"]),
        helper.make_node("Mul", ["gap", "factor"], ["scaled"]),
        helper.make_node("Add", ["padding_f", "scaled"], ["kept"]),
    ]
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(5, np.int64), "five"),
            numpy_helper.from_array(np.array(16, np.int64), "sixteen"),
        ]
    )
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    packed_right_at(ir.from_proto(proto), (11,))


def test_a_rotary_table_switched_at_every_sixteenth_length_is_not_fused_wrong():
    proto = ir.to_proto(_rotary_model(switched=True))  # the short table where "is_short" holds, the long elsewhere
    _every_sixteenth(proto, "seq", "is_short", "zero")
    model = ir.from_proto(proto)
    result, report = optimizer.optimize_with_report(model.clone())
    (record,) = [p for p in report.passes if p.name == "fuse-rotary-embedding"]
    for length in (27, 43, 128):
        difference = _max_diff(model, result, _rotary_inputs(sequence=length))
        assert difference < 1e-5, f"fuse-rotary-embedding {record.status}, yet off by {difference:.3g} at {length}"


def test_a_bias_open_at_every_sixteenth_total_length_is_not_fused_causal():
    # Causal + padding, but every key visible where (T + 5) % 16 == 0: 11, 27, ... keys.
    def build(add, graph):
        total = add("Shape", [next(v for v in graph.inputs if v.name == "attention_mask")], start=1, end=2)
        shifted = add("Add", [total, _constant(graph, "five", 5)])
        remainder = add("Mod", [shifted, _constant(graph, "sixteen", 16)])
        return add("Equal", [remainder, add_initializer(graph, "nothing_left", np.array([0], np.int64))])

    result = GroupQueryAttentionFusion()(_opened(_staged("llama_kv_legacy"), build))
    assert "GroupQueryAttention" not in {n.op_type for n in result.model.graph}
    assert any("cannot bracket" in reason for reason in result.refusals), result.refusals


def _condition(nodes, initializers: dict[str, int]) -> ir.Value:
    """The last output of ``nodes`` over ``x [1, S]``, read as ``S`` by ``Shape`` and ``Gather``."""
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Gather", ["shape", "one"], ["S"], axis=0),
            *nodes,
        ],
        "g",
        [helper.make_tensor_value_info("x", 7, [1, "S"])],
        [helper.make_tensor_value_info(nodes[-1].output[0], 9, [])],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in {"one": 1, **initializers}.items()],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    return model.graph.outputs[0]


def test_which_comparisons_bisection_brackets():
    n = helper.make_node
    # Orderings of values that only grow or only shrink with the length switch once: bisection finds it.
    doubled = [n("Mul", ["S", "two"], ["t"]), n("LessOrEqual", ["t", "c"], ["y"])]
    assert _probe._switches_once(_condition(doubled, {"two": 2, "c": 201}))
    assert _probe._switches_once(_condition([n("Sub", ["c", "S"], ["t"]), n("Greater", ["t", "S"], ["y"])], {"c": 300}))
    # An equality, a remainder, a product of the length with itself, or a root (NaN below 0) may switch back.
    assert not _probe._switches_once(_condition([n("Equal", ["S", "c"], ["y"])], {"c": 188}))
    remainder = [n("Mod", ["S", "c"], ["t"]), n("Less", ["t", "one"], ["y"])]
    assert not _probe._switches_once(_condition(remainder, {"c": 16}))
    assert not _probe._switches_once(_condition([n("Mul", ["S", "S"], ["t"]), n("Less", ["t", "c"], ["y"])], {"c": 99}))
    assert not _probe._switches_once(
        _condition([n("Cast", ["S"], ["f"], to=1), n("Sqrt", ["f"], ["t"]), n("Less", ["t", "c"], ["y"])], {"c": 5})
    )
