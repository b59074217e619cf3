"""Each quantized layer run alone on probe rows that no kernel rounds: the weights it computes with, against its twin's.

The twin check compares whole models on real inputs, where the kernels' int8 rounding of
each activation makes the result stray from its twin at ties; the tolerance that forgives
those strays also forgives a layer whose weights are a few percent off where the error
acts through a softmax (a query projection's gain changes the attention's temperature,
no gain or offset of any checkpoint the segment check sums). A layer's weights are
checked exactly instead: the subgraph that computes the layer's output from its input
activation is cut out of the result and of its twin, and both are fed rows
``v·e_i`` (``e_i`` the unit vectors, ``v`` the activation's largest magnitude on the
first input set), a row ``-v/2·e_j`` and a zero row. Every quantization the passes write
maps such rows onto its grid exactly (per tensor, per row, per block: the one nonzero
value is the row's or block's maximum, and the range [-v/2, v] puts the uint8 zero point
at 85, no tie), and each output element is then one weight times one input, so the
result must give its twin's values to float32 rounding (a float16 layer's: to one float16 step,
``FLOAT16_PROBE_TOLERANCE``): row ``i`` is ``v`` times the
``i``-th row of the weight the layer computes with, the zero row its bias. A scale,
zero point, block offset or packing off anywhere, by any amount past rounding, differs.

A Conv (static int8 only) is fed its real input from the first input set instead: there the
activation goes through a ``QuantizeLinear`` at the calibrated scale, the same op in the
result and the twin, so both convolve the same integers, and each output channel must match
(the fixtures and PP-OCR's 53 convolutions: bit for bit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from optimizer.errors import RuntimeRefusedError
from optimizer.runtime import inference_session, run_session

logger = logging.getLogger(__name__)

# A probe output element may differ from its twin's by this fraction of its output column's largest magnitude
# (over the probe rows: one output feature). Correct int8 and int4 results on every fixture and MiniLM stay
# within 4.2e-7 (float32 rounding of a product of scales, and of the bias added); a block's scale 0.1 % off
# moves its elements by 1e-3 of their own magnitude.
PROBE_TOLERANCE = 1e-5
# A float16 layer's output (int4's float16 MatMulNBits) is its float32 product rounded to float16, and the twin's too:
# a product the two compute in float32 a rounding apart (the kernel's int8 input scale, 127 * (v / 127) against v)
# can round to neighbouring float16 values, one step of 2**-10 of the value apart at most.
FLOAT16_PROBE_TOLERANCE = 2.0**-10
# The attributes a QAttention must share with its twin's Attention, and the value both kernels take where one is not
# written: an Attention stating ``unidirectional=0`` (ONNX Runtime's GPT-2 attention fusions write it) and a QAttention
# leaving it out compute alike (a review: --quantize dynamic was rolled back as "another unidirectional").
_ATTENTION_DEFAULTS = {"num_heads": None, "unidirectional": 0, "mask_filter_value": -10000.0}
# The most bytes of layer outputs one probe run computes (each side), and of probe rows it is fed: a vocabulary's LM
# head on every input channel at once would be gigabytes, and so would a wide layer's rows.
PROBE_BYTES = 256 * 2**20


def probe_rows(example: np.ndarray, first: int = 0, count: int | None = None) -> np.ndarray | None:
    """The probe for an activation shaped like ``example`` (``[..., K]``, float): ``[v·I; -v/2·e_0; 0]`` over its
    last axis, as ``[1, ..., K + 2, K]`` of its rank (at least 2: a vector's layer gets rows too) and dtype,
    ``v`` its largest finite magnitude (1 if none); None for a scalar. With ``first`` and ``count``, only the unit
    rows of channels ``first`` to ``first + count`` (the last ``count`` channels where ``first`` is past them),
    the negative row on channel ``first``: the same range, so the same quantization, in fewer rows. One negative
    row is enough: it sets a per-tensor zero point for every row beside it, and puts a negative input against
    every output column."""
    if example.ndim < 1 or example.dtype.kind != "f" or example.shape[-1] == 0:
        return None
    finite = np.abs(example[np.isfinite(example)])
    v = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    k = example.shape[-1]
    count = k if count is None else max(1, min(count, k))
    first = min(first, k - count)
    # The rows asked for alone, in the example's dtype: ``np.eye(k)[first : first + count]`` built all k × k in float64
    # first, 16 GB for MEGnet's 45,411-input dense layer (dynamic int8's verification was killed at 24 GB, review s75
    # hunt 11). The values are those of ``[v·I; -v/2·e_first; 0]`` computed in float64 and rounded once, as before.
    rows = np.zeros((count + 2, k), dtype=example.dtype)
    rows[np.arange(count), np.arange(first, first + count)] = v
    rows[count, first] = -0.5 * v
    return rows.reshape((1,) * (example.ndim - 2) + rows.shape)


def _zero_row(example: np.ndarray) -> np.ndarray:
    """One zero row shaped for ``example``'s probe: what an activation whose channels are all probed is fed while
    a wider one's are (its layer's bias, again)."""
    return np.zeros((1,) * (max(example.ndim, 2) - 1) + example.shape[-1:], dtype=example.dtype)


def probe_model(
    model: ir.Model, pairs: Sequence[tuple[str, str]], examples: Mapping[str, np.ndarray]
) -> tuple[ir.Model, list[tuple[str, str]]]:
    """A copy of ``model`` whose inputs are the activations of ``pairs`` (activation, layer output; each typed
    and ranked as its value in ``examples``) and whose outputs are the layer outputs that depend on those
    activations and constants alone, with those pairs.

    A layer whose output also reads another graph input (an attention mask, a cache) or is computed inside a
    subgraph is left out, as is one whose tensors ``model`` does not hold under those names. Every fed value has
    unknown dims (a graph input's declared ones would refuse the probe's rows), of the example's rank, or 2 for a
    vector (``probe_rows``)."""
    probe = model.clone()
    graph = probe.graph
    produced = {v.name: v for node in graph for v in node.outputs}
    inputs = {v.name: v for v in graph.inputs}
    fed: dict[str, ir.Value] = {}
    for activation in dict.fromkeys(a for a, _ in pairs):
        example = examples[activation]
        replaced = inputs.get(activation) or produced.get(activation)
        if replaced is None:
            continue
        value = ir.Value(
            name=activation,
            type=ir.TensorType(ir.DataType.from_numpy(example.dtype)),
            shape=ir.Shape([None] * max(example.ndim, 2)),
        )
        replaced.name = f"{activation}::graphopt_probe_cut"
        replaced.replace_all_uses_with(value, replace_graph_outputs=True)  # the outputs are replaced below
        fed[activation] = value
    free = {id(v) for v in graph.inputs if v.const_value is None}
    kept, outputs = [], []
    for activation, output in pairs:
        value = produced.get(output)  # computed, though another layer's activation cut there (a low-rank pair)
        if activation not in fed or value is None or value in outputs or value.is_graph_input():
            continue
        if _reads_only(value, {id(fed[activation])}, free, {id(v) for v in fed.values()}):
            kept.append((activation, output))
            outputs.append(value)
    for (_, output), value in zip(kept, outputs):
        value.name = _probed_output(output)
    graph.outputs.clear()
    graph.outputs.extend(outputs)
    graph.inputs.clear()
    graph.inputs.extend(fed.values())
    RemoveUnusedNodesPass()(probe)
    for node in graph:  # shapes recorded for the real inputs' sequence length would be enforced on the probe's
        for value in node.outputs:
            value.shape = None
    used = [value for value in fed.values() if value.uses()]
    graph.inputs.clear()
    graph.inputs.extend(used)
    return probe, kept


def _probed_output(name: str) -> str:
    """A layer output's name in a probe model (distinct from the activation fed there if the next layer reads it)."""
    return f"{name}::graphopt_probed"


def _reads_only(value: ir.Value, own: set[int], free: set[int], activations: set[int]) -> bool:
    """Whether ``value`` is computed from the activation ``own`` and constants alone: the walk back stops at
    any activation; it fails at another activation, a free graph input or a node with a subgraph."""
    stack, seen = [value], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current) in activations:
            if id(current) not in own:
                return False
            continue
        if id(current) in free:
            return False
        node = current.producer()
        if node is None:
            continue  # an initializer or constant
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
            return False
        stack.extend(v for v in node.inputs if v is not None)
    return True


def layer_probe_failure(
    candidate: ir.Model,
    twin: ir.Model,
    pairs: Sequence[tuple[str, str]],
    examples: Mapping[str, np.ndarray],
) -> tuple[str, int]:
    """Why a layer of ``candidate`` computes with other weights than its ``twin`` says, or "", and how many layers
    were probed.

    ``pairs`` are (activation, layer output) names held by both models; ``examples`` each activation's value on
    real inputs. Only layers both models compute from their activation and constants alone are probed. The
    candidate runs as deployed (ORT_ENABLE_ALL), the twin as written. A MatMul or Gemm is fed probe rows
    (``probe_rows``), a chunk of input channels at a time, at most ``PROBE_BYTES`` of outputs per run. A Conv
    (static int8: its input goes through a QuantizeLinear at the calibrated scale, the same op in both models,
    so the same integers) is fed its real input, and compared per output channel."""
    convolved = {node.outputs[0].name for node in twin.graph if node.op_type == "Conv"}
    real = [(a, o) for a, o in pairs if o in convolved and a in examples and examples[a].dtype.kind == "f"]
    read_by_conv = {a for a, _ in real}
    # Whether an activation can be probed, asked of one channel's rows: all of them at once were K × K (MEGnet's
    # 45,411-input dense layer: 16 GB, built only to be compared with None).
    rows = [
        (a, o)
        for a, o in pairs
        if o not in convolved and a in examples and a not in read_by_conv and probe_rows(examples[a], 0, 1) is not None
    ]
    probed = 0
    for probe, group in ((_probe_with_rows, rows), (_probe_with_real_inputs, real)):
        failure, count = _each_refusal_apart(probe, candidate, twin, group, examples)
        probed += count
        if failure:
            return failure, probed
    return "", probed


def _each_refusal_apart(
    probe: Callable[..., tuple[str, int]],
    candidate: ir.Model,
    twin: ir.Model,
    pairs: Sequence[tuple[str, str]],
    examples: Mapping[str, np.ndarray],
) -> tuple[str, int]:
    """``probe`` on every pair at once; where ONNX Runtime refuses that, on each activation's pairs alone, so
    that one layer it cannot run on probe rows leaves the others probed (each refusal logged)."""
    try:
        return probe(candidate, twin, pairs, examples)
    except RuntimeRefusedError as error:
        groups = list(dict.fromkeys(activation for activation, _ in pairs))
        if len(groups) == 1:
            logger.info("layers reading %s not probed: %s", groups[0], error.reason)
            return "", 0
    probed = 0
    for activation in groups:
        failure, count = _each_refusal_apart(probe, candidate, twin, [p for p in pairs if p[0] == activation], examples)
        probed += count
        if failure:
            return failure, probed
    return "", probed


def _probe_models(
    candidate: ir.Model, twin: ir.Model, pairs: Sequence[tuple[str, str]], examples: Mapping[str, np.ndarray]
) -> tuple[ir.Model, ir.Model, list[tuple[str, str]], list[str]]:
    """The probe models of ``candidate`` and ``twin`` (``probe_model``) for the pairs both can probe, those pairs,
    and their outputs' names in the probe models."""
    if not pairs:
        return candidate, twin, [], []
    result_probe, kept = probe_model(candidate, pairs, examples)
    twin_probe, twin_kept = probe_model(twin, kept, examples)
    kept = [pair for pair in kept if pair in set(twin_kept)]
    names = [_probed_output(output) for _, output in kept]
    _keep_outputs(result_probe, names)
    _keep_outputs(twin_probe, names)
    return result_probe, twin_probe, kept, names


def _probe_with_rows(
    candidate: ir.Model, twin: ir.Model, pairs: Sequence[tuple[str, str]], examples: Mapping[str, np.ndarray]
) -> tuple[str, int]:
    result_probe, twin_probe, kept, names = _probe_models(candidate, twin, pairs, examples)
    if not kept:
        return "", 0
    activations = list(dict.fromkeys(activation for activation, _ in kept))
    widest = max(examples[activation].shape[-1] for activation in activations)
    columns = {output: _Columns(-1) for _, output in kept}
    with (
        inference_session(result_probe, optimization_level="all") as result_session,
        inference_session(twin_probe) as twin_session,
    ):
        first, count = 0, 1  # one channel first: it tells each output's width, and so the chunk
        while first < widest:
            feeds = {
                a: probe_rows(examples[a], first, count) if first < examples[a].shape[-1] else _zero_row(examples[a])
                for a in activations
            }
            actual, expected = run_session(result_session, feeds), run_session(twin_session, feeds)
            for activation, output in kept:
                name = _probed_output(output)
                failure = columns[output].add(expected[name], actual[name])
                if failure:
                    return _failure(output, failure, _rows_fed(probe_rows(examples[activation], 0, 1))), len(kept)
            if first == 0:
                # A chunk's rows are bounded on both sides: its outputs (a vocabulary's LM head) and the rows fed
                # (every input channel of a 45,411-wide layer at once was 8 GB of probe rows).
                width = sum(expected[name].shape[-1] for name in names)
                fed = sum(examples[activation].shape[-1] for activation in activations)
                count = max(1, PROBE_BYTES // (4 * max(width, fed, 1)))
                first = 1
            else:
                first += count
    for activation, output in kept:
        failure = columns[output].verdict()
        if failure:
            return _failure(output, failure, _rows_fed(probe_rows(examples[activation], 0, 1))), len(kept)
    return "", len(kept)


def _probe_with_real_inputs(
    candidate: ir.Model, twin: ir.Model, pairs: Sequence[tuple[str, str]], examples: Mapping[str, np.ndarray]
) -> tuple[str, int]:
    result_probe, twin_probe, kept, _ = _probe_models(candidate, twin, pairs, examples)
    if not kept:
        return "", 0
    feeds = {activation: examples[activation] for activation, _ in kept}
    with inference_session(result_probe, optimization_level="all") as session:
        actual = run_session(session, feeds)
    with inference_session(twin_probe) as session:
        expected = run_session(session, feeds)
    fed = "its real input on the first input set (quantized by the same QuantizeLinear in both)"
    for _, output in kept:
        name = _probed_output(output)
        columns = _Columns(1)
        failure = columns.add(expected[name], actual[name]) or columns.verdict()
        if failure:
            return _failure(output, failure.replace("column", "channel"), fed), len(kept)
    return "", len(kept)


def _rows_fed(rows: np.ndarray) -> str:
    return f"rows that no quantization rounds (each input channel alone at {float(np.abs(rows).max()):.3g}, and zero)"


def _failure(output: str, failure: str, fed: str) -> str:
    return (
        f"the layer computing '{output}' uses other weights than its twin's: fed {fed}, it {failure}: its scales, "
        "zero points or packing are not the ones the pass claims"
    )


def _keep_outputs(model: ir.Model, names: Sequence[str]) -> None:
    wanted = set(names)
    kept = [value for value in model.graph.outputs if value.name in wanted]
    model.graph.outputs.clear()
    model.graph.outputs.extend(kept)
    RemoveUnusedNodesPass()(model)
    used = [value for value in model.graph.inputs if value.uses()]
    model.graph.inputs.clear()
    model.graph.inputs.extend(used)


class _Columns:
    """One probed output's columns (along ``axis``: a MatMul's last, a Conv's channels) over every chunk of probe
    rows: each column's largest magnitude in the twin's output and largest gap between the two, with the values
    where that gap is."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.peak: np.ndarray | None = None
        self.gap: np.ndarray | None = None
        self.at: np.ndarray | None = None  # per column: (actual, expected) where its gap is largest
        self.float16 = False

    def add(self, expected: np.ndarray, actual: np.ndarray) -> str:
        """Take in one chunk's outputs; what no rounding explains (a shape or dtype apart, NaN or infinity where
        the other has none) at once, else ""."""
        if expected.shape != actual.shape or expected.dtype != actual.dtype:
            return f"is {actual.dtype}{list(actual.shape)} where its twin's is {expected.dtype}{list(expected.shape)}"
        if expected.ndim == 0 or expected.size == 0:
            return ""
        self.float16 = self.float16 or expected.dtype == np.float16
        finite = np.isfinite(expected)
        if not np.array_equal(finite, np.isfinite(actual)):
            return "is NaN or infinite where its twin's is not (or the other way)"
        axis = self.axis % expected.ndim
        e = np.moveaxis(np.where(finite, expected, 0).astype(np.float32), axis, -1).reshape(-1, expected.shape[axis])
        a = np.moveaxis(np.where(finite, actual, 0).astype(np.float32), axis, -1).reshape(-1, expected.shape[axis])
        gap = np.abs(a - e)
        rows = np.argmax(gap, axis=0)
        width = np.arange(gap.shape[1])
        chunk_gap, at = gap[rows, width], np.stack([a[rows, width], e[rows, width]], axis=1)
        peak = np.max(np.abs(e), axis=0)
        if self.peak is None or self.peak.shape != peak.shape:
            if self.peak is not None:
                return f"has {peak.size} columns on some probe rows and {self.peak.size} on others"
            self.peak, self.gap, self.at = peak, chunk_gap, at
            return ""
        np.maximum(self.peak, peak, out=self.peak)
        larger = chunk_gap > self.gap
        self.gap[larger], self.at[larger] = chunk_gap[larger], at[larger]
        return ""

    def verdict(self) -> str:
        """How the columns differ past ``PROBE_TOLERANCE`` of their peaks, or ""."""
        if self.peak is None:
            return ""
        ratio = self.gap / np.maximum(self.peak, np.finfo(np.float32).tiny)
        tolerance, rounding = (FLOAT16_PROBE_TOLERANCE, "float16") if self.float16 else (PROBE_TOLERANCE, "float32")
        if ratio.max() <= tolerance:
            return ""
        column = int(np.argmax(ratio))
        actual, expected = self.at[column]
        return (
            f"differs in column {column} by {ratio[column]:.3g} of that column's largest value ({actual:.7g} where "
            f"the twin gives {expected:.7g}; {rounding} rounding stays within {tolerance:g})"
        )


def qattention_weights_failure(candidate: ir.Model, twin: ir.Model) -> str:
    """Why a ``QAttention`` of ``candidate`` holds other weights than its ``twin``'s ``Attention`` of the same output
    says, or "". Such a layer reads the mask beside its input and gets no probe (``layer_probe_failure``), and the
    twin check's tolerance forgives a query projection's gain, which acts through the softmax alone (the query
    scales of two heads 30 % high: 1.8e-3 from the twin on the BERT fixture, verified). Its weights are constants,
    so they are compared directly: the int8 weight dequantized by its scales and zero points, and the bias, to
    ``PROBE_TOLERANCE`` of each column's largest value; its attributes must be the twin's."""
    claimed = {
        node.outputs[0].name: node
        for node in twin.graph.all_nodes()
        if node.op_type == "Attention" and node.domain == "com.microsoft" and node.outputs
    }
    for node in candidate.graph.all_nodes():
        if node.op_type != "QAttention" or node.domain != "com.microsoft" or not node.outputs:
            continue
        attention = claimed.get(node.outputs[0].name)
        if attention is None:
            continue
        weight, bias, scale = (_constant(node, index) for index in (1, 2, 4))
        zero_point = _constant(node, 7)
        claimed_weight, claimed_bias = _constant(attention, 1), _constant(attention, 2)
        if any(x is None for x in (weight, bias, scale, claimed_weight, claimed_bias)):
            logger.info("QAttention %s: weights not constant, not compared with its twin's", node.name)
            continue
        zero = np.zeros(1) if zero_point is None else zero_point.astype(np.float64)
        output = node.outputs[0].name
        try:
            dequantized = (weight.astype(np.float64) - zero) * scale.astype(np.float64)
        except ValueError:
            return f"the QAttention computing '{output}' has scales or zero points that do not fit its weight"
        if dequantized.shape != claimed_weight.shape or bias.shape != claimed_bias.shape:
            return f"the QAttention computing '{output}' has weights of another shape than its twin's"
        peak = np.maximum(np.abs(claimed_weight).max(axis=0), np.finfo(np.float32).tiny)
        off = (np.abs(dequantized - claimed_weight) / peak).max(axis=0)
        bias_off = np.abs(bias.astype(np.float64) - claimed_bias) / np.maximum(np.abs(claimed_bias), peak)
        for what, errors in (("weight", off), ("bias", bias_off)):
            column = int(np.argmax(errors))
            if errors[column] > PROBE_TOLERANCE:
                return (
                    f"the QAttention computing '{output}' uses another {what} than its twin's: column {column} differs "
                    f"by {errors[column]:.3g} of that column's largest value (float32 rounding stays within "
                    f"{PROBE_TOLERANCE:g}): its scales, zero points or packing are not the ones the pass claims"
                )
        for name, default in _ATTENTION_DEFAULTS.items():
            mine, theirs = node.attributes.get(name), attention.attributes.get(name)
            if (mine.value if mine is not None else default) != (theirs.value if theirs is not None else default):
                return f"the QAttention computing '{output}' has another {name} than its twin's Attention"
    return ""


def _constant(node: ir.Node, index: int) -> np.ndarray | None:
    """The constant (initializer or ``Constant`` output) ``node`` reads at ``index``; None where there is none."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return None
    value = node.inputs[index]
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


def table_probe_failure(candidate: ir.Model, twin: ir.Model) -> tuple[str, int]:
    """Why an embedding lookup of ``candidate`` gives other rows than its ``twin``'s, or "", and how many tables
    were probed.

    A twin's row ``Gather`` (axis 0) of a constant ``[rows, width]`` float table whose output ``candidate`` computes
    otherwise (int8 rows times their scales, ``GatherBlockQuantized``) is cut out of both, from its indices to its
    output (``probe_model``), and fed every row index, at most ``PROBE_BYTES`` of rows per run: each row must match
    the twin's to ``PROBE_TOLERANCE`` of its largest value. The input sets look up a few hundred rows of a table of
    thousands, and a row they never read (one scale doubled) was verified at max |Δ| 0."""
    held = {v.name: v for node in candidate.graph for v in node.outputs}
    held.update((v.name, v) for v in candidate.graph.inputs)
    probed = 0
    for node in twin.graph:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or node.attributes.get_int("axis", 0):
            continue
        table, ids, output = _constant(node, 0), node.inputs[1], node.outputs[0]
        if table is None or table.ndim != 2 or table.dtype != np.float32 or ids is None:
            continue
        computed = held.get(output.name)
        if ids.name not in held or computed is None or computed.dtype != output.dtype:
            continue
        index_type = _index_type(ids, held[ids.name])
        if index_type is None:
            continue
        producer = computed.producer()
        if producer is not None and producer.op_type == "Gather" and (same := _constant(producer, 0)) is not None:
            if same.shape == table.shape and np.array_equal(same, table):
                continue  # the same lookup: nothing the pass claims
        try:
            failure = _rows_failure(candidate, twin, ids, output, table.shape, index_type)
        except RuntimeRefusedError as error:  # this table unchecked, with a line in the log; the next ones still are
            logger.info("embedding table behind %s not probed: %s", output.name, error)
            continue
        if failure is None:
            continue
        probed += 1
        if failure:
            return failure, probed
    return "", probed


def _rows_failure(
    candidate: ir.Model, twin: ir.Model, ids: ir.Value, output: ir.Value, table: tuple[int, ...], index_type: np.dtype
) -> str | None:
    """Why the lookup computing ``output`` from ``ids`` gives other rows of a ``table``-shaped table in ``candidate``
    than in ``twin``, fed every row index (``table_probe_failure``); "" where every row matches, None where the
    lookup cannot be cut out of both."""
    rank = ids.shape.rank() if ids.shape is not None else 1
    example = {ids.name: np.zeros((1,) * max(rank, 1), dtype=index_type)}
    result_probe, twin_probe, kept, names = _probe_models(candidate, twin, [(ids.name, output.name)], example)
    if not kept:
        return None
    rows, width = table
    chunk = max(1, PROBE_BYTES // (4 * max(width, 1)))
    shape = (1,) * (max(rank, 2) - 1)
    with (
        inference_session(result_probe, optimization_level="all") as result_session,
        inference_session(twin_probe) as twin_session,
    ):
        for first in range(0, rows, chunk):
            index = np.arange(first, min(rows, first + chunk)).astype(index_type).reshape(*shape, -1)
            feeds = {ids.name: index}
            actual = np.asarray(run_session(result_session, feeds)[names[0]]).reshape(index.size, -1)
            expected = np.asarray(run_session(twin_session, feeds)[names[0]]).reshape(actual.shape)
            peak = np.maximum(np.abs(expected).max(axis=1), np.finfo(np.float32).tiny)
            off = np.abs(actual - expected).max(axis=1) / peak
            row = int(np.argmax(off))
            if not np.isfinite(off[row]) or off[row] > PROBE_TOLERANCE:
                return (
                    f"the lookup computing '{output.name}' gives other rows than its twin's: fed every row index, "
                    f"row {first + row} differs by {off[row]:.3g} of its largest value (float32 rounding stays "
                    f"within {PROBE_TOLERANCE:g}): its scales or packing are not the ones the pass claims"
                )
    return ""


def _index_type(ids: ir.Value, held: ir.Value) -> np.dtype | None:
    """The numpy type of a lookup's indices: the twin's or the result's recorded one, else the type a ``Cast``
    producing them names (an exported ``Cast(input_ids)`` often records none); None where nothing says."""
    for value in (ids, held):
        if value.dtype is not None:
            return value.dtype.numpy()
        producer = value.producer()
        if producer is not None and producer.op_type == "Cast" and "to" in producer.attributes:
            return ir.DataType(producer.attributes["to"].value).numpy()
    return None
