"""Review s62 (late: today's diff). ``_probe._switches_once`` read a ``Cast`` as keeping a length's order whatever its
type, and only ``Less``/``Equal``... as a condition. One-element conditions of the length that switch and switch
back between two probed lengths were bisected as if they switched once, or not seen at all, so ``pack-qkv`` packed
the mask as what it is at every probe and verification (128 and 257 tokens) reported it verified:

- ``Cast(S + 100, uint8) < 44`` (true from 156 to 199 tokens, false at every probe): wrong by 4.4 at 160 tokens;
- ``Not(Cast(3 * S - 60, bool))`` (an equality ``S == 20`` spelled without ``Equal``): wrong by 5.8 at 20 tokens;
- ``IsNaN(Sqrt((S - 150) * (S - 200)))`` (true from 151 to 199 tokens): wrong by 7.8 at 160 tokens.

Each failed before its fix: a ``Cast`` (or ``CastLike``) keeps a direction only to a float or a signed 32/64-bit
integer, and a ``Cast`` to bool, ``IsNaN`` or ``IsInf`` of what the length moves is a condition
``_switches_once`` does not bracket (``_probe._truth_of``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import helper, numpy_helper

from passes.fusion import _probe
from tests.test_review_s57_masks import _model as _mask_model
from tests.test_review_s62_lengths import _condition, packed_right_at


def _switched(nodes, initializers) -> ir.Model:
    """The mask model of ``_mask_model(switch=4)`` (padding alone where ``short`` holds, causal + padding elsewhere)
    with ``short`` computed by ``nodes`` from ``S``."""
    proto = ir.to_proto(_mask_model(switch=4))
    graph_nodes = list(proto.graph.node)
    (index,) = [i for i, node in enumerate(graph_nodes) if node.output[0] == "short"]
    graph_nodes[index : index + 1] = nodes
    proto.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in initializers.items())
    del proto.graph.node[:]
    proto.graph.node.extend(graph_nodes)
    return ir.from_proto(proto)


def test_a_mask_switched_by_a_length_cast_to_uint8_is_not_packed_causal():
    n = helper.make_node
    nodes = [
        n("Add", ["S", "hundred"], ["moved"]),
        n("Cast", ["moved"], ["wrapped"], to=ir.DataType.UINT8),
        n("Less", ["wrapped", "small"], ["short"]),
    ]
    model = _switched(nodes, {"hundred": np.array(100, np.int64), "small": np.array(44, np.uint8)})
    packed_right_at(model, (160, 128))


def test_a_mask_switched_by_a_length_cast_to_bool_is_not_packed_causal():
    n = helper.make_node
    nodes = [
        n("Mul", ["S", "three"], ["tripled"]),
        n("Sub", ["tripled", "sixty"], ["apart"]),
        n("Cast", ["apart"], ["elsewhere"], to=ir.DataType.BOOL),
        n("Not", ["elsewhere"], ["short"]),
    ]
    model = _switched(nodes, {"three": np.array(3, np.int64), "sixty": np.array(60, np.int64)})
    packed_right_at(model, (20, 21))


def test_a_mask_switched_by_a_nan_of_the_length_is_not_packed_causal():
    # IsNaN(Sqrt((S - 150) * (S - 200))), spelled S * S - 350 * S + 30000: true from 151 to 199 tokens alone.
    n = helper.make_node
    nodes = [
        n("Mul", ["S", "S"], ["squared"]),
        n("Mul", ["S", "c350"], ["linear"]),
        n("Sub", ["squared", "linear"], ["t"]),
        n("Add", ["t", "c30000"], ["poly"]),
        n("Cast", ["poly"], ["f"], to=ir.DataType.FLOAT),
        n("Sqrt", ["f"], ["root"]),
        n("IsNaN", ["root"], ["short"]),
    ]
    model = _switched(nodes, {"c350": np.array(350, np.int64), "c30000": np.array(30000, np.int64)})
    packed_right_at(model, (160, 128))


def test_a_cast_keeps_the_direction_only_where_its_type_holds_every_length():
    n = helper.make_node
    wide = [n("Cast", ["S"], ["f"], to=ir.DataType.FLOAT), n("Less", ["f", "c"], ["y"])]
    assert _probe._switches_once(_condition(wide, {"c": 100}))
    for to in (ir.DataType.UINT8, ir.DataType.INT8, ir.DataType.INT16, ir.DataType.UINT32):
        narrow = [
            n("Cast", ["S"], ["t"], to=to),
            n("Cast", ["t"], ["f"], to=ir.DataType.INT64),
            n("Less", ["f", "c"], ["y"]),
        ]
        assert not _probe._switches_once(_condition(narrow, {"c": 100})), to
