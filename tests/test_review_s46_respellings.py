"""Review (s46): metamorphic tests of the fusions on algebraically equivalent spellings that other exporters write.

Each case takes a graph the suite fuses (a fixture, or a small norm graph in the fixtures' own spelling), writes one
part of it the way another exporter or model code does, checks on ONNX Runtime that the new spelling computes the
same (``test_every_respelling_computes_the_original``), then runs ``optimize_with_report`` and requires the same fused
ops, nothing rolled back, and the original's outputs.

Findings (all missed speed-ups, nothing fused wrongly, nothing rolled back; all fixed since, by rules of
``passes._canonical_forms`` or of the fusions, so every test below now requires the fusion):

1. ``fuse-rotary-embedding`` keys on ``rotate_half`` written as two ``Slice`` nodes and a ``Neg``
   (``_RotateHalf.pattern`` / ``_PartialRotateHalf.pattern``). Every ``RotaryEmbedding`` is lost, without a refusal,
   when the halves come from one ``Split`` (``x.chunk(2, -1)``: the dynamo export's ``SplitToSequence`` +
   ``SequenceAt``, which fold-constants turns into a ``Split``; ``Split(num_outputs=2)`` as JAX/TF exports write
   ``jnp.split``/``tf.split`` at opset 18; ``Split`` with a sizes input at opset 13-17), or when the negation is
   Paddle2ONNX's ``scale(x, -1)``: ``Add(Mul(x, [-1]), [0])``.
2. ``fuse-attention`` finds Q @ K^T and probs @ V only as ``MatMul``/``FusedMatMul`` (``attention._logits``,
   ``_probs_consumer``): an ``Einsum`` (``bhqd,bhkd->bhqk``, ``bhqk,bhkd->bhqd``: ``torch.einsum`` attention, JAX/Flax,
   Keras' ``MultiHeadAttention`` through tf2onnx) leaves every attention unfused.
3. ``fuse-rms-norm`` (default) and ``fuse-layer-norm`` (opt-in; tested for the first and fourth items) key on one
   spelling of each step:
   - the mean as ``ReduceSum / D`` (JAX's ``jnp.mean`` is ``lax.div(reduce_sum, n)``; with ``keepdims`` its sum drops
     the axis and expands it back) is not matched: the patterns name ``ReduceMean``;
   - ``x / Pow(ms + eps, 0.5)`` (model code writing ``(...) ** 0.5``) is not matched: ``divide_by_root`` knows
     ``Sqrt`` and ``Pow(., -0.5)`` only;
   - a ``[1, 1, D]`` scale (Flax reshapes its ``scale`` to ``feature_shape`` before multiplying) is refused: "scale
     is not a constant vector over the last axis" (``_checks.vector_for_last_dim`` wants ``ndim == 1``);
   - the scale multiplied into the inverse root, ``x * (rsqrt(ms + eps) * gamma)`` (Flax's ``mul *= scale; y *= mul``),
     or into the numerator, ``(gamma * x) * rsqrt(ms + eps)`` (code written ``self.weight * x * rsqrt(...)``), is not
     matched: the patterns want ``(x * inv) * gamma``.

What held (same fused ops, nothing rolled back, outputs within 1e-4): on ``bert_legacy``, the eager scale
``Div(Q @ K^T, sqrt(d))`` instead of the SDPA export's ``sqrt(scale)`` on Q and K, the mask written
``Where(keep, scores, finfo.min)`` or ``Where(keep, scores, -inf)`` or ``Where(keep, scores, -1e4)`` instead of
``scores + Where(keep, 0, -inf)``, and a ``Cast(to=FLOAT)`` before each ``Softmax`` (torch's
``softmax(..., dtype=float32)``); on ``llama_legacy``, T5's RMSNorm numerator read before its fp32 ``Cast``
(``x.to(float32).pow(2).mean(...)``, ``x * rsqrt(...)``; checked once, not kept: 4 s). GELU (opt-in
``fuse-gelu``/``fuse-bias-gelu``): JAX's exact ``x * (erf(x / sqrt 2) + 1) / 2``, a no-op ``Cast`` pair around it,
the cube as ``x * (x * x)``, and BLOOM's ``x * 0.5 * (1 + tanh(0.79788456 * x * (1 + 0.044715 * x * x)))`` all fuse
alike (``test_gelu.py`` already covers these, so no test here). Not tested further: Flax's LayerNorm variance
``max(0, E[x^2] - E[x]^2)`` (also unfused, a different formula rather than a respelling); SiLU (graphopt has no SiLU
fusion, so ``HardSwish`` cannot be mistaken for it).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import make_inputs
from tests.helpers import FIXTURES, run
from tests.respelling import add_initializer as _add_initializer
from tests.respelling import clone as _clone
from tests.respelling import close as _close
from tests.respelling import constant as _constant
from tests.respelling import optimized as _optimized
from tests.respelling import producers as _producers
from tests.respelling import rotate_halves
from tests.respelling import with_nodes_before as _with_nodes_before

_N = helper.make_node
_HEAD_SIZE = 16  # llama_legacy / llama_dynamo: 4 heads of 16


# -- Rotary: rotate_half spelled with Split, or with Paddle's negation ---------------------------------------------


def _rotate_half_by_split(how: str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """rotate_half's halves taken by one split of x (``x.chunk(2, -1)``) instead of two Slices."""

    def respell(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto = _clone(proto)
        sizes = _add_initializer(proto, "s46_halves", np.array([_HEAD_SIZE // 2] * 2, np.int64))
        half = _add_initializer(proto, "s46_half", np.array(_HEAD_SIZE // 2, np.int64))
        unequal = _add_initializer(proto, "s46_unequal", np.array([_HEAD_SIZE // 2 - 2, _HEAD_SIZE // 2 + 2], np.int64))
        first = _add_initializer(proto, "s46_first", np.array(0, np.int64))
        second = _add_initializer(proto, "s46_second", np.array(1, np.int64))
        before = {}
        for index, (concat, neg, x) in enumerate([(c, n, lo.input[0]) for c, n, lo, _ in rotate_halves(proto)]):
            lo, hi = f"s46_rot{index}_lo", f"s46_rot{index}_hi"
            if how == "split_sizes":  # opset 13-17: the sizes as an input
                nodes = [_N("Split", [x, sizes], [lo, hi], axis=-1)]
            elif how == "split_unequal":  # no rotate_half: a part of 6 and one of 10 (Concat keeps the width)
                nodes = [_N("Split", [x, unequal], [lo, hi], axis=-1)]
            elif how == "split_num_outputs":  # opset 18+: jnp.split / tf.split
                nodes = [_N("Split", [x], [lo, hi], axis=-1, num_outputs=2)]
            else:  # the dynamo export of torch.chunk: aten.split as SplitToSequence + SequenceAt
                nodes = [
                    _N("SplitToSequence", [x, half], [f"s46_rot{index}_seq"], axis=-1, keepdims=1),
                    _N("SequenceAt", [f"s46_rot{index}_seq", first], [lo]),
                    _N("SequenceAt", [f"s46_rot{index}_seq", second], [hi]),
                ]
            neg.input[0], concat.input[1] = hi, lo
            before[neg.output[0]] = nodes
        assert before, "no rotate_half found"
        return _with_nodes_before(proto, before)

    return respell


def _neg_as_paddle_scale(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Each ``Neg(x)`` as Paddle2ONNX writes Paddle's ``-x``, ``scale(x, -1.0, bias=0.0)``: ``Add(Mul(x, [-1]), [0])``
    (its ``ScaleMapper`` adds the bias even when it is 0)."""
    proto = _clone(proto)
    minus_one = _add_initializer(proto, "s46_minus_one", np.array([-1.0], np.float32))
    zero = _add_initializer(proto, "s46_zero", np.array([0.0], np.float32))
    nodes = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Neg":
            scaled = f"s46_neg{index}"
            nodes += [_N("Mul", [node.input[0], minus_one], [scaled]), _N("Add", [scaled, zero], [node.output[0]])]
        else:
            nodes.append(node)
    assert len(nodes) > len(proto.graph.node), "no Neg found"
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


# -- Attention: Einsum products, and spellings of the scale, the mask and the Softmax's dtype ------------------------


def _attention_products(proto: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(Q @ K^T, probs @ V) MatMuls of each Softmax in bert_legacy's SDPA export."""
    producers = _producers(proto)
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    found = []
    for softmax in (n for n in proto.graph.node if n.op_type == "Softmax"):
        add = producers[softmax.input[0]]  # scores + Where(keep, 0, -inf)
        scores = producers[add.input[0]]
        assert add.op_type == "Add" and scores.op_type == "MatMul", (add.op_type, scores.op_type)
        guard = next(u for u in users[softmax.output[0]] if u.op_type == "Where")  # Where(IsNaN(p), 0, p)
        (probs_product,) = users[guard.output[0]]
        assert probs_product.op_type == "MatMul"
        found.append((scores, probs_product))
    assert found
    return found


def _einsum(which: str) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    def respell(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto = _clone(proto)
        producers = _producers(proto)
        for scores, probs_product in _attention_products(proto):
            if which == "qk":
                # K^T is Mul(Transpose(Reshape(k), (0, 2, 3, 1)), 0.5): transpose it to [B, N, T, d] instead, and
                # let the Einsum contract d.
                transpose = producers[producers[scores.input[1]].input[0]]
                (perm,) = [a for a in transpose.attribute if a.name == "perm"]
                assert list(perm.ints) == [0, 2, 3, 1]
                perm.ints[:] = [0, 2, 1, 3]
                scores.op_type = "Einsum"
                scores.attribute.append(helper.make_attribute("equation", "bhqd,bhkd->bhqk"))
            else:
                probs_product.op_type = "Einsum"
                probs_product.attribute.append(helper.make_attribute("equation", "bhqk,bhkd->bhqd"))
        return proto

    return respell


def _scale_on_scores(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The SDPA export's ``(Q * 0.5) @ (K^T * 0.5)`` as the eager ``(Q @ K^T) / 4``."""
    proto = _clone(proto)
    producers = _producers(proto)
    four = _add_initializer(proto, "s46_four", np.array(4.0, np.float32))
    after = {}
    for scores, _ in _attention_products(proto):
        for side in (0, 1):
            half = producers[scores.input[side]]
            assert half.op_type == "Mul" and _constant(proto, half.input[1]) == 0.5
            scores.input[side] = half.input[0]
        unscaled = scores.output[0] + "_s46_unscaled"
        after[unscaled] = _N("Div", [unscaled, four], [scores.output[0]])
        scores.output[0] = unscaled
    nodes = []
    for node in proto.graph.node:
        nodes.append(node)
        if node.output[0] in after:
            nodes.append(after[node.output[0]])
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def _where_on_scores(fill: float) -> Callable[[onnx.ModelProto], onnx.ModelProto]:
    """``scores + Where(keep, 0, -inf)`` as ``Where(keep, scores, fill)`` (masked_fill on the scores)."""

    def respell(proto: onnx.ModelProto) -> onnx.ModelProto:
        proto = _clone(proto)
        producers = _producers(proto)
        filled = _add_initializer(proto, "s46_fill", np.array([fill], np.float32))
        for softmax in (n for n in proto.graph.node if n.op_type == "Softmax"):
            add = producers[softmax.input[0]]
            mask = producers[add.input[1]]
            assert mask.op_type == "Where" and np.isneginf(_constant(proto, mask.input[2])).all()
            add.op_type = "Where"
            add.input[:] = [mask.input[0], add.input[0], filled]
        return proto

    return respell


def _cast_before_softmax(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A ``Cast(to=FLOAT)`` before each Softmax: torch's ``softmax(scores, -1, dtype=torch.float32)``."""
    proto = _clone(proto)
    before = {}
    for index, softmax in enumerate(n for n in proto.graph.node if n.op_type == "Softmax"):
        cast = f"s46_cast{index}"
        before[softmax.output[0]] = [_N("Cast", [softmax.input[0]], [cast], to=TensorProto.FLOAT)]
        softmax.input[0] = cast
    return _with_nodes_before(proto, before)


# -- Norms: small graphs, x [B, S, 16] -> MatMul -> norm -------------------------------------------------------------

_D = 16
_rng = np.random.default_rng(46)
_NORM_CONSTANTS = {
    "W": _rng.standard_normal((_D, _D)).astype(np.float32),
    "gamma": _rng.standard_normal(_D).astype(np.float32),
    "gamma_3d": None,  # filled below
    "beta": _rng.standard_normal(_D).astype(np.float32),
    "two": np.array(2.0, np.float32),
    "half": np.array(0.5, np.float32),
    "eps": np.array(1e-6, np.float32),
    "axes": np.array([-1], np.int64),
    "D": np.array(float(_D), np.float32),
}
_NORM_CONSTANTS["gamma_3d"] = _NORM_CONSTANTS["gamma"].reshape(1, 1, _D)
_NORM_DIMS = {"batch": 2, "sequence": 5}


def _norm_model(nodes: list[onnx.NodeProto]) -> onnx.ModelProto:
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(
        [_N("MatMul", ["x", "W"], ["h"]), *nodes],
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", _D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", _D])],
        [numpy_helper.from_array(v, k) for k, v in _NORM_CONSTANTS.items() if k in used | {"W"}],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _mean(x: str, out: str, how: str) -> list[onnx.NodeProto]:
    if how == "reduce_mean":
        return [_N("ReduceMean", [x, "axes"], [out])]
    if how == "reduce_sum_over_d":  # ReduceSum(keepdims=1) / D
        return [_N("ReduceSum", [x, "axes"], [out + "_sum"]), _N("Div", [out + "_sum", "D"], [out])]
    # JAX's jnp.mean(keepdims=True): reduce_sum drops the axis, expand_dims restores it, then div by the count.
    return [
        _N("ReduceSum", [x, "axes"], [out + "_sum"], keepdims=0),
        _N("Unsqueeze", [out + "_sum", "axes"], [out + "_kept"]),
        _N("Div", [out + "_kept", "D"], [out]),
    ]


def _rms(spelling: str = "reference") -> onnx.ModelProto:
    """The RMSNorm the Llama fixtures fuse, ``h / Sqrt(ReduceMean(h^2) + eps) * gamma``, or one part respelled."""
    mean = spelling if spelling in ("reduce_sum_over_d", "jax_mean") else "reduce_mean"
    nodes = [_N("Pow", ["h", "two"], ["sq"]), *_mean("sq", "ms", mean), _N("Add", ["ms", "eps"], ["v"])]
    if spelling == "root_as_pow_half":
        nodes += [_N("Pow", ["v", "half"], ["r"]), _N("Div", ["h", "r"], ["n"]), _N("Mul", ["n", "gamma"], ["y"])]
    elif spelling == "scale_3d":
        nodes += [_N("Sqrt", ["v"], ["r"]), _N("Div", ["h", "r"], ["n"]), _N("Mul", ["n", "gamma_3d"], ["y"])]
    elif spelling == "scale_in_inverse_root":
        nodes += [
            _N("Sqrt", ["v"], ["r"]),
            _N("Reciprocal", ["r"], ["inv"]),
            _N("Mul", ["inv", "gamma"], ["k"]),
            _N("Mul", ["h", "k"], ["y"]),
        ]
    elif spelling == "scale_before_normalizing":
        nodes += [
            _N("Sqrt", ["v"], ["r"]),
            _N("Reciprocal", ["r"], ["inv"]),
            _N("Mul", ["gamma", "h"], ["gh"]),
            _N("Mul", ["gh", "inv"], ["y"]),
        ]
    else:
        nodes += [_N("Sqrt", ["v"], ["r"]), _N("Div", ["h", "r"], ["n"]), _N("Mul", ["n", "gamma"], ["y"])]
    return _norm_model(nodes)


def _layer_norm(spelling: str = "reference") -> onnx.ModelProto:
    """``(h - mean) / Sqrt(var + eps) * gamma + beta`` (fuse-layer-norm's own form), or one part respelled."""
    mean = "reduce_sum_over_d" if spelling == "reduce_sum_over_d" else "reduce_mean"
    nodes = [
        *_mean("h", "mu", mean),
        _N("Sub", ["h", "mu"], ["d"]),
        _N("Pow", ["d", "two"], ["sq"]),
        *_mean("sq", "var", mean),
        _N("Add", ["var", "eps"], ["v"]),
        _N("Sqrt", ["v"], ["r"]),
    ]
    if spelling == "scale_in_inverse_root":  # Flax: mul = rsqrt(var + eps) * scale; (x - mean) * mul + bias
        nodes += [_N("Reciprocal", ["r"], ["inv"]), _N("Mul", ["inv", "gamma"], ["k"]), _N("Mul", ["d", "k"], ["n"])]
    else:
        nodes += [_N("Div", ["d", "r"], ["q"]), _N("Mul", ["q", "gamma"], ["n"])]
    return _norm_model([*nodes, _N("Add", ["n", "beta"], ["y"])])


# -- Cases ---------------------------------------------------------------------------------------------------------

_FIXTURE_CASES: dict[str, tuple[str, Callable[[onnx.ModelProto], onnx.ModelProto]]] = {
    "rotary_split_sizes": ("llama_legacy", _rotate_half_by_split("split_sizes")),
    "rotary_split_num_outputs": ("llama_dynamo", _rotate_half_by_split("split_num_outputs")),
    "rotary_split_to_sequence": ("llama_dynamo", _rotate_half_by_split("split_to_sequence")),
    "rotary_paddle_negation": ("llama_legacy", _neg_as_paddle_scale),
    "attention_einsum_qk": ("bert_legacy", _einsum("qk")),
    "attention_einsum_pv": ("bert_legacy", _einsum("pv")),
    "attention_scale_on_scores": ("bert_legacy", _scale_on_scores),
    "attention_where_finfo_min": ("bert_legacy", _where_on_scores(float(np.finfo(np.float32).min))),
    "attention_where_minus_inf": ("bert_legacy", _where_on_scores(float("-inf"))),
    # Hugging Face's pre-4.x fill, exactly at fuse-attention's threshold for a mask (attention._MASKED).
    "attention_where_minus_1e4": ("bert_legacy", _where_on_scores(-10000.0)),
    "attention_cast_before_softmax": ("bert_legacy", _cast_before_softmax),
}
_RMS_SPELLINGS = [
    "reduce_sum_over_d",
    "jax_mean",
    "root_as_pow_half",
    "scale_3d",
    "scale_in_inverse_root",
    "scale_before_normalizing",
]
_LAYER_NORM_SPELLINGS = ["reduce_sum_over_d", "scale_in_inverse_root"]


@functools.cache
def _baseline(name: str):
    """A fixture, its generated inputs and outputs, and what the default pipeline fuses in it."""
    proto = onnx.load(FIXTURES / f"{name}.onnx")
    feeds = make_inputs(ir.from_proto(proto), seed=0)
    expected = run(ir.from_proto(proto), feeds)
    fused, trouble, outputs = _optimized(proto, None, feeds)
    assert trouble == []
    _close(expected, outputs, 1e-4)
    return proto, feeds, expected, fused


def _respelled_cases():
    for case, (fixture, respell) in _FIXTURE_CASES.items():
        yield pytest.param(lambda fixture=fixture, respell=respell: _respell_fixture(fixture, respell), id=case)
    for spelling in _RMS_SPELLINGS:
        yield pytest.param(lambda s=spelling: (_rms(), _rms(s), _NORM_DIMS), id=f"rms_{spelling}")
    for spelling in _LAYER_NORM_SPELLINGS:
        yield pytest.param(lambda s=spelling: (_layer_norm(), _layer_norm(s), _NORM_DIMS), id=f"layer_norm_{spelling}")


def _respell_fixture(fixture: str, respell) -> tuple[onnx.ModelProto, onnx.ModelProto, None]:
    proto = onnx.load(FIXTURES / f"{fixture}.onnx")
    spelled = respell(proto)
    onnx.checker.check_model(spelled)
    return proto, spelled, None


@pytest.mark.parametrize("build", list(_respelled_cases()))
def test_every_respelling_computes_the_original(build):
    # Checked once here, so the fusion tests below fail for the fusion alone.
    original, spelled, dims = build()
    feeds = make_inputs(ir.from_proto(original), dims, seed=1)
    _close(run(ir.from_proto(original), feeds), run(ir.from_proto(spelled), feeds), atol=1e-5)


def _fuses_alike(case: str) -> None:
    fixture, respell = _FIXTURE_CASES[case]
    proto, feeds, expected, fused = _baseline(fixture)
    got, trouble, outputs = _optimized(respell(proto), None, feeds)
    assert (got, trouble) == (fused, [])
    _close(expected, outputs, 1e-4)


# -- 1. Rotary ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["rotary_split_sizes", "rotary_split_num_outputs", "rotary_split_to_sequence"])
def test_rotate_half_by_split_fuses_alike(case):
    """Fixed: fuse-rotary-embedding reads halves taken by one Split (rotary_embedding._RotateHalfBySplit)."""
    _fuses_alike(case)


def test_a_split_into_unequal_parts_is_no_rotate_half():
    """What the Split rule must refuse: parts of 6 and 10 of a 16-wide head (computes something, not a rotation)."""
    proto, feeds, _, _ = _baseline("llama_legacy")
    spelled = _rotate_half_by_split("split_unequal")(proto)
    expected = run(ir.from_proto(spelled), feeds)
    got, trouble, outputs = _optimized(spelled, None, feeds)
    assert "RotaryEmbedding" not in got and trouble == []
    _close(expected, outputs, 1e-4)


def test_rotate_half_negated_as_paddle_writes_fuses_alike():
    """Fixed: simplify-ops writes x * [-1] + [0] as Neg(x) (passes._canonical_forms)."""
    _fuses_alike("rotary_paddle_negation")


# -- 2. Attention --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["attention_einsum_qk", "attention_einsum_pv"])
def test_einsum_attention_fuses_alike(case):
    """Fixed: simplify-ops writes a batched-matrix-product Einsum as MatMul (passes._canonical_forms)."""
    _fuses_alike(case)


@pytest.mark.parametrize(
    "case",
    [
        "attention_scale_on_scores",
        "attention_where_finfo_min",
        "attention_where_minus_inf",
        "attention_where_minus_1e4",
        "attention_cast_before_softmax",
    ],
)
def test_eager_attention_spellings_fuse_alike(case):
    _fuses_alike(case)


# -- 3. Norms ------------------------------------------------------------------------------------------------------


def _norm_fuses_alike(original: onnx.ModelProto, spelled: onnx.ModelProto, passes) -> None:
    feeds = make_inputs(ir.from_proto(original), _NORM_DIMS, seed=0)
    expected = run(ir.from_proto(original), feeds)
    reference, trouble, outputs = _optimized(original, passes, feeds)
    assert trouble == [] and sum(reference.values()) == 1, reference
    _close(expected, outputs, 1e-4)
    got, trouble, outputs = _optimized(spelled, passes, feeds)
    assert (got, trouble) == (reference, [])
    _close(expected, outputs, 1e-4)


@pytest.mark.parametrize(
    ("build", "passes", "fused"),
    [(_rms, None, "SimplifiedLayerNormalization"), (_layer_norm, ["+fuse-layer-norm"], "LayerNormalization")],
    ids=["rms", "layer_norm"],
)
def test_the_reference_norms_fuse(build, passes, fused):
    # The xfails below compare against these: a reference that stopped fusing would hide a fix.
    feeds = make_inputs(ir.from_proto(build()), _NORM_DIMS, seed=0)
    assert _optimized(build(), passes, feeds)[:2] == ({fused: 1}, [])


@pytest.mark.parametrize("spelling", _RMS_SPELLINGS)
def test_rms_norm_respelled_fuses_alike(spelling):
    _norm_fuses_alike(_rms(), _rms(spelling), None)


@pytest.mark.parametrize("spelling", _LAYER_NORM_SPELLINGS)
def test_layer_norm_respelled_fuses_alike(spelling):
    _norm_fuses_alike(_layer_norm(), _layer_norm(spelling), ["+fuse-layer-norm"])
