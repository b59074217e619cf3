"""Which outputs of a model hold class scores: logits or probabilities over a last axis of classes, whose argmax is
the model's pick (a classifier's ``[batch, classes]``, a CTC recognizer's ``[batch, steps, classes]``). ``compare``
reports their top-1 agreement and the approximate passes' accuracy budget holds it (``optimizer.accuracy``)."""

from __future__ import annotations

import onnx_ir as ir

from optimizer.domains import is_onnx_domain

_NORMALIZERS = ("Softmax", "LogSoftmax")


def class_score_outputs(model: ir.Model) -> frozenset[str]:
    """The graph outputs a ``Softmax`` or ``LogSoftmax`` over their last axis produces, or a softmax written out
    (``_written_out_softmax``), read through ``Identity`` and ``Dropout`` (which pass their input on when inferring):
    Paddle's exports close with an Identity (PP-OCR's classifier), whose top-1 agreement went unreported; and the
    logits a graph output returns that one normalizes over that axis (a model returning its logits beside their
    probabilities). Top-1 is the argmax over the last axis: a Softmax over another (a segmenter's classes along axis
    1) holds no row of class scores there. An output named like scores or logits but normalized nowhere in the graph
    is not found here (``optimizer.accuracy`` reads such names)."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    names = set()
    for value in model.graph.outputs:
        computed = _passed_on(value)
        producer = computed.producer()
        if (
            producer is not None
            and is_onnx_domain(producer)
            and producer.op_type in _NORMALIZERS
            and _over_the_last_axis(producer, opset, value)
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


def _passed_on(value: ir.Value) -> ir.Value:
    """``value``, or what an ONNX ``Identity`` or ``Dropout`` (an identity when inferring) passes on into it, back
    to the value some other node computes."""
    while (node := value.producer()) is not None and is_onnx_domain(node) and node.op_type in ("Identity", "Dropout"):
        if node.outputs[0] is not value or not node.inputs or node.inputs[0] is None:
            break
        value = node.inputs[0]
    return value


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
