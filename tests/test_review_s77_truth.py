"""Review s77 (truth): README.md and docs/benchmarks.md as session 77 left them, against the code and tests at its
end. Claims a later commit of the session made stale, or a hand merge left behind:

- README still said the length of a ``Concat`` of two inputs is not followed, where review s77 xfix77 reads it as the
  sum of the two (``compared_inputs.lengths_combined``; ``tests/test_review_s77_xfix77.py`` rolls a branch on it back).
- README said two fixes were "until review s77" without naming which review (xtab).
- docs/benchmarks.md's decoder hunt still called the original's own thresholds "drawn one at a time" (fixed by xlen)
  and ``tests/test_review_s76_dmut.py`` "the holes", where it holds no strict xfail since review s77 xbag.
- docs/benchmarks.md's cost of session 77 quoted the figure's words of review s77 regress ("taken at the scale the
  original gives x"), which late77e replaced by the scale itself (``y − 0.9·x``).
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from optimizer.accuracy import Drift
from optimizer.compared_inputs import lengths_combined
from tests.helpers import strict_xfails

_ROOT = Path(__file__).resolve().parent.parent


def _flat(text: str) -> str:
    return " ".join(text.split())


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


@pytest.fixture(scope="module")
def readme() -> str:
    return _flat((_ROOT / "README.md").read_text())


@pytest.fixture(scope="module")
def benchmarks() -> str:
    return (_ROOT / "docs" / "benchmarks.md").read_text()


def _joined_length_compared() -> ir.Model:
    """``a[B, L]``, ``b[B, P]`` -> ``Concat(a, b) * (1.65 if Shape(Concat(a, b))[1] == 7 else 1.5)``."""
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["joined"], axis=1),
        helper.make_node("Shape", ["joined"], ["length"], start=1, end=2),
        helper.make_node("Equal", ["length", "seven"], ["at_seven"]),
        helper.make_node("Where", ["at_seven", "more", "factor"], ["scale"]),
        helper.make_node("Mul", ["joined", "scale"], ["y"]),
    ]
    constants = [
        helper.make_tensor("seven", TensorProto.INT64, [1], [7]),
        helper.make_tensor("factor", TensorProto.FLOAT, [1], [1.5]),
        helper.make_tensor("more", TensorProto.FLOAT, [1], [1.65]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", dim]) for name, dim in (("a", "L"), ("b", "P"))
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T"])]
    graph = helper.make_graph(nodes, "joined", inputs, outputs, constants)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))


def test_readme_does_not_call_a_concat_s_length_unfollowed_where_it_is_drawn(readme):
    drawn, _ = lengths_combined(_joined_length_compared(), [{"B": 1, "L": 128, "P": 128}], {"B", "L", "P"})
    assert any(lengths["L"] + lengths["P"] == 7 for lengths in drawn), drawn
    stale = re.findall(r"[^.]*length of a `Concat`[^.]*not followed[^.]*\.", readme)
    assert not stale, stale


def test_every_review_s77_readme_cites_is_named(readme):
    reviews = {path.stem.removeprefix("test_review_s77_") for path in (_ROOT / "tests").glob("test_review_s77_*.py")}
    cited = re.findall(r"review s77\b(?: (\w+))?", readme)
    assert cited and all(name in reviews for name in cited), sorted(set(cited) - reviews)


def test_the_decoder_hunt_says_what_session_77_lifted(benchmarks):
    hunt = _flat(_section(benchmarks, "## Decoder mutation hunt, review s76"))
    assert "own thresholds are still drawn one at a time" not in hunt  # drawn together since review s77 xlen
    if not strict_xfails("test_review_s76_dmut.py"):
        assert "the holes are `tests/test_review_s76_dmut.py`" not in hunt, "no strict xfail is left there"


def test_the_cost_of_session_77_quotes_the_figure_the_code_prints(benchmarks):
    cost = _flat(_section(benchmarks, "## What session 77's verification costs (review s77 regress)"))
    quoted = re.search(r"the figure names that scale \(`([^`]*)`", cost)
    assert quoted is not None, "the section says what the figure names since review s77 late77e"
    figure = str(Drift(0.5, 0.1, added=("y", "x"), added_scales=(0.9, 0.9), scored_less=(("y", "x"),)))
    assert quoted.group(1) in figure, (quoted.group(1), figure)
