"""Whether GroupQueryAttention can apply the rotary itself (``do_rotary=1``) where graphopt fuses a separate one.

Issue 14 asks for decoder attention fused into GroupQueryAttention "with rotary applied inside with cos/sin
caches", as ONNX Runtime GenAI's model builder writes it. graphopt keeps ``RotaryEmbedding`` separate; this
script shows why, on ONNX Runtime's CPU kernel, against numpy (random query/key/value, a past of 4 tokens,
2 query heads per key/value head of 16, a batch of 2 whose second row is left-padded by 2)::

    python benchmarks/gqa_rotary_inside.py

1. one new token per row, positions from the cache's length (no ``position_ids`` input): the padded row's
   rotary is at the wrong positions (Hugging Face counts positions as ``cumsum(mask) - 1``);
2. the same with the graph's ``position_ids`` fed to the op: exact;
3. three new tokens per row over the past (a chunk, as speculative decoding or chunked prefill feed): the
   kernel refuses it at batch 2 ("batch_size must be 1 when sequence_length > 1 and past context is
   given"), where the export and graphopt's GroupQueryAttention with a separate rotary run it.

So the rotary inside would narrow the inputs a fused model accepts; it is not done.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

BATCH, PAST, HEADS, KV_HEADS, SIZE, POSITIONS = 2, 4, 4, 2, 16, 32


def _model(new: int, with_positions: bool):
    names = ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total", "cos", "sin"]
    names += ["positions" if with_positions else "", "bias"]
    node = helper.make_node(
        "GroupQueryAttention", names, ["out", "present_k", "present_v"], domain="com.microsoft",
        num_heads=HEADS, kv_num_heads=KV_HEADS, do_rotary=1, rotary_interleaved=0,
    )  # fmt: skip
    shapes = {
        "q": [BATCH, new, HEADS * SIZE], "k": [BATCH, new, KV_HEADS * SIZE], "v": [BATCH, new, KV_HEADS * SIZE],
        "past_k": [BATCH, KV_HEADS, PAST, SIZE], "past_v": [BATCH, KV_HEADS, PAST, SIZE], "seqlens_k": [BATCH],
        "total": [], "cos": [POSITIONS, SIZE // 2], "sin": [POSITIONS, SIZE // 2], "bias": [BATCH, 1, new, PAST + new],
    }  # fmt: skip
    types = {"seqlens_k": TensorProto.INT32, "total": TensorProto.INT32}
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), s) for n, s in shapes.items()]
    if with_positions:
        inputs.append(helper.make_tensor_value_info("positions", TensorProto.INT64, [BATCH, new]))
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in node.output]
    graph = helper.make_graph([node], "gqa", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _rotated(x: np.ndarray, positions: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    c, s = cos[positions][:, :, None], sin[positions][:, :, None]
    low, high = x[..., : SIZE // 2], x[..., SIZE // 2 :]
    return np.concatenate([low * c - high * s, high * c + low * s], -1)


def case(new: int, with_positions: bool) -> str:
    """One run against numpy: the largest difference per row, or ONNX Runtime's refusal."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((BATCH, new, HEADS * SIZE), np.float32)
    k = rng.standard_normal((BATCH, new, KV_HEADS * SIZE), np.float32)
    v = rng.standard_normal((BATCH, new, KV_HEADS * SIZE), np.float32)
    past_k = rng.standard_normal((BATCH, KV_HEADS, PAST, SIZE), np.float32)
    past_v = rng.standard_normal((BATCH, KV_HEADS, PAST, SIZE), np.float32)
    angles = np.arange(POSITIONS)[:, None] / 10000 ** (np.arange(0, SIZE, 2) / SIZE)[None]
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    mask = np.ones((BATCH, PAST + new))
    mask[1, :2] = 0
    positions = (np.cumsum(mask, 1) - 1)[:, -new:].astype(np.int64)
    allowed = np.tril(np.ones((new, PAST + new)), k=PAST)[None] * mask[:, None, :]
    bias = np.where(allowed > 0, 0, -1e9).astype(np.float32)[:, None]
    query = _rotated(q.reshape(BATCH, new, HEADS, SIZE), positions, cos, sin).transpose(0, 2, 1, 3)
    key = _rotated(k.reshape(BATCH, new, KV_HEADS, SIZE), positions, cos, sin).transpose(0, 2, 1, 3)
    keys = np.repeat(np.concatenate([past_k, key], 2), HEADS // KV_HEADS, 1)
    values = np.repeat(
        np.concatenate([past_v, v.reshape(BATCH, new, KV_HEADS, SIZE).transpose(0, 2, 1, 3)], 2), HEADS // KV_HEADS, 1
    )
    scores = query @ keys.transpose(0, 1, 3, 2) / np.sqrt(SIZE) + bias
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ values).transpose(0, 2, 1, 3).reshape(BATCH, new, HEADS * SIZE)
    feed = {"q": q, "k": k, "v": v, "past_k": past_k, "past_v": past_v, "cos": cos, "sin": sin, "bias": bias}
    feed |= {"seqlens_k": np.full(BATCH, PAST + new - 1, np.int32), "total": np.array(PAST + new, np.int32)}
    if with_positions:
        feed["positions"] = positions
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(_model(new, with_positions).SerializeToString(), options, ["CPUExecutionProvider"])
    try:
        out = session.run(None, feed)[0]
    except Exception as error:  # noqa: BLE001 - the refusal is the result
        return f"refused: {str(error).split('Status Message: ')[-1][:100]}"
    return " / ".join(f"row {row}: {np.abs(out[row] - expected[row]).max():.1e}" for row in range(BATCH))


def main() -> None:
    print(f"onnxruntime {ort.__version__}")
    print("1 new token, positions from the cache length:", case(1, False))
    print("1 new token, position_ids fed:               ", case(1, True))
    print("3 new tokens over the past, position_ids fed: ", case(3, True))


if __name__ == "__main__":
    main()
