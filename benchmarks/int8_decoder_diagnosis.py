"""Where int8 loses a decoder's accuracy: per-projection sensitivity, activation outliers, weights vs activations.

Reads the SmolLM2-135M KV-cache export (``benchmarks/export_smollm2.py``; default
``/work/models/smollm2/smollm2_kv_legacy.onnx``) and the first ``--rows`` rows of
``heldout_text.npz`` (teacher-forced prefill, past length 0). Every quantized variant is
*simulated* in float ONNX, the way graphopt's int8 twin writes it, on the original graph
(ORT_ENABLE_ALL, ``--threads`` threads):

* a projection's weight (a ``MatMul`` with a constant ``[K, N]`` weight) is replaced by its
  symmetric int8 values times one scale per output column, in ``[-63, 63]`` (``w7``: the
  7-bit ``reduce_range`` default) or ``[-127, 127]`` (``w8``);
* its input goes through ``DynamicQuantizeLinear`` -> ``DequantizeLinear`` (``tensor``: one
  uint8 scale and zero point for the whole activation tensor, what
  ``DynamicQuantizeMatMul`` computes) or symmetric int8 with one scale per token row
  (``row``: ``max|x_row| / 127``, what ``MatMulIntegerToFloat`` computes when given a
  ``[..., rows, 1]`` activation scale), or stays float (``float``).

Tables printed:

1. sensitivity by projection kind (q, k, v, o, gate, up, down, lm_head over all 30 layers):
   top-1 agreement with the float model and next-token perplexity, with that kind alone
   quantized, and with every kind but that one quantized (lm_head float unless named);
2. activation outliers at each projection kind's input: per tensor max|x| / 99.9th
   percentile of |x|; per channel the largest channel peak over the median channel peak;
   per token the largest row peak over the median row peak; and the uint8 levels a median
   token's values span under one per-tensor scale;
3. the whole model (all projections but lm_head) under each weight x activation scheme,
   which separates the 7-bit weights from the per-tensor activation scale;
4. the ten layers with the largest local error (relative error of the layer's own output,
   per-tensor activation scale, on 512 sampled rows).

Usage::

    python benchmarks/int8_decoder_diagnosis.py [--rows 4] [--threads 2] [--tables 1 2 3 4]
"""

from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

DEFAULT_DIR = Path("/work/models/smollm2")
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
_KIND = re.compile(r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)")


def projections(model: onnx.ModelProto) -> dict[str, tuple[str, onnx.NodeProto]]:
    """Node name -> (kind, node) for every MatMul whose weight is an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in initializers and (match := _KIND.search(node.name)):
            found[node.name] = (match.group(1), node)
    return found


def quantized_weight(weight: np.ndarray, limit: int) -> np.ndarray:
    peak = np.abs(weight).max(axis=0)
    scale = np.where(peak > 0, peak / limit, 1.0).astype(np.float32)
    return (np.clip(np.rint(weight / scale), -limit, limit) * scale).astype(np.float32)


def simulate(model: onnx.ModelProto, chosen: dict[str, str], weights: dict[str, np.ndarray]) -> bytes:
    """``model`` with each node in ``chosen`` (name -> "w7:tensor" ...) fake-quantized; serialized."""
    model = copy.deepcopy(model)
    graph = model.graph
    nodes, quantized_inputs = [], {}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))

    def reduce_max(source: str, target: str) -> onnx.NodeProto:
        # ReduceMax takes its axes as an input from opset 18 (the legacy export is opset 17).
        if opset >= 18:
            return helper.make_node("ReduceMax", [source, "diag.axes"], [target], keepdims=1)
        return helper.make_node("ReduceMax", [source], [target], axes=[-1], keepdims=1)

    for node in graph.node:
        scheme = chosen.get(node.name)
        if scheme is None:
            nodes.append(node)
            continue
        weight_bits, activation = scheme.split(":")
        if weight_bits != "float":
            limit = 63 if weight_bits == "w7" else 127
            name = f"{node.name}.simulated_weight"
            graph.initializer.append(numpy_helper.from_array(quantized_weight(weights[node.input[1]], limit), name))
            node.input[1] = name
        source = node.input[0]
        key = (source, activation)
        if activation != "float" and key not in quantized_inputs:
            out = f"{source}.{activation}_dq"
            if activation == "tensor":
                nodes.append(helper.make_node("DynamicQuantizeLinear", [source], [f"{out}.q", f"{out}.s", f"{out}.z"]))
                nodes.append(helper.make_node("DequantizeLinear", [f"{out}.q", f"{out}.s", f"{out}.z"], [out]))
            else:  # symmetric int8, one scale per row
                nodes += [
                    helper.make_node("Abs", [source], [f"{out}.abs"]),
                    reduce_max(f"{out}.abs", f"{out}.peak"),
                    helper.make_node("Div", [f"{out}.peak", "diag.127"], [f"{out}.scale0"]),
                    helper.make_node("Max", [f"{out}.scale0", "diag.tiny"], [f"{out}.scale"]),
                    helper.make_node("Div", [source, f"{out}.scale"], [f"{out}.x"]),
                    helper.make_node("Round", [f"{out}.x"], [f"{out}.r"]),
                    helper.make_node("Mul", [f"{out}.r", f"{out}.scale"], [out]),
                ]
            quantized_inputs[key] = out
        if activation != "float":
            node.input[0] = quantized_inputs[key]
        nodes.append(node)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([-1], np.int64), "diag.axes"),
            numpy_helper.from_array(np.array(127, np.float32), "diag.127"),
            numpy_helper.from_array(np.array(1e-30, np.float32), "diag.tiny"),
        ]
    )
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model.SerializeToString()


def session(model: bytes | str, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def feeds(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    batch, length = ids.shape
    result = {"input_ids": ids, "attention_mask": mask}
    for value in sess.get_inputs():
        if value.name == "position_ids":
            result["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
        elif value.name.startswith("past_key_values"):
            result[value.name] = np.zeros((batch, 3, 0, 64), np.float32)
    return result


def logits_of(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [sess.run(["logits"], feeds(sess, ids[i : i + 2], mask[i : i + 2]))[0] for i in range(0, len(ids), 2)]
    )


def scores(reference: np.ndarray, logits: np.ndarray, ids: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement with the reference's argmax, and next-token perplexity."""
    agreement = float((reference.argmax(-1) == logits.argmax(-1)).mean())
    shifted = logits[:, :-1].astype(np.float64)
    shifted -= shifted.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, ids[:, 1:, None], -1).mean()
    return agreement, float(np.exp(nll))


def outlier_table(model_path: Path, found, ids, mask, threads) -> None:
    model = onnx.load(str(model_path))
    inputs = {}
    for kind, node in found.values():
        inputs.setdefault(node.input[0], kind if kind not in ("k_proj", "v_proj", "up_proj") else None)
    inputs = {name: kind for name, kind in inputs.items() if kind}
    existing = {output.name for output in model.graph.output}
    for name in inputs:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = session(model.SerializeToString(), threads)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds(sess, ids[:2], mask[:2]))))
    table: dict[str, list[list[float]]] = {}
    for name, kind in inputs.items():
        x = np.abs(values[name].reshape(-1, values[name].shape[-1]).astype(np.float64))
        peak = x.max()
        channel_peak, row_peak = x.max(axis=0), x.max(axis=1)
        low, high = values[name].min(), values[name].max()
        step = (max(high, 0) - min(low, 0)) / 255
        table.setdefault(kind, []).append(
            [
                peak / np.percentile(x, 99.9),
                channel_peak.max() / np.median(channel_peak),
                row_peak.max() / np.median(row_peak),
                np.median(values[name].max(axis=-1) - values[name].min(axis=-1)) / step,
            ]
        )
    print("\n## Activation outliers at each projection's input (2 held-out rows; median over layers [worst layer])")
    print(
        "| input of | max / p99.9 (tensor) | top channel / median channel | top token / median token | "
        "uint8 levels a median token spans (per-tensor scale) [fewest] |"
    )
    print("|---|---|---|---|---|")
    names = {"q_proj": "q/k/v", "o_proj": "o", "gate_proj": "gate/up", "down_proj": "down", "lm_head": "lm_head"}
    for kind, rows in table.items():
        rows = np.array(rows)
        worst = [c.max() for c in rows.T[:3]] + [rows.T[3].min()]
        cells = [f"{np.median(c):.1f} [{w:.1f}]" for c, w in zip(rows.T, worst)]
        print(f"| {names[kind]} | " + " | ".join(cells) + " |")


def local_table(model_path: Path, found, weights, ids, mask, threads) -> None:
    model = onnx.load(str(model_path))
    reads = sorted({node.input[0] for _, node in found.values()})
    for name in reads:
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = session(model.SerializeToString(), threads)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds(sess, ids[:2], mask[:2]))))
    rng = np.random.default_rng(0)
    errors = []
    for name, (kind, node) in found.items():
        if kind == "lm_head":
            continue
        x = values[node.input[0]].reshape(-1, values[node.input[0]].shape[-1]).astype(np.float64)
        x = x[rng.choice(len(x), min(512, len(x)), replace=False)]
        w = weights[node.input[1]].astype(np.float64)
        exact = x @ w
        low, high = min(x.min(), 0), max(x.max(), 0)
        scale = (high - low) / 255
        zero = np.rint(-low / scale)
        x_tensor = (np.clip(np.rint(x / scale) + zero, 0, 255) - zero) * scale
        row_scale = np.maximum(np.abs(x).max(axis=1, keepdims=True) / 127, 1e-30)
        x_row = np.rint(x / row_scale) * row_scale
        w7, w8 = quantized_weight(w, 63), quantized_weight(w, 127)
        norm = np.linalg.norm(exact)
        rel = [float(np.linalg.norm(y - exact) / norm) for y in (x_tensor @ w7, x_row @ w7, x_row @ w8, x @ w7)]
        errors.append((*rel, name))
    errors.sort(reverse=True)
    print("\n## The ten layers with the largest local int8 error (relative error of the layer's output)")
    print("| layer | w7, per-tensor act | w7, per-row act | w8, per-row act | w7, float act |")
    print("|---|---|---|---|---|")
    for tensor, row, row8, weight_only, name in errors[:10]:
        short = name.replace("/model/model/", "").replace("/MatMul", "")
        print(f"| {short} | {tensor:.4f} | {row:.4f} | {row8:.4f} | {weight_only:.4f} |")
    summary = np.array([e[:4] for e in errors])
    print(f"| median of {len(errors)} | " + " | ".join(f"{v:.4f}" for v in np.median(summary, axis=0)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--model", default="smollm2_kv_legacy.onnx")
    parser.add_argument("--rows", type=int, default=4, help="held-out rows (128 tokens each) to score on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tables", nargs="*", type=int, default=[1, 2, 3, 4])
    args = parser.parse_args()

    path = args.models_dir / args.model
    text = np.load(args.models_dir / "heldout_text.npz")
    ids, mask = text["input_ids"][: args.rows], text["attention_mask"][: args.rows]
    model = onnx.load(str(path))
    found = projections(model)
    weights = {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name in {node.input[1] for _, node in found.values()}
    }
    started = time.time()
    reference = logits_of(session(str(path), args.threads), ids, mask)
    float_ppl = scores(reference, reference, ids)[1]
    print(
        f"{path.name}: {len(found)} projections; {len(ids)} held-out rows x {ids.shape[1]} tokens; "
        f"float perplexity {float_ppl:.3f}"
    )

    def evaluate(chosen: dict[str, str]) -> tuple[float, float]:
        return scores(reference, logits_of(session(simulate(model, chosen, weights), args.threads), ids, mask), ids)

    def pick(kinds, scheme):
        return {name: scheme for name, (kind, _) in found.items() if kind in kinds}

    body = [kind for kind in KINDS if kind != "lm_head"]
    if 1 in args.tables:
        print("\n## Sensitivity by projection kind (w7 weights, per-tensor dynamic activations)")
        print("| kind | alone: top-1 | alone: ppl | all but it: top-1 | all but it: ppl |")
        print("|---|---|---|---|---|")
        for kind in KINDS:
            alone = evaluate(pick([kind], "w7:tensor"))
            others = evaluate(pick([k for k in body if k != kind], "w7:tensor")) if kind != "lm_head" else (None, None)
            rest = f"{others[0]:.3f} | {others[1]:.2f}" if others[0] is not None else "— | —"
            print(f"| {kind} | {alone[0]:.3f} | {alone[1]:.2f} | {rest} |", flush=True)
    if 2 in args.tables:
        outlier_table(path, found, ids, mask, args.threads)
    if 3 in args.tables:
        print("\n## Every projection but lm_head: weight bits x activation scale")
        print("| weights | activations | top-1 | ppl |")
        print("|---|---|---|---|")
        schemes = [
            ("w7", "tensor"),
            ("w8", "tensor"),
            ("w7", "row"),
            ("w8", "row"),
            ("w7", "float"),
            ("w8", "float"),
            ("float", "tensor"),
            ("float", "row"),
        ]
        for weight_bits, activation in schemes:
            top1, ppl = evaluate(pick(body, f"{weight_bits}:{activation}"))
            print(f"| {weight_bits} | {activation} | {top1:.3f} | {ppl:.2f} |", flush=True)
        for label, kinds in (("down_proj per-row, rest per-tensor", ["down_proj"]),):
            chosen = pick([k for k in body if k not in kinds], "w7:tensor") | pick(kinds, "w7:row")
            top1, ppl = evaluate(chosen)
            print(f"| w7 | {label} | {top1:.3f} | {ppl:.2f} |", flush=True)
        top1, ppl = evaluate(pick(KINDS, "w8:row"))
        print(f"| w8 | row, lm_head too | {top1:.3f} | {ppl:.2f} |", flush=True)
    if 4 in args.tables:
        local_table(path, found, weights, ids, mask, args.threads)
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
