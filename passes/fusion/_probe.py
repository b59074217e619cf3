"""Probe values for fusions that must know what a subgraph computes: padded token batches, and the lengths to probe.

The evaluation itself is ``optimizer.runtime.evaluate`` (only the ancestors of the
probed values are serialized, so probing stays cheap on large models).

A fact read off one evaluation holds at the length evaluated, and nowhere else: a
sliding-window mask is causal on any probe shorter than its window. ``probe_lengths``
says at which sequence lengths such a fact must be checked before a fusion bakes it
into the graph (see its docstring for why those lengths).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import is_onnx_op
from optimizer.errors import RuntimeRefusedError
from optimizer.options import DEFAULT_MAX_SEQUENCE
from optimizer.runtime import SubgraphError, ancestry, evaluator, in_topological_order
from passes._utils import constant_array

__all__ = ["DEFAULT_MAX_SEQUENCE", "PADDED_MASK", "dims_read", "long_mask", "probe_lengths", "values_only_from"]

# A left- and a right-padded row: positions or masks built from the attention mask
# show it on one of them.
PADDED_MASK = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])

# Constants with more elements than this are tables: their dims count, not their values.
_SMALL_CONSTANT = 64
# The shortest length probe_lengths names: the fusions probe 7 tokens themselves.
_SHORTEST = 8

_INT_TYPES = (ir.DataType.INT64, ir.DataType.INT32)


def graph_inputs_of(values: Sequence[ir.Value]) -> list[ir.Value] | None:
    """The graph inputs the given values depend on; None if they depend on a subgraph-carrying node."""
    try:
        leaves = ancestry(values)[1]
    except SubgraphError:  # an If/Loop/Scan among the ancestors: not probed
        return None
    return [v for v in leaves if v.const_value is None]


def is_mask(value: ir.Value) -> bool:
    """True if a graph input is named like an attention mask."""
    return "mask" in (value.name or "").lower()


def token_inputs_of(values: Sequence[ir.Value], dtypes: tuple[ir.DataType, ...] = _INT_TYPES) -> list[ir.Value] | None:
    """The graph inputs ``values`` depend on, if each is a ``[batch, sequence]`` tensor of ``dtypes`` or an input
    ``values`` read only the batch and sequence of (``_sized_by_tokens``), else None.

    These are what ``token_feeds`` can make up probe values for: token ids, the attention mask, position ids, and
    an encoder's ``inputs_embeds`` that its mask is sized from (BART's: the mask was kept as a bias, unprobed, until
    review s66).
    """
    inputs = graph_inputs_of(values)
    if inputs is None or any(v.shape is None for v in inputs):
        return None
    tokens = [v for v in inputs if v.dtype in dtypes and v.shape.rank() == 2]
    if any(not any(v is t for t in tokens) and not _sized_by_tokens(values, v) for v in inputs):
        return None
    return inputs


def _sized_by_tokens(values: Sequence[ir.Value], source: ir.Value) -> bool:
    """True if ``values`` read only the first two dims of the graph input ``source`` (through ``Shape``), and its
    other dims are static: ``token_feeds`` feeds it zeros of the probe's batch and sequence."""
    dims = list(source.shape) if source.shape is not None else []
    if len(dims) < 2 or not all(isinstance(dim, int) for dim in dims[2:]):
        return False
    read = dims_read(values, source)
    return read is not None and read <= {0, 1}


def token_feeds(
    inputs: Sequence[ir.Value], mask: np.ndarray, overrides: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Probe values shaped like ``mask``: ``mask`` for mask inputs, ones (token id 1) for the rest, and zeros of
    ``mask``'s shape and its own further dims for an input of higher rank whose further dims are static (read only
    for its batch and sequence: ``token_inputs_of``).

    ``overrides`` replaces inputs by name (position ids, for one).
    """
    overrides = overrides or {}
    feeds = {}
    for value in inputs:
        rest = list(value.shape)[2:] if value.shape is not None else []
        if value.name in overrides:
            array = overrides[value.name]
        elif rest and all(isinstance(dim, int) for dim in rest):
            array = np.zeros((*mask.shape, *rest))
        else:
            array = mask if is_mask(value) else np.ones(mask.shape)
        feeds[value.name] = np.asarray(array).astype(value.dtype.numpy())
    return feeds


def long_mask(length: int) -> np.ndarray:
    """A ``[1, length]`` probe mask: its last two tokens padding when it is long enough, else all ones.

    One row, not ``PADDED_MASK``'s two: long probes cost ``length²``. Padded on the right
    only, so the first keys are real: a window's edge shows from its first length on
    (query ``w`` must not see key 0), which left padding would hide.
    """
    mask = np.ones((1, length), np.int64)
    if length >= 8:
        mask[:, -2:] = 0
    return mask


def probe_lengths(
    values: Sequence[ir.Value],
    max_sequence: int,
    *,
    model: ir.Model | None = None,
    inputs: Sequence[ir.Value] | None = None,
    feeds: Sequence[Callable[[int], Mapping[str, np.ndarray]]] = (),
) -> list[int] | str:
    """The sequence lengths at which a fact decided by evaluating ``values`` must be checked, shortest first; or
    why no lengths suffice (a comparison whose switches bisection cannot find, ``_condition_switches``).

    The subgraphs fusions probe read the sequence length (through shapes), a 0/1 mask,
    token ids through their shape only, and constants. What they compute can change with
    the length only where the length meets one of those constants:

    - where a table they read runs out: a ``[512, 512]`` band table sliced to ``[S, S]``
      has been read whole at 512 and is clamped at 513 (from there the original graph
      fails, or the probe shows the new behaviour). So every dim ``E`` of every constant
      tensor whose values reach ``values`` gives ``E`` and ``E + 1`` (one read only for
      its shape, the word embeddings behind ``Shape(Gather(wte, ids))``, is not a table
      the subgraph reads);
    - where the length, or a distance between positions, crosses an integer the graph
      compares with (a window of 256 built from ``Range`` differs from causal from 257
      tokens on): every integral value ``c`` of a small constant gives ``c`` and ``c + 1``;
    - ``max_sequence``, the longest sequence the result must support (``--max-sequence``):
      a window or threshold the constants do not name still shows there if it is shorter.

    All are capped at ``max_sequence`` (longer sequences are outside what a fused result
    claims) and are at least ``_SHORTEST``: the fusions' own padded 7-token probe already
    shows a shorter window or table, and smaller numbers are the shape arithmetic's
    axes and ranks, each of which would cost one more evaluation (on BERT, re-serializing
    the word embeddings that ``Shape`` reads). This is not a proof for any graph (one
    could compare the length with a number it computes), but it covers every constant a
    mask, position or rotary subgraph turns on, which a single short probe does not.

    With ``model`` and the token ``inputs`` the values are fed from (``token_feeds``), a
    length the graph computes a switch at is found too (``_condition_switches``): each
    one-element comparison among the values read (``2 * S <= 201``, ``Cast(S) <= 100.5``)
    is evaluated at these lengths, and where it changes between two of them the change is
    bisected, its last length before and first after added; a one-element comparison that may switch and
    switch back between two lengths (an equality, a remainder: ``_switches_once``) is a reason to refuse the
    fact instead. ``feeds`` (with ``model``) are more ways
    to feed the graph at a length, each searched the same way: a decoder's bias reads its length off
    a past and a mask, which ``token_feeds`` cannot make up (``fuse-group-query-attention`` feeds
    prefills and chunks over a past; ``RuntimeRefusedError`` from one skips that length).
    """
    candidates = {max_sequence}
    constants = [constant_array(v) for v in _values_read(values)]
    for array in constants:
        if array is None:
            continue
        edges = set(array.shape)
        if array.size <= _SMALL_CONSTANT and array.dtype.kind in "iuf":
            edges |= set(_integral_magnitudes(array.reshape(-1)))
        candidates |= {edge + step for edge in edges for step in (0, 1)}
    lengths = sorted(n for n in candidates if _SHORTEST <= n <= max_sequence)
    searches = list(feeds) if model is not None else []
    if model is not None and inputs:
        searches.insert(0, lambda length: token_feeds(inputs, long_mask(length)))
    for feeds_at in searches:
        switches = _condition_switches(model, values, feeds_at, lengths, max_sequence)
        if isinstance(switches, str):
            return switches
        lengths = sorted(set(lengths) | set(switches))
    return lengths


_COMPARISONS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal"})
# Evaluations one search may take: each is a run of the (small) condition subgraph.
_MAX_SWITCH_EVALUATIONS = 96


def _condition_switches(
    model: ir.Model,
    values: Sequence[ir.Value],
    feeds_at: Callable[[int], Mapping[str, np.ndarray]],
    lengths: list[int],
    max_sequence: int,
) -> list[int] | str:
    """Lengths on both sides of each change of a one-element comparison the values read, between ``_SHORTEST``
    and ``max_sequence`` (see ``probe_lengths``); or why they cannot be found: a one-element comparison that may
    switch and switch back between two lengths (``_switches_once``), or a one-element remainder or other periodic
    function of what the length moves (``(S + 5) % 16`` as a factor that picks a mask, with no comparison at all).
    Comparisons of more elements (a mask's) are left to the constants: their shape follows the length."""
    read = _values_read(values)
    conditions = [
        value
        for value in read
        if (node := value.producer()) is not None
        and is_onnx_op(node, node.op_type)
        and (node.op_type in _COMPARISONS or _truth_of(node))
    ]
    periodic = [
        value
        for value in read
        if (node := value.producer()) is not None
        and node.op_type in _PERIODIC
        and is_onnx_op(node, node.op_type)
        and any(_direction(operand, {}) != 0 for operand in node.inputs)
    ]
    if not conditions and not periodic:
        return []
    try:
        run = evaluator(model, conditions + periodic)
    except (SubgraphError, RuntimeRefusedError):
        return []
    budget = [_MAX_SWITCH_EVALUATIONS]

    def state(length: int) -> tuple | None:
        """Each condition's value (None where it is not one element), then whether each periodic value is one."""
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        try:
            found = run(dict(feeds_at(length)))
        except RuntimeRefusedError:
            return None
        told = [bool(np.asarray(x).reshape(-1)[0]) if np.size(x) == 1 else None for x in found[: len(conditions)]]
        return (*told, *(np.size(x) == 1 for x in found[len(conditions) :]))

    points = sorted({_SHORTEST, *lengths, max_sequence})
    states = [state(n) for n in points]
    switches: set[int] = set()
    # Bisection finds where a comparison that switches once between two points switches: one of a value that only
    # grows (or only shrinks) with the length. Another (``(S + 5) % 16 == 0``, ``2 * S + 1 == 41``: no constant
    # names 11 or 20) may switch and switch back between two points, unseen: the fact is not probed, but refused.
    first = next((found for found in states if found is not None), None)
    if first is not None:
        for index, value in enumerate(conditions + periodic):
            if index < len(conditions) and (first[index] is None or _switches_once(value)):
                continue
            if index < len(conditions) and _same_over_positions(value, run, feeds_at, index, max_sequence):
                continue
            if index >= len(conditions) and not first[index]:
                continue
            node = value.producer()
            # An input's values read as well (not only its shape): the probes feed them, so say which.
            read = sorted({v.name for v in _values_read([value]) if v.is_graph_input() and v.name})
            values = f" and the values of {', '.join(read)}" if read else ""
            return (
                f"it computes from the length{values} what the probes cannot bracket ({node.op_type} "
                f"{node.name or value.name!r}: an equality, a remainder, or an ordering of a value that may rise and "
                "fall with the length can switch and switch back between two lengths probed)"
            )
    for (low, low_state), (high, high_state) in zip(zip(points, states), zip(points[1:], states[1:])):
        if low_state is None or high_state is None or low_state == high_state:
            continue
        while high - low > 1:
            middle = (low + high) // 2
            middle_state = state(middle)
            if middle_state is None:
                break
            if middle_state == low_state:
                low = middle
            else:
                high = middle
        switches |= {low, high}
    return sorted(n for n in switches if _SHORTEST <= n <= max_sequence)


# A one-element ordering of the largest (or smallest) position id and constants (LongRoPE's ``max(position_ids) + 1 >
# original_max_position_embeddings``) reads no length: the probes feed positions of ones, so bisection sees no switch.
# It is monotone in the position, and the fused caches end at ``max_sequence``: where it holds the same at positions 0
# and ``max_sequence - 1`` it holds the same at every position the fused model takes, and refuses nothing.
_POSITION_REDUCES = frozenset({"ReduceMax", "ReduceMin"})


def _position_reduces(condition: ir.Value) -> list[ir.Value] | None:
    """The ``ReduceMax``/``ReduceMin`` outputs over an integer graph input named like position ids (not a mask) that
    the ordering ``condition`` reads, where it is monotone in them and reads nothing else but constants; else None."""
    node = condition.producer()
    if node is None or node.op_type not in _ORDERINGS or len(node.inputs) != 2:
        return None
    read = _values_read([condition])
    if any((producer := v.producer()) is not None and producer.op_type in ("Shape", "Size") for v in read):
        return None  # the length too: two things move
    reduces = []
    for value in read:
        producer = value.producer()
        if producer is None or producer.op_type not in _POSITION_REDUCES or not is_onnx_op(producer, producer.op_type):
            continue
        data = producer.inputs[0]
        if data is None or data.producer() is not None or data.const_value is not None or is_mask(data):
            return None
        if "position" not in (data.name or "").lower():
            return None  # token ids, a past's length: their values are not bounded by the caches' positions
        if data.dtype not in _INT_TYPES or any(_direction(v, {}) != 0 for v in producer.inputs[1:] if v is not None):
            return None
        reduces.append(value)
    if not reduces:
        return None
    memo: dict[int, int | None] = {id(value): 1 for value in reduces}
    moves = _combined([_direction(node.inputs[0], memo), _negated(_direction(node.inputs[1], dict(memo)))])
    return reduces if moves is not None else None


def _same_over_positions(
    condition: ir.Value,
    run: Callable[[Mapping[str, np.ndarray]], Sequence],
    feeds_at: Callable[[int], Mapping[str, np.ndarray]],
    index: int,
    max_sequence: int,
) -> bool:
    """Whether ``condition`` (the ``index``-th value ``run`` evaluates) is an ordering of position ids
    (``_position_reduces``) that holds the same with every position 0 and every position ``max_sequence - 1``."""
    reduces = _position_reduces(condition)
    if reduces is None:
        return False
    names = {value.producer().inputs[0].name for value in reduces}
    found = []
    for position in (0, max_sequence - 1):
        try:
            feeds = dict(feeds_at(_SHORTEST))
            if not names <= set(feeds):
                return False
            for name in names:
                feeds[name] = np.full_like(feeds[name], position)
            value = np.asarray(run(feeds)[index])
        except RuntimeRefusedError:
            return False
        if value.size != 1:
            return False
        found.append(bool(value.reshape(-1)[0]))
    return found[0] == found[1]


# Ops whose output, read as a function of the length, moves as their inputs do (each input's direction combined):
# values passed on, and non-decreasing functions of them. ``_switches_once`` reads a comparison through these.
_PASSED_ON = frozenset("Identity Squeeze Unsqueeze Reshape Flatten Expand".split())
# Types a Cast keeps the order of a length's values in: not bool, nor a narrower or unsigned integer, which wraps
# (``Cast(S + 100, uint8) < 44`` holds from 156 to 199 tokens, and again 256 later, false at every probe).
_HOLDING_ORDER = frozenset(
    {
        ir.DataType.FLOAT,
        ir.DataType.DOUBLE,
        ir.DataType.FLOAT16,
        ir.DataType.BFLOAT16,
        ir.DataType.INT32,
        ir.DataType.INT64,
    }
)
# (Not Sqrt or Log: NaN below 0, which no comparison holds, so ``sqrt(S - 100) < 5`` holds from 100 to 124 only.)
_NON_DECREASING = frozenset("Floor Ceil Round Exp Relu Sigmoid Tanh Erf Softplus".split())
_COMBINED = frozenset("Add Sum Max Min Mean Concat".split())
_ORDERINGS = frozenset({"Less", "LessOrEqual", "Greater", "GreaterOrEqual"})
# Integer ops periodic in their input: a one-element one of the length repeats its values (and any fact it picks)
# forever. (Not Sin and Cos: every rotary table reads them, over more elements, and a comparison of one is refused.)
_PERIODIC = frozenset("Mod BitwiseAnd BitwiseOr BitwiseXor".split())


def _truth_of(node: ir.Node) -> bool:
    """Whether ``node`` tells a truth of what the length moves without a comparison: a ``Cast`` to bool (``x != 0``,
    an equality spelled without ``Equal``: ``Not(Cast(3 * S - 60, bool))`` holds at 20 tokens alone), ``IsNaN`` or
    ``IsInf`` (``IsNaN(Sqrt(f(S)))``, true wherever ``f`` dips below 0). Not one shaped to hold more than one
    element (a mask cast to bool): ``_condition_switches`` leaves those to the constants."""
    shape = node.outputs[0].shape
    if shape is not None and not all(isinstance(dim, int) and dim == 1 for dim in shape):
        return False
    if node.op_type == "Cast":
        truth = node.attributes.get_int("to", 0) == ir.DataType.BOOL
    else:
        truth = node.op_type in ("IsNaN", "IsInf")
    return truth and bool(node.inputs) and _direction(node.inputs[0], {}) != 0


def _switches_once(condition: ir.Value) -> bool:
    """Whether the one-element comparison ``condition`` changes at most once as the length grows: an ordering
    (``<``, ``<=``, ``>``, ``>=``) of values each of which only grows or only shrinks with it (``_direction``).
    An equality, or an ordering of a remainder, a table lookup by the length or a product of two lengths, may
    change and change back between two probed lengths."""
    node = condition.producer()
    if node is None or node.op_type not in _ORDERINGS or len(node.inputs) != 2:
        return False
    memo: dict[int, int | None] = {}
    return _combined([_direction(node.inputs[0], memo), _negated(_direction(node.inputs[1], memo))]) is not None


def _negated(direction: int | None) -> int | None:
    return None if direction is None else -direction


def _combined(directions: list[int | None]) -> int | None:
    """The direction of a sum of values of these directions: 0 (constant), 1 (non-decreasing), -1 (non-increasing),
    or None (either, or unknown)."""
    if any(direction is None for direction in directions):
        return None
    moving = {direction for direction in directions if direction}
    if len(moving) > 1:
        return None
    return moving.pop() if moving else 0


def _constant_sign(value: ir.Value | None) -> int | None:
    """1 or -1 where ``value`` is a constant whose elements are all >= 0 or all <= 0, 0 where all are 0, else None."""
    array = constant_array(value) if value is not None else None
    if array is None or array.dtype.kind not in "iuf" or array.size == 0:
        return None
    if np.all(array == 0):
        return 0
    return 1 if np.all(array >= 0) else -1 if np.all(array <= 0) else None


def _direction(value: ir.Value | None, memo: dict[int, int | None]) -> int | None:
    """How the one-element ``value`` moves as the probes' length grows: 0 (it does not), 1 (never down), -1 (never
    up) or None (unknown: it may go both ways). Sizes read by ``Shape`` grow; a graph input's values are unknown."""
    if value is None:
        return None
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = None  # a cycle proves nothing
    node = value.producer()
    if value.const_value is not None or constant_array(value) is not None:
        found: int | None = 0
    elif node is None or len(node.outputs) != 1:
        found = None
    elif node.op_type in ("Shape", "Size"):
        found = 1
    elif node.op_type in _PASSED_ON:
        found = _direction(node.inputs[0], memo)
    elif node.op_type == "CastLike" and len(node.inputs) == 2:
        to = node.inputs[1].dtype if node.inputs[1] is not None else None
        found = _direction(node.inputs[0], memo) if to in _HOLDING_ORDER else None
    elif node.op_type in ("Gather", "Slice"):
        # The elements a constant index (or bounds) picks out of what moves one way move that way too.
        fixed = all(_direction(index, memo) == 0 for index in node.inputs[1:] if index is not None)
        found = _direction(node.inputs[0], memo) if fixed else None
    elif node.op_type == "Cast":
        to = node.attributes.get_int("to", 0)
        found = _direction(node.inputs[0], memo) if to in _HOLDING_ORDER else None
    elif node.op_type in _NON_DECREASING:
        found = _direction(node.inputs[0], memo)
    elif node.op_type == "Clip":
        fixed = all(_direction(bound, memo) == 0 for bound in node.inputs[1:] if bound is not None)
        found = _direction(node.inputs[0], memo) if fixed else None
    elif node.op_type in _COMBINED:
        found = _combined([_direction(operand, memo) for operand in node.inputs])
    elif node.op_type == "Sub" and len(node.inputs) == 2:
        found = _combined([_direction(node.inputs[0], memo), _negated(_direction(node.inputs[1], memo))])
    elif node.op_type == "Neg":
        found = _negated(_direction(node.inputs[0], memo))
    elif node.op_type in ("Mul", "Div") and len(node.inputs) == 2:
        # Scaled by a constant of one sign (a divisor on the right only): the direction, or its reverse.
        sign = _constant_sign(node.inputs[1])
        if sign is not None and sign != 0:
            found = _direction(node.inputs[0], memo)
            found = found if found is None or sign > 0 else -found
        elif node.op_type == "Mul" and (sign := _constant_sign(node.inputs[0])) is not None and sign != 0:
            found = _direction(node.inputs[1], memo)
            found = found if found is None or sign > 0 else -found
        else:
            found = None
    else:
        found = None
    memo[id(value)] = found
    return found


def _values_read(values: Sequence[ir.Value]) -> list[ir.Value]:
    """``values`` and every value their contents are computed from, not through ``Shape``/``Size`` (a shape only).

    Empty when an If/Loop/Scan is among the ancestors (such graphs are not probed).
    """
    read: dict[int, ir.Value] = {}
    stack = list(values)
    while stack:
        value = stack.pop()
        if id(value) in read:
            continue
        read[id(value)] = value
        node = value.producer()
        if node is None or node.op_type in ("Shape", "Size"):
            continue
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            return []
        stack.extend(v for v in node.inputs if v is not None)
    return list(read.values())


def _integral_magnitudes(values: Iterable) -> list[int]:
    """``|v|`` for each finite integral ``v`` (window sizes, thresholds and shape numbers)."""
    found = []
    for value in values:
        number = float(value)
        if np.isfinite(number) and number == int(number) and abs(number) < 1 << 62:
            found.append(abs(int(number)))
    return found


def values_only_from(bias: ir.Value, *allowed: ir.Value) -> bool:
    """True if ``bias`` depends on no graph input's values but those of ``allowed`` (a mask, position ids):
    on the others only through shapes.

    The probe feeds made-up values to the other inputs (ones for token ids); a bias that
    reads their values (``mask & (input_ids != pad)``, rotary positions counted from
    ``input_ids != pad``) would be mistaken for what the allowed inputs alone compute. A
    path through ``Shape``/``Size`` reads only a shape (GPT-2's causal slice reads
    ``Shape(Gather(wte, input_ids))``).
    """
    try:
        nodes, leaves = ancestry([bias])
    except SubgraphError:
        return False
    kept = {id(v) for v in allowed}
    tainted = {id(v) for v in leaves if id(v) not in kept and v.const_value is None}
    # The ancestors alone, in order: walking the whole graph made each check cost its size.
    for node in in_topological_order(nodes):
        if is_onnx_op(node, "Shape", "Size"):
            continue
        if any(v is not None and id(v) in tainted for v in node.inputs):
            tainted.update(id(v) for v in node.outputs)
    return id(bias) not in tainted


def dims_read(values: Sequence[ir.Value], source: ir.Value) -> set[int] | None:
    """The axes of ``source`` whose sizes ``values`` are computed from, if they read ``source`` only
    through ``Shape`` and only those axes of its shape; else None (values or an unknown part of the shape read).

    A ``Shape`` over one axis (``start``/``end``), or a whole or partial ``Shape`` whose every
    reader among the ancestors is a ``Gather`` of constant indices on axis 0, reads those axes:
    a decoder's positions counted on from ``Shape(past_key)[2]`` read the past's length, nothing else.
    """
    rank = source.shape.rank() if source.shape is not None else None
    try:
        nodes = {id(node) for node in ancestry(values)[0]}
    except SubgraphError:
        return None
    if rank is None:
        return None
    axes: set[int] = set()
    for user, _ in source.uses():
        if id(user) not in nodes:
            continue
        if not is_onnx_op(user, "Shape"):
            return None
        start, end = (user.attributes.get_int(name, default) for name, default in (("start", 0), ("end", rank)))
        start, end = (max(0, min(rank, bound + rank if bound < 0 else bound)) for bound in (start, end))
        if end - start == 1:
            axes.add(start)
            continue
        for reader, _ in user.outputs[0].uses():
            if id(reader) not in nodes:
                continue
            index = constant_array(reader.inputs[1]) if is_onnx_op(reader, "Gather") else None
            if index is None or reader.attributes.get_int("axis", 0) != 0 or index.dtype.kind not in "iu":
                return None
            for entry in index.reshape(-1).tolist():
                entry = entry + (end - start) if entry < 0 else entry
                if not 0 <= entry < end - start:
                    return None
                axes.add(start + entry)
    return axes
