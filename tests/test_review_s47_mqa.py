"""Review (s47, f8d60b2): multi-query attention in fuse-attention, and simplify-shapes' rounds, attacked.

Under review: ``attention._key_value_inputs`` / ``_shared_heads`` / ``_kv_mismatch(shared_ok=...)`` (one key/value
head that MatMul broadcasts over the query's N heads goes into MultiHeadAttention behind ``Expand(kv, [1, N, 1, 1])``)
and ``ShapeSimplificationPass.call``'s up-to-3 rounds of prove targets -> fold static dims -> fold constants.

Findings (1, 3 and 4 fixed since: their tests pass; 2 is pre-existing, kept as a strict xfail):

1. Batch broadcasting is not checked (``_key_value_inputs``, ``_kv_mismatch``): a shared key/value
   ``[1, 1, T, d]`` (one head *and* one batch row, which MatMul broadcasts over the query's ``[B, N, S, d]``) is fused
   with ``Expand(kv, [1, N, 1, 1])``; MultiHeadAttention then refuses every run with B > 1 ("Input 'query', 'key' and
   'value' shall have same dim 0"). The default pipeline rolls the whole fuse-attention back, every other block's
   fusion with it. Before f8d60b2 the one head refused it; a ``[1, N, T, d]`` key fails the same way (pre-existing,
   same root cause). Fix: refuse (or Expand to ``[B, N, 1, 1]`` from ``Shape(query)``) when the key/value batch is
   not known to equal the query's; at least refuse a static batch of 1 against a query batch not known to be 1.
2. (pre-existing, asked in the brief) A key/value head count the graph leaves symbolic (``["B", "h", "T", d]``) is
   *assumed* to be the query's: ``_dims`` gives None and ``_kv_mismatch`` passes it, so a run with ``h = 1`` (MatMul
   broadcasting it, as the original does) makes MultiHeadAttention refuse the run. ``_dims`` itself is never 1 where
   the run's head count is not (a static 1, a literal 1 in a Reshape target, an Unsqueeze axis, an Expand keeping a
   1): the danger is the other way round. Fix: refuse an unknown key/value head count unless the query's is 1, or
   repeat it by ``Expand`` to ``[1, N, 1, 1]`` (a no-op for ``h = N``, the repetition for ``h = 1``).
3. fuse-group-query-attention does not read fuse-attention's own multi-query repetition: a cached attention with one
   key/value head (Falcon and GPT-BigCode with a cache) becomes MultiHeadAttention over ``Expand(present, [1, N, 1,
   1])``, and ``group_query_attention._cache`` refuses it as "its key/value is not a Concat of a past and new tokens
   on the sequence axis" (untrue: it is, under the Expand). A Llama with ``num_key_value_heads=1`` (``repeat_kv``)
   gets GroupQueryAttention ``kv_num_heads=1``; the same computation spelled by broadcasting does not. Fix: in
   ``_cache``, accept ``Expand(C, [1, N, 1, 1])`` of a one-head cache as the repetition (kv = 1, r = N), or have
   fuse-attention write the repetition in the ``Reshape(Expand(Unsqueeze(C, 2)))`` form the GQA pass reads.
4. simplify-shapes reports only the last round's refusals (``call``: ``for kind, reason in refused``), and a round
   whose symbolic inference fails returns none (``_constant_targets``: ``return done, refused`` with ``refused``
   empty): the targets round 1 left computed vanish from the report, which then shows the decline "symbolic shape
   inference failed" beside ``modified=True``. Fix: a round that evaluates nothing keeps the previous round's
   refusals (return None for "not evaluated" and keep the last list that was).

Also seen, not a test (needs the /tmp sweep exports): the default pipeline is a fixed point on none of the 26 sweep
models: a second run's fold-constants applies on every one (plus simplify-shapes on 18, merge-subexpressions on 6),
e.g. qwen2_dynamo loses 2 Shape + 2 Expand, falcon_legacy 6 Shape, 4 Gather, 3 Expand, 1 Concat (several named
``node_*`` / ``MultiHeadAttention_1/Shape_7``: written by later fusions, the rotary's position Expand and
fuse-attention's mask Expand, after simplify-shapes ran). The commit's "reaches its fixed point in one run" holds for
the pass alone (a second run of it changes nothing on every fixture), not for the pipeline; tests/
test_pipeline_fixed_point.py covers 5 fixtures only. Suggested: add sweep-like fixtures there, or rerun the cleanup
passes after the fusions that write shape arithmetic.

What held (plain tests below, or checked by hand): a shared key with per-head value and vice versa; masks
``[B, 1, S, T]``, ``[1, 1, S, T]``, ``[B, N, S, T]`` and ``[B, 1, 1, T]`` over a shared head (exact); one query head
(no Expand); 3-D ``[B*N, S, d]`` against a ``[B, T, d]`` key (refused); pack-qkv leaves the MHA over Expands alone;
GPT-BigCode (multi_query, eager and sdpa, both exporters), Falcon with and without a cache (both exporters, both
targets: MultiHeadAttention verified, 5 decode steps equal to 2e-7), Llama with one key/value head and a cache
(GroupQueryAttention); simplify-shapes: a second run of the pass changes nothing on every fixture, "N of M left
computed" has M = the computed targets before the pass and N = those after (no double counting across rounds), time
within 2x of f8d60b2^ (0.2-0.5 s on the largest fixtures, 25-100 fewer nodes on the legacy decoders); the 13 sweep
architectures (both exporters) keep their outputs after the default pipeline (max 2e-6 on unpadded tokens).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes.shape_simplification as shape_simplification
from optimizer.errors import RuntimeRefusedError
from passes.fusion.attention import AttentionFusion
from passes.fusion.group_query_attention import GroupQueryAttentionFusion
from passes.fusion.packed_attention import PackedAttentionFusion
from passes.shape_simplification import ShapeSimplificationPass
from tests.helpers import FIXTURES, assert_same_outputs, op_types, run
from tests.passes.fusion._attention_graphs import attention_model, model_inputs

HEADS, SIZE = 4, 8


def _repeated(value: ir.Value) -> bool:
    """Whether ``value`` is a key/value head repeated for the query's heads: ``Reshape(Expand(Unsqueeze(kv, 2)))``
    (Llama's repeat_kv form) or a plain ``Expand``."""
    node = value.producer()
    if node is not None and node.op_type == "Reshape":
        node = node.inputs[0].producer()
    return node is not None and node.op_type == "Expand"


def _sdpa(q: list, k: list, v: list, mask: list | None = None) -> ir.Model:
    """``softmax(q @ k^T * 0.5 [+ m]) @ v`` on per-head graph inputs (MatMul broadcasts what it may)."""
    nodes = [
        helper.make_node("Transpose", ["k"], ["k_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled" if mask else "logits"]),
    ]
    inputs = [("q", q), ("k", k), ("v", v)]
    if mask is not None:
        nodes.append(helper.make_node("Add", ["scaled", "m"], ["logits"]))
        inputs.append(("m", mask))
    nodes += [
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sdpa",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.5])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    ir.passes.common.ShapeInferencePass()(model)
    return model


def _feeds(**shapes) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def _fused_runs_like_the_original(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    """fuse-attention either leaves ``model`` alone or gives the outputs the original gives on ``feeds``."""
    expected = run(model, feeds)  # the original runs: MatMul broadcasts
    result = AttentionFusion()(model.clone())
    if not result.modified:
        return
    try:
        actual = run(result.model, feeds)
    except RuntimeRefusedError as error:
        raise AssertionError(f"the fused model refuses an input the original runs: {error}") from None
    np.testing.assert_allclose(actual["out"], expected["out"], rtol=1e-4, atol=1e-5)


# -- 1. batch broadcasting -------------------------------------------------------------------------------------


def test_a_key_value_shared_over_batch_and_heads_is_not_fused_into_a_failing_op():
    model = _sdpa(["B", HEADS, "S", SIZE], [1, 1, "T", SIZE], [1, 1, "T", SIZE])
    _fused_runs_like_the_original(model, _feeds(q=(2, HEADS, 5, SIZE), k=(1, 1, 6, SIZE), v=(1, 1, 6, SIZE)))


# -- 2. a head count left symbolic ---------------------------------------------------------------------------


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="pre-existing: a symbolic key/value head count is assumed to be the query's; h = 1 at run time "
    "(MatMul broadcasts it) makes MultiHeadAttention refuse",
)
def test_a_symbolic_key_value_head_count_is_not_assumed_to_be_the_querys():
    model = _sdpa(["B", HEADS, "S", SIZE], ["B", "h", "T", SIZE], ["B", "h", "T", SIZE])
    _fused_runs_like_the_original(model, _feeds(q=(2, HEADS, 5, SIZE), k=(2, 1, 6, SIZE), v=(2, 1, 6, SIZE)))


# -- what held: masks over a shared head, one side shared, one query head ------------------------------------


@pytest.mark.parametrize(
    "mask",
    [None, ["B", 1, "S", "T"], [1, 1, "S", "T"], ["B", HEADS, "S", "T"], ["B", 1, 1, "T"]],
    ids=["none", "b1st", "11st", "bnst", "b11t"],
)
def test_a_shared_head_under_any_broadcast_mask_fuses_exactly(mask):
    model = _sdpa(["B", HEADS, "S", SIZE], ["B", 1, "T", SIZE], ["B", 1, "T", SIZE], mask)
    shapes = {"q": (2, HEADS, 5, SIZE), "k": (2, 1, 6, SIZE), "v": (2, 1, 6, SIZE)}
    if mask is not None:
        shapes["m"] = tuple({"B": 2, "S": 5, "T": 6}.get(d, d) for d in mask)
    result = AttentionFusion()(model.clone())
    (mha,) = [n for n in result.model.graph if n.op_type == "MultiHeadAttention"]
    assert [_repeated(mha.inputs[i]) for i in (1, 2)] == [True, True]
    assert_same_outputs(model, result.model, _feeds(**shapes), rtol=1e-4, atol=1e-5)


def test_one_query_head_over_one_key_head_needs_no_repetition():
    model = _sdpa(["B", 1, "S", SIZE], ["B", 1, "T", SIZE], ["B", 1, "T", SIZE])
    result = AttentionFusion()(model.clone())
    assert "MultiHeadAttention" in op_types(result.model) and "Expand" not in op_types(result.model)
    assert_same_outputs(model, result.model, _feeds(q=(2, 1, 5, SIZE), k=(2, 1, 6, SIZE), v=(2, 1, 6, SIZE)))


def test_pack_qkv_leaves_a_multi_head_attention_over_repeated_heads_alone():
    model = attention_model(kv_heads=1, mask=None)
    fused = AttentionFusion()(model.clone()).model
    packed = PackedAttentionFusion()(fused.clone())
    assert not packed.modified
    assert_same_outputs(model, packed.model, model_inputs(model), rtol=1e-4, atol=1e-5)


# -- 3. one cached key/value head: GroupQueryAttention ---------------------------------------------------------


def _cached_attention(kv_heads: int) -> ir.Model:
    """One decoder attention over a key/value cache: ``present = Concat(past, new)`` with ``kv_heads`` heads, read by
    ``Q @ present^T`` (MatMul broadcasting one head over the query's), a causal + padding bias from the mask."""
    rng = np.random.default_rng(0)
    hidden = HEADS * SIZE
    arrays = {
        "embed": rng.standard_normal((50, hidden)).astype(np.float32),
        "wq": (rng.standard_normal((hidden, hidden)) * 0.3).astype(np.float32),
        "wk": (rng.standard_normal((hidden, kv_heads * SIZE)) * 0.3).astype(np.float32),
        "wv": (rng.standard_normal((hidden, kv_heads * SIZE)) * 0.3).astype(np.float32),
        "q_split": np.array([0, 0, HEADS, SIZE], np.int64),
        "kv_split": np.array([0, 0, kv_heads, SIZE], np.int64),
        "merge": np.array([0, 0, hidden], np.int64),
        "scale": np.array(SIZE**-0.5, np.float32),
        "one": np.array(1, np.int64),
        "zero": np.array(0, np.int64),
        "axis1": np.array([1], np.int64),
        "axes12": np.array([1, 2], np.int64),
        "attend": np.array(0, np.float32),
        "masked": np.array(np.finfo(np.float32).min, np.float32),
    }
    node = helper.make_node
    nodes = [
        node("Gather", ["embed", "input_ids"], ["x"], axis=0),
        node("MatMul", ["x", "wq"], ["q_proj"]),
        node("Reshape", ["q_proj", "q_split"], ["q_heads"]),
        node("Transpose", ["q_heads"], ["q"], perm=[0, 2, 1, 3]),
    ]
    for side in "kv":
        nodes += [
            node("MatMul", ["x", f"w{side}"], [f"{side}_proj"]),
            node("Reshape", [f"{side}_proj", "kv_split"], [f"{side}_heads"]),
            node("Transpose", [f"{side}_heads"], [f"{side}_new"], perm=[0, 2, 1, 3]),
            node("Concat", [f"past_{side}", f"{side}_new"], [f"present_{side}"], axis=2),
        ]
    nodes += [
        node("Shape", ["attention_mask"], ["mask_shape"]),
        node("Gather", ["mask_shape", "one"], ["total"], axis=0),
        node("Shape", ["input_ids"], ["ids_shape"]),
        node("Gather", ["ids_shape", "one"], ["new"], axis=0),
        node("Sub", ["total", "new"], ["start"]),
        node("Range", ["start", "total", "one"], ["query_positions"]),
        node("Unsqueeze", ["query_positions", "axis1"], ["query_column"]),
        node("Range", ["zero", "total", "one"], ["key_positions"]),
        node("LessOrEqual", ["key_positions", "query_column"], ["causal"]),
        node("Cast", ["attention_mask"], ["unpadded"], to=TensorProto.BOOL),
        node("Unsqueeze", ["unpadded", "axes12"], ["unpadded_4d"]),
        node("And", ["causal", "unpadded_4d"], ["allowed"]),
        node("Where", ["allowed", "attend", "masked"], ["bias"]),
        node("Transpose", ["present_k"], ["key_t"], perm=[0, 1, 3, 2]),
        node("MatMul", ["q", "key_t"], ["scores"]),
        node("Mul", ["scores", "scale"], ["scaled"]),
        node("Add", ["scaled", "bias"], ["logits"]),
        node("Softmax", ["logits"], ["probs"], axis=-1),
        node("MatMul", ["probs", "present_v"], ["context"]),
        node("Transpose", ["context"], ["per_token"], perm=[0, 2, 1, 3]),
        node("Reshape", ["per_token", "merge"], ["out"]),
    ]
    float32, cache = TensorProto.FLOAT, ["B", kv_heads, "P", SIZE]
    graph = helper.make_graph(
        nodes,
        "cached_attention",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "S"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("past_k", float32, cache),
            helper.make_tensor_value_info("past_v", float32, cache),
        ],
        [
            helper.make_tensor_value_info("out", float32, ["B", "S", hidden]),
            helper.make_tensor_value_info("present_k", float32, ["B", kv_heads, "T", SIZE]),
            helper.make_tensor_value_info("present_v", float32, ["B", kv_heads, "T", SIZE]),
        ],
        [numpy_helper.from_array(array, name) for name, array in arrays.items()],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def _decode_step(kv_heads: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    mask = np.ones((2, 7), np.int64)
    mask[1, :2] = 0  # row 1 left-padded
    past = {f"past_{s}": rng.standard_normal((2, kv_heads, 6, SIZE)).astype(np.float32) for s in "kv"}
    return {"input_ids": rng.integers(0, 50, (2, 1)), "attention_mask": mask, **past}


def _group_query_attention(kv_heads: int) -> tuple[ir.Model, ir.Model, ir.passes.PassResult]:
    model = _cached_attention(kv_heads)
    staged = AttentionFusion()(model.clone())
    assert "MultiHeadAttention" in op_types(staged.model)
    result = GroupQueryAttentionFusion()(staged.model.clone())
    return model, result.model, result


def test_a_cache_with_as_many_heads_as_the_query_becomes_group_query_attention():
    # The control for the test below: this hand-built decoder attention is one the pass fuses.
    model, after, _ = _group_query_attention(HEADS)
    assert "GroupQueryAttention" in op_types(after)
    assert_same_outputs(model, after, _decode_step(HEADS), rtol=1e-4, atol=1e-5)


def test_a_cache_with_one_head_shared_by_broadcasting_becomes_group_query_attention():
    model, after, result = _group_query_attention(1)
    assert "GroupQueryAttention" in op_types(after), result.refusals
    assert_same_outputs(model, after, _decode_step(1), rtol=1e-4, atol=1e-5)


# -- simplify-shapes' rounds -------------------------------------------------------------------------------------


def _computed_targets(model: ir.Model) -> Counter:
    return Counter(node.op_type for node in model.graph if shape_simplification._computed_target(node))


def _left_computed(refusals: list[str]) -> Counter:
    """``{"Reshape": 1}`` from ``"1 of 15 Reshape left computed: ..."`` lines."""
    counted = Counter()
    for line in refusals:
        words = line.split()
        if len(words) > 4 and words[1] == "of" and words[4] == "left":
            counted[words[3]] += int(words[0])
    return counted


def test_two_rounds_count_each_target_once_and_a_second_run_changes_nothing():
    # llama_legacy takes two rounds (the second proves what the first's folded dims let it).
    model = ir.load(FIXTURES / "llama_legacy.onnx")
    before = _computed_targets(model)
    result = ShapeSimplificationPass()(model)
    after = _computed_targets(result.model)
    assert _left_computed(result.refusals) == after
    assert all(f"of {before[kind]} {kind}" in " ".join(result.refusals) for kind in after)
    again = ShapeSimplificationPass()(result.model)
    assert not again.modified


def test_a_later_round_whose_inference_fails_keeps_what_the_first_left_computed(monkeypatch):
    real, calls = shape_simplification._symbolic_shapes, []

    def fails_after_the_first_round(model):
        calls.append(model)
        return real(model) if len(calls) == 1 else "symbolic shape inference failed (RuntimeError)"

    monkeypatch.setattr(shape_simplification, "_symbolic_shapes", fails_after_the_first_round)
    result = ShapeSimplificationPass()(ir.load(FIXTURES / "llama_legacy.onnx"))
    assert len(calls) == 2 and result.modified
    assert _left_computed(result.refusals) == _computed_targets(result.model), result.refusals
