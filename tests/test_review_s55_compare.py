"""A hostile review of ``graphopt compare`` without ``--generate`` (2026-12-06): each case gave a wrong figure or
a wrong verdict before.

Padded positions counted in the accuracy: a model that zeroes its logits where the attention mask pads (what
a model returns there is undefined) failed ``--min-cosine``, and the padding diluted top-1. One sample in 2,000
scaled by 2 passed ``--min-worst-cosine 0.999`` (its cosine is 1). The HTML page's accuracy card rounded a
cosine of 0.99999962 up to "1.000000" where the table said 0.99999962 and the gate failed, its verdict said
"cosine ≥ 0.999995" of a cosine of 0.9999949, and the page never said which data the accuracy was measured on.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper, save

from optimizer.accuracy import AccuracyAccumulator, OutputAccuracy
from optimizer.compare.html import _cosine, render_html
from optimizer.gates import accuracy_failures, worst_sample_failures
from optimizer.padding import padded_outputs
from tests._cli_models import run_cli
from tests.test_html_report import _report

_FAST = ["--time-budget", "0.5", "--iterations", "10", "--warmup", "0", "-q"]


def _token_model(path, *, zero_pads: bool, pooled: bool = False):
    """``logits = embedding[input_ids]`` ``[batch, sequence, 8]``; with ``zero_pads`` times the attention mask (zero
    where it pads); with ``pooled`` also a ``[batch, 8]`` output (the first position's logits)."""
    embedding = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["looked_up"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_float", "last"], ["mask_3d"]),
    ]
    if zero_pads:
        nodes.append(helper.make_node("Mul", ["looked_up", "mask_3d"], ["logits"]))
    else:
        nodes.append(helper.make_node("Identity", ["looked_up"], ["logits"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", 8])]
    if pooled:
        nodes.append(helper.make_node("Gather", ["logits", "zero"], ["pooled"], axis=1))
        outputs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", 8]))
    graph = helper.make_graph(
        nodes,
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        outputs,
        [
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(np.array([-1], np.int64), "last"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, path)
    return model


def _padded_inputs(path):
    ids = np.random.default_rng(1).integers(0, 16, (4, 12)).astype(np.int64)
    mask = np.ones((4, 12), np.int64)
    mask[1, :6] = 0  # left padding
    mask[2, 8:] = 0  # right padding
    mask[3, :10] = 0
    np.savez(path, input_ids=ids, attention_mask=mask)
    return {"input_ids": ids, "attention_mask": mask}


def test_positions_the_attention_mask_pads_count_in_no_accuracy_figure(tmp_path, capsys):
    _token_model(tmp_path / "before.onnx", zero_pads=False)
    _token_model(tmp_path / "after.onnx", zero_pads=True)
    _padded_inputs(tmp_path / "inputs.npz")
    argv = ["compare", tmp_path / "before.onnx", tmp_path / "after.onnx", "--inputs", tmp_path / "inputs.npz"]
    code, _, err = run_cli(
        [*argv, *_FAST, "--min-cosine", "0.9999", "--min-worst-cosine", "0.9999", "--json", tmp_path / "r.json"],
        capsys,
    )
    assert code == 0, err  # was 5: cosine 0.79 over the padded positions AFTER zeroes
    provider = json.loads((tmp_path / "r.json").read_text())["providers"][0]
    (logits,) = provider["accuracy"]
    assert logits["cosine"] == 1.0 and logits["worst_sample_cosine"] == 1.0 and logits["top1_agreement"] == 1.0
    assert logits["max_abs_error"] == 0 and not logits["exact"]  # bit-identical it is not
    assert "positions the attention mask pads left out of 'logits'" in provider["accuracy_data"]
    # Generated inputs that pad (a bound batch of 2: its last row's final quarter) are read the same way.
    code, _, err = run_cli([*argv[:3], "--dim", "batch=2", "--batch", "2", "--dim", "sequence=8", *_FAST], capsys)
    assert code == 0, err
    code, out, err = run_cli(
        [*argv[:3], "--dim", "batch=2", "--batch", "2", "--dim", "sequence=8", *_FAST[:-1], "--min-cosine", "0.9999"],
        capsys,
    )
    assert code == 0 and "pads left out of 'logits'" in out, err


def test_top1_counts_only_real_positions_and_a_nan_at_a_pad_is_still_unbounded(tmp_path):
    model = ir.load(_saved(tmp_path, pooled=True))
    batch = {"input_ids": np.zeros((2, 4), np.int64), "attention_mask": np.array([[1, 1, 1, 1], [0, 0, 1, 1]])}
    rng = np.random.default_rng(2)
    before = {"logits": rng.standard_normal((2, 4, 8)).astype(np.float32), "pooled": rng.standard_normal((2, 8))}
    after = {name: value.copy() for name, value in before.items()}
    after["logits"][0, 0] = -before["logits"][0, 0]  # a real position's top-1 changes
    after["logits"][1, :2] = 0  # the padded positions of row 2
    after["pooled"] = after["pooled"].astype(before["pooled"].dtype)
    padded = padded_outputs(model, batch, before, after)
    assert set(padded) == {"logits"}, "a pooled [batch, 8] output is no sequence"
    accumulator = AccuracyAccumulator()
    accumulator.add(before, after, frozenset({"logits"}), padded=padded)
    logits, pooled = accumulator.results()
    assert logits.top1_agreement == 5 / 6  # 6 real positions, not 7 of 8
    assert pooled.exact and accumulator.padded == ["logits"]
    assert logits.worst_sample_cosine < 1 and logits.cosine < 1  # the real position's change shows
    # A NaN or Inf AFTER has at a padded position where BEFORE has a number is never hidden.
    after["logits"][1, 0, 3] = np.nan
    accumulator = AccuracyAccumulator()
    accumulator.add(before, after, padded=padded_outputs(model, batch, before, after))
    logits = accumulator.results()[0]
    assert logits.max_abs_error == np.inf
    report = _gate_report(logits)
    assert any("differs without bound" in line for line in accuracy_failures(report, 0.9))


def _saved(tmp_path, **kwargs):
    path = tmp_path / "tokens.onnx"
    _token_model(path, zero_pads=False, **kwargs)
    return path


def _gate_report(*outputs: OutputAccuracy):
    report = _report()
    report.providers = [report.providers[0]]
    report.providers[0].accuracy = list(outputs)
    return report


def test_one_sample_scaled_by_two_fails_the_worst_sample_gate():
    # 2,000 samples, one doubled: its cosine is 1, the whole output's 0.99975 and norm ratio 1.0008.
    before = np.random.default_rng(3).uniform(-1, 1, (2000, 8))
    after = before.copy()
    after[7] *= 2
    accumulator = AccuracyAccumulator()
    accumulator.add({"y": before}, {"y": after})
    (result,) = accumulator.results()
    assert result.cosine > 0.999 and abs(result.norm_ratio - 1) < 0.01
    assert result.worst_sample_cosine == 0.5  # 1 - (2 - 1)**2 / 2
    report = _gate_report(result)
    assert accuracy_failures(report, 0.999) == []
    (line,) = worst_sample_failures(report, 0.999)
    assert "output 'y' has a sample at cosine 0.500000" in line
    # A sample changed by rounding only keeps its worst-sample figure near 1.
    close = before * (1 + 1e-7)
    accumulator = AccuracyAccumulator()
    accumulator.add({"y": before}, {"y": close})
    assert accumulator.results()[0].worst_sample_cosine > 0.99999


def test_the_html_page_rounds_cosines_down_and_names_the_accuracy_data():
    report = _report(max_abs=0.002)
    provider = report.providers[0]
    provider.accuracy = [OutputAccuracy("y", "float32", [2, 4], 0.002, 0.002, 0.99999962, worst_sample_cosine=0.9)]
    provider.accuracy_data = "--inputs held_out.npz (2 samples)"
    page = render_html(report)
    card = page[page.index("id='card-accuracy'") : page.index("id='card-size'")]
    assert "cosine 0.99999962" in card and "cosine 1.000000" not in card
    assert "on --inputs held_out.npz (2 samples)" in card
    # The verdict's "cosine ≥ X" is a lower bound.
    assert _cosine(0.9999949) == "0.999994" and _cosine(0.99999966) == "0.9999996"
    assert _cosine(0.9999999) == "0.99999990" and _cosine(1.0) == "1.00000"
