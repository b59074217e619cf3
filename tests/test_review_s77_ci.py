"""Review s77 (ci): the clean-clone run at 6fcd4db failed one test, ``tests/test_review_s55_rename.py``'s function
whose ``Loop`` body is its caller's graph attribute: the walks this session added over functions' graphs (the lengths'
``_called_with_graphs``, ``verify.rewritten_windows``) used onnx-ir's recursive iterator, which raises on a reference
to a caller's attribute. Both now walk with ``optimizer.padding.nodes_within``, which skips references."""

from __future__ import annotations

import onnx_ir as ir

from optimizer.compared_inputs import _called_with_graphs, _inlined
from optimizer.verify import rewritten_windows
from tests.test_review_s55_rename import loop_body_given_by_the_caller


def test_the_functions_given_a_graph_are_found_past_a_reference_to_the_callers():
    model = ir.from_proto(loop_body_given_by_the_caller())
    assert _called_with_graphs(model) == [("local", "F", "")]
    assert _inlined(model) is not None


def test_windows_are_read_past_a_reference_to_the_callers_graph():
    model = ir.from_proto(loop_body_given_by_the_caller())
    assert rewritten_windows(model, model) == []
