"""What fusing WavLM's attention would buy on CPU: its blocks written by hand as fused ops, beside graphopt's result.

fuse-attention does not read torch's ``F.multi_head_attention_forward`` layout (README, *Attention, in two stages*), so
WavLM's attention stays ``MatMul``/``Softmax``/``MatMul``. This script writes the two models a fusion of it could
produce from graphopt's default result, to time against it with ``graphopt compare`` (docs/benchmarks.md, *WavLM*):

- ``mha``: each block as ``com.microsoft.MultiHeadAttention`` over the ``[B, S, E]`` projections, the gated position
  bias ``[B*N, S, S]`` reshaped to ``[B, N, S, S]`` as its ``attention_bias``;
- ``attention``: each block as ``com.microsoft.Attention`` on the layer norm's ``[B, S, E]`` output, Q/K/V packed.

Both are checked on ONNX Runtime against the input at two lengths. Needs torch 2.13 and transformers::

    python benchmarks/wavlm_attention.py export DIR             # DIR/wavlm_base.onnx, WavLM-base's config, random
    graphopt optimize DIR/wavlm_base.onnx -o DIR/default.onnx --dim batch=1 --dim samples=16000
    python benchmarks/wavlm_attention.py fuse DIR/default.onnx  # DIR/default_mha.onnx, DIR/default_attention.onnx
    graphopt compare DIR/default.onnx DIR/default_mha.onnx --threads 2 --dim batch=1 --dim samples=16000

The matching here follows the legacy export of graphopt's result (``Add`` of the scores and the bias, the query
scaled by a ``Mul``); it is a measurement, not a fusion: it asserts what it expects and stops otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common
import onnxruntime as ort


def _producer(value: ir.Value, op_type: str) -> ir.Node:
    node = value.producer()
    assert node is not None and node.op_type == op_type, (op_type, value.name)
    return node


def _projection(value: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray]:
    """``(x, W, b)`` of ``value = x @ W + b``."""
    add = _producer(value, "Add")
    bias = next(v for v in add.inputs if v.const_value is not None)
    matmul = _producer(next(v for v in add.inputs if v.const_value is None), "MatMul")
    return matmul.inputs[0], matmul.inputs[1].const_value.numpy(), bias.const_value.numpy()


def fuse(model: ir.Model, heads: int, packed: bool) -> int:
    """Rewrite every WavLM attention block of ``model`` into the fused op; return how many."""
    graph = model.graph

    def constant(array: np.ndarray, name: str) -> ir.Value:
        tensor = ir.tensor(np.asarray(array), name=name)
        value = ir.Value(name=name, const_value=tensor, shape=ir.Shape(tensor.shape), type=ir.TensorType(tensor.dtype))
        graph.initializers[name] = value
        return value

    count = 0
    for softmax in [node for node in graph if node.op_type == "Softmax"]:
        add = _producer(softmax.inputs[0], "Add")
        scores = next(v for v in add.inputs if v.producer() is not None and v.producer().op_type == "MatMul")
        bias = next(v for v in add.inputs if v is not scores)
        qk = scores.producer()
        mul = _producer(qk.inputs[0], "Mul")
        scale = float(next(v for v in mul.inputs if v.const_value is not None).const_value.numpy())
        query = next(v for v in mul.inputs if v.const_value is None)
        q, k = (_producer(_producer(v, "Transpose").inputs[0], "Reshape").inputs[0] for v in (query, qk.inputs[1]))
        (probs_v,) = [use.node for use in softmax.outputs[0].uses()]
        v = _producer(_producer(probs_v.inputs[1], "Transpose").inputs[0], "Reshape").inputs[0]
        (back,) = [use.node for use in probs_v.outputs[0].uses()]
        (merge,) = [use.node for use in back.outputs[0].uses()]
        assert back.op_type == "Transpose" and merge.op_type == "Reshape"
        nodes: list[ir.Node] = []
        prefix = f"wavlm{count}"

        def add_node(
            op: str, inputs: list, attributes: dict | None = None, domain: str = "", *, into=nodes, into_prefix=prefix
        ) -> ir.Value:
            node = ir.node(
                op, inputs, attributes=attributes or {}, domain=domain, name=f"{into_prefix}_{op}{len(into)}"
            )
            into.append(node)
            return node.outputs[0]

        # [B*N, S, T] -> [B, N, S, T]: rows are (b, n), as the projections' [S, B*N, d] split made them
        sizes = add_node(
            "Slice", [add_node("Shape", [bias]), constant([1], f"w{count}_s"), constant([3], f"w{count}_e")]
        )
        target = add_node("Concat", [constant([-1, heads], f"w{count}_lead"), sizes], {"axis": 0})
        bias4 = add_node("Reshape", [bias, target])
        attributes = {"num_heads": heads, "scale": scale}
        if packed:
            (x, wq, bq), (xk, wk, bk), (xv, wv, bv) = (_projection(p) for p in (q, k, v))
            assert x is xk is xv
            hidden = _producer(x, "Transpose").inputs[0]  # the layer norm's [B, S, E], transposed to [S, B, E]
            weights = constant(np.concatenate([wq, wk, wv], 1), f"w{count}_qkv")
            biases = constant(np.concatenate([bq, bk, bv]), f"w{count}_qkv_bias")
            fused = add_node("Attention", [hidden, weights, biases, None, None, bias4], attributes, "com.microsoft")
        else:
            q, k, v = (add_node("Transpose", [p], {"perm": [1, 0, 2]}) for p in (q, k, v))
            fused = add_node("MultiHeadAttention", [q, k, v, None, None, bias4], attributes, "com.microsoft")
        graph.insert_before(merge, nodes)
        merge.replace_input_with(0, add_node("Transpose", [fused], {"perm": [1, 0, 2]}))
        graph.insert_before(merge, nodes[-1:])
        count += 1
    model.opset_imports["com.microsoft"] = 1
    onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
    return count


def _check(before: Path, after: Path) -> None:
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (before, after)]
    for batch, samples in ((1, 16000), (3, 3333)):
        x = np.random.default_rng(samples).standard_normal((batch, samples)).astype(np.float32)
        a, b = (s.run(None, {"input_values": x})[0] for s in sessions)
        print(f"{after.name}: batch {batch}, {samples} samples, max |Δ| {np.abs(a - b).max():.2e}")


def main(argv: list[str]) -> None:
    if argv[0] == "export":
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.fixtures.export_wavlm_fixture import tiny_wavlm

        base = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
        base |= {"conv_dim": (512,) * 7, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16}
        base |= {"num_buckets": 320, "max_bucket_distance": 800, "feat_extract_norm": "group"}
        base |= {"do_stable_layer_norm": False, "conv_bias": False}
        out = Path(argv[1]) / "wavlm_base.onnx"
        torch.onnx.export(
            tiny_wavlm(**base), (torch.randn(1, 16000),), out, dynamo=False, opset_version=17,
            input_names=["input_values"], output_names=["last_hidden_state"],
            dynamic_axes={"input_values": {0: "batch", 1: "samples"}},
        )  # fmt: skip
        print(f"wrote {out}")
        return
    path = Path(argv[1])
    for packed, suffix in ((False, "mha"), (True, "attention")):
        model = ir.load(str(path))
        count = fuse(model, heads=int(argv[2]) if len(argv) > 2 else 12, packed=packed)
        out = path.with_name(f"{path.stem}_{suffix}.onnx")
        onnx_ir.passes.common.TopologicalSortPass()(model)
        ir.save(model, str(out))
        print(f"wrote {out}: {count} blocks")
        _check(path, out)


if __name__ == "__main__":
    main(sys.argv[1:])
