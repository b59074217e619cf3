"""Review s76 (dmut): a mutation hunt on decoders with a key/value cache, where verification had been tested least.

Each test appends one wrong rewrite, an exact-looking ``InPlacePass``, to an empty pipeline, the way
``tests/mutation/harness.py`` appends its mutants, so the pipeline's own verification judges it. The holes found
(``docs/benchmarks.md``, "Decoder mutation hunt, review s76"): a fused ``RotaryEmbedding``'s cos/sin caches are built
for ``--max-sequence`` positions (4,096 by default), but a decoder's generated sets reach position 511 at most, so a
rewrite wrong only in the caches' rows past that, or in their last row, verified (fixed: the rows a pass changed in a
table a graph input indexes are read by an added set, as for an embedding's since review s75, now through the
rotary's ``position_ids``); a rewrite that branched on a length of its own (``Equal(Shape(input_ids)[1], 2)``, or a
decoder's mask 64 long) verified, as the lengths compared were read from the original graph alone (fixed: a pass's
result's new comparisons get their sets, ``Verifier.reach_compared_lengths``; a branch on a length between two
thresholds whose sides the sets hold one at a time, 2 or 3 new tokens beside steps of 1 and 128, since review s76
xfix2). A ``GroupQueryAttention`` given a sliding window longer than every generated length (1,024) verified until
review s77 xbag (now a decode step one key past each window a rewrite changes is drawn).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import onnx_ir as ir
import pytest

import optimizer.api as api
from optimizer import registry
from optimizer.domains import MS_DOMAIN
from optimizer.protocol import PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
from passes._utils import add_initializer, constant_array
from tests.helpers import FIXTURES

_ROWS, _HALF = 4096, 4


def _rotary(path) -> None:
    """``x [batch, sequence, 8]`` rotated by ``position_ids`` through a fused ``RotaryEmbedding`` whose caches hold
    4,096 positions, as ``fuse-rotary`` writes them for the default ``--max-sequence``."""
    x = ir.Value(name="x", shape=ir.Shape(["batch", "sequence", 2 * _HALF]), type=ir.TensorType(ir.DataType.FLOAT))
    positions = ir.Value(
        name="position_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64)
    )
    graph = ir.Graph([x, positions], [], nodes=[], opset_imports={"": 17, MS_DOMAIN: 1}, name="rotary")
    angles = np.arange(_ROWS)[:, None] * 10000.0 ** (-np.arange(_HALF) / _HALF)[None, :]
    cos = add_initializer(graph, "rotary_cos_cache", np.cos(angles).astype(np.float32))
    sin = add_initializer(graph, "rotary_sin_cache", np.sin(angles).astype(np.float32))
    node = ir.node("RotaryEmbedding", [x, positions, cos, sin], {"num_heads": 1}, domain=MS_DOMAIN)
    graph.append(node)
    out = node.outputs[0]
    out.name, out.dtype, out.shape = "y", ir.DataType.FLOAT, ir.Shape(["batch", "sequence", 2 * _HALF])
    graph.outputs.append(out)
    ir.save(ir.Model(graph, ir_version=8), path)


class _Mutant(ir.passes.InPlacePass):
    def __init__(self, context) -> None:
        super().__init__()

    def call(self, model):
        self.mutate(model)
        return ir.passes.PassResult(model, True)


class _RotaryRows(_Mutant):
    """The rotary caches' ``rows`` read one row late (a cache built from positions counted off by one there)."""

    rows = slice(None)

    def mutate(self, model):
        nodes = [node for node in model.graph if node.op_type == "RotaryEmbedding"]
        assert nodes
        for index in (2, 3):
            value = nodes[0].inputs[index]
            table = constant_array(value).copy()
            rows = np.arange(len(table))[self.rows]
            table[rows] = table[rows - 1]
            value.const_value = ir.tensor(table, name=value.name)


class _LastRow(_RotaryRows):
    """The rotary caches' last row (position 4,095) read one row late."""

    rows = slice(-1, None)


class _PastOneThousand(_RotaryRows):
    """The rotary caches' rows past 1,024 read one row late."""

    rows = slice(1024, None)


class _WindowOf1024(_Mutant):
    """Every ``GroupQueryAttention`` given a sliding window of 1,024 tokens the model does not have."""

    def mutate(self, model):
        nodes = [node for node in model.graph if node.op_type == "GroupQueryAttention"]
        assert nodes
        for node in nodes:
            node.attributes["local_window_size"] = ir.AttrInt64("local_window_size", 1024)


class _ScaledAtLengths(_Mutant):
    """The first attention's (or rotary's) input scaled by 1.1 where an input's length is in ``lengths`` (a branch the
    rewrite wrote: ``Equal(Shape(x)[1], n)``, or ``low <= Shape(x)[1] < high`` for a pair)."""

    op_type, source, lengths = "RotaryEmbedding", "x", (2,)

    def mutate(self, model):
        node = next(node for node in model.graph if node.op_type == self.op_type)
        source = next(value for value in model.graph.inputs if value.name == self.source)

        def constant(name, array):
            return add_initializer(model.graph, f"mutant.{name}", np.asarray(array))

        new = [ir.node("Shape", [source], {"start": 1, "end": 2})]
        length = new[-1].outputs[0]
        if len(self.lengths) == 1:
            new.append(ir.node("Equal", [length, constant("length", [self.lengths[0]])]))
        else:
            new.append(ir.node("GreaterOrEqual", [length, constant("low", [self.lengths[0]])]))
            new.append(ir.node("Less", [length, constant("high", [self.lengths[1]])]))
            new.append(ir.node("And", [new[-2].outputs[0], new[-1].outputs[0]]))
        new.append(ir.node("Cast", [new[-1].outputs[0]], {"to": ir.DataType.FLOAT}))
        new.append(ir.node("Mul", [new[-1].outputs[0], constant("tenth", np.float32(0.1))]))
        new.append(ir.node("Add", [new[-1].outputs[0], constant("one", np.float32(1.0))]))
        new.append(ir.node("Mul", [node.inputs[0], new[-1].outputs[0]]))
        model.graph.insert_before(node, new)
        node.replace_input_with(0, new[-1].outputs[0])


class _ScaledAtTwoTokens(_ScaledAtLengths):
    """The rotary's input scaled where the sequence is 2 long."""


class _ScaledAtTwoOrThreeNewTokens(_ScaledAtLengths):
    """Each attention's query scaled where a decoder is fed 2 or 3 new tokens (a short speculative draft)."""

    op_type, source, lengths = "GroupQueryAttention", "input_ids", (2, 4)


class _ScaledAtContext64(_ScaledAtLengths):
    """Each attention's query scaled where the decoder's mask is 64 long (a context of 64)."""

    op_type, source, lengths = "GroupQueryAttention", "attention_mask", (64,)


def _verdict(path, mutant, tmp_path, passes=()):
    spec = PassSpec("mutant", mutant, mutant.__doc__.splitlines()[0])

    def resolve_with_mutant(names, options):
        return [*registry.resolve(names, options), spec]

    with mock.patch.object(api, "resolve", resolve_with_mutant):
        _, report = api.optimize_with_report(path, list(passes), output=tmp_path / "mutated.onnx")
    return report.passes[-1]


@pytest.fixture(scope="module")
def rotary(tmp_path_factory):
    path = tmp_path_factory.mktemp("dmut") / "rotary.onnx"
    _rotary(path)
    return path


@pytest.mark.parametrize("mutant", [_LastRow, _PastOneThousand], ids=["last-row", "rows-past-1024"])
def test_a_rotary_cache_wrong_only_past_the_generated_positions_is_rolled_back(rotary, tmp_path, mutant):
    record = _verdict(rotary, mutant, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "max abs error" in record.detail and "position_ids reading rows" in record.detail


def test_an_unchanged_rotary_cache_adds_no_set(rotary, tmp_path):
    class _Untouched(_Mutant):
        """A pass that rewrites the rotary caches to the same values."""

        def mutate(self, model):
            node = next(node for node in model.graph if node.op_type == "RotaryEmbedding")
            for index in (2, 3):
                value = node.inputs[index]
                value.const_value = ir.tensor(constant_array(value).copy(), name=value.name)

    record = _verdict(rotary, _Untouched, tmp_path)
    assert record.status == STATUS_APPLIED, record.detail
    assert not any("position_ids reading rows" in note for note in record.notes)


def test_a_length_only_the_rewrite_compares_is_verified_at(rotary, tmp_path):
    record = _verdict(rotary, _ScaledAtTwoTokens, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 2, a length the rewrite compares" in record.detail


@pytest.fixture(scope="module")
def llama_gqa(tmp_path_factory):
    """The Llama KV fixture with its attention fused into ``GroupQueryAttention`` (no verification: only the mutant's
    is under test)."""
    path = tmp_path_factory.mktemp("dmut") / "llama_kv_gqa.onnx"
    api.optimize(FIXTURES / "llama_kv_legacy.onnx", output=path, verify=False)
    return path


def test_a_sliding_window_longer_than_every_generated_length_is_rolled_back(llama_gqa, tmp_path):
    record = _verdict(llama_gqa, _WindowOf1024, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)


def test_a_context_length_only_the_rewrite_compares_is_verified_at(llama_gqa, tmp_path):
    record = _verdict(llama_gqa, _ScaledAtContext64, tmp_path)
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'total_sequence' at 64, a length the rewrite compares" in record.detail


def test_a_length_between_two_thresholds_the_rewrite_compares_is_verified_at(llama_gqa, tmp_path):
    record = _verdict(llama_gqa, _ScaledAtTwoOrThreeNewTokens, tmp_path)
    # A strict xfail until review s76 xfix2: each side of 2 and of 4 was held (1 and 128 new tokens), 2 and 3 never.
    assert record.status == STATUS_ROLLED_BACK, (record.status, record.detail)
    assert "'sequence' at 2, a length the rewrite compares" in record.detail
