"""Tied weights stay tied: a table that is both the embedding lookup and the LM head, or a
weight read by several layers, is quantized or pruned once and stored once in the saved file.

Exporters spell GPT-2's and Llama's tie two ways (see tests/fixtures/gpt2_kv_*.onnx): the
dynamo exporter keeps one initializer read by the ``Gather`` and by ``Transpose`` → the
head's ``MatMul``; the legacy exporter writes the head's weight as a *separate*
initializer holding the table's transpose, so its file already holds the table twice
(``share-transposed-initializers`` rewrites it into the dynamo spelling).
The models here are built in the test (GPT-2-style: LayerNorm, Gelu MLP with biases;
Llama-style: RMSNorm, SwiGLU MLP, no biases), each in both spellings, with a table of
65,536 values (the smallest the int4 pass quantizes), and the saved files are counted:
every tensor that holds the table (float, transposed, int8 or packed int4) is one copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.inputs import make_inputs
from optimizer.report import STATUS_APPLIED
from optimizer.runtime import run_model
from passes._layers import find_layers, tied_weight_reason
from tests.helpers import FIXTURES, calibration_samples, split_pipeline

VOCAB, HIDDEN, FFN, LAYERS = 1024, 64, 128, 2
BATCH, SEQUENCE = 8, 12

# mode -> optimize() options. The LM head's result is the model's output, which the
# quantizers leave float unless asked: --quantize-outputs makes the head (the tie's
# second reader) part of the test.
MODES = {
    "float": {},
    "dynamic": {"quantize": "dynamic", "quantize_outputs": True},
    "static": {"quantize": "static", "quantize_outputs": True},
    "int4": {"quantize": "int4", "quantize_outputs": True},
    # Random weights: a quarter of the neurons cut keeps 0.72-0.90 cosine on the held-out calibration sample, under
    # the default floor; what is tested is what the file stores, so the floor is lowered.
    "prune-ffn": {"prune_ffn": 0.25, "min_cosine": 0.5},
}
PASS_OF_MODE = {"dynamic": "quantize-dynamic", "static": "quantize-static", "int4": "quantize-int4"}
PASS_OF_MODE["prune-ffn"] = "prune-ffn"

# -- models ------------------------------------------------------------------------------


def tied_lm(style: str, spelling: str, *, shared_layers: bool = False, seed: int = 0) -> ir.Model:
    """A two-layer ``style`` ("gpt2" or "llama") LM whose head reuses the embedding table.

    ``spelling`` "dynamo": the head reads ``Transpose(table)``; "legacy": a separate
    initializer holding ``table.T``. With ``shared_layers`` every layer reads the same MLP
    weights (ALBERT-style cross-layer sharing).
    """
    rng = np.random.default_rng(seed)
    tape = ir.tape.Tape()

    def weight(name: str, *shape: int, scale: float) -> ir.Value:
        array = (rng.standard_normal(shape) * scale).astype(np.float32)
        return tape.initializer(ir.tensor(array, name=name))

    def constant(name: str, array: np.ndarray) -> ir.Value:
        return tape.initializer(ir.tensor(np.asarray(array, dtype=np.float32), name=name))

    def norm(x: ir.Value, name: str) -> ir.Value:
        gamma = constant(f"{name}.weight", 1 + 0.1 * rng.standard_normal(HIDDEN))
        if style == "gpt2":
            beta = constant(f"{name}.bias", 0.1 * rng.standard_normal(HIDDEN))
            return tape.op("LayerNormalization", [x, gamma, beta], {"axis": -1, "epsilon": 1e-5})
        axes = tape.initializer(ir.tensor(np.array([-1], dtype=np.int64), name=f"{name}.axes"))
        mean_square = tape.op("ReduceMean", [tape.op("Mul", [x, x]), axes])
        root = tape.op("Sqrt", [tape.op("Add", [mean_square, constant(f"{name}.eps", 1e-6)])])
        return tape.op("Mul", [tape.op("Div", [x, root]), gamma])

    def mlp(x: ir.Value, name: str) -> ir.Value:
        if style == "gpt2":
            up = tape.op("Add", [tape.op("MatMul", [x, weights[f"{name}.fc"]]), weights[f"{name}.fc.bias"]])
            erf = tape.op("Erf", [tape.op("Div", [up, constant(f"{name}.sqrt2", np.sqrt(2.0))])])
            gelu = tape.op("Mul", [tape.op("Mul", [up, constant(f"{name}.half", 0.5)]), tape.op("Add", [erf, one])])
            return tape.op("Add", [tape.op("MatMul", [gelu, weights[f"{name}.proj"]]), weights[f"{name}.proj.bias"]])
        gate = tape.op("MatMul", [x, weights[f"{name}.gate"]])
        silu = tape.op("Mul", [gate, tape.op("Sigmoid", [gate])])
        product = tape.op("Mul", [silu, tape.op("MatMul", [x, weights[f"{name}.up"]])])
        return tape.op("MatMul", [product, weights[f"{name}.down"]])

    ids = ir.Value(name="input_ids", shape=ir.Shape(["batch", "sequence"]), type=ir.TensorType(ir.DataType.INT64))
    table = weight("embed.weight", VOCAB, HIDDEN, scale=0.5)
    one = constant("one", 1.0)
    weights: dict[str, ir.Value] = {}
    for layer in range(LAYERS):
        name = "mlp" if shared_layers else f"layers.{layer}.mlp"
        if name in weights or f"{name}.fc" in weights or f"{name}.gate" in weights:
            continue
        if style == "gpt2":
            weights[f"{name}.fc"] = weight(f"{name}.fc.weight", HIDDEN, FFN, scale=HIDDEN**-0.5)
            weights[f"{name}.fc.bias"] = weight(f"{name}.fc.bias", FFN, scale=0.1)
            weights[f"{name}.proj"] = weight(f"{name}.proj.weight", FFN, HIDDEN, scale=FFN**-0.5)
            weights[f"{name}.proj.bias"] = weight(f"{name}.proj.bias", HIDDEN, scale=0.1)
        else:
            weights[f"{name}.gate"] = weight(f"{name}.gate.weight", HIDDEN, FFN, scale=HIDDEN**-0.5)
            weights[f"{name}.up"] = weight(f"{name}.up.weight", HIDDEN, FFN, scale=HIDDEN**-0.5)
            weights[f"{name}.down"] = weight(f"{name}.down.weight", FFN, HIDDEN, scale=FFN**-0.5)
    hidden = tape.op("Gather", [table, ids])
    for layer in range(LAYERS):
        name = "mlp" if shared_layers else f"layers.{layer}.mlp"
        hidden = tape.op("Add", [hidden, mlp(norm(hidden, f"layers.{layer}.norm"), name)])
    if spelling == "dynamo":
        head = tape.op("Transpose", [table], {"perm": [1, 0]})
    else:
        head = constant("lm_head.weight", table.const_value.numpy().T.copy())
    logits = tape.op("MatMul", [norm(hidden, "norm"), head])
    logits.name = "logits"
    logits.shape = ir.Shape(["batch", "sequence", VOCAB])
    logits.type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph(
        [ids], [logits], nodes=tape.nodes, initializers=tape.initializers, opset_imports={"": 18}, name=style
    )
    return ir.Model(graph, ir_version=9)


def token_ids(seed: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, VOCAB, (BATCH, SEQUENCE), dtype=np.int64)}


# -- counting what a saved file holds ----------------------------------------------------


def stored_tensors(path: Path) -> list[np.ndarray]:
    """Every initializer and Constant tensor of the saved model, external data loaded."""
    model = onnx.load(str(path))
    arrays = []

    def visit(graph: onnx.GraphProto) -> None:
        arrays.extend(onnx.numpy_helper.to_array(t) for t in graph.initializer)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    arrays.append(onnx.numpy_helper.to_array(attribute.t))
                for subgraph in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs:
                    visit(subgraph)

    visit(model.graph)
    return arrays


def table_copies(arrays: list[np.ndarray], rows: int, width: int) -> list[np.ndarray]:
    """The tensors that hold a ``[rows, width]`` table: ``rows`` in their shape and at least a
    quarter of its values (float, transposed, int8 ``[width, rows]``, int4 ``[rows, blocks,
    block/2]``; its scales and zero points are smaller)."""
    return [a for a in arrays if rows in a.shape and a.size >= rows * width // 4]


def optimize_file(model: ir.Model, folder: Path, **options):
    """Save ``model`` under ``folder``, optimize that file through the API; the output's path and the report."""
    (folder / "in").mkdir(parents=True)
    (folder / "out").mkdir()
    ir.save(model, folder / "in" / "model.onnx")
    output = folder / "out" / "model.onnx"
    _, report = optimize_with_report(folder / "in" / "model.onnx", output=output, **options)
    return output, report


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- the built models, each run once per mode --------------------------------------------

STYLES, SPELLINGS = ("gpt2", "llama"), ("dynamo", "legacy")


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    """(style, spelling, mode) -> (original model, saved path, report), computed on demand."""
    cache: dict[tuple, tuple] = {}
    root = tmp_path_factory.mktemp("tied")

    def get(style: str, spelling: str, mode: str):
        key = (style, spelling, mode)
        if key not in cache:
            model = tied_lm(style, spelling)
            if mode == "float":  # the default pipeline, whole (its report names share-transposed-initializers)
                output, report = optimize_file(model, root / "-".join(key))
            else:
                # The mode's pipeline in two runs (the same passes in the same order, the same model): the passes
                # before its pass, verified once per model for the four modes, then its pass and those after it.
                first, rest = split_pipeline(PASS_OF_MODE[mode], **MODES[mode])
                if (style, spelling, tuple(first)) not in cache:
                    cache[style, spelling, tuple(first)] = optimize_with_report(model, first)
                fused, fused_report = cache[style, spelling, tuple(first)]
                assert not fused_report.failures(), [(r.name, r.status, r.detail) for r in fused_report.failures()]
                output, report = optimize_file(
                    fused, root / "-".join(key), passes=rest, calibration=token_ids(1), **MODES[mode]
                )
            cache[key] = (model, output, report)
        return cache[key]

    return get


def _original_copies(model: ir.Model, tmp_path: Path) -> int:
    path = tmp_path / "original.onnx"
    ir.save(model, path)
    return len(table_copies(stored_tensors(path), VOCAB, HIDDEN))


GRID = [(style, spelling, mode) for style in STYLES for spelling in SPELLINGS for mode in MODES]


@pytest.mark.parametrize(("style", "spelling", "mode"), GRID)
def test_no_pass_adds_a_copy_of_a_tied_table_and_outputs_verify(optimized, style, spelling, mode, tmp_path):
    model, output, report = optimized(style, spelling, mode)
    before = _original_copies(model, tmp_path)
    assert before == (1 if spelling == "dynamo" else 2)
    after = table_copies(stored_tensors(output), VOCAB, HIDDEN)
    assert len(after) <= before, [(a.dtype, a.shape) for a in after]
    if mode in PASS_OF_MODE:
        record = next(r for r in report.passes if r.name == PASS_OF_MODE[mode])
        assert record.status == STATUS_APPLIED, (record.status, record.detail)
    held_out = token_ids(2)
    expected = run_model(model, held_out)["logits"]
    actual = run_model(ir.load(output), held_out)["logits"]
    if mode == "float":
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    else:  # held-out tokens; the approximate passes' default floor is cosine 0.9 (random weights prune badly)
        assert cosine(actual, expected) > 0.9


@pytest.mark.parametrize(("style", "spelling", "mode"), GRID)
def test_a_tied_table_is_stored_once(optimized, style, spelling, mode):
    _, output, report = optimized(style, spelling, mode)
    copies = table_copies(stored_tensors(output), VOCAB, HIDDEN)
    assert len(copies) == 1, [(a.dtype, a.shape) for a in copies]
    if mode == "int4" and spelling == "legacy":
        # The head's packed weight is the lookup's data too.
        assert copies[0].dtype == np.uint8
        ops = {node.op_type for node in ir.load(output).graph}
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops


@pytest.mark.parametrize("style", STYLES)
def test_the_legacy_copy_becomes_a_transpose_of_the_table(optimized, style):
    model, output, report = optimized(style, "legacy", "float")
    record = next(r for r in report.passes if r.name == "share-transposed-initializers")
    assert record.status == STATUS_APPLIED, (record.status, record.detail)
    graph = ir.load(output).graph
    head = next(node for node in graph if node.outputs[0].name == "logits")
    transpose = head.inputs[1].producer()
    assert transpose.op_type == "Transpose" and transpose.inputs[0].name == "embed.weight"
    assert "lm_head.weight" not in graph.initializers


@pytest.mark.parametrize("style", STYLES)
def test_the_dynamo_spelling_of_a_tied_head_is_quantized(optimized, style):
    # The head reads Transpose(table): int4 packs it once and the lookup reads the packed weight.
    _, output, report = optimized(style, "dynamo", "int4")
    ops = {node.op_type for node in ir.load(output).graph}
    assert "MatMul" not in ops and {"MatMulNBits", "GatherBlockQuantized"} <= ops
    record = next(r for r in report.passes if r.name == "quantize-int4")
    assert any("sharing its tied LM head's packed weight" in note for note in record.notes), record.notes


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_keeps_a_tied_head_float_with_a_counted_note(optimized, style, spelling, mode):
    """int8 would store the head's weight beside the float table the lookup reads: the head stays float."""
    _, output, report = optimized(style, spelling, mode)
    graph = ir.load(output).graph
    head = next(node for node in graph if node.outputs[0].name == "logits")
    assert head.op_type == "MatMul" and head.inputs[1].producer().op_type == "Transpose"
    record = next(r for r in report.passes if r.name == PASS_OF_MODE[mode])
    assert any("(a tied table)" in reason for reason in record.refusals), record.refusals


# -- a weight read by several layers -----------------------------------------------------

SHARED_MODES = {
    "dynamic": {"quantize": "dynamic"},
    "static": {"quantize": "static"},
    "int4": {"quantize": "int4"},
    "int4-gptq": {"quantize": "int4", "int4_method": "gptq"},
    "prune-ffn": {"prune_ffn": 0.25},
    "prune-ffn-heads": {"prune_ffn": 0.25, "prune_heads": 0.25},  # the combined cut
}


@pytest.mark.parametrize("mode", list(SHARED_MODES))
def test_a_weight_read_by_several_layers_is_stored_once(mode, tmp_path):
    model = tied_lm("llama", "dynamo", shared_layers=True)
    output, report = optimize_file(model, tmp_path, calibration=token_ids(1), **SHARED_MODES[mode])
    records = [r for r in report.passes if r.name.startswith(("quantize", "prune"))]
    if mode.startswith("prune"):
        # Pruning one reader's copy would store a pruned copy beside the shared one (and the
        # combined cut ranked 90,304 -> 102,720 parameters): the FFN groups are left whole.
        refusals = [reason for r in records for reason in r.refusals]
        assert any("shared by several layers" in reason for reason in refusals), refusals
        assert all(r.status != STATUS_APPLIED for r in records if r.name != "prune-heads"), records
    else:
        assert any(r.status == STATUS_APPLIED for r in records), [(r.name, r.status, r.detail) for r in records]
    if mode == "int4-gptq":
        notes = next(r for r in records if r.name == "quantize-int4").notes
        assert any("3 shared weights fitted once by GPTQ" in note for note in notes), notes
    # gate, up and down, one tensor each ([64, 128] float or int8, [128, 2, 16] / [64, 4, 16] packed int4).
    mlp = [a for a in stored_tensors(output) if VOCAB not in a.shape and a.size >= HIDDEN * FFN // 4]
    assert len(mlp) == 3, [(a.dtype, a.shape) for a in mlp]


# -- the exporters' own tied fixtures ----------------------------------------------------

KV_VOCAB, KV_HIDDEN = 256, 64


@pytest.fixture(scope="module")
def fused_kv_fixtures() -> dict:
    """A KV fixture after the verified passes every mode below runs before its own pass, run once per fixture."""
    return {}


@pytest.mark.parametrize("name", ["gpt2_kv_dynamo", "gpt2_kv_legacy"])
@pytest.mark.parametrize("mode", ["dynamic", "static", "int4", "prune-ffn"])
def test_exported_gpt2_ties_gain_no_copy(name, mode, tmp_path, fused_kv_fixtures):
    model = ir.load(FIXTURES / f"{name}.onnx")
    before = len(table_copies(stored_tensors(FIXTURES / f"{name}.onnx"), KV_VOCAB, KV_HIDDEN))
    assert before == (1 if name.endswith("dynamo") else 2)  # the legacy export holds wte and wte.T
    options = MODES[mode]
    calibration = make_inputs(model, {"batch": 8, "sequence": 6, "past_sequence": 4}, seed=3)
    output = tmp_path / "model.onnx"
    # The mode's pipeline in two runs (the same passes in the same order): the passes before its pass, verified and
    # shared by the four modes (share-transposed-initializers among them), then its pass and the passes after it.
    first, rest = split_pipeline(PASS_OF_MODE[mode], **options)
    if (name, tuple(first)) not in fused_kv_fixtures:
        fused_kv_fixtures[name, tuple(first)] = optimize_with_report(model, first)
    fused, fused_report = fused_kv_fixtures[name, tuple(first)]
    ir.save(fused, tmp_path / "fused.onnx")
    _, report = optimize_with_report(tmp_path / "fused.onnx", rest, output=output, calibration=calibration, **options)
    failures = fused_report.failures() + report.failures()
    assert not failures, [(r.name, r.status, r.detail) for r in failures]
    after = table_copies(stored_tensors(output), KV_VOCAB, KV_HIDDEN)
    assert len(after) <= before, [(a.dtype, a.shape) for a in after]


def with_tied_head(name: str, spelling: str) -> ir.Model:
    """An exported base model with an LM head tied to its token table added as a second output.

    The KV fixtures' attention (GroupQueryAttention after fusion) is not head-pruned, so
    head pruning is tested on the encoder-style exports whose attention it prunes.
    """
    model = ir.load(FIXTURES / f"{name}.onnx")
    graph = model.graph
    table = next(v for v in graph.initializers.values() if v.name.endswith(("wte.weight", "embed_tokens.weight")))
    if spelling == "dynamo":
        transpose = ir.node("Transpose", [table], {"perm": [1, 0]}, name="lm_head_transpose")
        graph.append(transpose)
        weight = transpose.outputs[0]
    else:
        weight = ir.Value(name="lm_head.weight", const_value=ir.tensor(table.const_value.numpy().T.copy()))
        weight.shape, weight.type = ir.Shape(weight.const_value.shape), ir.TensorType(ir.DataType.FLOAT)
        graph.register_initializer(weight)
    head = ir.node("MatMul", [graph.outputs[0], weight], name="lm_head")
    graph.append(head)
    head.outputs[0].name = "logits"
    head.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
    head.outputs[0].shape = ir.Shape(["batch", "sequence", table.shape[0]])
    graph.outputs.append(head.outputs[0])
    return model


@pytest.mark.parametrize(("name", "spelling"), [("llama_dynamo", "dynamo"), ("gpt2_legacy", "legacy")])
def test_head_pruning_keeps_a_tied_table_single(name, spelling, tmp_path):
    model = with_tied_head(name, spelling)
    rows, width = model.graph.initializers[
        next(n for n in model.graph.initializers if n.endswith(("wte.weight", "embed_tokens.weight")))
    ].shape.numpy()
    ir.save(model, tmp_path / "original.onnx")
    before = len(table_copies(stored_tensors(tmp_path / "original.onnx"), rows, width))
    assert before == (1 if spelling == "dynamo" else 2)
    # 0.5: of the Llama fixture's 2 key/value heads a quarter rounds to none, and a cut of nothing proves nothing.
    output, report = optimize_file(
        model, tmp_path / "run", prune_heads=0.5, min_cosine=0.5, calibration=calibration_samples(model)
    )  # random weights: half the heads cut misses the default floor on held-out samples; storage is what is tested
    record = next(r for r in report.passes if r.name == "prune-heads")
    assert record.status == STATUS_APPLIED, (record.status, record.detail, record.refusals)
    after = table_copies(stored_tensors(output), rows, width)
    assert len(after) <= before, [(a.dtype, a.shape) for a in after]
    if spelling == "dynamo":
        assert len(after) == 1


# -- how layers see a weight read through Transpose (passes/_layers.py) ------------------


def test_a_layer_reads_a_transposed_constant_and_knows_its_other_readers():
    model = tied_lm("gpt2", "dynamo")
    layers, refused = find_layers(model.graph, ("matmul",))
    assert not refused, refused
    head = next(layer for layer in layers if layer.node.outputs[0].name == "logits")
    table = model.graph.initializers["embed.weight"]
    assert head.transposed and head.source is table
    np.testing.assert_array_equal(head.weight, table.const_value.numpy().T)
    assert [node.op_type for node in head.tied] == ["Gather"]
    assert "(a tied table)" in tied_weight_reason(head)
    mlp = [layer for layer in layers if layer is not head]
    assert len(mlp) == 4 and all(not layer.transposed and not layer.tied for layer in mlp)
    assert all(tied_weight_reason(layer) is None for layer in mlp)


def test_a_transposed_constant_read_only_by_layers_is_not_tied():
    # Two heads reading one matrix through one Transpose: nothing else keeps it float.
    model = tied_lm("gpt2", "dynamo")
    graph = model.graph
    gather = next(node for node in graph if node.op_type == "Gather")
    head = next(node for node in graph if node.outputs[0].name == "logits")
    second = ir.node("MatMul", [head.inputs[0], head.inputs[1]], name="second_head")
    graph.append(second)
    graph.outputs.append(second.outputs[0])
    other_table = ir.Value(name="other_table", const_value=ir.tensor(np.zeros((VOCAB, HIDDEN), np.float32)))
    gather.replace_input_with(0, other_table)
    layers, _ = find_layers(graph, ("matmul",))
    heads = [layer for layer in layers if layer.transposed]
    assert len(heads) == 2 and all(not layer.tied for layer in heads)
