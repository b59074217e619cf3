"""The pipeline: ordering, timing, verification, rollback of bad passes, the report."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.options import Options
from optimizer.pipeline import count_nodes, run_pipeline, undefined_input
from optimizer.protocol import PassContext, PassSpec
from optimizer.report import STATUS_APPLIED, STATUS_FAILED, STATUS_ROLLED_BACK, STATUS_UNCHANGED
from optimizer.verify import Verifier
from passes.cleanup import RemoveIdentityPass
from tests.helpers import op_types, parse_model

MODEL = """
    <ir_version: 9, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) {
      a = Identity(x)
      b = Relu(a)
      y = Add(b, x)
    }"""


class _WrongAnswerPass(ir.passes.InPlacePass):
    """Replaces Relu with Sigmoid: runs fine, changes the answer."""

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return ir.passes.PassResult(model, modified=True)


class _BrokenGraphPass(ir.passes.InPlacePass):
    """Produces a graph ONNX Runtime cannot load (unknown op)."""

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "NoSuchOp"
        return ir.passes.PassResult(model, modified=True)


class _RaisingPass(ir.passes.InPlacePass):
    def call(self, model):
        model.graph.remove(model.graph.node(0))  # half-done work that must not leak out
        raise RuntimeError("bug in pass")


def _spec(name, pass_class):
    return PassSpec(name, lambda options: pass_class(), "test pass", frozenset())


def _verifier(model):
    inputs = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    return Verifier(model, [inputs])


def test_good_pass_is_applied_and_counted():
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("remove-identity", RemoveIdentityPass)], verifier=_verifier(model))
    assert op_types(optimized) == ["Relu", "Add"]
    record = report.passes[0]
    assert (record.status, record.nodes_before, record.nodes_after) == (STATUS_APPLIED, 3, 2)
    assert record.max_abs_error == 0.0
    assert record.seconds >= 0
    assert count_nodes(model) == 3, "the input model must not be modified"


def test_wrong_answer_is_rolled_back_and_named():
    model = parse_model(MODEL)
    specs = [_spec("wrong", _WrongAnswerPass), _spec("remove-identity", RemoveIdentityPass)]
    optimized, report = run_pipeline(model, specs, verifier=_verifier(model))
    wrong, identity = report.passes
    assert wrong.status == STATUS_ROLLED_BACK
    assert "output 'y'" in wrong.detail and "max abs error" in wrong.detail
    assert wrong.max_abs_error > 0.01
    assert identity.status == STATUS_APPLIED, "the rest of the pipeline goes on"
    assert op_types(optimized) == ["Relu", "Add"]


def test_result_ort_cannot_run_is_rolled_back():
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("broken", _BrokenGraphPass)], verifier=_verifier(model))
    assert report.passes[0].status == STATUS_ROLLED_BACK
    assert "ONNX Runtime cannot run the result" in report.passes[0].detail
    assert "Relu" in op_types(optimized)


def test_raising_pass_is_reported_and_its_partial_work_discarded():
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("raises", _RaisingPass)], verifier=_verifier(model))
    assert report.passes[0].status == STATUS_FAILED
    assert report.passes[0].detail == "RuntimeError: bug in pass"
    assert op_types(optimized) == ["Identity", "Relu", "Add"]


def test_raise_errors_reraises():
    model = parse_model(MODEL)
    with pytest.raises(RuntimeError, match="bug in pass"):
        run_pipeline(model, [_spec("raises", _RaisingPass)], context=PassContext(Options(raise_errors=True)))


def test_without_verifier_wrong_answers_go_through():
    # --no-verify means exactly that: the user takes responsibility.
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("wrong", _WrongAnswerPass)], verifier=None)
    assert report.passes[0].status == STATUS_APPLIED
    assert not report.verified
    assert "Sigmoid" in op_types(optimized)


class _DanglingInputPass(ir.passes.InPlacePass):
    """Makes Relu read a tensor no node, input or initializer defines (a lost initializer)."""

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Relu":
                node.replace_input_with(0, ir.Value(name="lost", const_value=ir.tensor(np.zeros((3, 4), np.float32))))
        return ir.passes.PassResult(model, modified=True)


class _RemovedProducerPass(ir.passes.InPlacePass):
    """Removes the Relu while the Add still reads its output (a producer dropped, its readers not rewired)."""

    def call(self, model):
        model.graph.remove(next(node for node in model.graph if node.op_type == "Relu"), safe=False)
        return ir.passes.PassResult(model, modified=True)


def test_a_result_whose_removed_node_is_still_read_fails():
    # A review: a detached node still reports itself as its output's producer.
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("removed", _RemovedProducerPass)], verifier=None)
    assert report.passes[0].status == STATUS_FAILED
    assert "Add node" in report.passes[0].detail and "'b', which nothing defines" in report.passes[0].detail
    assert op_types(optimized) == ["Identity", "Relu", "Add"]


@pytest.mark.parametrize("verified", [True, False])
def test_a_result_reading_an_undefined_tensor_fails_even_without_verification(verified):
    # A review: onnxscript's Flatten rule lost an initializer and --no-verify wrote a file ONNX Runtime refused;
    # every later pass then failed on it. A graph that reads what nothing defines is never kept.
    model = parse_model(MODEL)
    verifier = _verifier(model) if verified else None
    optimized, report = run_pipeline(model, [_spec("dangling", _DanglingInputPass)], verifier=verifier)
    assert report.passes[0].status == STATUS_FAILED
    assert "Relu node" in report.passes[0].detail and "'lost', which nothing defines" in report.passes[0].detail
    assert [value.name for node in optimized.graph for value in node.inputs] == ["x", "a", "b", "x"]


def test_unchanged_pass_reports_unchanged():
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }""")
    _, report = run_pipeline(model, [_spec("remove-identity", RemoveIdentityPass)], verifier=_verifier(model))
    assert report.passes[0].status == STATUS_UNCHANGED


def test_report_json_round_trips(tmp_path):
    model = parse_model(MODEL)
    _, report = run_pipeline(
        model,
        [_spec("remove-identity", RemoveIdentityPass)],
        verifier=_verifier(model),
        context=PassContext(Options(target="cpu")),
        label="tiny.onnx",
    )
    path = tmp_path / "report.json"
    report.write_json(path)
    data = json.loads(path.read_text())
    assert data["schema"] == "graphopt.pipeline-report/1"
    assert data["model"] == "tiny.onnx"
    assert data["nodes_before"] == 3 and data["nodes_after"] == 2
    assert data["passes"][0]["name"] == "remove-identity"
    assert data["tolerances"]["float32"] == {"rtol": 1e-4, "atol": 1e-5}
    assert data["inputs"] == [{"x": [3, 4]}]


class _RetypingPass(ir.passes.InPlacePass):
    """Sets an existing value's dtype in place (as some passes legitimately do on their copy), then fails."""

    def call(self, model):
        model.graph.inputs[0].dtype = ir.DataType.DOUBLE
        raise RuntimeError("failed after retyping")


def test_a_rolled_back_pass_cannot_retype_the_model_it_was_given():
    # onnx-ir's clone shares type objects; the pipeline's copies must not.
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("retype", _RetypingPass)], verifier=_verifier(model))
    assert report.passes[0].status == STATUS_FAILED
    assert model.graph.inputs[0].dtype == ir.DataType.FLOAT
    assert optimized.graph.inputs[0].dtype == ir.DataType.FLOAT


FUNCTION_MODEL = """
    <ir_version: 9, opset_import: ["" : 17, "local" : 1]>
    g (float[N, 4] x, bool cond) => (float[N, 4] y) {
      y = local.Block(x, cond)
    }
    <domain: "local", opset_import: ["" : 17]>
    Block (a, c) => (b) {
      top = Constant<value = float {2.0}>()
      clipped = Clip(a, , top)
      branch = If(c) <
        then_branch = then_g () => (float[N, 4] t) { t = Relu(a) },
        else_branch = else_g () => (float[N, 4] e) { e = Neg(clipped) }
      >
      b = Add(branch, a)
    }"""


class _FunctionReadsPass(ir.passes.InPlacePass):
    """Makes the function's Add read ``source(model)`` instead of the If's output; a correct choice when None."""

    source = None

    def call(self, model):
        function = next(iter(model.functions.values()))
        add = next(node for node in function if node.op_type == "Add")
        source = self.source(model) if self.source else None
        if source is not None:
            add.replace_input_with(0, source)
        add.name = "renamed"  # a change that keeps the function valid
        return ir.passes.PassResult(model, modified=True)


class _FunctionReadsLostInitializerPass(_FunctionReadsPass):
    source = staticmethod(lambda model: ir.Value(name="lost", const_value=ir.tensor(np.zeros(4, np.float32))))


class _FunctionReadsGraphInputPass(_FunctionReadsPass):
    source = staticmethod(lambda model: model.graph.inputs[0])  # the caller's x: out of the function's scope


def _function_inputs(model):
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    return [{"x": x, "cond": np.array(True)}, {"x": x, "cond": np.array(False)}]


@pytest.mark.parametrize(
    ("pass_class", "read"),
    [(_FunctionReadsLostInitializerPass, "'lost'"), (_FunctionReadsGraphInputPass, "'x'")],
)
def test_a_function_body_reading_what_it_does_not_define_fails(pass_class, read):
    # A review: only the main graph and its subgraphs were checked, so a function body reading a lost initializer
    # (or its caller's tensor, which a function cannot see) was written to a file ONNX Runtime refuses.
    model = parse_model(FUNCTION_MODEL)
    optimized, report = run_pipeline(model, [_spec("dangling", pass_class)], verifier=None)
    assert report.passes[0].status == STATUS_FAILED
    assert f"in function local.Block, Add node renamed reads {read}, which nothing defines" in report.passes[0].detail
    assert all(node.name != "renamed" for node in optimized.functions[("local", "Block", "")])


def test_a_function_reading_its_inputs_an_optional_gap_and_its_body_values_passes():
    # No false alarm: the function reads its own inputs (in a branch too), has an empty optional input (Clip's min),
    # and reads the outputs of its earlier nodes.
    model = parse_model(FUNCTION_MODEL)
    verifier = Verifier(model, _function_inputs(model))
    optimized, report = run_pipeline(model, [_spec("rename", _FunctionReadsPass)], verifier=verifier)
    assert report.passes[0].status == STATUS_APPLIED, report.passes[0].detail
    assert any(node.name == "renamed" for node in optimized.functions[("local", "Block", "")])


BRANCH_MODEL = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x, bool c) => (float[2] y) {
      y = If(c) <
        then_branch = then_g () => (float[2] t) { k = Constant<value = float[2] {5.0, 5.0}>() t = Add(x, k) },
        else_branch = else_g () => (float[2] e) { e = Neg(x) }
      >
    }"""


def _then_value(model):
    return model.graph.node(0).attributes["then_branch"].as_graph().node(1).outputs[0]


def _main_reads_then_value(model):
    reader = ir.node("Mul", [model.graph.node(0).outputs[0], _then_value(model)], name="outer")
    model.graph.append(reader)
    model.graph.outputs[0] = reader.outputs[0]


def _else_reads_then_value(model):
    else_graph = model.graph.node(0).attributes["else_branch"].as_graph()
    else_graph.node(0).replace_input_with(0, _then_value(model))


@pytest.mark.parametrize("read", [_main_reads_then_value, _else_reads_then_value])
def test_a_read_of_a_value_defined_in_another_scope_is_undefined(read):
    # A review: every value of the graph and its subgraphs counted as defined everywhere in it, so a main-graph
    # node reading a branch's value, or one branch reading its sibling's, passed and ONNX Runtime refused the file.
    model = parse_model(BRANCH_MODEL)
    assert undefined_input(model) is None
    read(model)
    assert "reads 't', which nothing defines" in undefined_input(model)


def test_an_initializer_put_on_a_function_graph_is_undefined():
    # A function holds no initializers: serialization drops them, so its node reads nothing.
    model = parse_model(FUNCTION_MODEL)
    function = model.functions[("local", "Block", "")]
    weight = ir.Value(name="w", const_value=ir.tensor(np.ones(4, np.float32)))
    function.graph.register_initializer(weight)
    add = next(node for node in function if node.op_type == "Add")
    add.replace_input_with(1, weight)
    assert undefined_input(model) == "in function local.Block, Add node (unnamed) reads 'w', which nothing defines"


ORDER_MODEL = """
    <ir_version: 9, opset_import: ["" : 17, "local" : 1]>
    g (float[2] x, bool c) => (float[2] y) {
      early = Relu(x)
      b = If(c) <
        then_branch = then_g () => (float[2] t) { u = Neg(early) t = Abs(u) },
        else_branch = else_g () => (float[2] e) { e = Neg(x) }
      >
      late = Sigmoid(x)
      y = local.Block(b, late)
    }
    <domain: "local", opset_import: ["" : 17]>
    Block (p, q) => (r) { s = Add(p, q) r = Mul(s, q) }"""


def _order_model():
    """ORDER_MODEL with each node named after its first output."""
    model = parse_model(ORDER_MODEL)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        node.name = node.outputs[0].name
    for node in next(iter(model.functions.values())):
        node.name = node.outputs[0].name
    return model


def _then_branch(model):
    return model.graph.node("b").attributes["then_branch"].as_graph()


def _move_to_front(graph, node):
    graph.remove(node)
    graph.insert_before(graph[0], node)


def _main_call_first(model):
    _move_to_front(model.graph, model.graph.node("y"))


def _branch_abs_first(model):
    branch = _then_branch(model)
    _move_to_front(branch, branch.node("t"))


def _outer_relu_after_if(model):
    early = model.graph.node("early")
    model.graph.remove(early)
    model.graph.insert_after(model.graph.node("b"), early)


def _branch_reads_its_if(model):
    _then_branch(model).node("u").replace_input_with(0, model.graph.node("b").outputs[0])


def _sigmoid_reads_itself(model):
    late = model.graph.node("late")
    late.replace_input_with(0, late.outputs[0])


def _function_mul_first(model):
    function = next(iter(model.functions.values()))
    _move_to_front(function.graph, function.graph.node("r"))


@pytest.mark.parametrize(
    ("reorder", "problem"),
    [
        (_main_call_first, "Block node y reads 'b' before If node b defines it (the nodes are out of order)"),
        (_branch_abs_first, "Abs node t reads 'u' before Neg node u defines it (the nodes are out of order)"),
        (
            _outer_relu_after_if,
            "Neg node u reads 'early', which Relu node early defines only after the If node b that holds its "
            "subgraph (a subgraph sees the outer values defined before that node)",
        ),
        (_branch_reads_its_if, "Neg node u reads 'b', an output of the If node b that holds its subgraph"),
        (_sigmoid_reads_itself, "Sigmoid node late reads its own output 'late'"),
        (
            _function_mul_first,
            "in function local.Block, Mul node r reads 's' before Add node s defines it (the nodes are out of order)",
        ),
    ],
)
def test_a_read_before_the_definition_is_named(reorder, problem):
    # A review: only "defined somewhere in scope" was checked, so a node moved before the node it reads (in the
    # main graph, a branch or a function), or a branch reading an outer value computed after its If, passed; onnx-ir
    # and graphopt's save write nodes in the order they are in, and onnx.checker rejects every one of these files
    # (ONNX Runtime 1.32 sorts a main graph itself, but refuses an unsorted branch or function body).
    model = _order_model()
    assert undefined_input(model) is None  # the outer read of 'early', defined before the If, is in scope
    reorder(model)
    assert undefined_input(model) == problem
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(ir.to_proto(model))


class _ReorderingPass(ir.passes.InPlacePass):
    """Moves the last node of the main graph to the front: same nodes, same values, out of order."""

    def call(self, model):
        _move_to_front(model.graph, model.graph[-1])
        return ir.passes.PassResult(model, modified=True)


def test_a_result_out_of_order_fails_though_onnx_runtime_runs_it():
    # ONNX Runtime sorts a main graph when it loads it, so verification passed this result; the file it would have
    # written is one onnx.checker (and graphopt's own load) rejects.
    model = parse_model(MODEL)
    optimized, report = run_pipeline(model, [_spec("reorder", _ReorderingPass)], verifier=_verifier(model))
    assert report.passes[0].status == STATUS_FAILED
    assert "Add node (unnamed) reads 'b' before Relu node (unnamed) defines it" in report.passes[0].detail
    assert [node.op_type for node in optimized.graph] == ["Identity", "Relu", "Add"]
