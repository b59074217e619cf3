"""A hostile review of e41b41b (and 6316554). Its two findings, first strict xfails, are fixed in the same session
and pass: the matcher that refuses attribute references is a ``PatternMatcher`` built from a pattern too, so a
linear rule still commutes; a Loop whose body indexes a table by its iteration number runs at most that table's
size of trips (and the count is drawn as before where that size is unknown)."""

from __future__ import annotations

import onnx
from onnx import parser
from onnxscript.rewriter import pattern

from optimizer.api import optimize_with_report


def _status(report, name: str) -> str:
    return next(record.status for record in report.passes if record.name == name)


def test_a_linear_rule_still_commutes():
    """``_LinearRule.commute`` (passes/_utils.py) builds ``type(self._matcher)(new_pattern)``, as onnxscript does:
    now ``_NoReferenceMatcher(pattern)``, a wrapper of a pattern, which onnxscript then calls: TypeError."""
    from passes._utils import _LinearRule

    rule = pattern.RewriteRule(lambda op, x, y: op.Add(x, y), lambda op, x, y: op.Add(y, x))
    commuted = _LinearRule(rule, None).commute()
    assert len(commuted) == 2


def test_a_trip_count_whose_body_reads_one_row_per_trip_is_generated_runnable():
    """Before e41b41b ``n`` was drawn in [0, 2) and the model ran; now it is 3 and the body's ``Gather(x, i)`` reads
    row 2 of a two-row input: the original cannot run on its generated inputs."""
    model = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x, int64 n) => (float[3] y) {
            go = Constant<value = bool {1}>()
            zero = Constant<value = float[3] {0, 0, 0}>()
            y = Loop(n, go, zero) <body = body (int64 i, bool c, float[3] acc) => (bool c_out, float[3] acc_out) {
                c_out = Identity(c)
                row = Gather<axis = 0>(x, i)
                acc_out = Add(acc, row)
            }>
        }
        """
    )
    onnx.checker.check_model(model)
    _, report = optimize_with_report(model, ["fold-constants"])
    assert _status(report, "fold-constants") in ("applied", "unchanged")
