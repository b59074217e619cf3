"""Review s74 (hunt 8): real models from PyPI — rxnmapper's ALBERT atom mapper, g2pM's BiLSTM polyphone classifier and
natasha's slovnet NER and morphology taggers (navec's product-quantized uint8 embedding), exported by the reviewer from
the checkpoints their wheels ship (docs/benchmarks.md).

1. **One head's attention probabilities picked by a Gather had no top-1.** rxnmapper maps atoms by the argmax of each
   row of one head's attention (layer 10, head 5: ``attentions[10][:, 5]``, a ``Gather`` along the heads of the
   ``Softmax``'s ``[batch, heads, queries, keys]``). ``class_score_outputs`` read a Softmax's rows back through
   ``Identity``, ``Dropout``, a ``Reshape`` that keeps the last axis and a ``Concat`` that rolls it, not a ``Gather``:
   ``--quantize static`` reported its cosine alone and moved the argmax of 264 of 3,168 held-out rows (8 %) without a
   word, and ``--min-top1`` held nothing. A ``Gather`` along another axis than the last returns whole rows.
2. **A boolean mask applied as ``masked_fill(pad_mask, 0)`` was generated true: every word padded.** slovnet's CNN
   encoder zeroes its padded words, ``x.masked_fill(pad_mask[:, None, :], 0)`` (``Where(mask, 0, x)``) after each
   layer. ``pads_where_true`` read a ``Where`` with a -1e3 fill, not a zero, so the boolean ``pad_mask`` was no mask:
   generated all true (``make-inputs``, and verification without ``--inputs``), every position padded, the encoder's
   output zero and the logits the head's bias alone: ``--fp16`` verified (max |Δ| 1e-4) on inputs no convolution
   reached; and given real masks, every figure counted the padded words (688 positions for 514 words). Zeros where
   the mask holds and data elsewhere pad where true, as ``data * Cast(Not(mask))`` already did.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper

from optimizer.accuracy import output_drift
from optimizer.class_scores import class_score_outputs
from optimizer.inputs import make_inputs, pads_where_true
from optimizer.padding import mask_inputs

_N = helper.make_node


def _one_head(axis: int = 1, rank_known: bool = True) -> ir.Model:
    """An attention's probabilities ``softmax(scores)`` over keys, ``[batch, 2 heads, queries, keys]``, one head
    picked by ``Gather(axis)`` at index 1 (a scalar, as torch exports ``probs[:, 1]``) into ``attention``."""
    graph = helper.make_graph(
        [
            _N("Softmax", ["scores"], ["probs"], axis=-1),
            _N("Gather", ["probs", "head"], ["attention"], axis=axis),
        ],
        "one_head",
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2, "q", "k"] if rank_known else None)],
        [helper.make_tensor_value_info("attention", TensorProto.FLOAT, ["batch", "q", "k"] if rank_known else None)],
        [numpy_helper.from_array(np.array(1, np.int64), "head")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_one_head_of_attention_probabilities_holds_class_scores():
    assert class_score_outputs(_one_head()) == {"attention"}
    assert class_score_outputs(_one_head(axis=-2)) == {"attention"}
    # Near misses: a pick along the keys (the last axis) breaks every row; an axis from 0 on data of unknown rank may
    # be the last.
    assert class_score_outputs(_one_head(axis=-1)) == frozenset()
    assert class_score_outputs(_one_head(axis=3)) == frozenset()
    assert class_score_outputs(_one_head(rank_known=False)) == frozenset()


def test_the_budget_counts_the_picked_heads_top1():
    """A query whose most attended key moved is a top-1 change, not hidden in a cosine of 0.99."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((2, 6, 9)) * 0.3
    scores[..., 4] += 5.0
    before = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    after = before.copy()
    after[1, 2] = np.roll(after[1, 2], 3)  # one query of 12 maps to another atom
    batches = [{"scores": np.zeros((2, 2, 6, 9), np.float32)}]
    drift = output_drift([{"attention": before}], [{"attention": after}], batches, _one_head())
    assert drift.top1_agreement == 11 / 12


def _word_encoder(zero_where_true: bool = True) -> ir.Model:
    """slovnet's tagger in small: word ids ``[batch, words]`` → embedding → a ReLU'd projection zeroed at the words a
    boolean ``pad_mask`` marks (``Where(mask, 0, h)``, or kept there, ``Where(mask, h, 0)``, when not
    ``zero_where_true``) → ``logits``."""
    rng = np.random.default_rng(0)
    picks = ["zero", "h"] if zero_where_true else ["h", "zero"]
    graph = helper.make_graph(
        [
            _N("Gather", ["table", "word_id"], ["emb"]),
            _N("MatMul", ["emb", "w"], ["proj"]),
            _N("Relu", ["proj"], ["h"]),
            _N("Unsqueeze", ["pad_mask", "last"], ["mask3"]),
            _N("Where", ["mask3", *picks], ["kept"]),
            _N("MatMul", ["kept", "head"], ["logits"]),
        ],
        "word_encoder",
        [
            helper.make_tensor_value_info("word_id", TensorProto.INT64, ["batch", "words"]),
            helper.make_tensor_value_info("pad_mask", TensorProto.BOOL, ["batch", "words"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "words", 3])],
        [
            numpy_helper.from_array(rng.standard_normal((20, 4)).astype(np.float32), "table"),
            numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "head"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_a_mask_that_zeroes_the_padded_words_pads_where_true():
    model = _word_encoder()
    mask = next(value for value in model.graph.inputs if value.name == "pad_mask")
    assert pads_where_true(mask)
    generated = make_inputs(model, {"batch": 2, "words": 6})
    # Words read in every row; padded at most at the last row's end (as an integer mask is generated), not everywhere.
    assert (~generated["pad_mask"]).all(axis=1)[0] and generated["pad_mask"].mean() <= 0.25
    real = {"word_id": np.ones((2, 4), np.int64), "pad_mask": np.array([[0, 0, 0, 0], [0, 0, 1, 1]], bool)}
    assert mask_inputs(model, real) == ["pad_mask"]
    # Near miss: data kept where the mask holds (Hugging Face's convention, true attends) pads where false.
    kept = _word_encoder(zero_where_true=False)
    assert not pads_where_true(next(value for value in kept.graph.inputs if value.name == "pad_mask"))
