"""Review s64 (``graphopt compare``: its figures and its failure modes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from optimizer.samples import save_npz
from tests._cli_models import save_matmul_model

ROOT = Path(__file__).resolve().parents[1]


def test_the_memory_probe_imports_onnxruntime_before_it_resets_the_peak(tmp_path):
    # The probe's child process imported ONNX Runtime only when its session was created, after VmHWM was reset:
    # the import (~12 MB) counted as each model's session growth (a 3-node model read 22 MB, an identical pair's
    # difference diluted by it), where the module docstring says ONNX Runtime is imported before.
    model = save_matmul_model(tmp_path / "m.onnx")
    feeds = tmp_path / "feeds.npz"
    save_npz(feeds, {"x": np.ones((1, 8), np.float32)})
    script = (
        "import json, sys\n"
        "from optimizer.compare import memory\n"
        "seen = []\n"
        "reset = memory._RssReader.reset\n"
        "def recording(self):\n"
        "    seen.append('onnxruntime' in sys.modules)\n"
        "    return reset(self)\n"
        "memory._RssReader.reset = recording\n"
        f"usage = memory._probe({os.fspath(model)!r}, {os.fspath(feeds)!r}, 'cpu', 1)\n"
        "print(json.dumps(seen))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.fspath(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True]


def _batch_of_one_inside(path: Path) -> Path:
    """``y = Reshape(x, [1, -1]) + x[0:1]`` with ``x: float32[batch, sequence]``: a graph that fixes a batch of 1
    inside it (a traced ``view(1, ...)``) though its input declares a symbolic batch; any sequence runs at batch 1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["r"]),
        helper.make_node("Slice", ["x", "zero", "one", "zero"], ["first"]),
        helper.make_node("Add", ["r", "first"], ["y"]),
    ]
    constants = {"flat": [1, -1], "zero": [0], "one": [1]}
    graph = helper.make_graph(
        nodes,
        "batch_of_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "sequence"])],
        initializer=[numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    return path


def test_a_batch_the_model_refuses_is_named_not_blamed_on_the_generated_lengths(tmp_path, capsys):
    # compare --batch 1,2 on a model that runs only at batch 1: the refusal at batch 2 was taken for one of the
    # generated lengths, batch 1 was timed again at each of seven lengths (a minute at the default budget), and the
    # error said those lengths were refused and to bind --dim, which cannot help. The batch is what to name.
    from tests._cli_models import run_cli

    model = _batch_of_one_inside(tmp_path / "m.onnx")
    argv = ["compare", model, model, "--batch", "1,2", "--time-budget", "0.2", "--iterations", "10", "--warmup", "0"]
    code, _, err = run_cli([*argv, "-q"], capsys)
    assert code == 2, err
    assert "--batch 2:" in err and "leave it out of --batch" in err, err
    assert "were refused too" not in err and "--dim" not in err, err
    assert err.count("\n") == 1, err  # one line


def test_a_one_value_per_sample_logits_output_has_no_top1_agreement():
    # A binary classifier's logits [batch] were scored for top-1 by their argmax over axis 0: the sample with the
    # highest logit in each batch, not a class. Every sample's logit moved by 1e-4 (cosine 0.999999995, no decision
    # changed) read "top-1 agreement 0.000" in the table and the HTML verdict.
    from optimizer.accuracy import AccuracyAccumulator

    rng = np.random.default_rng(0)
    before = np.where(rng.random(16) < 0.5, -1.0, 1.0) + 1e-6 * rng.standard_normal(16)
    after = before + 1e-4 * rng.standard_normal(16)
    accumulator = AccuracyAccumulator()
    accumulator.add({"logits": before.astype(np.float32)}, {"logits": after.astype(np.float32)})
    (result,) = accumulator.results()
    assert result.cosine > 0.9999999 and result.samples == 16
    assert result.top1_agreement is None
    # Rows of classes keep theirs.
    rows = AccuracyAccumulator()
    rows.add({"logits": before.reshape(8, 2)}, {"logits": after.reshape(8, 2)})
    assert rows.results()[0].top1_agreement is not None


def test_a_model_with_a_sequence_input_is_compared_at_each_batch(tmp_path, capsys):
    # A seq(tensor) input (generated as a list of arrays) was concatenated into one tensor when cut or tiled to a
    # --batch (its length read as the batch), and saved as one tensor for the memory probe: ONNX Runtime refused
    # both ("expected to be of type: 3 but received a tensor"), a valid model refused with exit 2.
    import onnx
    from onnx import TensorProto, helper

    from tests._cli_models import run_cli

    element = helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)],
        "sequence_input",
        [helper.make_value_info("s", helper.make_sequence_type_proto(element))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), model)
    argv = ["compare", model, model, "--batch", "1,3", "--time-budget", "0.2", "--iterations", "10", "--warmup", "0"]
    code, _, err = run_cli([*argv, "-q", "--json", tmp_path / "r.json", "--min-cosine", "0.999"], capsys)
    assert code == 0, err
    provider = json.loads((tmp_path / "r.json").read_text())["providers"][0]
    assert [batch["batch"] for batch in provider["batches"]] == [1, 3]
    assert provider["accuracy"][0]["exact"] and provider["memory_before"]["peak_rss_bytes"] > 0


def test_a_sequence_input_is_tiled_element_by_element():
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from optimizer.compare.comparison import _batch_axes, _batch_of, _with_batch
    from optimizer.inputs import batch_dims, make_inputs

    element = helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 4])
    graph = helper.make_graph(
        [helper.make_node("ConcatFromSequence", ["s"], ["y"], axis=0)],
        "sequence_input",
        [helper.make_value_info("s", helper.make_sequence_type_proto(element))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    names = batch_dims(model)
    inputs = make_inputs(model, {"batch": 3})
    rows = _batch_of(model, inputs, names)
    assert rows == 3 and len(inputs["s"]) != 3  # the elements' batch, not the sequence's length
    tiled = _with_batch(inputs, 5, rows, _batch_axes(model, names))["s"]
    assert isinstance(tiled, list) and len(tiled) == len(inputs["s"])
    assert [item.shape for item in tiled] == [(5, 4)] * len(tiled)


def test_a_bfloat16_input_or_output_is_refused_for_what_it_is(tmp_path, capsys):
    # ONNX Runtime's Python API takes and returns no bfloat16 arrays ("Numpy_type 256 can't be converted to
    # MLDataType"): compare stopped on the first run and told the user to bind other sizes with --dim.
    import onnx
    from onnx import TensorProto, helper

    from tests._cli_models import run_cli

    # (file, the input's type, the output's type)
    for name, given, cast in (
        ("in", TensorProto.BFLOAT16, TensorProto.FLOAT),
        ("out", TensorProto.FLOAT, TensorProto.BFLOAT16),
    ):
        graph = helper.make_graph(
            [helper.make_node("Cast", ["x"], ["y"], to=cast)],
            "bfloat16_io",
            [helper.make_tensor_value_info("x", given, ["batch", "sequence"])],
            [helper.make_tensor_value_info("y", cast, ["batch", "sequence"])],
        )
        model = tmp_path / f"{name}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), model)
        argv = ["compare", model, model, "--time-budget", "0.2", "--iterations", "10", "--warmup", "0", "-q"]
        code, _, err = run_cli(argv, capsys)
        role = "input 'x'" if name == "in" else "output 'y'"
        assert code == 2 and f"{role} is bfloat16" in err and "--dim" not in err, err
