"""How many copies of a tied embedding table a saved model holds, and its size, per spelling and mode.

Builds the GPT-2- and Llama-style tied LMs of ``tests/test_tied_weights.py`` (a 1024 x 64
table that is also the LM head's weight) in the dynamo spelling (the head reads
``Transpose(table)``) and the legacy one (a separate initializer holding ``table.T``),
adds the exported tied fixture ``tests/fixtures/gpt2_kv_{dynamo,legacy}.onnx``, runs
each through graphopt's API (float pipeline, ``--quantize dynamic|static|int4`` with
``--quantize-outputs`` so the head is quantized too, ``--prune-ffn 0.25``) and prints the
copies of the table in the saved file, their bytes, the file's bytes (external data
included) and what the head became. A second table runs the Llama-style model whose two
layers read one set of MLP weights (``shared_layers``) through each mode of
``SHARED_MODES`` and counts the MLP tensors stored (3 = each shared weight once).

    .venv/bin/python benchmarks/tied_weight_sizes.py
    .venv/bin/python benchmarks/tied_weight_sizes.py --share MODEL.onnx   # a real export

``--share`` runs only ``share-transposed-initializers`` on MODEL (a KV-cache decoder: its
inputs are generated at batch 2, 8 new tokens after 4 past), saves it with external data
and prints both files' bytes, the pass's time, the largest output difference in ONNX
Runtime and the peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.api import optimize_with_report  # noqa: E402
from optimizer.inputs import make_inputs  # noqa: E402
from optimizer.runtime import run_model  # noqa: E402
from passes.initializer_deduplication import ShareTransposedInitializersPass  # noqa: E402
from tests.helpers import FIXTURES  # noqa: E402
from tests.test_tied_weights import (  # noqa: E402
    FFN,
    HIDDEN,
    MODES,
    SHARED_MODES,
    VOCAB,
    stored_tensors,
    table_copies,
    tied_lm,
    token_ids,
)


def _head(path: Path) -> str:
    """The op that computes the logits."""
    model = ir.load(path)
    output = model.graph.outputs[0]
    node = output.producer()
    while node is not None and node.op_type in ("Reshape", "Identity", "Add"):
        node = node.inputs[0].producer()
    if node is None:
        return "?"
    weight = node.inputs[1].producer() if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return f"{node.op_type}({weight.op_type})" if weight is not None else node.op_type


def _row(label: str, spelling: str, mode: str, path: Path, rows: int, width: int) -> str:
    copies = table_copies(stored_tensors(path), rows, width)
    kinds = " + ".join(f"{a.dtype}{list(a.shape)}" for a in copies)
    # Each output has a folder of its own (external data lands beside it); fixtures have none.
    size = path.stat().st_size if path.parent == FIXTURES else sum(p.stat().st_size for p in path.parent.iterdir())
    return (
        f"| {label} | {spelling} | {mode} | {len(copies)} ({kinds}) | {sum(a.nbytes for a in copies):,} "
        f"| {size:,} | {_head(path)} |"
    )


def main() -> None:
    print("| model | tie spelling | mode | copies of the table | their bytes | file bytes | LM head |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for style in ("gpt2", "llama"):
            for spelling in ("dynamo", "legacy"):
                source = root / f"{style}-{spelling}" / "model.onnx"
                source.parent.mkdir()
                ir.save(tied_lm(style, spelling), source)
                print(_row(f"{style}-style (built)", spelling, "original", source, VOCAB, HIDDEN), flush=True)
                for mode, options in MODES.items():
                    output = root / f"{style}-{spelling}-{mode}" / "model.onnx"
                    output.parent.mkdir()
                    calibration = {"calibration": token_ids(1)} if options else {}
                    optimize_with_report(source, output=output, **options, **calibration)
                    print(_row(f"{style}-style (built)", spelling, mode, output, VOCAB, HIDDEN), flush=True)
        for spelling in ("dynamo", "legacy"):
            source = FIXTURES / f"gpt2_kv_{spelling}.onnx"
            print(_row("gpt2_kv fixture", spelling, "original", source, 256, 64), flush=True)
            model = ir.load(source)
            calibration = make_inputs(model, {"batch": 8, "sequence": 6, "past_sequence": 4}, seed=3)
            for mode, options in MODES.items():
                output = root / f"gpt2_kv-{spelling}-{mode}" / "model.onnx"
                output.parent.mkdir()
                extra = {"calibration": calibration} if options else {}
                optimize_with_report(source, output=output, **options, **extra)
                print(_row("gpt2_kv fixture", spelling, mode, output, 256, 64), flush=True)

    print()
    print("| mode | MLP tensors stored | their bytes | file bytes | what the pass did |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "shared" / "model.onnx"
        source.parent.mkdir()
        ir.save(tied_lm("llama", "dynamo", shared_layers=True), source)
        for mode, options in {"original": None, **SHARED_MODES}.items():
            output = source
            outcome = ""
            if options is not None:
                output = Path(folder) / mode / "model.onnx"
                output.parent.mkdir()
                _, report = optimize_with_report(source, output=output, calibration=token_ids(1), **options)
                records = [r for r in report.passes if r.name.startswith(("quantize", "prune"))]
                outcome = "; ".join(f"{r.name} {r.status}" for r in records)
            mlp = [a for a in stored_tensors(output) if VOCAB not in a.shape and a.size >= HIDDEN * FFN // 4]
            kinds = " + ".join(f"{a.dtype}{list(a.shape)}" for a in mlp)
            size = sum(p.stat().st_size for p in output.parent.iterdir())
            stored = sum(a.nbytes for a in mlp)
            print(f"| {mode} | {len(mlp)} ({kinds}) | {stored:,} | {size:,} | {outcome} |", flush=True)


def share(source: Path) -> None:
    """``share-transposed-initializers`` alone on ``source``: bytes before and after, time, output agreement."""
    model = ir.load(source)
    inputs = make_inputs(model, {"batch": 2, "sequence": 8, "past_sequence": 4}, seed=0)
    start = time.perf_counter()
    result = ShareTransposedInitializersPass()(model)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "model.onnx"
        ir.save(result.model, output, external_data="model.onnx.data")
        del model, result
        after = sum(p.stat().st_size for p in output.parent.iterdir())
        expected, actual = run_model(ir.load(source), inputs), run_model(ir.load(output), inputs)
    difference = max(float(np.max(np.abs(expected[name] - actual[name]))) for name in expected)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{source.name}: {source.stat().st_size:,} -> {after:,} bytes; pass {seconds:.1f} s; ", end="")
    print(f"largest output difference {difference:.2g}; peak memory {peak:.1f} GB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--share", type=Path, help="run share-transposed-initializers alone on this model")
    arguments = parser.parse_args()
    if arguments.share:
        share(arguments.share)
    else:
        main()
