"""Hostile review of session 68's 4-D decoder masks (``optimizer.padding.causal_masks``, ``key_masks``; the decoder
sets' ``_KeyMasks`` view), 2026-12-06.

Findings (each one's test failed on aa278ec):
- A cross-attention mask not named ``*encoder*``/``*cross*`` (``memory_mask [batch, 1, sequence, source]`` beside
  ``encoder_hidden_states [batch, source, width]``, as PyTorch's ``nn.TransformerDecoder`` names it) in a decoder with a
  cache was taken for the causal self-attention mask: the encoder's length was bound to past + new, and the mask was
  generated causal over the encoder's positions, so a rewrite imposing a causal order on the cross-attention verified.
  Such a mask (named ``*encoder*``/``*cross*`` too) was otherwise generated ones, padding nothing: a rewrite dropping
  an additive one verified (now a key padding over the encoder's positions, ``cross_masks``).
- A square 4-D mask without a cache (``key_masks``) was only ever generated a key padding the same for every query: a
  rewrite reading only its last query row (a kernel taking it as each key's padding) verified, wrong for a decoder
  exported without its cache (its mask causal) or any mask that differs by query.
- Hugging Face's extended mask ``[batch, 1, 1, sequence]`` (an encoder fed it, no cache) was generated as ones,
  padding nothing: a rewrite that dropped it verified (the square ``[batch, 1, sequence, sequence]`` one was fixed
  in aa278ec).
- A float 4-D mask an ONNX ``Attention`` op reads as its ``attn_mask`` (which the op adds to the scores; opset 23, as
  the dynamo exporter writes) was taken for 1 attends, only an ``Add`` counting as additive: generated 0/1, it masked
  nothing, and a rewrite losing every masked position (``Max(mask, 0)``) verified.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer.inputs import cache_length_dims
from optimizer.padding import causal_masks
from tests._tiny_lm import build, verifier_optimize_builds


def _cross(source, path, *, causal: bool = False, dropped: bool = False, mask: str = "memory_mask") -> str:
    """The tiny LM at ``source`` with a cross-attention over ``encoder_hidden_states [batch, source, 16]`` added to its
    attention's output, its scores plus ``mask [batch, 1, sequence, source]`` (additive); ``causal`` also masks each
    query's encoder positions past its own (counted from the encoder's end), as a rewrite might; ``dropped`` leaves
    the mask unread."""
    proto = onnx.load(str(source))
    n = helper.make_node
    for node in proto.graph.node:
        node.output[:] = ["o_self" if out == "o" else out for out in node.output]
    at = next(index for index, node in enumerate(proto.graph.node) if "o_self" in node.output) + 1
    masked = [n("Add", ["cs0", mask], ["cs"])]
    if dropped:
        masked = [n("Identity", ["cs0"], ["cs"])]
    if causal:
        masked = [
            n("Add", ["cs0", mask], ["cs1"]),
            n("Shape", ["encoder_hidden_states"], ["mshape"]),
            n("Gather", ["mshape", "one1"], ["M1"]),
            n("Squeeze", ["M1"], ["M"]),
            n("Sub", ["M", "S"], ["M0"]),
            n("Range", ["M0", "M", "one"], ["mq"]),
            n("Range", ["zero", "M", "one"], ["mk"]),
            n("Unsqueeze", ["mq", "one1"], ["mq2"]),
            n("LessOrEqual", ["mk", "mq2"], ["mcausal"]),
            n("Where", ["mcausal", "f0", "fneg"], ["mbias"]),
            n("Add", ["cs1", "mbias"], ["cs"]),
        ]
    nodes = [
        n("Unsqueeze", ["encoder_hidden_states", "one1"], ["mem4"]),
        n("Transpose", ["mem4"], ["memT"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "memT"], ["cs0"]),
        *masked,
        n("Softmax", ["cs"], ["ca"], axis=-1),
        n("MatMul", ["ca", "mem4"], ["co4"]),
        n("Squeeze", ["co4", "one1"], ["co"]),
        n("Add", ["o_self", "co"], ["o"]),
    ]
    for offset, node in enumerate(nodes):
        proto.graph.node.insert(at + offset, node)
    proto.graph.input.extend(
        [
            helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", "source", 16]),
            helper.make_tensor_value_info(mask, TensorProto.FLOAT, ["batch", 1, "sequence", "source"]),
        ]
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """``(folder, the tiny LM with a cross-attention, the verifier optimize builds for it)``."""
    folder = tmp_path_factory.mktemp("cross")
    path = _cross(build(folder / "tiny.onnx"), folder / "cross.onnx")
    return folder, path, verifier_optimize_builds(path)


def test_a_cross_attention_mask_not_named_so_is_not_taken_for_the_causal_one(cross):
    # It was: its encoder length bound to past + new, and generated causal over the encoder's positions.
    _, path, _ = cross
    model = ir.load(path)
    assert "memory_mask" not in causal_masks(model)
    assert "source" not in cache_length_dims(model)


def test_a_rewrite_making_the_cross_attention_causal_is_rolled_back(cross):
    # Every generated memory_mask was causal over the encoder's positions, so this rewrite verified.
    folder, path, verifier = cross
    candidate = _cross(folder / "tiny.onnx", folder / "causal.onnx", causal=True)
    assert not verifier.check(ir.load(candidate)).ok


@pytest.mark.parametrize("mask", ["memory_mask", "encoder_attention_mask"])
def test_a_rewrite_dropping_a_cross_attention_mask_is_rolled_back(tmp_path, mask):
    # A 4-D cross-attention mask was generated ones, padding nothing (one not named so: causal), and dropping it
    # verified.
    tiny = build(tmp_path / "tiny.onnx")
    path = _cross(tiny, tmp_path / "cross.onnx", mask=mask)
    verifier = verifier_optimize_builds(path)
    assert verifier.check(ir.load(path)).ok
    assert not verifier.check(ir.load(_cross(tiny, tmp_path / "dropped.onnx", dropped=True, mask=mask))).ok


def _square_block(path, *, last_row: bool = False, query: str | int = "sequence", dropped: bool = False) -> str:
    """One attention over token ids with an additive 4-D mask ``[batch, 1, query, sequence]`` and no cache (a
    decoder exported without its past, whose mask is causal, or an encoder fed its extended mask, Hugging Face's
    ``[batch, 1, 1, sequence]``); ``last_row`` adds the mask's last query row to every query's scores (a kernel taking
    the mask as each key's padding), ``dropped`` leaves the mask unread."""
    rng = np.random.default_rng(0)
    shapes = {"E": (64, 16), "Wq": (16, 16), "Wk": (16, 16), "Wv": (16, 16), "Wo": (16, 64)}
    arrays = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 4, k) for k, s in shapes.items()]
    for name, value in {"one1": [1], "last_s": [-1], "last_e": [2**62], "last_a": [2]}.items():
        arrays.append(numpy_helper.from_array(np.array(value, np.int64), name))
    n = helper.make_node
    read = [n("Add", ["s0", "attention_mask"], ["s"])]
    if dropped:
        read = [n("Identity", ["s0"], ["s"])]
    elif last_row:
        read = [
            n("Slice", ["attention_mask", "last_s", "last_e", "last_a"], ["row"]),
            n("Add", ["s0", "row"], ["s"]),
        ]
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"]),
        *(n("MatMul", ["x", f"W{p}"], [f"{p}3"]) for p in "qkv"),
        *(n("Unsqueeze", [f"{p}3", "one1"], [p]) for p in "qkv"),
        n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["s0"]),
        *read,
        n("Softmax", ["s"], ["a"], axis=-1),
        n("MatMul", ["a", "v"], ["o4"]),
        n("Squeeze", ["o4", "one1"], ["o"]),
        n("MatMul", ["o", "Wo"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "square_mask",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", 1, query, "sequence"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 64])],
        arrays,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return str(path)


def test_a_square_4d_mask_is_verified_on_a_mask_that_is_no_key_padding(tmp_path):
    # Every generated [batch, 1, sequence, sequence] mask was a key padding the same for every query, so a rewrite
    # reading only its last query row verified: wrong for a decoder exported without its cache (its mask causal) or
    # any caller's mask that differs by query.
    verifier = verifier_optimize_builds(_square_block(tmp_path / "block.onnx"))
    candidate = _square_block(tmp_path / "last_row.onnx", last_row=True)
    assert not verifier.check(ir.load(candidate)).ok
    assert "its mask not a key padding" in verifier.labels[-1]


def test_an_encoders_extended_mask_one_query_row_is_padded_in_verification(tmp_path):
    # Hugging Face's extended mask [batch, 1, 1, sequence] (the square one was fixed on 2026-12-06) was generated as
    # ones, padding nothing: a rewrite that dropped it (+1 on every score, which Softmax cancels) verified.
    verifier = verifier_optimize_builds(_square_block(tmp_path / "block.onnx", query=1))
    dropped = _square_block(tmp_path / "dropped.onnx", query=1, dropped=True)
    assert not verifier.check(ir.load(dropped)).ok
    assert any("attention_mask" in label and "padded" in label for label in verifier.labels)


def _attention_lm(path, *, clipped: bool = False) -> str:
    """A one-layer decoder whose ONNX ``Attention`` (opset 23) reads a float 4-D ``attention_mask [batch, 1, sequence,
    total_sequence]`` as its ``attn_mask``, which the op adds to the scores, and appends to its cache itself;
    ``clipped`` feeds it ``Max(mask, 0)`` (a rewrite that loses the mask's negative part: every padded and later
    position attended)."""
    rng = np.random.default_rng(0)
    shapes = {"E": (64, 16), "Wq": (16, 16), "Wk": (16, 16), "Wv": (16, 16), "Wo": (16, 64)}
    arrays = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) / 4, k) for k, s in shapes.items()]
    arrays += [numpy_helper.from_array(np.array([1], np.int64), "one1"), numpy_helper.from_array(np.float32(0), "f0")]
    n = helper.make_node
    mask = [n("Max", ["attention_mask", "f0"], ["attn_mask"])] if clipped else []
    past = ["past_key_values.0.key", "past_key_values.0.value"]
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"]),
        *(n("MatMul", ["x", f"W{p}"], [f"{p}3"]) for p in "qkv"),
        *(n("Unsqueeze", [f"{p}3", "one1"], [p]) for p in "qkv"),
        *mask,
        n("Attention", ["q", "k", "v", "attn_mask" if clipped else "attention_mask", *past], ["y", *_PRESENT]),
        n("Squeeze", ["y", "one1"], ["o"]),
        n("Add", ["o", "x"], ["h"]),
        n("MatMul", ["h", "Wo"], ["logits"]),
    ]
    cache, total = ["batch", 1, "past_sequence", 16], ["batch", 1, "total_sequence", 16]
    graph = helper.make_graph(
        nodes,
        "attention_lm",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info(
                "attention_mask", TensorProto.FLOAT, ["batch", 1, "sequence", "total_sequence"]
            ),
            *(helper.make_tensor_value_info(name, TensorProto.FLOAT, cache) for name in past),
        ],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 64]),
            *(helper.make_tensor_value_info(name, TensorProto.FLOAT, total) for name in _PRESENT),
        ],
        arrays,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return str(path)


_PRESENT = ("present.0.key", "present.0.value")


def test_a_float_mask_an_attention_op_reads_is_additive(tmp_path):
    # ONNX Attention adds a float attn_mask to the scores, but only an Add was read so: the mask was taken as 1
    # attends and generated 0/1, which masks nothing there, so a rewrite losing every masked position verified.
    path = _attention_lm(tmp_path / "lm.onnx")
    assert causal_masks(ir.load(path)) == {"attention_mask": "additive"}
    verifier = verifier_optimize_builds(path)
    assert not verifier.check(ir.load(_attention_lm(tmp_path / "clipped.onnx", clipped=True))).ok


@pytest.mark.xfail(
    strict=True,
    reason="a decoder's 4-D mask whose query dim is named otherwise than input_ids' sequence dim ([batch, 1, query, "
    "total_sequence] beside input_ids [batch, sequence]) is taken as causal (causal_masks) but its length is not bound "
    "to past + new (cache_length_dims wants the ids' dim there): refused on generated inputs (ONNX Runtime's broadcast "
    "error; --inputs needed), where binding the mask's query dim to the ids' would verify it",
)
def test_a_4d_mask_with_its_own_query_dim_name_is_verified_on_generated_inputs(tmp_path):
    from tests.test_review_s68_mask4d import _edited

    path = _edited(build(tmp_path / "tiny.onnx"), tmp_path / "mask4d.onnx", "additive")
    proto = onnx.load(path)
    (mask,) = [value for value in proto.graph.input if value.name == "attention_mask"]
    mask.type.tensor_type.shape.dim[2].dim_param = "query"
    onnx.save(proto, path)
    verifier = verifier_optimize_builds(path)
    assert any(label.startswith("a decode step") for label in verifier.labels)
