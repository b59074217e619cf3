"""Review s75 (late75c): a late, hostile look at three just-merged changes. Draws matched under the name of a ``Cast``
of their values (``optimizer.draws.matched_draws``) and fed to a rewrite (``with_draws_fed``); static calibration's
mixing check (``passes/quantization/calibration.py``: copies of one sample, a kernel or a constant computed from
constants); and the CLI's closest-flag suggestion and escaping of what argparse names (``optimizer/cli.py``).

1. **A budget fed a draw to a rewrite that draws otherwise.** The budgets run a rewrite fed the original's draws
   without comparing what each draw reads (``reads=False``). A Dropout's mask (or a ``*Like``'s or ``Bernoulli``'s
   values) drawn for ``x [1, 4]`` and fed to a rewrite's draw of ``Expand(x) [3, 4]`` broadcast: the rewrite draws a
   mask a row where the original drew one for every row, and the budget measured it at a cosine of 1.0, max |Δ| 0.
   Fed values not of the draw's data or input shape now fail the run.
2. **A constant computed at run time judged by a stale recorded shape.** ``x [B, 4] + Cast(c [3, 4])`` with ``c``'s
   Cast recorded as ``[1, 4]`` (or ``[4]``), which ONNX Runtime runs as ``[3, 4]``: taken to keep the samples apart,
   the ranges were one sample's over every row. The shape is now computed from the constants.
3. **The CLI's suggestion and argparse's words.** ``-- --pases`` was answered "did you mean --ep?" (the ``--``
   itself); another command's flag got this command's nearest (``make-inputs --input`` "did you mean --output?",
   which writes over the file; ``compare --calibration`` "did you mean --iterations?"); and argparse's own messages
   skipped ``_printable``: ``-o`` given twice named both paths with a newline or an escape sequence as they were,
   a byte that is not UTF-8 as ``?``, and ``graphopt m\\xff.onnx`` (no command) as ``'m\\udcff.onnx'``; the report's
   ``wrote`` line named such an output ``a?.onnx``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import exit_codes, runtime
from optimizer.accuracy import AccuracyBudget
from optimizer.verify import Verifier
from passes.quantization import calibration
from tests._cli_models import run_cli, save_matmul_model

_N = helper.make_node


def _model(nodes: list, inits: list) -> ir.Model:
    graph = helper.make_graph(
        nodes,
        "drawn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [
            *inits,
            numpy_helper.from_array(np.array([3, 4], np.int64), "rows"),
            numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
            numpy_helper.from_array(np.array(True), "training"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))


def _drawn_once_and_a_draw_a_row(op: str) -> tuple[ir.Model, ir.Model]:
    """The original draws once for ``x [1, 4]`` and broadcasts it to 3 rows; the rewrite draws for ``Expand(x)``,
    a draw a row, under the original's name (``y`` for the Dropout, an ``Expand`` of the draw in the original)."""
    if op == "Dropout":
        base = [_N("Dropout", ["x", "ratio", "training"], ["d"]), _N("Expand", ["d", "rows"], ["y"])]
        wrong = [_N("Expand", ["x", "rows"], ["e"]), _N("Dropout", ["e", "ratio", "training"], ["y"])]
        return _model(base, []), _model(wrong, [])
    source = [] if op == "RandomUniformLike" else [_N("Sigmoid", ["x"], ["x_p"])]
    read = "x" if op == "RandomUniformLike" else "x_p"
    base = [*source, _N(op, [read], ["r"]), _N("Expand", ["x", "rows"], ["xe"]), _N("Add", ["xe", "r"], ["y"])]
    wrong = [*source, _N("Expand", ["x", "rows"], ["xe"]), _N("Expand", [read, "rows"], ["re"])]
    wrong += [_N(op, ["re"], ["r"]), _N("Add", ["xe", "r"], ["y"])]
    return _model(base, []), _model(wrong, [])


@pytest.mark.parametrize("op", ["Dropout", "RandomUniformLike", "Bernoulli"])
def test_a_budget_feeds_no_draw_to_a_rewrite_that_draws_it_in_another_shape(op):
    base, wrong = _drawn_once_and_a_draw_a_row(op)
    rng = np.random.default_rng(0)
    sets = [{"x": rng.standard_normal((1, 4)).astype(np.float32) + 3} for _ in range(2)]
    samples = {"x": rng.standard_normal((1, 4)).astype(np.float32) + 3}
    checker = Verifier(base, sets, samples=samples, budget=AccuracyBudget(min_cosine=0.99))
    assert not checker.check(wrong).ok  # the exact check compares what each draw reads: it refused it already
    verdict = checker.check_approximation(wrong)
    # Was: met at a cosine of 1.0000, max |Δ| 0, each row fed the original's one mask.
    assert not verdict.ok, verdict.drift
    assert checker.check_approximation(base.clone()).ok  # the original itself still meets it


@pytest.mark.parametrize("recorded", [[1, 4], [4]], ids=["one_row", "rank_one"])
def test_a_batch_long_constant_behind_a_cast_is_judged_by_its_shape_not_a_stale_record(recorded):
    rows = np.array([[0.0] * 4, [10.0] * 4, [-10.0] * 4])
    graph = helper.make_graph(
        [_N("Cast", ["table"], ["c"], to=TensorProto.FLOAT), _N("Add", ["x", "c"], ["s"])],
        "stale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["B", 4])],
        [numpy_helper.from_array(rows, "table")],
        value_info=[helper.make_tensor_value_info("c", TensorProto.FLOAT, recorded)],  # ONNX Runtime runs [3, 4]
    )
    model = ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9))
    spread = np.array([[5.0], [1.0], [1.0]])  # the first sample far from 0, where the others' rows are +-10
    batches = [{"x": (np.random.default_rng(0).standard_normal((3, 4)) * spread).astype(np.float32)}]
    whole = calibration.tensor_ranges(runtime.collect_values(model, ["s"], batches), "minmax")
    assert calibration.calibrate(model, ["s"], batches, "minmax") == whole  # was the first sample over every row


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_matmul_model(tmp_path_factory.mktemp("late75c") / "m.onnx")


def _refused(argv: list, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        run_cli(argv, capsys)
    out, err = capsys.readouterr()
    assert stop.value.code == exit_codes.USAGE and out == ""
    assert err.count("\n") == 1, err
    return err


def test_a_word_after_double_dash_gets_no_flag_suggested(model, tmp_path, capsys):
    err = _refused(["optimize", model, "-o", tmp_path / "o.onnx", "--", "--pases"], capsys)
    assert "did you mean" not in err, err  # was: "did you mean --ep?", for the "--"
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["make-inputs", "{m}", "-o", "{o}", "--input", "x.npz"], "(--inputs is a flag of graphopt optimize"),
        (["compare", "{m}", "{m}", "--calibration", "c.npz"], "(--calibration is a flag of graphopt optimize"),
    ],
    ids=["make_inputs_input", "compare_calibration"],
)
def test_another_commands_flag_is_named_as_such_not_as_a_typo_of_this_ones(model, tmp_path, capsys, argv, hint):
    """Was "did you mean --output?" (``-o``, which writes over the file it names) and "did you mean --iterations?"."""
    words = [str(word).format(m=model, o=tmp_path / "i.npz") for word in argv]
    err = _refused(words, capsys)
    assert hint in err and "did you mean" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_argparse_messages_name_paths_as_every_error_does(model, tmp_path, capsys):
    """README: one line; a character that is not printable as its Python escape; a path's byte that is not UTF-8 as
    ``\\xff``. argparse's messages went out as they were: two lines for ``-o`` given twice with a newline in a path,
    the byte as ``?``, and in its repr of a word (a model path given with no command) as ``\\udcff``."""
    first, second = tmp_path / "a\udcff.onnx", tmp_path / "b\n\x1b[2J.onnx"
    err = _refused(["optimize", model, "-o", first, "-o", second], capsys)
    assert "a\\xff.onnx and " in err and "b\\n\\x1b[2J.onnx" in err, err
    err = _refused([tmp_path / "m\udcff.onnx"], capsys)
    assert "m\\xff.onnx'" in err and "udcff" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_the_written_model_is_named_as_errors_name_it(model, tmp_path, capsys):
    """``wrote a?.onnx``, for a byte that is not UTF-8: the name of another file (``a?.onnx`` may exist too)."""
    output = tmp_path / "a\udcff.onnx"
    code, out, err = run_cli(["optimize", model, "-o", output, "--passes", "remove-identity", "--no-verify"], capsys)
    assert code == exit_codes.OK and output.exists(), err
    assert out.rstrip().endswith("a\\xff.onnx"), out
