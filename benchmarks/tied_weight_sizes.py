"""How many copies of a tied embedding table a saved model holds, and its size, per spelling and mode.

Builds the GPT-2- and Llama-style tied LMs of ``tests/test_tied_weights.py`` (a 1024 x 64
table that is also the LM head's weight) in the dynamo spelling (the head reads
``Transpose(table)``) and the legacy one (a separate initializer holding ``table.T``),
adds the exported tied fixture ``tests/fixtures/gpt2_kv_{dynamo,legacy}.onnx``, runs
each through graphopt's API (float pipeline, ``--quantize dynamic|static|int4`` with
``--quantize-outputs`` so the head is quantized too, ``--prune-ffn 0.25``) and prints the
copies of the table in the saved file, their bytes, the file's bytes (external data
included) and what the head became.

    .venv/bin/python benchmarks/tied_weight_sizes.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.api import optimize_with_report  # noqa: E402
from optimizer.inputs import make_inputs  # noqa: E402
from tests.helpers import FIXTURES  # noqa: E402
from tests.test_tied_weights import HIDDEN, MODES, VOCAB, stored_tensors, table_copies, tied_lm, token_ids  # noqa: E402


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


if __name__ == "__main__":
    main()
