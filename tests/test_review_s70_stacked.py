"""ONNX Runtime's own GPT-2 export (``onnxruntime/transformers/models/gpt2``, ``convert_to_onnx`` /
``gpt2_helper.export_onnx``) as a causal LM: inputs ``input_ids``, ``position_ids``, ``attention_mask`` ``[batch,
past + new]`` (int32 by default, float32 or int64 as asked) and a stacked cache ``past_{i}`` ``[2, batch, heads, past,
head size]`` (key and value of layer ``i`` in one tensor), outputs ``logits`` and ``present_{i}`` alike.

Findings (each test failed on d11c1d5):
- ``recognise_causal_lm`` refused it ("cache input 'past_0' has rank 5"): text given as ``--inputs``/``--calibration``
  was not made prefills (the user had to write empty stacked caches and position ids by hand), ``compare --generate``
  refused the model, and verification's decode steps ran over a cache of random numbers, not the model's own. Now a
  stacked cache is a cache: batch on axis 1, its length on axis 3, ``past_{i}`` paired with ``present_{i}`` by name;
  empty caches, generation (prefill and decode steps, batch 1 and left-padded batches) and the benchmark drive it.
- Verification's short chunk at 3 rows repeated every cache along axis 0, the stack of a stacked one (``[2, 1, ...]``
  became ``[3, 1, ...]``, which ONNX Runtime refused): the set at 3 rows was silently left out.
- The positions a mask pads in a stacked present were verified and counted as any value's (only 4-D caches were
  hidden): a fused attention differing only at a padded query's key and value in the next layer's cache was rolled
  back on a tokenizer's padded text, and compare counted them in its accuracy (its float mask too: only one beside a
  4-D cache was read as padding). Compare moved a stacked present's samples to axis 0 but not its padded positions.
- Logits at a padded new token over a stacked past (a right-padded draft) were verified, where over a 4-D past they are
  not (``new_token_outputs``): a rewrite differing only there was rolled back.
- ``convert_to_onnx``'s default output (ONNX Runtime's fusions at opset 11) holds ONNX Runtime's own
  ``LayerNormalization`` in the ONNX domain, which onnx's checker refuses below opset 17: the model was refused.

The fixture is the legacy exporter's KV GPT-2 (``tests/fixtures/gpt2_kv_legacy.onnx``) given ONNX Runtime's export's
inputs and outputs: the same names, dim names, input order, stacked caches and a mask declared float32 or int32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from optimizer.compare.comparison import CompareSettings, compare
from optimizer.generation import CausalLMSession, recognise_causal_lm, with_model_cache
from optimizer.inputs import check_inputs
from tests._tiny_lm import verifier_optimize_builds

GPT2 = Path(__file__).parent / "fixtures" / "gpt2_kv_legacy.onnx"
_DIMS = {
    "batch": "batch_size",
    "sequence": "seq_len",
    "total_sequence": "total_seq_len",
    "past_sequence": "past_seq_len",
}
_LAYERS, _HEADS, _HEAD_SIZE = 2, 4, 16


def _onnx_runtime_layout(path: Path, mask_type: int = TensorProto.FLOAT) -> Path:
    """The legacy GPT-2 with ONNX Runtime's GPT-2 export's interface (``gpt2_helper.export_onnx``): ``past_{i}``
    ``[2, batch_size, heads, past_seq_len, head size]`` gathered into the key and value, their presents stacked into
    ``present_{i}``, the mask declared ``mask_type`` (cast to int64 inside), inputs in that export's order."""
    model = onnx.load(GPT2)
    graph = model.graph
    for value in (*graph.input, *graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = _DIMS.get(dim.dim_param, dim.dim_param)
    del graph.value_info[:]
    by_name = {value.name: value for value in graph.input}
    by_name["attention_mask"].type.tensor_type.elem_type = mask_type
    for node in graph.node:
        node.input[:] = ["mask_int64" if name == "attention_mask" else name for name in node.input]
    nodes = [helper.make_node("Cast", ["attention_mask"], ["mask_int64"], to=TensorProto.INT64)]
    stacked = [2, "batch_size", _HEADS, "past_seq_len", _HEAD_SIZE]
    pasts, presents = [], [value for value in graph.output if value.name == "logits"]
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "stack_axis"))
    for layer in range(_LAYERS):
        pasts.append(helper.make_tensor_value_info(f"past_{layer}", TensorProto.FLOAT, stacked))
        total = [*stacked[:3], "total_seq_len", _HEAD_SIZE]
        presents.append(helper.make_tensor_value_info(f"present_{layer}", TensorProto.FLOAT, total))
        for index, kind in enumerate(("key", "value")):
            name = f"stack_{layer}_{kind}"
            graph.initializer.append(onnx.numpy_helper.from_array(np.array(index, np.int64), name))
            nodes.append(helper.make_node("Gather", [f"past_{layer}", name], [f"past_key_values.{layer}.{kind}"]))
            graph.node.append(helper.make_node("Unsqueeze", [f"present.{layer}.{kind}", "stack_axis"], [f"{name}_1"]))
        graph.node.append(
            helper.make_node("Concat", [f"stack_{layer}_key_1", f"stack_{layer}_value_1"], [f"present_{layer}"], axis=0)
        )
    for node in reversed(nodes):
        graph.node.insert(0, node)
    inputs = [by_name[name] for name in ("input_ids", "position_ids", "attention_mask")] + pasts
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend(presents)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> Path:
    return _onnx_runtime_layout(tmp_path_factory.mktemp("ort_gpt2") / "gpt2_ort.onnx")


@pytest.fixture(scope="module")
def stacked_int32(tmp_path_factory) -> Path:
    # convert_to_onnx's default: ids, positions and mask int32.
    return _onnx_runtime_layout(tmp_path_factory.mktemp("ort_gpt2_int32") / "gpt2_ort.onnx", TensorProto.INT32)


def _reference(path: Path, ids: np.ndarray, mask: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy tokens ``[batch, 1 + steps]`` and their logits, stepped with onnxruntime directly as ONNX Runtime's
    ``gpt2_helper`` feeds the export: empty stacked pasts, position ids ``cumsum(mask) - 1`` (1 at pads), each step's
    ``present_{i}`` fed back as ``past_{i}``."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    types = {value.name: value.type for value in session.get_inputs()}
    dtypes = {"tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(float)": np.float32}
    batch = len(ids)
    cache = {f"past_{i}": np.zeros((2, batch, _HEADS, 0, _HEAD_SIZE), np.float32) for i in range(_LAYERS)}
    tokens, logits, new = [], [], ids
    for _ in range(steps + 1):
        positions = np.where(mask == 0, 1, np.cumsum(mask, axis=1) - 1)[:, -new.shape[1] :]
        feeds = {"input_ids": new, "position_ids": positions, "attention_mask": mask}
        feeds = {name: array.astype(dtypes[types[name]]) for name, array in feeds.items()}
        out, *presents = session.run(["logits"] + [f"present_{i}" for i in range(_LAYERS)], {**feeds, **cache})
        cache = {f"past_{i}": present for i, present in enumerate(presents)}
        logits.append(out[:, -1])
        tokens.append(out[:, -1].argmax(-1))
        new, mask = tokens[-1][:, None], np.concatenate([mask, np.ones((batch, 1), mask.dtype)], axis=1)
    return np.stack(tokens, axis=1), np.stack(logits, axis=1)


def _prompts(batch: int, pads: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(batch).integers(1, 256, (batch, 10))
    mask = np.ones_like(ids)
    for row, pad in enumerate(pads):
        ids[row, :pad], mask[row, :pad] = 0, 0
    return ids, mask


def _text() -> dict[str, np.ndarray]:
    ids, mask = _prompts(2, (0, 3))
    return {"input_ids": ids, "attention_mask": mask}


def test_onnx_runtimes_gpt2_export_is_a_causal_lm_with_stacked_caches(stacked):
    # Before: "cache input 'past_0' has rank 5: only [batch, heads, sequence, head size] caches ... are supported".
    lm = recognise_causal_lm(ir.load(str(stacked)))
    assert not isinstance(lm, str), lm
    assert [(p.past, p.present, p.matched_by) for p in lm.cache] == [
        (f"past_{i}", f"present_{i}", "name") for i in (0, 1)
    ]
    pair = lm.cache[0]
    assert (pair.batch_axis, pair.sequence_axis, lm.kv_heads, lm.head_size) == (1, 3, _HEADS, _HEAD_SIZE)
    assert pair.empty(3).shape == (2, 3, _HEADS, 0, _HEAD_SIZE)
    assert (lm.attention_mask, lm.position_ids, lm.mask_dtype) == ("attention_mask", "position_ids", np.float32)


def test_a_cache_of_rank_5_that_is_no_stack_is_still_refused(tmp_path):
    # Only a stack of 2 (key and value) on axis 0 is a stacked cache: [3, batch, ...] is not one.
    model = onnx.load(_onnx_runtime_layout(tmp_path / "m.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        if value.name.startswith(("past_", "present_")):
            value.type.tensor_type.shape.dim[0].dim_value = 3
    layout = recognise_causal_lm(ir.from_proto(model))
    assert isinstance(layout, str) and "'past_0' has rank 5" in layout, layout


@pytest.mark.parametrize(("batch", "pads"), [(1, (0,)), (2, (0, 4)), (2, (3, 0))])
def test_generation_over_stacked_caches_equals_a_reference_loop(stacked, batch, pads):
    session = CausalLMSession(str(stacked), recognise_causal_lm(ir.load(str(stacked))))
    session.check_cache_pairs()
    ids, mask = _prompts(batch, pads)
    run = session.greedy(ids, mask, 4, keep_logits=True)
    tokens, logits = _reference(stacked, ids, mask, 4)
    np.testing.assert_array_equal(run.tokens, tokens)
    np.testing.assert_allclose(run.logits, logits, atol=1e-5)
    # Padding is right: each padded row generates what it generates alone.
    for row, pad in enumerate(pads):
        alone, _ = _reference(stacked, ids[row : row + 1, pad:], mask[row : row + 1, pad:], 4)
        np.testing.assert_array_equal(tokens[row : row + 1], alone)


def test_text_is_fed_as_prefills_with_empty_stacked_caches(stacked_int32):
    # convert_to_onnx's default int32 inputs: a tokenizer's int64 ids and mask are cast.
    notes: list[str] = []
    arrays = check_inputs(_text(), ir.load(str(stacked_int32)), "calibration", notes)
    assert arrays["past_0"].shape == (2, 2, _HEADS, 0, _HEAD_SIZE) and arrays["past_1"].dtype == np.float32
    assert arrays["position_ids"].tolist()[1] == [1, 1, 1, 0, 1, 2, 3, 4, 5, 6]
    assert arrays["attention_mask"].dtype == np.int32


def test_optimize_verifies_stacked_decode_steps_on_the_models_own_cache_and_at_three_rows(stacked):
    verifier = verifier_optimize_builds(stacked)
    # The generated decode steps run over what the model caches (with_model_cache), not N(0, 1).
    first = verifier.input_sets[0]
    assert with_model_cache(ir.load(str(stacked)), first) is not None
    chunks = [(label, s) for label, s in zip(verifier.labels, verifier.input_sets) if "short chunk" in label]
    assert len(chunks) == 1 and chunks[0][0].endswith("at 3 rows"), verifier.labels
    assert chunks[0][1]["past_0"].shape[:2] == (2, 3) and chunks[0][1]["input_ids"].shape[0] == 3
    assert verifier.check(ir.load(str(stacked))).ok


@pytest.fixture(scope="module")
def optimized(stacked, tmp_path_factory):
    """The default pipeline on ``stacked`` verified on a tokenizer's padded text (``--inputs text.npz``)."""
    import optimizer.api as api

    folder = tmp_path_factory.mktemp("optimized")
    np.savez(folder / "text.npz", **_text())
    passes = ["fold-constants", "simplify-shapes", "fuse-attention"]  # what fusing GPT-2's attention needs
    _, report = api.optimize_with_report(str(stacked), passes, output=folder / "after.onnx", inputs=folder / "text.npz")
    return folder / "after.onnx", report


def test_optimize_with_text_fuses_the_stacked_layout_and_generates_alike(stacked, optimized):
    # Text was not made prefills (the stacked caches), and then a fused attention was rolled back for the keys and
    # values of padded queries in the stacked presents (``stacked_cache_outputs``).
    after, report = optimized
    assert report.verified
    assert any(row.status == "applied" and row.name == "fuse-attention" for row in report.passes), report.passes
    ids, mask = _prompts(2, (0, 4))
    session = CausalLMSession(str(after), recognise_causal_lm(ir.load(str(after))))
    np.testing.assert_array_equal(session.greedy(ids, mask, 4).tokens, _reference(stacked, ids, mask, 4)[0])


def test_compare_generate_drives_the_stacked_layout(stacked, optimized):
    settings = CompareSettings(
        eps=("cpu",), batches=(1, 2), threads=1, time_budget=0.2, iterations=2, warmup=0, generate=True,
        prompt_length=8, new_tokens=3,
    )  # fmt: skip
    (provider,) = compare(stacked, optimized[0], settings=settings).providers
    assert [g.batch for g in provider.generation] == [1, 2]
    assert provider.llm_accuracy.exact_match == 1.0 and provider.llm_accuracy.top1_agreement == 1.0


def _present_zeroed_at_pads(source: Path, path: Path) -> Path:
    """``source`` (the stacked layout, float mask) with ``present_1`` multiplied by the mask: zero at the positions a
    prefill pads (a padded query's key and value, which no later step reads), the same at every real one."""
    model = onnx.load(source)
    for node in model.graph.node:
        node.output[:] = ["present_1_raw" if name == "present_1" else name for name in node.output]
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 2, 4], np.int64), "axes024"))
    model.graph.node.extend(
        [
            helper.make_node("Unsqueeze", ["attention_mask", "axes024"], ["mask_5d"]),
            helper.make_node("Mul", ["present_1_raw", "mask_5d"], ["present_1"]),
        ]
    )
    onnx.save(model, path)
    return path


def test_padded_positions_of_stacked_presents_are_neither_verified_nor_counted(stacked, tmp_path):
    # Verification compared them (a fused attention was rolled back on padded text for its padded queries' keys in
    # the next layer's cache), and compare's accuracy counted them.
    after = _present_zeroed_at_pads(stacked, tmp_path / "after.onnx")
    np.savez(tmp_path / "text.npz", **_text())
    report = compare(stacked, after, settings=CompareSettings(eps=("cpu",), batches=(1,), threads=1, time_budget=0.2,
                     iterations=2, warmup=0), inputs=tmp_path / "text.npz")  # fmt: skip
    (provider,) = report.providers
    (present,) = [row for row in provider.accuracy if row.name == "present_1"]
    assert present.max_abs_error == 0, provider.accuracy_data
    verifier = verifier_optimize_builds(stacked, inputs=tmp_path / "text.npz")
    assert verifier.check(ir.load(str(after))).ok, verifier.labels


def _layer_norm_at_opset_11(path: Path) -> Path:
    """``y = LayerNormalization(x) @ w`` at opset 11, as ONNX Runtime's transformer optimizer writes it in
    ``convert_to_onnx``'s GPT-2 (its own LayerNormalization, in the ONNX domain from opset 1; ONNX's is opset 17's)."""
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
        for name, shape in (("gamma", [8]), ("beta", [8]), ("w", [8, 8]))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["normed"], axis=-1, epsilon=1e-5),
            helper.make_node("MatMul", ["normed", "w"], ["y"]),
        ],
        "ln11",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.save(model, path)
    return path


def test_onnx_runtimes_layer_norm_below_opset_17_is_loaded(tmp_path):
    # convert_to_onnx's default output (gpt2_fp32.onnx, ONNX Runtime's fusions at opset 11) was refused: "rejected by
    # onnx's checker: No Op registered for LayerNormalization with domain_version of 11".
    import optimizer.api as api

    path = _layer_norm_at_opset_11(tmp_path / "ln11.onnx")
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    _, report = api.optimize_with_report(str(path), output=tmp_path / "out.onnx")
    assert report.verified
    got = ort.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _logits_zeroed_at_padded_new_tokens(source: Path, path: Path) -> Path:
    """``source`` with its logits multiplied by the mask's last ``new`` positions: zero where a decode step's new token
    is padded (a right-padded draft), the same at every real one."""
    model = onnx.load(source)
    for node in model.graph.node:
        node.output[:] = ["logits_raw" if name == "logits" else name for name in node.output]
    for name, value in (("one", 1), ("axis0", [0]), ("end", [1 << 30]), ("axis1", [1]), ("last", [-1])):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(value, np.int64), name))
    node = helper.make_node
    model.graph.node.extend(
        [
            node("Shape", ["input_ids"], ["ids_shape"]),
            node("Gather", ["ids_shape", "one"], ["new"], axis=0),
            node("Neg", ["new"], ["minus_new"]),
            node("Unsqueeze", ["minus_new", "axis0"], ["start"]),
            node("Slice", ["attention_mask", "start", "end", "axis1"], ["tail"]),
            node("Cast", ["tail"], ["tail_float"], to=TensorProto.FLOAT),
            node("Unsqueeze", ["tail_float", "last"], ["tail_3d"]),
            node("Mul", ["logits_raw", "tail_3d"], ["logits"]),
        ]
    )
    onnx.save(model, path)
    return path


def test_logits_at_padded_new_tokens_over_a_stacked_past_are_not_verified(stacked, tmp_path):
    # As over a 4-D cache (``new_token_outputs``): the new tokens are the mask's last positions. Over a stacked past
    # they were compared, and a rewrite differing only at a padded new token was rolled back.
    after = _logits_zeroed_at_padded_new_tokens(stacked, tmp_path / "after.onnx")
    verifier = verifier_optimize_builds(stacked)
    assert verifier.check(ir.load(str(after))).ok, verifier.labels
