"""Which outputs of a model hold class scores: logits or probabilities over a last axis of classes, whose argmax is
the model's pick (a classifier's ``[batch, classes]``, a CTC recognizer's ``[batch, steps, classes]``). ``compare``
reports their top-1 agreement and the approximate passes' accuracy budget holds it (``optimizer.accuracy``). And which
outputs are the ids an ``ArgMax`` (or ``ArgMin``, or ``TopK``) picks (``argmax_outputs``, ``argmax_picks``): class or
token ids, held as ids, not by a cosine of their numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import onnx_ir as ir

from optimizer.domains import is_onnx_domain

_NORMALIZERS = ("Softmax", "LogSoftmax")


def class_score_outputs(model: ir.Model) -> frozenset[str]:
    """The graph outputs a ``Softmax`` or ``LogSoftmax`` over their last axis produces, or a softmax written out
    (``_written_out_softmax``), read through ``Identity`` and ``Dropout`` (which pass their input on when inferring):
    Paddle's exports close with an Identity (PP-OCR's classifier), whose top-1 agreement went unreported; a Softmax's
    rows regrouped or their classes rotated on the way out (``_rows_passed_on``: PESTO's pitch ``activations``, a
    ``view(batch, -1, bins)`` and a ``roll`` of its Softmax, went without top-1 until review s73; one head of
    attention probabilities picked by a ``Gather``, rxnmapper's atom map, until review s74); and the
    logits a graph output returns that one normalizes over that axis (a model returning its logits beside their
    probabilities). Top-1 is the argmax over the last axis: a Softmax over another (a segmenter's classes along axis
    1) holds no row of class scores there. An output named like scores or logits but normalized nowhere in the graph
    is not found here (``optimizer.accuracy`` reads such names)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    names = set()
    for value in model.graph.outputs:
        computed = _passed_on(value)
        producer = computed.producer()
        rows = _rows_passed_on(value)
        normalizer = rows.producer()
        if (
            normalizer is not None
            and is_onnx_domain(normalizer)
            and normalizer.op_type in _NORMALIZERS
            and _over_the_last_axis(normalizer, opset, value if rows is computed else rows)
        ):
            names.add(value.name)
        elif producer is not None and _written_out_softmax(producer, value):
            names.add(value.name)
        elif any(
            is_onnx_domain(user)
            and user.op_type in _NORMALIZERS
            and index == 0
            and _over_the_last_axis(user, opset, value)
            for user, index in (*computed.uses(), *value.uses())
        ):
            names.add(value.name)
    return frozenset(names)


def scores_elsewhere(model: ir.Model) -> frozenset[str]:
    """The graph outputs a ``Softmax`` or ``LogSoftmax`` over another axis than the last alone computes (read through
    ``Identity`` and ``Dropout``) or normalizes, and that ``class_score_outputs`` does not find: their classes lie
    along that axis (a channels-first recognizer's ``probs [batch, classes, steps]``), so a name like ``probs`` or
    ``logits`` says nothing of their last axis, and no top-1 is read along it (``optimizer.accuracy``): every step's
    class changed at top-1 1.000. One of a rank known nowhere is not among them (the default axis before opset 13, 1,
    is a classifier's last)."""
    return class_score_layout(model)[1]


def class_score_layout(model: ir.Model) -> tuple[frozenset[str], frozenset[str]]:
    """``class_score_outputs`` and ``scores_elsewhere`` of ``model``, the first found once for both: every caller
    that reads top-1 wants the two together."""
    found = class_score_outputs(model)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    names = set()
    for value in model.graph.outputs:
        computed = _passed_on(value)
        producer = computed.producer()
        readers = [user for user, index in (*computed.uses(), *value.uses()) if index == 0]
        if any(
            is_onnx_domain(node)
            and node.op_type in _NORMALIZERS
            and _first_rank(*node.inputs[:1], *node.outputs[:1], value) is not None  # else its axis is a guess
            and not _over_the_last_axis(node, opset, value)
            for node in ([producer] if producer is not None else []) + readers
        ):
            names.add(value.name)
    return found, frozenset(names) - found


def _passed_on(value: ir.Value) -> ir.Value:
    """``value``, or what an ONNX ``Identity`` or ``Dropout`` (an identity when inferring) passes on into it, back
    to the value some other node computes."""
    while (node := value.producer()) is not None and is_onnx_domain(node) and node.op_type in ("Identity", "Dropout"):
        if node.outputs[0] is not value or not node.inputs or node.inputs[0] is None:
            break
        value = node.inputs[0]
    return value


def _rows_passed_on(value: ir.Value) -> ir.Value:
    """``value``, or the value whose rows along the last axis it holds, each row whole, its classes in the same or
    a rotated order (``_passed_on``, then back through ``_keeps_the_last_axis``, ``_rotates_the_last_axis`` and
    ``_picks_whole_rows``): a Softmax's probabilities regrouped into ``[batch, frames, classes]``, rolled along the
    classes or some of their rows picked hold the same top-1 agreement as the Softmax's own rows."""
    value = _passed_on(value)
    while (node := value.producer()) is not None and is_onnx_domain(node):
        if node.op_type == "Reshape" and _keeps_the_last_axis(node):
            value = _passed_on(node.inputs[0])
        elif node.op_type == "Concat" and (source := _rotates_the_last_axis(node)) is not None:
            value = _passed_on(source)
        elif node.op_type == "Gather" and _picks_whole_rows(node):
            value = _passed_on(node.inputs[0])
        else:
            break
    return value


def _picks_whole_rows(gather: ir.Node) -> bool:
    """Whether the ``Gather`` ``gather`` picks along another axis than its data's last, so that each row it returns
    is a row of its data, whole: one head of attention probabilities ``[batch, heads, queries, keys]``
    (``probs[:, head]``, rxnmapper's atom map, whose argmax per row is the atom it maps). The data's rank is its own,
    or its output's less its indices' plus one; an axis counted from 0 on data of unknown rank may be the last:
    refused."""
    if len(gather.inputs) < 2 or gather.inputs[0] is None or gather.inputs[1] is None:
        return False
    axis = gather.attributes.get_int("axis", 0)
    if axis < 0:
        return axis != -1
    rank = _first_rank(gather.inputs[0])
    if rank is None and (picked := _first_rank(*gather.outputs[:1])) is not None:
        indices = _first_rank(gather.inputs[1])
        if indices is None and (constant := ir.convenience.get_const_tensor(gather.inputs[1])) is not None:
            indices = constant.numpy().ndim
        rank = picked - indices + 1 if indices is not None else None
    return rank is not None and axis < rank - 1


# Slice ``ends`` at or past this are "to the end of the axis" (torch writes INT64_MAX).
_TO_THE_END = 2**62


def _keeps_the_last_axis(reshape: ir.Node) -> bool:
    """Whether the ``Reshape`` ``reshape`` keeps its input's last axis whole as its own last: the last entry of its
    shape is its input's last dim, a constant equal to it where that dim is known, or read back from the input's
    ``Shape`` at the last axis (torch's ``view(batch, -1, x.size(-1))``: ``Concat(..., Unsqueeze(Squeeze(Slice(
    Shape(x), -1))))``, or a ``Gather`` of it at -1)."""
    if len(reshape.inputs) < 2 or reshape.inputs[0] is None or reshape.inputs[1] is None:
        return False
    data, shape = reshape.inputs[0], reshape.inputs[1]
    known = data.shape[-1] if data.shape is not None and len(data.shape) > 0 else None
    if (constant := ir.convenience.get_const_tensor(shape)) is not None:
        return _ends_with(constant, known)
    node = shape.producer()
    if (
        node is None
        or not is_onnx_domain(node)
        or node.op_type != "Concat"
        or not node.inputs
        or node.inputs[-1] is None
    ):
        return False
    last = node.inputs[-1]
    if (constant := ir.convenience.get_const_tensor(last)) is not None:
        return _ends_with(constant, known)
    return _last_dim_of(last, data)


def _ends_with(constant: ir.TensorProtocol, known: object) -> bool:
    """Whether the shape entries ``constant`` end with ``known``, a dim known as a number (a name or None is not)."""
    entries = constant.numpy().reshape(-1)
    return isinstance(known, int) and entries.size > 0 and int(entries[-1]) == known


def _last_dim_of(last: ir.Value, data: ir.Value) -> bool:
    """Whether ``last`` is ``data``'s last dim read back from its whole ``Shape`` through ``Unsqueeze``, ``Squeeze``
    and ``Cast``: a ``Gather`` of it at -1, or a ``Slice`` from -1 to the end (``_TO_THE_END``) of step 1."""
    while (
        (step := last.producer()) is not None
        and is_onnx_domain(step)
        and step.op_type in ("Unsqueeze", "Squeeze", "Cast")
    ):
        last = step.inputs[0]
        if last is None:
            return False
    if step is None or not is_onnx_domain(step) or step.op_type not in ("Slice", "Gather") or len(step.inputs) < 2:
        return False
    dims = step.inputs[0]
    origin = dims.producer() if dims is not None else None
    if origin is None or not is_onnx_domain(origin) or origin.op_type != "Shape" or origin.inputs[0] is not data:
        return False
    if origin.attributes.get("start") is not None or origin.attributes.get("end") is not None:
        return False
    index = ir.convenience.get_const_tensor(step.inputs[1])
    if index is None or index.numpy().size != 1:
        return False
    if step.op_type == "Gather":
        return int(index.numpy().reshape(-1)[0]) == -1
    ends = ir.convenience.get_const_tensor(step.inputs[2]) if len(step.inputs) > 2 and step.inputs[2] else None
    return (
        int(index.numpy().reshape(-1)[0]) == -1
        and ends is not None
        and ends.numpy().size == 1
        and int(ends.numpy().reshape(-1)[0]) >= _TO_THE_END
        and all(value is None for value in step.inputs[4:])  # a step other than 1 would skip dims
    )


def _rotates_the_last_axis(concat: ir.Node) -> ir.Value | None:
    """The value whose last axis ``concat`` puts back together in a rotated order, or None: a ``Concat`` over the
    last axis of ``Slice`` s of one value over its last axis, with constant bounds that, taken in order of their
    starts, run from 0 without a gap or overlap to the end (torch's ``roll(k, -1)``: ``[k:]`` then ``[:k]``), so each
    row keeps all its classes."""
    axis = concat.attributes.get_int("axis", 0)
    if axis != -1 or not concat.inputs:
        return None
    source, bounds = None, []
    for part in concat.inputs:
        node = part.producer() if part is not None else None
        if node is None or not is_onnx_domain(node) or node.op_type != "Slice" or len(node.inputs) < 4:
            return None
        if source is None:
            source = node.inputs[0]
        if node.inputs[0] is not source or (len(node.inputs) > 4 and node.inputs[4] is not None):
            return None
        tensors = [ir.convenience.get_const_tensor(value) if value is not None else None for value in node.inputs[1:4]]
        if any(tensor is None or tensor.numpy().size != 1 for tensor in tensors):
            return None
        start, end, axes = (int(tensor.numpy().reshape(-1)[0]) for tensor in tensors)
        if axes != -1 or start < 0 or end < 0:
            return None
        bounds.append((start, end))
    bounds.sort()
    if bounds[0][0] != 0 or bounds[-1][1] < _TO_THE_END:
        return None
    if any(end != start for (_, end), (start, _) in zip(bounds, bounds[1:])):
        return None
    return source


def _first_rank(*values: ir.Value | None) -> int | None:
    """The rank of the first of ``values`` whose shape is known; None where none is."""
    return next((len(value.shape) for value in values if value is not None and value.shape is not None), None)


def _over_the_last_axis(softmax: ir.Node, opset: int, output: ir.Value) -> bool:
    """Whether ``softmax`` normalizes over the last axis alone: its ``axis`` the last where the rank is known (its
    input's, its output's, or that of the graph ``output`` it reaches through identities), else -1. Before opset 13
    the default axis is 1, and the op normalizes every axis from ``axis`` on."""
    axis = softmax.attributes.get_int("axis", -1 if opset >= 13 else 1)
    rank = _first_rank(*softmax.inputs[:1], *softmax.outputs[:1], output)
    if rank is None:
        return axis == -1
    return -rank <= axis < rank and axis % rank == rank - 1


def _written_out_softmax(node: ir.Node, output: ir.Value) -> bool:
    """Whether ``node`` is ``Div(e, s)``, ``e`` an ``Exp`` and ``s`` a ``ReduceSum`` of ``e`` read through ``Reshape``,
    ``Expand``, ``Unsqueeze`` and ``Identity``: tf2onnx's spelling of jax's softmax (its sums without keepdims,
    reshaped and broadcast back), whose output magika names ``target_label``; its top-1 went unreported."""
    if not is_onnx_domain(node) or node.op_type != "Div" or len(node.inputs) != 2:
        return False
    exps, total = node.inputs
    if exps is None or (exp := exps.producer()) is None or not is_onnx_domain(exp) or exp.op_type != "Exp":
        return False
    while (
        total is not None
        and (producer := total.producer()) is not None
        and is_onnx_domain(producer)
        and producer.op_type in ("Reshape", "Expand", "Unsqueeze", "Identity")
        and producer.inputs
    ):
        total = producer.inputs[0]
    reduce = total.producer() if total is not None else None
    if reduce is None or not is_onnx_domain(reduce) or reduce.op_type != "ReduceSum" or reduce.inputs[0] is not exps:
        return False
    return _sums_the_last_axis(reduce, exps, output)


def _sums_the_last_axis(reduce: ir.Node, exps: ir.Value, output: ir.Value) -> bool:
    """Whether the ``ReduceSum`` ``reduce`` sums ``exps`` over its last axis alone (axes an attribute before opset 13,
    a constant input since; the rank read from ``exps``' shape or the graph ``output``'s): top-1 is the argmax over
    the last axis, and a sum over another makes no row of class scores there (as ``_over_the_last_axis``)."""
    axes = reduce.attributes.get_ints("axes")
    if (
        axes is None
        and len(reduce.inputs) > 1
        and reduce.inputs[1] is not None
        and not reduce.inputs[1].is_graph_input()
    ):
        tensor = ir.convenience.get_const_tensor(reduce.inputs[1])
        axes = None if tensor is None else [int(axis) for axis in tensor.numpy().reshape(-1)]
    if axes is None or len(axes) != 1:
        return False
    rank = _first_rank(exps, output)
    return rank != 0 and (axes[0] == -1 or (rank is not None and axes[0] % rank == rank - 1))


# Ops an ArgMax's ids reach an output through unchanged in order and count (a Cast to int32, say; a classifier's
# ``[batch]`` ids unsqueezed to ``[batch, 1]``: cast to float, every id one class off met --min-cosine 0.9 as a cosine
# of class numbers until a late review).
_IDS_PASS_THROUGH = ("Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")

# Ops that keep ids apart though not their values, with a constant number of one value as their other input (1-based
# labels ``ids + 1``, ``ids * 1.0``): still ids, which ``compare`` holds equal in value and the budget reads on their
# logits beside the ids the ``ArgMax`` picks (cast to float and multiplied by 1, every id one class off met
# --min-cosine 0.98 as a cosine of class numbers in both until late reviews, s72 and s73). A ``Gather`` from a
# constant table of one number a class (a label each id looks up) is read so too.
_IDS_SHIFTED = ("Add", "Sub", "Mul", "Div")

# The ops that pick ids along an axis of the values they read: the largest's, the smallest's (``ArgMin`` of
# distances, a nearest centroid or a codebook's entry), or ``TopK``'s indices, of k = 1 the one pick a position.
_PICKERS = ("ArgMax", "ArgMin", "TopK")


class Pick(NamedTuple):
    """How the accuracy budget reads an output of ids (``argmax_picks``): the values picked among, the axis, the ids
    the node picks where the output comes out of them otherwise (offset, scaled or looked up) or a ``TopK`` of k > 1's
    indices (else None), whether it picks the smallest (the values negated are the logits an ``ArgMax`` would pick
    among), and whether each id is its index's rank's pick along the axis (a sorted ``TopK`` of k > 1)."""

    logits: str
    axis: int
    ids: str | None = None
    smallest: bool = False
    ranked: bool = False


def argmax_picks(model: ir.Model) -> dict[str, Pick]:
    """Each output of ``argmax_outputs`` that picks among float values in the graph (an ONNX ``ArgMax`` or ``ArgMin``,
    or a ``TopK`` of a constant k, sorted, as its indices), with how to read it on them (``Pick``; the values a
    computed tensor, not a graph input or a constant): class or token ids, which the accuracy budget scores on them
    (``budget_runs``). One with ``select_last_index`` is left out, and a ``TopK`` not sorted (their ids are scored by
    their share of equal values)."""
    picks = {}
    for name, (node, picked, shifted) in _argmax_producers(model).items():
        logits = node.inputs[0]
        last = node.attributes.get("select_last_index")
        if logits is None or logits.producer() is None or not logits.name or (last is not None and last.as_int()):
            continue
        if logits.dtype is not None and not logits.dtype.is_floating_point():
            continue  # an ArgMax of integers (a dtype not recorded is read from the run: ``paired_drift`` checks it)
        k = _top_k(node) if node.op_type == "TopK" else 1
        ordered = node.attributes.get("sorted")
        if k is None or not picked.name or (k > 1 and ordered is not None and not ordered.as_int()):
            continue
        axis = node.attributes.get("axis")
        axis = axis.as_int() if axis is not None else -1 if node.op_type == "TopK" else 0
        largest = node.attributes.get("largest")
        smallest = node.op_type == "ArgMin" or (node.op_type == "TopK" and largest is not None and not largest.as_int())
        picks[name] = Pick(logits.name, axis, picked.name if shifted or k > 1 else None, smallest, k > 1)
    return picks


def argmax_outputs(model: ir.Model) -> frozenset[str]:
    """The graph outputs of ``model`` that an ONNX ``ArgMax`` or ``ArgMin`` computes, or a ``TopK`` as its indices
    (directly or through ``_IDS_PASS_THROUGH``, or offset or scaled by a constant or looked up in a table,
    ``_IDS_SHIFTED``), whatever it picks among: class or token ids, which have no cosine even where cast to float
    (``compare`` holds them equal in value, as integer ones, and so does the budget where it reads no logits). And
    those that ops moving or picking values on the way out return some of such ids by (a ``Slice``, ``Gather``,
    ``Expand`` or ``Transpose`` of them, offset or scaled before or after it, ``_moved_ids``), each of their values
    still an id: held by the float tolerance, ``Slice(Cast(ArgMax))`` one class off past 10,000 classes verified until
    review s76 late76g, and ``Add(Slice(Cast(ArgMax)), 1)`` until review s76 late76i."""
    return frozenset(_argmax_producers(model)) | _moved_ids(model)


def _moved_ids(model: ir.Model) -> frozenset[str]:
    """The named graph outputs of ``model`` that ops moving or picking values (``_MOVING_OPS``, read through
    ``Identity`` and ``Dropout``) return from ids an ONNX ``ArgMax``, ``ArgMin`` or ``TopK`` (its indices) picks,
    through ``_IDS_PASS_THROUGH`` and ``_IDS_SHIFTED`` ops before or after them, in any order. Not where they are picked
    (``picked_ids``, ``argmax_picks``): their positions are moved. Read only with the moves last, 1-based labels sliced
    on the way out, ``Add(Slice(Cast(ArgMax)), 1)``, were held by the float tolerance, one class off past 10,000
    classes verified, until review s76 late76i."""
    found = set()
    for output in model.graph.outputs:
        value, moved = output, False
        while (node := value.producer()) is not None and is_onnx_domain(node) and node.inputs:
            if node.inputs[0] is None:
                break
            if (ids := _shifted_ids(node)) is not None:
                value = ids  # before the moves: a ``Gather`` from a table of labels looks them up
            elif node.op_type in (*_MOVING_OPS, "Identity", "Dropout") and node.outputs[0] is value:
                value, moved = node.inputs[0], moved or node.op_type in _MOVING_OPS
            else:
                break
        if not moved or not output.name or node is None or not is_onnx_domain(node) or node.op_type not in _PICKERS:
            continue
        if node.op_type != "TopK" or value is node.outputs[1]:
            found.add(output.name)
    return frozenset(found)


def picked_ids(model: ir.Model) -> dict[str, ir.Value]:
    """Each output of ``argmax_outputs`` with the ids its picker picks (an ``ArgMax``'s or ``ArgMin``'s output, a
    ``TopK``'s indices), before they are cast, offset, scaled or looked up on their way out: where verification holds
    a flip of such an output at the values picked among (``optimizer.verify._rounded_from``), not at the float ids
    after a ``Cast``, whose float tolerance passes an id one class off past 10,000 classes."""
    return {name: ids for name, (_, ids, _) in _argmax_producers(model).items()}


def ids_passed_on(model: ir.Model) -> dict[str, ir.Value]:
    """Each output of ``argmax_outputs`` that its picker's ids reach through ``_IDS_PASS_THROUGH`` alone (a ``Cast`` to
    float, a ``Reshape``), with those ids: its values, in order, are the ids picked (``picked_ids`` also gives ids
    offset, scaled or looked up on the way)."""
    return {name: ids for name, (_, ids, shifted) in _argmax_producers(model).items() if not shifted}


class IdsBeside(NamedTuple):
    """An output a ``Concat`` joins ids and other values into (``concatenated_ids``): the axis it joins along, each
    input's size along it (None where not known before a run), each input's ids as its picker picks them (None for
    an input of no ids), and the inputs themselves; the ops that move its values on the way out, from the
    ``Concat`` on (``_LAYOUT_OPS`` and ``_PICKING_OPS``: none where it is returned as it is), and the shapes of the
    ``Concat``'s output and of each of those ops' outputs but the last in a run (None where not read:
    ``optimizer.verify`` reads them on each input set's run and places the ids through them); and the inputs of ids
    whose size along the axis a run tells, not their picker (by index: ids reshaped before they are joined,
    ``_picked_along``), and those not in their picker's order (transposed before they are joined: read back in it
    through their ``Transpose`` s, ``ids_moved``)."""

    axis: int
    widths: tuple[int | None, ...]
    ids: tuple[ir.Value | None, ...]
    joined: tuple[ir.Value | None, ...] = ()
    passed: tuple[ir.Node, ...] = ()
    shapes: tuple[tuple[int, ...], ...] | None = None
    sized_by_run: tuple[int, ...] = ()
    out_of_order: tuple[int, ...] = ()


# Ops that move a tensor's values without changing them, each position of the output one of the input's (a
# ``Reshape``, ``Flatten``, ``Squeeze`` or ``Unsqueeze`` keeps their order, flat; a ``Transpose`` permutes its axes):
# ids a ``Concat`` joins to scores are found through them (``concatenated_ids``), their positions traced. And a
# ``Cast``, which keeps each value where it is: ``Cast(Concat(top, ids))`` to float16, not read, was held by float16's
# tolerance, and ids past 100 classes one class off verified until review s76 late76b.
_LAYOUT_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast")

# Ops that pick some of a tensor's values on the way out (each position of the output one of the input's, not each of
# the input's kept, or kept more than once): a ``Slice``, a ``Gather`` along an axis, an ``Expand``. Ids a ``Concat``
# joins to scores are found through them too (``joined_through``), their positions traced where the starts, ends and
# indices are constants (``optimizer.verify._joined_index``): not traced, ``Slice(Concat(top, ids))`` was held by the
# float tolerance, ids past 10,000 classes one class off verified until review s76 xfix3.
_PICKING_OPS = ("Slice", "Gather", "Expand")
_MOVING_OPS = (*_LAYOUT_OPS, *_PICKING_OPS)


def concatenated_ids(model: ir.Model, ranks: Mapping[str, int | None] | None = None) -> dict[str, IdsBeside]:
    """Each named graph output of ``model`` that a ``Concat`` computes from ids (an ``ArgMax`` or ``ArgMin`` with its
    axis kept along the ``Concat``'s or unsqueezed there, or a ``TopK``'s indices: ``_picked_along``) and other values
    (each row's ids beside its top score): no output of ids (``argmax_outputs``), so held by the float tolerance, which
    passed ids past 10,000 classes one class off until a review in session 74; verification holds those positions
    exactly (``optimizer.verify.compare_outputs``). Axes are compared at the output's rank: torch's
    ``cat([top.unsqueeze(1), ids.unsqueeze(1).float()], -1)`` unsqueezes at 1 and joins at -1, and its ids were not
    found (held by the tolerance) until a late review in session 74. The rank is the output's in ``ranks`` (by name,
    from runs of ``model``: a stale recorded rank hid such ids until review s75 late75d; None there, of other ranks in
    other runs, axes as written: read at the first run's, they were missed in the others until review s75 late75f),
    else its recorded one, or that of an input the ``Concat`` joins (all share it): where none was recorded, such ids
    were not found until review s75 xfix2; without any, axes spelled from both ends are not matched. The ``Concat`` is
    read through ``Identity`` and ``Dropout`` (``_passed_on``): a Paddle export's closing Identity hid such ids until
    review s75 xfix2. And through ops that move its values on the way out (``joined_through``: a ``Reshape``,
    ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Transpose`` or ``Cast``; ``IdsBeside.passed``), its axes read at the
    ``Concat``'s own rank (in ``ranks`` by its output's name, else recorded there or on an input; not the output's):
    flattened, such ids were held by the float tolerance until review s76 xfix, one class off past 10,000 classes
    verified; and through a ``Slice``, ``Gather`` or ``Expand`` (``_PICKING_OPS``), or an ``If`` both of whose
    branches join the same values alike (``_joining``): such ids were held by the float tolerance until review s76
    xfix3."""
    found = {}
    for output in model.graph.outputs:
        concatenated, passed = joined_through(output)
        node = _joining(concatenated)
        if node is None or not output.name:
            continue
        # The runs' rank first: a stale recorded one (``[batch, 2]`` of a ``[batch, 1, 2]``) read ``-1`` as axis 1,
        # and the ids picked along 2 were not found (one class off verified until review s75 late75d). None where the
        # runs give other ranks (``_output_ranks``): axes as written, not at the first run's (review s75 late75f).
        # Through ops that move its values, the ``Concat``'s own rank (by its output's name: ``_joined_ranks``).
        shown = concatenated.name if passed else output.name
        if ranks is not None and shown in ranks:
            rank = ranks[shown]
        else:
            rank = _first_rank(*([] if passed else [output]), concatenated, *node.inputs)
        axis = _as_axis(node.attributes.get_int("axis", 0), rank)
        widths, ids, sized, unordered = [], [], [], []
        for index, value in enumerate(node.inputs):
            picked = _picked_along(value, axis, rank) if value is not None else None
            ids.append(picked[0] if picked is not None else None)
            widths.append(picked[1] if picked is not None and picked[1] is not None else _width(value, axis))
            if picked is not None and picked[1] is None:
                sized.append(index)
            if picked is not None and not picked[2]:
                unordered.append(index)
        if any(value is not None for value in ids):
            joined = tuple(node.inputs)
            found[output.name] = IdsBeside(
                axis,
                tuple(widths),
                tuple(ids),
                joined,
                passed,
                sized_by_run=tuple(sized),
                out_of_order=tuple(unordered),
            )
    return found


def joined_through(output: ir.Value) -> tuple[ir.Value, tuple[ir.Node, ...]]:
    """The value ``output`` returns before ops that move its values on the way out (``_LAYOUT_OPS``, or pick some of
    them, ``_PICKING_OPS``: each an ONNX op whose first output it is and whose first input it moves, read through
    ``Identity`` and ``Dropout``: ``_passed_on``), and those ops from the first to the last:
    ``Flatten(Concat(top, ids))``'s ``Concat`` and its ``Flatten``."""
    value, passed = _passed_on(output), []
    while (node := value.producer()) is not None and is_onnx_domain(node) and node.op_type in _MOVING_OPS:
        if node.outputs[0] is not value or not node.inputs or node.inputs[0] is None:
            break
        passed.append(node)
        value = _passed_on(node.inputs[0])
    return value, tuple(reversed(passed))


def _joining(value: ir.Value) -> ir.Node | None:
    """The ONNX ``Concat`` that computes ``value``: its producer, or where an ``If`` returns it, the one each branch
    returns it by (``joined_through``, no op after it there), the same in both: one axis, and the very values joined
    (computed before the ``If``), so that the ids lie where they lie whichever branch runs; where the condition is a
    constant (``_constant_condition``), the one the branch that runs returns it by, of values computed before the
    ``If``. None otherwise: a ``Concat`` in one branch alone, or of values each branch computes (not read on a run), is
    not read, and its ids are held by the float tolerance. Not read in a branch, ids past 10,000 classes one class off
    verified until review s76 xfix3."""
    node = value.producer()
    if node is None or not is_onnx_domain(node):
        return None
    if node.op_type == "Concat":
        return node
    if node.op_type != "If" or not any(output is value for output in node.outputs):
        return None
    index = next(i for i, output in enumerate(node.outputs) if output is value)
    # A constant condition runs one branch alone, on every set: its ``Concat`` is read though the other joins
    # otherwise (an ``If(True)`` constant folding inlines); not read, its ids one class off past 10,000 classes were
    # verified, and a correct flip at a tie of the folded result rolled back, until review s76 late76g.
    runs = _constant_condition(node)
    found = []
    for name in ("then_branch", "else_branch") if runs is None else ("then_branch" if runs else "else_branch",):
        branch = node.attributes.get(name)
        graph = branch.as_graph() if branch is not None and branch.type == ir.AttributeType.GRAPH else None
        if graph is None or index >= len(graph.outputs):
            return None
        inner, passed = joined_through(graph.outputs[index])
        if passed or (joining := _joining(inner)) is None:
            return None
        if any(joined is not None and joined.graph is graph for joined in joining.inputs):
            return None  # a value the branch computes: not read on a run
        found.append(joining)
    if len(found) == 1:
        return found[0]
    then, other = found
    if then.attributes.get_int("axis", 0) != other.attributes.get_int("axis", 0):
        return None
    if len(then.inputs) != len(other.inputs) or any(a is not b for a, b in zip(then.inputs, other.inputs)):
        return None
    return then


def _constant_condition(node: ir.Node) -> bool | None:
    """The condition of ``If`` ``node`` where it is a constant (one boolean, not a graph input a caller may override,
    or computed from constants: ``optimizer.runtime.constant_value``), else None."""
    from optimizer.runtime import constant_value  # here: the runtime's module loads this one on first use

    condition = node.inputs[0] if node.inputs else None
    if condition is None or condition.is_graph_input():
        return None
    tensor = ir.convenience.get_const_tensor(condition)
    array = tensor.numpy() if tensor is not None else constant_value(condition)
    return bool(array.reshape(-1)[0]) if array is not None and array.dtype.kind == "b" and array.size == 1 else None


def joined_before_layout(model: ir.Model) -> list[ir.Value]:
    """The ``Concat`` outputs of ``model`` that a graph output returns through ops that move their values
    (``joined_through``), where an input the ``Concat`` joins may hold ids (it reaches one of ``_PICKERS``): their
    rank, which no graph output gives, is read from runs (``optimizer.verify._joined_ranks``) to find those ids."""
    found = []
    for output in model.graph.outputs:
        value, passed = joined_through(output)
        node = _joining(value)
        if not passed or node is None or not value.name:
            continue
        if any(_reaches_a_picker(joined) for joined in node.inputs if joined is not None):
            found.append(value)
    return list({id(value): value for value in found}.values())


def _reaches_a_picker(value: ir.Value) -> bool:
    """Whether ``value`` is computed by one of ``_PICKERS`` through ``_IDS_PASS_THROUGH`` and ``_IDS_SHIFTED`` ops,
    along whatever axis (``_picked_along`` reads the axes)."""
    node = value.producer()
    while node is not None and is_onnx_domain(node) and node.inputs and node.inputs[0] is not None:
        if node.op_type in _IDS_PASS_THROUGH:
            value = node.inputs[0]
        elif (ids := _shifted_ids(node)) is not None:
            value = ids
        else:
            break
        node = value.producer()
    return node is not None and is_onnx_domain(node) and node.op_type in _PICKERS


def _as_axis(axis: int, rank: int | None) -> int:
    """``axis`` of a tensor of ``rank`` as a position from the first (as written where the rank is not known, or
    ``axis`` is none of its axes)."""
    return axis % rank if rank is not None and -rank <= axis < rank else axis


def _picked_along(value: ir.Value, axis: int, rank: int | None = None) -> tuple[ir.Value, int | None, bool] | None:
    """The ids ``value`` (of ``rank``, where known) is, as its picker picks them, how many it picks along ``axis``
    (``_as_axis``: spelled as ``axis`` is where the rank is not known), and whether ``value`` holds them in the
    picker's order, flat:
    1 for an ``ArgMax`` or ``ArgMin`` keeping ``axis``, or for any ids an ``Unsqueeze`` adds ``axis`` to (torch's
    ``ids.unsqueeze(1).float()``: before it, through ``_IDS_PASS_THROUGH`` too); k for a ``TopK`` along it; through a
    ``Cast``, an ``Identity`` or an ``_IDS_SHIFTED`` op by a constant of at most one dim (which keep their shape);
    else None. None as the count where the picker picks along another axis (``Concat(top, ids, axis=0)`` of ids
    picked along 1), or a ``Reshape``, ``Flatten``, ``Squeeze`` or other ``Unsqueeze`` (where the rank tells its axes
    from ``axis``) moves the ids into ``value`` (``Concat(Flatten(top), Flatten(ids))``): each of its values is still
    an id, in the picker's order, flat, and how many lie along ``axis`` a run tells (``IdsBeside.sized_by_run``);
    such ids were not found, one class off past 10,000 classes verified, until review s76 late76b. So through a
    ``Transpose`` too, out of the picker's order (``IdsBeside.out_of_order``)."""
    width, node, moved, ordered = None, value.producer(), False, True
    while node is not None and is_onnx_domain(node) and node.inputs and node.inputs[0] is not None:
        if node.op_type in ("Cast", "Identity") or ((width is not None or moved) and node.op_type in _IDS_PASS_THROUGH):
            value = node.inputs[0]
        elif (
            width is None
            and node.op_type == "Unsqueeze"
            and axis in [_as_axis(a, rank) for a in _unsqueezed_axes(node)]
        ):
            width, value = 1, node.inputs[0]
        elif width is None and (
            node.op_type == "Transpose"
            or (node.op_type in _IDS_PASS_THROUGH and (node.op_type != "Unsqueeze" or rank is not None))
        ):
            moved, ordered, value = True, ordered and node.op_type != "Transpose", node.inputs[0]
        elif (ids := _shifted_ids(node)) is not None and all(
            (constant := ir.convenience.get_const_tensor(other)) is not None and len(constant.shape) <= 1
            for other in node.inputs
            if other is not ids
        ):
            value = ids
        else:
            break
        node = value.producer()
    if node is None or not is_onnx_domain(node) or node.op_type not in _PICKERS:
        return None
    if node.op_type == "TopK":
        k = _top_k(node)
        if value is not node.outputs[1] or k is None:
            return None
        if width is not None or moved:
            return value, width, ordered
        return value, k if _as_axis(node.attributes.get_int("axis", -1), rank) == axis else None, ordered
    if width is not None or moved:
        return value, width, ordered
    kept = node.attributes.get_int("keepdims", 1) and _as_axis(node.attributes.get_int("axis", 0), rank) == axis
    return value, 1 if kept else None, ordered


def ids_moved(ids: ir.Value, value: ir.Value) -> list[ir.Node] | None:
    """The ``Transpose`` s on the way from ``ids`` (a picker's, ``IdsBeside.ids``) to ``value`` (the input of the
    ``Concat`` that joins them, ``IdsBeside.joined``), from the picker on, as ``_picked_along`` walks it (through
    ``_IDS_PASS_THROUGH`` ops, which keep their flat order, and ``_IDS_SHIFTED`` ones, which keep their place): what
    puts them out of the picker's order (``IdsBeside.out_of_order``), to read them back in it. None where that walk
    does not reach ``ids``."""
    moves = []
    while value is not ids:
        node = value.producer()
        if node is None or not is_onnx_domain(node) or not node.inputs or node.inputs[0] is None:
            return None
        if node.op_type in (*_IDS_PASS_THROUGH, "Transpose"):
            moves += [node] if node.op_type == "Transpose" else []
            value = node.inputs[0]
        elif (shifted := _shifted_ids(node)) is not None:
            value = shifted
        else:
            return None
    return moves[::-1]


def _unsqueezed_axes(node: ir.Node) -> list[int]:
    """The axes ``Unsqueeze`` ``node`` adds (its constant input from opset 13, its attribute before), as written."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return _constant_integers(node.inputs[1]) or []
    return list(node.attributes.get_ints("axes", []))


def _constant_integers(value: ir.Value) -> list[int] | None:
    """The integers ``value`` holds, flattened, where it is a constant or a few nodes compute it from constants
    (``optimizer.runtime.constant_value``: an ``Unsqueeze``'s axes ``Add(c, c)``, a ``TopK``'s ``k = Identity(c)``);
    None otherwise. Computed, they were not read and ids joined to scores not found: one class off past 10,000
    classes verified (review s75 late74a)."""
    from optimizer.runtime import constant_value  # here: the runtime's module loads this one on first use

    tensor = ir.convenience.get_const_tensor(value)
    array = tensor.numpy() if tensor is not None else constant_value(value)
    return array.reshape(-1).tolist() if array is not None and array.dtype.kind in "iu" else None


def _width(value: ir.Value | None, axis: int) -> int | None:
    """The size of ``value`` along ``axis`` where its recorded shape gives it, else None."""
    shape = value.shape if value is not None else None
    if shape is None or not -shape.rank() <= axis < shape.rank():
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) and dim >= 0 else None


def _argmax_producers(model: ir.Model) -> dict[str, tuple[ir.Node, ir.Value, bool]]:
    """Each named graph output of ``model`` that one of ``_PICKERS`` computes (a ``TopK`` as its indices) through
    ``_IDS_PASS_THROUGH`` and ``_IDS_SHIFTED``, that node, the ids it picks, and whether an ``_IDS_SHIFTED`` op
    changes their values on the way: the one walk ``compare`` and the budget read ids by."""
    producers = {}
    for output in model.graph.outputs:
        value, node, shifted = output, output.producer(), False
        while node is not None and is_onnx_domain(node) and node.inputs:
            if node.op_type in _IDS_PASS_THROUGH:
                value = node.inputs[0]
            elif (ids := _shifted_ids(node)) is not None:
                value, shifted = ids, True
            else:
                break
            node = value.producer() if value is not None else None
        if node is None or not is_onnx_domain(node) or not output.name or not node.inputs:
            continue
        if node.op_type in _PICKERS and (node.op_type != "TopK" or value is node.outputs[1]):
            producers[output.name] = (node, value, shifted)
    return producers


def _shifted_ids(node: ir.Node) -> ir.Value | None:
    """The input of ``node`` that it offsets or scales by a constant of one value (an ``_IDS_SHIFTED`` op), or looks
    up in a constant table of one number a class (a ``Gather`` of a 1-D initializer, not a graph input), or None: a
    scale by 0 (every id alike), by a constant not finite or dividing it (``c / ids``) is none."""
    if len(node.inputs) != 2 or any(value is None for value in node.inputs):
        return None
    if node.op_type == "Gather":
        table = node.inputs[0]
        constant = None if table.is_graph_input() else ir.convenience.get_const_tensor(table)
        return node.inputs[1] if constant is not None and len(constant.shape) == 1 else None
    if node.op_type not in _IDS_SHIFTED:
        return None
    for index in (0,) if node.op_type == "Div" else (0, 1):
        constant = ir.convenience.get_const_tensor(node.inputs[1 - index])
        if constant is None or constant.numpy().size != 1:
            continue
        number = float(constant.numpy().reshape(-1)[0])
        if math.isfinite(number) and (number != 0 or node.op_type in ("Add", "Sub")):
            return node.inputs[index]
    return None


def _top_k(node: ir.Node) -> int | None:
    """How many values ``node``, a ``TopK``, picks a position (k a constant; None where it is not): of k = 1 an
    ``ArgMax``'s ids with the axis kept, as greedy decoders write them (the same first index at a tie), or an
    ``ArgMin``'s."""
    if (attribute := node.attributes.get("k")) is not None:  # TopK-1 (opset 1-9): k an attribute
        return attribute.as_int()
    k = _constant_integers(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return int(k[0]) if k is not None and len(k) == 1 else None
