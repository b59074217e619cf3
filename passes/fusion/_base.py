"""The shared driver of rule-based fusion passes: target gating, fixed point, cleanup."""

from __future__ import annotations

import abc
import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern

from optimizer.domains import MS_DOMAIN, is_onnx_domain
from passes._utils import remove_dead_nodes
from passes.fusion._targets import unsupported_ops

logger = logging.getLogger(__name__)

_MAX_ROUNDS = 8


class FusionPass(ir.passes.InPlacePass):
    """Base of the fusion passes: the target gate, ``fused_count``, opset import and dead-node cleanup.

    Subclasses set ``fused_ops`` (the ``(domain, op_type)`` pairs they emit) and
    implement ``fuse(model) -> int`` (the number of rewrites). The pass refuses,
    unchanged, when the target EP lacks a kernel for one of ``fused_ops``.
    ``fused_count`` holds the number of rewrites of the last run.
    """

    fused_ops: tuple[tuple[str, str], ...] = ()

    def __init__(self, target: str = "cpu") -> None:
        super().__init__()
        self.target = target
        self.fused_count = 0

    @abc.abstractmethod
    def fuse(self, model: ir.Model) -> int:
        """Rewrite what the pass fuses in ``model``; return the number of rewrites."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.fused_count = 0
        missing = unsupported_ops(self.fused_ops, self.target)
        if missing:
            logger.info("%s: target %s has no kernel for %s; left unfused", type(self).__name__, self.target, missing)
            return ir.passes.PassResult(model, modified=False)
        self.fused_count = self.fuse(model)
        if self.fused_count:
            if any(domain == MS_DOMAIN for domain, _ in self.fused_ops):
                model.opset_imports.setdefault(MS_DOMAIN, 1)
            remove_dead_nodes(model)
        return ir.passes.PassResult(model, modified=self.fused_count > 0)


class RuleFusionPass(FusionPass):
    """A fusion made of onnxscript rewrite rules, applied to a fixed point.

    Subclasses implement ``rule_set()``. Constant operands of commutative ops are
    moved second first, so rules match one operand order.
    """

    # Let onnxscript try every operand order of commutative ops. Costly for long
    # patterns (2^k variants), so rules with many Add/Mul spell out the orders
    # that remain once constants are moved to the right.
    commute: bool = False

    @abc.abstractmethod
    def rule_set(self) -> pattern.RewriteRuleSet | list[pattern.RewriteRuleSet]:
        """The rules, or several rule sets applied one after the other (longest patterns first)."""

    def fuse(self, model: ir.Model) -> int:
        moved = _move_constants_right(model.graph)
        count = 0
        rule_sets = self.rule_set()
        for rules in rule_sets if isinstance(rule_sets, list) else [rule_sets]:
            if self.commute:
                rules = pattern.RewriteRuleSet(rules.rules, commute=True)
            for _ in range(_MAX_ROUNDS):
                applied = rules.apply_to_model(model)
                if not applied:
                    break
                count += applied
        if not count:
            for node in moved:  # leave an unchanged graph exactly as it was
                _swap_operands(node)
        return count


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
