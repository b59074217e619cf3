"""The shared driver of rule-based fusion passes: target gating, fixed point, cleanup."""

from __future__ import annotations

import abc
from collections import Counter

import onnx_ir as ir
from onnxscript.rewriter import _basics, pattern

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._pass import GraphoptPass, checked_target
from passes._utils import linear_rule_set, nothing_found_note, recorded_facts, remove_dead_nodes, restore_facts
from passes.fusion._targets import unsupported_ops

_MAX_ROUNDS = 8


class FusionPass(GraphoptPass, ir.passes.InPlacePass):
    """Base of the fusion passes: the target gate, ``fused_count``, opset import and dead-node cleanup.

    Subclasses set ``fused_ops`` (the ``(domain, op_type)`` pairs they emit) and
    implement ``fuse(model) -> int`` (the number of rewrites), recording each candidate
    with ``done(kind)`` or ``refuse(kind, reason)``. The pass refuses, unchanged, when
    the target EP lacks a kernel for one of ``fused_ops``. ``fused_count`` holds the
    number of rewrites of the last run. A run that fuses nothing in a graph already holding
    ``fused_ops`` or ``already_fused_ops`` (an ONNX Runtime GenAI decoder, graphopt's own
    output) says so in a note, with the count of each.
    """

    fused_ops: tuple[tuple[str, str], ...] = ()
    # Other ops that already compute what this pass fuses (GroupQueryAttention for attention).
    already_fused_ops: tuple[tuple[str, str], ...] = ()
    # False where the fused op is also what the pass starts from (fuse-conv-affine writes a Conv and reads one):
    # holding it says nothing about an earlier run.
    held_ops_mean_fused: bool = True
    # The op a match starts from and what the pass looks for, for a note where that op stands only in a Loop, If
    # or Scan body, which the fusions do not enter (Optimum's merged decoder holds its whole graph in an If).
    starts_from: tuple[str, ...] = ()
    looks_for: str = ""

    def __init__(self, target: str = "cpu") -> None:
        super().__init__()
        self.target = checked_target(target)
        self.fused_count = 0

    @abc.abstractmethod
    def fuse(self, model: ir.Model) -> int:
        """Rewrite what the pass fuses in ``model``; return the number of rewrites."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fused_count = 0
        missing = unsupported_ops(self.fused_ops, self.target)
        if missing:
            self.decline(f"target {self.target} has no kernel for {', '.join(missing)}")
            return self.result(model, modified=False)
        recorded = recorded_facts(model)
        self.fused_count = self.fuse(model)
        if self.fused_count:
            if any(domain == MS_DOMAIN for domain, _ in self.fused_ops):
                model.opset_imports.setdefault(MS_DOMAIN, 1)
            remove_dead_nodes(model)
        else:
            restore_facts(recorded)  # matching filled in Constants' shapes and values: as given, as the flag says
            self._note_already_fused(model)
            self._note_bodies(model)
        return self.result(model, modified=self.fused_count > 0)

    def _note_bodies(self, model: ir.Model) -> None:
        wanted = set(self.starts_from)
        if not wanted or any(node.op_type in wanted for node in model.graph):
            return
        if any(node.op_type in wanted for node in model.graph.all_nodes()):
            self.note(
                nothing_found_note(model, self.looks_for, f"it starts from a {' or '.join(self.starts_from)}", wanted)
            )

    def _note_already_fused(self, model: ir.Model) -> None:
        if not self.held_ops_mean_fused:
            return
        wanted = {(domain or "", op) for domain, op in (*self.fused_ops, *self.already_fused_ops)}
        found = Counter(node.op_type for node in model.graph.all_nodes() if (node.domain or "", node.op_type) in wanted)
        if found:
            held = ", ".join(f"{count} {op}" for op, count in sorted(found.items()))
            self.note(f"nothing left to fuse: the graph already holds {held} (fused before this run)")


class RuleFusionPass(FusionPass):
    """A fusion made of onnxscript rewrite rules, applied to a fixed point.

    Subclasses implement ``rule_set()``, called once per class (its rules hold no
    instance). Constant operands of commutative ops are moved second first, so rules
    match one operand order.
    """

    # Let onnxscript try every operand order of commutative ops. Costly for long
    # patterns (2^k variants), so rules with many Add/Mul spell out the orders
    # that remain once constants are moved to the right.
    commute: bool = False
    # The rules are built once per class and shared by its instances: building them (and the commuted
    # variants) took 10-20 ms a run, a fifth of the default pipeline's time on a small model. So a
    # rule holds no pass instance (rotary's rules read the running pass from a context variable).
    _built_rules: dict[type, list[pattern.RewriteRuleSet]] = {}

    @abc.abstractmethod
    def rule_set(self) -> pattern.RewriteRuleSet | list[pattern.RewriteRuleSet]:
        """The rules, or several rule sets applied one after the other (longest patterns first)."""

    def fuse(self, model: ir.Model) -> int:
        moved = _move_constants_right(model.graph)
        count = 0
        traced: list[tuple[pattern.RewriteRuleSet, _NearMisses | None, int]] = []
        for rules in self._rule_sets():
            # A round that rewrites nothing has tried every rule at every node of the graph as
            # it now is: its failed checks are the near misses, without a tracing run of its own.
            trace: _NearMisses | None = _NearMisses()
            linear = linear_rule_set(rules.rules, trace=trace)
            for _ in range(_MAX_ROUNDS):
                trace.clear()
                applied = linear.apply_to_model(model)
                if not applied:
                    break
                count += applied
            else:
                trace = None
            traced.append((rules, trace, count))
        self._report_near_misses(model, traced, count)
        if not count:
            for node in moved:  # leave an unchanged graph exactly as it was
                _swap_operands(node)
        else:
            # A replacement goes where the pattern's last node was, and may compute a value (a skip norm's sum)
            # that a node between the pattern's first and last reads (CLIP's text encoder reads the embeddings'
            # sum for its mask's shape before the first LayerNorm).
            model.graph.sort()
        return count

    def _rule_sets(self) -> list[pattern.RewriteRuleSet]:
        """``rule_set()`` as a list, commuted where the class asks; built on a class's first run."""
        built = RuleFusionPass._built_rules.get(type(self))
        if built is None:
            rule_sets = self.rule_set()
            built = rule_sets if isinstance(rule_sets, list) else [rule_sets]
            if self.commute:
                built = [pattern.RewriteRuleSet(rules.rules, commute=True) for rules in built]
            RuleFusionPass._built_rules[type(self)] = built
        return built

    def _report_near_misses(
        self, model: ir.Model, traced: list[tuple[pattern.RewriteRuleSet, _NearMisses | None, int]], count: int
    ) -> None:
        """Refusals for the subgraphs that matched a rule's pattern but failed its ``check``.

        Each rule set's near misses come from its last round, which rewrote nothing; a rule
        set whose rounds never came to rest, or after which a later one rewrote the graph,
        is traced again on the final graph (onnxscript's tracing mode). For each node the
        best near miss (the most nodes matched) gives the reason.
        """
        near_misses = _NearMisses()
        for rules, trace, count_then in traced:
            if trace is None or count_then != count:
                trace = _NearMisses()
                linear_rule_set(rules.rules).apply_to_model(model, tracer=trace)
            near_misses.absorb(trace)
        for (op_type, reason), times in Counter(near_misses.reasons()).most_common():
            matches = "match" if times == 1 else "matches"
            self.decline(f"{times} near {matches} at {op_type} left unfused: {reason}")


class _NearMisses(_basics.MatchingTracer):
    """Subgraphs that matched a rule's pattern but failed its ``check``, with the reason.

    Per root node the near-miss that matched the most nodes is kept; one whose nodes
    all belong to a larger near-miss (a shorter rule failing on part of the same
    subgraph) is the same candidate and is dropped.
    """

    def __init__(self) -> None:
        super().__init__()
        self._best: dict[int, tuple[frozenset[int], str, str]] = {}

    def log(self, rule, container, node, match_result, status) -> None:  # noqa: ANN001
        if status != _basics.MatchStatus.CONDITION_FAILED:
            return
        nodes = frozenset(id(n) for n in match_result.nodes)
        self._keep(id(node), (nodes, node.op_type, match_result.reason or "a check of the rule failed"))

    def _keep(self, root: int, near_miss: tuple[frozenset[int], str, str]) -> None:
        if root not in self._best or len(near_miss[0]) > len(self._best[root][0]):
            self._best[root] = near_miss

    def clear(self) -> None:
        self._best.clear()

    def absorb(self, other: _NearMisses) -> None:
        """Add ``other``'s near misses, as if its rules had been traced after this one's."""
        for root, near_miss in other._best.items():
            self._keep(root, near_miss)

    def reasons(self) -> list[tuple[str, str]]:
        """``(root op type, reason)`` for each distinct near-miss."""
        found = list(self._best.values())
        # A larger near miss holding all of one's nodes holds any one of them: compare only
        # with those (comparing every pair is quadratic in the graph's size).
        holding: dict[int, list[frozenset[int]]] = {}
        for nodes, _, _ in found:
            for member in nodes:
                holding.setdefault(member, []).append(nodes)
        any_nodes = bool(holding)

        def inside_another(nodes: frozenset[int]) -> bool:
            if not nodes:
                return any_nodes
            return any(nodes < other for other in holding[next(iter(nodes))])

        return [(op_type, reason) for nodes, op_type, reason in found if not inside_another(nodes)]


_COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Equal"})


def _move_constants_right(graph: ir.Graph) -> list[ir.Node]:
    """Put the constant operand of binary commutative ops second (``2 * x`` into ``x * 2``); return those nodes.

    A canonical operand order lets rules match with one order instead of all of them.
    """
    moved = []
    for node in graph:
        if node.op_type in _COMMUTATIVE and is_onnx_domain(node) and len(node.inputs) == 2:
            first, second = node.inputs
            if first is None or second is None:
                continue
            if _is_constant(first) and not _is_constant(second):
                _swap_operands(node)
                moved.append(node)
    return moved


def _swap_operands(node: ir.Node) -> None:
    first, second = node.inputs
    node.replace_input_with(0, second)
    node.replace_input_with(1, first)


def _is_constant(value: ir.Value) -> bool:
    return ir.convenience.get_const_tensor(value) is not None
