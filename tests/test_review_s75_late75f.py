"""Review s75, late 75f: a late review of review s75 late75d: ranks of ids joined to scores read from the original's
first run, a ``Multinomial`` fed at its rows x ``sample_size`` in a budget, the split-samples message naming the
result's own error, and the CLI's hint beside a missing flag. Each finding is reproduced here on a tiny model.

Found: (1) a mistyped flag that left a required one missing was hinted at the nearest flag of its own command alone:
``make-inputs m.onnx --input x.npz`` was told "did you mean --output?", which writes over the file it names (the hint
late75c took away where no flag was missing); it names the commands whose flag ``--inputs`` is now, as the other path
does. (2) A result whose draw reads data of another shape than the original's (a ``Multinomial``, a
``RandomUniformLike`` or a Dropout of ``Expand(x) [3, C]`` where the original drew once for ``x [1, C]``) was rolled
back as "ONNX Runtime cannot run the result", naming graphopt's own ``Reshape`` (``'m::graphopt_drawn_as_input'``),
though the result runs: it says the result draws otherwise now. (3) Ids a ``Concat`` joins to scores in an output
whose rank depends on its input (a ``Squeeze`` of no axes: ``[2, 3, 2]`` for ``x [2, 3, 4]``, ``[3, 2]`` for ``x [1,
3, 4]``) were placed at the first run's rank alone (``_output_ranks``: ``-1`` read as axis 2), not found in a run of
the other rank, and held there by the float tolerance: a rewrite one class off on that set alone verified. Where the
runs give other ranks, the axes are read as written now.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import exit_codes
from optimizer.accuracy import AccuracyBudget
from optimizer.verify import Verifier
from tests._cli_models import run_cli, save_matmul_model
from tests.test_review_s73_floatids import _wide
from tests.test_review_s75_late75c import _model

_N = helper.make_node


def test_a_mistyped_flag_beside_a_missing_one_is_not_hinted_at_a_flag_that_writes(tmp_path, capsys):
    model = save_matmul_model(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as stop:
        run_cli(["make-inputs", model, "--input", tmp_path / "i.npz"], capsys)
    out, err = capsys.readouterr()
    assert stop.value.code == exit_codes.USAGE and out == "" and err.count("\n") == 1, err
    assert "did you mean --output" not in err, err  # would write over the file --input named
    assert "--input is not a flag: --inputs is a flag of graphopt optimize" in err, err
    assert list(tmp_path.iterdir()) == [tmp_path / "m.onnx"]


def test_a_typo_of_its_own_flag_beside_a_missing_one_is_still_hinted(tmp_path, capsys):
    """Two typos and a missing flag: the first is named, with its own command's flag, on one line."""
    model = save_matmul_model(tmp_path / "m.onnx")
    with pytest.raises(SystemExit) as stop:
        run_cli(["make-inputs", model, "--ouput", tmp_path / "i.npz", "--sedd", "3"], capsys)
    out, err = capsys.readouterr()
    assert stop.value.code == exit_codes.USAGE and out == "" and err.count("\n") == 1, err
    assert "required: -o/--output; --ouput is not a flag: did you mean --output?" in err, err


def _drawn(op: str, rows_drawn: int) -> object:
    """``y = Expand(x) [3, 4] + draw``: ``op`` of ``x [1, 4]`` (``rows_drawn`` 1, broadcast to every row), or of
    ``Expand(x)`` (3, a draw a row)."""
    source = "x" if rows_drawn == 1 else "xe"
    if op == "Multinomial":
        draws = [_N(op, [source], ["m"], sample_size=4), _N("Cast", ["m"], ["r"], to=TensorProto.FLOAT)]
    elif op == "Dropout":
        draws = [_N(op, [source, "ratio", "training"], ["r"])]
    else:
        draws = [_N(op, [source], ["r"])]
    return _model([_N("Expand", ["x", "rows"], ["xe"]), *draws, _N("Add", ["xe", "r"], ["y"])], [])


@pytest.mark.parametrize("op", ["Multinomial", "RandomUniformLike", "Dropout"])
def test_a_result_drawing_a_row_at_a_time_is_refused_as_drawing_otherwise(op):
    rng = np.random.default_rng(0)
    sets = [{"x": rng.standard_normal((1, 4)).astype(np.float32) + 3} for _ in range(2)]
    samples = {"x": rng.standard_normal((1, 4)).astype(np.float32) + 3}
    checker = Verifier(_drawn(op, 1), sets, samples=samples, budget=AccuracyBudget(min_cosine=0.99))
    verdict = checker.check_approximation(_drawn(op, 3))
    assert not verdict.ok
    assert "graphopt_drawn" not in verdict.error and "cannot run the result" not in verdict.error, verdict.error
    assert "reads data of another shape than the original's" in verdict.error, verdict.error


def _squeezed(wrong: bool) -> ir.Model:
    """``out = Concat(top, ids, axis=-1)`` of ``Squeeze(x) @ W`` (20,000 classes; ``x [a, b, 4]``, no rank recorded
    past the ``Squeeze``), ids picked along -1; ``wrong``: the ids one class off where ``Squeeze(x)`` is of rank 2."""
    nodes = [
        _N("Squeeze", ["x"], ["sq"]),
        _N("MatMul", ["sq", "W"], ["logits"]),
        _N("ArgMax", ["logits"], ["picked"], axis=-1, keepdims=1),
        _N("Cast", ["picked"], ["f"], to=TensorProto.FLOAT),
        _N("ReduceMax", ["logits"], ["top"], axes=[-1], keepdims=1),
    ]
    if wrong:
        nodes += [_N("Shape", ["sq"], ["s"]), _N("Size", ["s"], ["r"]), _N("Equal", ["r", "two"], ["at_two"])]
        nodes += [_N("Cast", ["at_two"], ["off"], to=TensorProto.FLOAT), _N("Add", ["f", "off"], ["ids"])]
    else:
        nodes.append(_N("Identity", ["f"], ["ids"]))
    graph = helper.make_graph(
        [*nodes, _N("Concat", ["top", "ids"], ["out"], axis=-1)],
        "squeezed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(_wide(), "W"), numpy_helper.from_array(np.array(2, np.int64), "two")],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


@pytest.mark.parametrize("added", [False, True], ids=["given", "added"])
def test_ids_beside_scores_of_a_rank_that_depends_on_the_input_are_held_in_every_run(added):
    """The sets given to the ``Verifier``, or the second added later (``add_input_set``, as ``optimize`` adds sets of
    other lengths)."""
    rng = np.random.default_rng(1)
    sets = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in ((2, 3, 4), (1, 3, 4))]
    verifier = Verifier(_squeezed(False), sets[:1] if added else sets)
    if added:
        assert verifier.add_input_set(sets[1], "input set 2")
    result = verifier.check(_squeezed(True))
    assert not result.ok  # verified: read at rank 3, the second set's ids (rank 2) were held by the tolerance
    assert "the ids of output 'out'" in result.first_failure and "input set 2" in result.first_failure
    assert verifier.check(_squeezed(False)).ok
