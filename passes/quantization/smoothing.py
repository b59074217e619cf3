"""SmoothQuant: move activation outliers out of the norms' outputs and into the next layers' weights.

Transformer activations after LayerNorm/RMSNorm carry a few channels hundreds of
times larger than the rest; one per-tensor int8 scale then wastes almost all levels
on them. For a norm whose output ``X`` feeds only int8 layers ``X @ W``, dividing
channel ``j`` of ``X`` by ``s_j`` (folded into the norm's scale and bias) and
multiplying row ``j`` of every ``W`` by ``s_j`` leaves the product unchanged in exact
arithmetic, while evening out the ranges. ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)``
(Xiao et al., 2023), with ``max|X_j|`` measured on calibration data.

A gated product ``X = A * (H @ U)`` (SwiGLU's ``silu(gate) * up``, read by the down
projection) is smoothed the same way, the ``1 / s_j`` going into column ``j`` of the
up projection's weight ``U`` instead of a norm: a decoder's largest outliers are there
(SmolLM2-135M: one channel of one layer's product 3,900x the median channel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._layers import Layer
from passes._utils import add_initializer, constant_array
from passes.quantization import calibration

_NORMS = {
    ("", "LayerNormalization"): (1, 2),
    ("", "SimplifiedLayerNormalization"): (1, None),
    (MS_DOMAIN, "SimplifiedLayerNormalization"): (1, None),
    (MS_DOMAIN, "SkipLayerNormalization"): (2, 3),
    (MS_DOMAIN, "SkipSimplifiedLayerNormalization"): (2, None),
}


def smooth(
    model: ir.Model,
    layers: Sequence[Layer],
    batches: Sequence[Mapping[str, np.ndarray]],
    alpha: float,
    shared: list[str] | None = None,
    rewritable: Sequence[Layer] | None = None,
) -> list[str]:
    """Migrate outliers from each norm feeding only ``layers`` into their weights; return the norms' names.

    A norm is a fused LayerNorm/RMSNorm op, or the ``Mul`` by a per-channel scale that
    ends an unfused one. It is left alone when its output has another user (``data_uses``:
    a ``Shape`` or ``Size`` of it does not count, and a ``Reshape`` to rows of its channels is read
    through: ``_row_uses``), is a graph
    output, or its scale/bias are not constants with one value per channel; and when a
    layer it feeds reads a weight other layers read too (ALBERT's shared layers): each
    reader would store its own smoothed copy, a larger file than without smoothing. Those
    norms' names go to ``shared``. A gated product is smoothed only where its up projection
    is one of ``rewritable`` (default ``layers``): the layers whose weights this run may
    rewrite, not one ``--exclude``, a model output or a tied weight keeps as it is.
    """
    chosen = {id(layer.node): layer for layer in layers}
    allowed = {id(layer.node) for layer in (layers if rewritable is None else rewritable)}
    groups = []
    for node in model.graph:
        slots = _NORMS.get(("" if is_onnx_domain(node) else node.domain, node.op_type)) or _scale_multiply(node)
        uses = _row_uses(node.outputs[0])
        if slots is None or not uses or node.outputs[0].is_graph_output():
            continue
        users = [chosen.get(id(user)) for user, index in uses if index == 0]
        if len(users) != len(uses) or any(user is None or user.kind == "conv" for user in users):
            continue
        groups.append((node, slots, users))
    norms = {id(node) for node, _, _ in groups}
    products = [
        group for group in _gated_products(model.graph, chosen) if id(group[0]) not in norms and id(group[1]) in allowed
    ]
    apart = {id(group[0]) for group in groups + products if _weights_shared_outside(group[-1])}
    apart |= {id(node) for node, up, _ in products if len(up.inputs[1].uses()) > 1}  # its weight is divided too
    if shared is not None:
        shared.extend(group[0].name or group[0].op_type for group in groups + products if id(group[0]) in apart)
    groups = [group for group in groups if id(group[0]) not in apart]
    products = [group for group in products if id(group[0]) not in apart]
    if not groups and not products:
        return []
    names = [n.outputs[0].name for n, _, _ in groups] + [n.outputs[0].name for n, _, _ in products]
    peaks = calibration.channel_peaks(model, names, batches)
    smoothed = []
    for node, (scale_slot, bias_slot), users in groups:
        if _migrate(model.graph, node, scale_slot, bias_slot, users, peaks[node.outputs[0].name], alpha):
            smoothed.append(node.name or node.op_type)
    for node, up, users in products:
        if _migrate_product(model.graph, up, users, peaks[node.outputs[0].name], alpha):
            smoothed.append(node.name or node.op_type)
    return smoothed


def data_uses(value: ir.Value) -> list[tuple[ir.Node, int]]:
    """The uses of ``value`` that read its values: a ``Shape`` or ``Size`` reads only its shape, which rescaling
    its channels leaves as it is (torch's dynamo exporter takes a norm's output's sizes for the attention's
    ``Reshape``: GPT-J's norms were never smoothed)."""
    return [
        (user, index)
        for user, index in value.uses()
        if user.op_type not in ("Shape", "Size") or not is_onnx_domain(user)
    ]


def _row_uses(value: ir.Value) -> list[tuple[ir.Node, int]]:
    """``data_uses(value)``, with each ``Reshape`` to rows of its channels (a constant target ending in a positive
    size, ``[-1, C]``) read through: its own readers' uses instead. Such a reshape only regroups whole rows of the
    last axis (the layers after it read ``C`` channels, as ``_migrate`` holds), so rescaling a channel before it
    rescales the same channel after it. GPT-2's ``Conv1D`` is exported so (``x.view(-1, C)`` into a ``Gemm``):
    its norms were never smoothed, and ``--smooth`` said "on 0 norms" without a reason."""
    found = []
    for user, index in data_uses(value):
        target = constant_array(user.inputs[1]) if user.op_type == "Reshape" and len(user.inputs) > 1 else None
        if (
            index == 0
            and is_onnx_domain(user)
            and target is not None
            and target.ndim == 1
            and target.size >= 1
            and int(target[-1]) > 0
            and _last_dim_is(value, int(target[-1]))
            and not user.outputs[0].is_graph_output()
        ):
            found += data_uses(user.outputs[0])
        else:
            found.append((user, index))
    return found


def _last_dim_is(value: ir.Value, size: int) -> bool:
    """Whether ``value``'s last axis is not known to be other than ``size`` (a ``[-1, C/2]`` regroup mixes channels)."""
    shape = value.shape
    if shape is None or shape.rank() == 0:
        return True
    last = shape[shape.rank() - 1]
    return not isinstance(last, int) or last == size


def _weights_shared_outside(users: Sequence[Layer]) -> bool:
    """Whether a weight one of ``users`` reads (through a ``Transpose`` too) is read by a node not in ``users``."""
    own = {id(layer.node) for layer in users}
    for layer in users:
        weight = layer.source if layer.source is not None else layer.node.inputs[1]
        readers = [user for user, _ in weight.uses()]
        if layer.transposed:  # the Transpose is the reader; its readers are the layers
            readers = [reader for user in readers for reader, _ in user.outputs[0].uses()]
        if any(id(reader) not in own for reader in readers):
            return True
    return False


def _gated_products(graph: ir.Graph, chosen: Mapping[int, Layer]) -> list[tuple[ir.Node, ir.Node, list[Layer]]]:
    """``Mul`` nodes whose output only int8 layers read and one of whose inputs is a MatMul's own output.

    The MatMul (the up projection) must be read by nothing else and have a constant
    ``[K, N]`` weight, so scaling its columns changes only the product.
    """
    found = []
    for node in graph:
        if node.op_type != "Mul" or not is_onnx_domain(node) or len(node.inputs) != 2:
            continue
        output = node.outputs[0]
        uses = data_uses(output)
        if not uses or output.is_graph_output():
            continue
        users = [chosen.get(id(user)) for user, index in uses if index == 0]
        if len(users) != len(uses) or any(user is None or user.kind == "conv" for user in users):
            continue
        for operand in node.inputs:
            producer = operand.producer() if operand is not None else None
            if (
                producer is not None
                and producer.op_type == "MatMul"
                and is_onnx_domain(producer)
                and len(data_uses(operand)) == 1
                and not operand.is_graph_output()
                and (weight := constant_array(producer.inputs[1])) is not None
                and weight.ndim == 2
                and all(layer.weight.shape[0] == weight.shape[1] for layer in users)
            ):
                found.append((node, producer, users))
                break
    return found


def _migrate_product(graph, up: ir.Node, users, activation_peak, alpha) -> bool:
    """Divide column ``j`` of the up projection's weight by ``s_j``, multiply row ``j`` of each reader's."""
    weight = constant_array(up.inputs[1]).astype(np.float32)
    if weight.shape[1] != activation_peak.shape[0]:
        return False
    factors = _factors(activation_peak, users, alpha)
    up.replace_input_with(1, add_initializer(graph, f"{up.name or 'up'}.smoothed_weight", weight / factors[None, :]))
    _scale_rows(graph, users, factors)
    return True


def _factors(activation_peak: np.ndarray, users: Sequence[Layer], alpha: float) -> np.ndarray:
    weight_peak = np.max([np.abs(layer.weight).max(axis=1) for layer in users], axis=0)
    factors = np.power(np.maximum(activation_peak, 1e-5), alpha) / np.power(np.maximum(weight_peak, 1e-5), 1 - alpha)
    return np.clip(factors, 1e-5, None).astype(np.float32)


def _scale_rows(graph: ir.Graph, users: Sequence[Layer], factors: np.ndarray) -> None:
    for layer in users:
        layer_node = layer.node
        weight = _stored_weight(layer) * _row_scaling(layer, factors)
        layer_node.replace_input_with(1, add_initializer(graph, f"{layer_node.name}.smoothed_weight", weight))


def gated(node: ir.Node) -> bool:
    """Whether a ``Mul`` is smoothed as a gated product (the ``1 / s`` into an operand's MatMul), not as a norm."""
    return _scale_multiply(node) is None


def _scale_multiply(node: ir.Node) -> tuple[int, None] | None:
    """A ``Mul`` by a constant vector: the scale step of a norm written out op by op (unfused RMSNorm)."""
    if node.op_type != "Mul" or not is_onnx_domain(node) or len(node.inputs) != 2:
        return None
    for slot in (0, 1):
        constant = constant_array(node.inputs[slot])
        if (
            constant is not None
            and constant.ndim == 1
            and constant.size > 1
            and constant_array(node.inputs[1 - slot]) is None
        ):
            return slot, None
    return None


def _migrate(graph, node, scale_slot, bias_slot, users, activation_peak, alpha) -> bool:
    scale = constant_array(node.inputs[scale_slot]) if len(node.inputs) > scale_slot else None
    bias = constant_array(node.inputs[bias_slot]) if bias_slot is not None and len(node.inputs) > bias_slot else None
    channels = activation_peak.shape[0]
    if scale is None or scale.shape != (channels,) or (bias is not None and bias.shape != (channels,)):
        return False
    if bias_slot is not None and len(node.inputs) > bias_slot and node.inputs[bias_slot] is not None and bias is None:
        return False
    if any(layer.weight.shape[0] != channels for layer in users):
        return False
    factors = _factors(activation_peak, users, alpha)
    prefix = node.name or node.op_type
    node.replace_input_with(scale_slot, add_initializer(graph, f"{prefix}.smoothed_scale", scale / factors))
    if bias is not None:
        node.replace_input_with(bias_slot, add_initializer(graph, f"{prefix}.smoothed_bias", bias / factors))
    _scale_rows(graph, users, factors)
    return True


def _stored_weight(layer: Layer) -> np.ndarray:
    """The weight as the node reads it (a Gemm with transB reads ``[N, K]``); one read through
    ``Transpose(table)`` gets its own constant, the transpose done (the table stays as its other readers see it)."""
    if layer.kind == "gemm" and layer.node.attributes.get_int("transB", 0):
        return layer.weight.T.astype(np.float32)
    return layer.weight.astype(np.float32)


def _row_scaling(layer: Layer, factors: np.ndarray) -> np.ndarray:
    if layer.kind == "gemm" and layer.node.attributes.get_int("transB", 0):
        return factors[None, :]
    return factors[:, None]
