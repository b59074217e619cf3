"""Review s75, late 75d: a late review of ids joined to scores where no rank is recorded (``concatenated_ids`` with
the original's run's ranks), budgets feeding a draw at its data's shape, calibration's shapes of constant-computed
values, and the CLI's messages. Each finding is reproduced here on a tiny model.

Found: (1) a result that failed for its own reason on held-out samples the original cannot run once split was
rolled back naming the split alone: the pass's real error was hidden. (2) A budget fed a ``Multinomial``'s ids drawn
for ``x [1, C]`` to a rewrite's ``Multinomial`` of ``Expand(x) [3, C]`` (a draw a row where the original drew once for
every row), broadcast, and measured it at a cosine of 1.0, max |Δ| 0: late75c shaped a Dropout's mask and a
``*Like``'s or ``Bernoulli``'s values, not a ``Multinomial``'s ids (``[batch, sample_size]`` of its input). (3) Ids a
``Concat`` joins to scores in an output whose recorded rank is stale (``[batch, 2]`` where ONNX Runtime computes
``[batch, 1, 2]``): ``concatenated_ids`` preferred the record to the original's run, read ``-1`` as axis 1, missed the
ids picked along 2, and a rewrite one class off past 10,000 classes verified. The run's rank comes first now. (4) A
key of an ``--inputs`` file that matches no graph input was named as it was in its warning: a newline split the line
and an escape sequence reached the terminal. It is named as its repr now. (5) A mistyped flag that left a required one
missing (``make-inputs m.onnx --ouput x.npz``) was refused as "required: -o/--output" alone; the word is named now,
with its nearest flag.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import exit_codes
from optimizer.accuracy import AccuracyBudget
from optimizer.verify import Verifier
from tests._cli_models import run_cli, save_matmul_model
from tests.test_review_s73_floatids import _wide
from tests.test_review_s75_hunt11 import _augmented, _grouped_rows
from tests.test_review_s75_late75c import _model

_N = helper.make_node


@pytest.fixture(scope="module")
def grouped_verifier() -> tuple[onnx.ModelProto, Verifier]:
    proto = _grouped_rows()
    verifier = Verifier(ir.from_proto(proto), [{"x": _augmented(2, 0)}], samples={"x": _augmented(8, 1)})
    return proto, verifier


def test_a_results_own_error_is_named_beside_the_split(grouped_verifier):
    """A result that cannot run for its own reason (an ``Add`` of 5 classes and 7) on samples the original cannot
    run once split (ICLabel's ``Reshape [4, -1]``): the rollback named the split alone, and the pass's error was
    hidden (noted by review s75 late75b). Both are named now."""
    proto, verifier = grouped_verifier
    broken = copy.deepcopy(proto)
    broken.graph.initializer.append(numpy_helper.from_array(np.ones(7, np.float32), "seven"))
    broken.graph.node.append(helper.make_node("Add", ["labels", "seven"], ["shifted"]))
    broken.graph.output[0].name = "shifted"
    error = verifier.check_approximation(ir.from_proto(broken), held_out=True).error
    assert "split into those a pass fits to" in error, error
    assert "Add" in error, error


def test_a_result_failing_as_the_original_does_names_the_split_alone(grouped_verifier):
    """The original's own failure once split, met again by the result, is named once (not as the result's)."""
    proto, verifier = grouped_verifier
    error = verifier.check_approximation(ir.from_proto(copy.deepcopy(proto)), held_out=True).error
    assert "split into those a pass fits to" in error, error
    assert "the result's own error" not in error, error


def _sampled(rows_drawn: int) -> ir.Model:
    """``y = Expand(x) [3, 4] + Multinomial(x)`` of 4 ids a row: drawn once for ``x [1, 4]`` and broadcast to every
    row (``rows_drawn`` 1), or drawn for ``Expand(x)``, a draw a row (3)."""
    draw = _N("Multinomial", ["x" if rows_drawn == 1 else "xe"], ["m"], sample_size=4, dtype=TensorProto.INT64)
    nodes = [_N("Expand", ["x", "rows"], ["xe"]), draw, _N("Cast", ["m"], ["mf"], to=TensorProto.FLOAT)]
    return _model([*nodes, _N("Add", ["xe", "mf"], ["y"])], [])


def test_a_budget_feeds_no_multinomial_draw_to_a_rewrite_that_draws_a_row_at_a_time():
    base, wrong = _sampled(1), _sampled(3)
    rng = np.random.default_rng(0)
    sets = [{"x": rng.standard_normal((1, 4)).astype(np.float32) + 3} for _ in range(2)]
    samples = {"x": rng.standard_normal((1, 4)).astype(np.float32) + 3}
    checker = Verifier(base, sets, samples=samples, budget=AccuracyBudget(min_cosine=0.99))
    verdict = checker.check_approximation(wrong)
    assert not verdict.ok, verdict.drift  # met at a cosine of 1.0000, max |Δ| 0: each row fed the original's ids
    assert checker.check_approximation(base.clone()).ok  # the original itself still meets it


def _stale(offset: float, recorded: list) -> ir.Model:
    """``out [batch, 1, 2]``: each row's top score of ``x [batch, 1, 4] @ W`` (20,000 classes) beside its id (picked
    along 2, kept) plus ``offset``, joined at -1; ``out`` recorded as ``recorded``."""
    graph = helper.make_graph(
        [
            _N("MatMul", ["x", "W"], ["logits"]),
            _N("ArgMax", ["logits"], ["picked"], axis=2, keepdims=1),
            _N("Cast", ["picked"], ["f"], to=TensorProto.FLOAT),
            _N("Add", ["f", "offset"], ["ids"]),
            _N("ReduceMax", ["logits"], ["top"], axes=[2], keepdims=1),
            _N("Concat", ["top", "ids"], ["out"], axis=-1),
        ],
        "stale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, recorded)],
        [numpy_helper.from_array(_wide(), "W"), numpy_helper.from_array(np.array(offset, np.float32), "offset")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_ids_beside_scores_of_a_stale_recorded_rank_one_class_off_are_rolled_back():
    inputs = {"x": np.random.default_rng(1).standard_normal((8, 1, 4)).astype(np.float32)}
    result = Verifier(_stale(0.0, ["batch", 2]), [inputs]).check(_stale(1.0, ["batch", 2]))
    assert not result.ok  # verified: 1 is within rtol of ids past 19,950
    assert "the ids of output 'out'" in result.first_failure


def test_a_stray_key_of_an_inputs_file_is_named_on_one_line_and_escaped(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "i.npz", **{"x": rng.standard_normal((2, 8)).astype(np.float32), "note\n\x1b[2J": np.ones(2)})
    argv = ["optimize", model, "-o", tmp_path / "o.onnx", "--inputs", tmp_path / "i.npz"]
    code, out, err = run_cli([*argv, "--passes", "remove-identity"], capsys)
    assert code == exit_codes.OK, err
    shown = " ".join((out + err).split())  # as rich wraps it to the terminal's width
    assert "'note\\n\\x1b[2J' matches no graph input: ignored" in shown, shown  # was 'note, a line break, then ESC
    assert "\x1b" not in out + err and "'note\n" not in out + err


def test_a_mistyped_flag_refused_as_a_missing_one_is_named(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as stop:
        run_cli(["--verbose", "make-inputs", model, "--ouput", tmp_path / "i.npz"], capsys)
    out, err = capsys.readouterr()
    assert stop.value.code == exit_codes.USAGE and out == "" and err.count("\n") == 1, err
    assert "required: -o/--output; --ouput is not a flag: did you mean --output?" in err, err  # --ouput was not named
    assert "--verbose is not" not in err and list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]
