"""A tiny causal LM with a key/value cache (one layer, one head), written with onnx.helper, and 'after' variants
that are wrong only where some measurement looks: at one-token decode steps, at the prefill (scaled logits), or
on padded rows (the mask ignored). Built for the compare review of 2026-12-05."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as h

VOCAB, WIDTH, POSITIONS = 64, 16, 512


def build(path: Path, *, ignore_mask: bool = False, decode_bias: bool = False, prefill_scale: float = 1.0) -> Path:
    """Write the model to ``path``: ``ignore_mask`` attends to pads too; ``decode_bias`` adds a vector to the
    logits of a one-token step; ``prefill_scale`` multiplies the logits when the cache is empty."""
    rng = np.random.default_rng(0)
    constants = {
        "E": rng.standard_normal((VOCAB, WIDTH)),
        "PE": rng.standard_normal((POSITIONS, WIDTH)) * 0.5,
        "Wq": rng.standard_normal((WIDTH, WIDTH)) / 4,
        "Wk": rng.standard_normal((WIDTH, WIDTH)) / 4,
        "Wv": rng.standard_normal((WIDTH, WIDTH)) / 4,
        "Wo": rng.standard_normal((WIDTH, VOCAB)),
        "scale": np.array(1 / np.sqrt(WIDTH)),
        "f0": np.array(0.0),
        "fneg": np.array(-1e9),
        "bias_vector": rng.standard_normal((VOCAB,)) * 3,
        "extra_scale": np.array(prefill_scale - 1.0),
        "onef": np.array(1.0),
    }
    arrays = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in constants.items()]
    for name, value in {"one1": [1], "two1": [2], "zero1": [0]}.items():
        arrays.append(numpy_helper.from_array(np.array(value, np.int64), name))
    arrays += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in {"one": 1, "zero": 0}.items()]
    n = h.make_node
    nodes = [
        n("Gather", ["E", "input_ids"], ["x"]),
        n("Gather", ["PE", "position_ids"], ["pe"]),
        n("Add", ["x", "pe"], ["xp"]),
        *(n("MatMul", ["xp", f"W{p}"], [f"{p}3"]) for p in "qkv"),
        *(n("Unsqueeze", [f"{p}3", "one1"], [p]) for p in "qkv"),
        n("Concat", ["past_key_values.0.key", "k"], ["pk"], axis=2),
        n("Concat", ["past_key_values.0.value", "v"], ["pv"], axis=2),
        n("Shape", ["pk"], ["kshape"]),
        n("Gather", ["kshape", "two1"], ["T1"]),
        n("Shape", ["input_ids"], ["ishape"]),
        n("Gather", ["ishape", "one1"], ["S1"]),
        n("Squeeze", ["T1"], ["T"]),
        n("Squeeze", ["S1"], ["S"]),
        n("Sub", ["T", "S"], ["T0"]),
        n("Range", ["T0", "T", "one"], ["qpos"]),
        n("Range", ["zero", "T", "one"], ["kpos"]),
        n("Unsqueeze", ["qpos", "one1"], ["qpos2"]),
        n("LessOrEqual", ["kpos", "qpos2"], ["causal"]),
    ]
    if ignore_mask:
        nodes += [n("Unsqueeze", ["causal", "zero1"], ["allowed3"])]
    else:
        nodes += [
            n("Cast", ["attention_mask"], ["mb"], to=TensorProto.BOOL),
            n("Unsqueeze", ["mb", "one1"], ["mb3"]),
            n("And", ["causal", "mb3"], ["allowed3"]),
        ]
    nodes += [
        n("Unsqueeze", ["allowed3", "one1"], ["allowed"]),
        n("Where", ["allowed", "f0", "fneg"], ["bias"]),
        n("Transpose", ["pk"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["sc0"]),
        n("Mul", ["sc0", "scale"], ["sc1"]),
        n("Add", ["sc1", "bias"], ["sc"]),
        n("Softmax", ["sc"], ["att"], axis=-1),
        n("MatMul", ["att", "pv"], ["o4"]),
        n("Squeeze", ["o4", "one1"], ["o"]),
        n("Add", ["o", "xp"], ["hres"]),
        n("MatMul", ["hres", "Wo"], ["lg0"]),
        # Wrong only at one-token steps: + bias_vector where S == 1.
        n("Equal", ["S", "one"], ["step"]),
        n("Cast", ["step"], ["stepf"], to=TensorProto.FLOAT),
        n("Mul", ["stepf", "bias_vector" if decode_bias else "f0"], ["step_bias"]),
        n("Add", ["lg0", "step_bias"], ["lg1"]),
        # Wrong only at the prefill: x prefill_scale where the past is empty.
        n("Equal", ["T", "S"], ["prefill"]),
        n("Cast", ["prefill"], ["prefillf"], to=TensorProto.FLOAT),
        n("Mul", ["prefillf", "extra_scale"], ["extra"]),
        n("Add", ["extra", "onef"], ["factor"]),
        n("Mul", ["lg1", "factor"], ["logits"]),
        n("Identity", ["pk"], ["present.0.key"]),
        n("Identity", ["pv"], ["present.0.value"]),
    ]
    cache = ["batch", 1, "past_sequence", WIDTH]
    graph = h.make_graph(
        nodes,
        "tiny_lm",
        [
            h.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            h.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
            h.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "sequence"]),
            h.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
            h.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT, cache),
        ],
        [
            h.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", VOCAB]),
            h.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["batch", 1, "total_sequence", WIDTH]),
            h.make_tensor_value_info("present.0.value", TensorProto.FLOAT, ["batch", 1, "total_sequence", WIDTH]),
        ],
        arrays,
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def verifier_optimize_builds(path: Path, **options):
    """The ``Verifier`` ``optimize_with_report`` builds for the model at ``path`` (one pass, remove-identity, run
    with ``options``: ``inputs=...`` for given ones), caught as the pipeline is handed it."""
    import onnx_ir as ir
    import pytest

    import optimizer.api as api

    captured = {}
    run_pipeline = api.run_pipeline

    def spy(model, specs, *, context, verifier, label):
        captured["verifier"] = verifier
        return run_pipeline(model, specs, context=context, verifier=verifier, label=label)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "run_pipeline", spy)
        api.optimize_with_report(ir.load(str(path)), ["remove-identity"], **options)
    return captured["verifier"]
