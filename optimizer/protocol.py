"""The contract between the spine and the passes: how a pass is declared, built, and says what it did.

- ``PassSpec`` declares a pass: its name, how to build it, where it is a default, and
  the composition rules ``optimizer.registry.resolve`` checks (which option asks for
  it, which options it reads, which passes it excludes or must follow, which targets
  it runs on).
- ``PassContext`` is what a pass factory may know about the run.
- ``NotedResult`` is an ``onnx_ir.passes.PassResult`` that also carries the pass's
  notes (what it decided) and refusals (why it left something alone); the pipeline
  puts both in the report. A pass that returns a plain ``PassResult`` has neither.

This module imports no pass and nothing of the pipeline, so passes and the catalog
can depend on it without a circle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.accuracy import AccuracyBudget
from optimizer.options import TARGETS, Options, flag_of, metavar_of

# Options the verifier reads for every approximate pass.
BUDGET_OPTIONS = ("min_cosine", "max_error", "min_worst_cosine", "min_top1")
# Constants named so are a pass's own exact float arithmetic beside a reduced layer (int4's block offsets and
# outlier channels, their mask and block sums): no weights of the model (``optimizer.parameters``), and never a
# layer to reduce again (``passes._layers``), or a second run would round them.
EXACT_CORRECTION_PREFIX = "graphopt.exact."


@dataclass
class NotedResult(ir.passes.PassResult):
    """A pass result with the pass's own account of the run.

    ``notes``: what the pass decided (layers kept float, accuracy reached), shown
    under the report's table. ``refusals``: why it left something unchanged,
    counted where they repeat ("2 of 12 Softmax left unfused: the scores have other
    users"), shown with ``-v`` and always written to the JSON report. ``fitted_to_samples``:
    see the field.
    """

    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    twin: Twin | None = None
    # True when the result was fitted (ranked, repaired) to the calibration samples other than those
    # ``optimizer.samples.hold_out`` holds out: the accuracy budget is then checked on the held-out ones alone.
    fitted_to_samples: bool = False
    # Where nothing was held out of such a fit, what was fitted to the samples the accuracy is then checked on ("its
    # ranges were taken from"): the report's ``accuracy_on`` says so beside the count, as the pass's own note does.
    fitted_to_checked: str = ""


# How close an approximate pass's result must be to its twin; keys of ``optimizer.verify.TWIN_TOLERANCES``.
TWIN_KINDS = ("float32", "float16", "int8", "int4", "int4-float")


@dataclass(frozen=True)
class Twin:
    """The exact float model an approximate pass claims its result computes.

    Built from the pass's *input* model and the pass's declared decisions — the units it
    removed and the weights its repair wrote, the int8 values and scales it chose — never
    from its rewritten graph, so a realization that differs from the claim (a head's rows
    swapped, a scale off by 2x, a kernel that saturates) shows up as a difference between
    the result and its twin. The pipeline checks the result against the twin at
    ``kind``'s tolerance on every verification input set, then the result against the
    accuracy budget.

    - ``kind``: ``"float32"`` (pruning, embedding int8: the same float arithmetic, units
      zeroed or tables dequantized); ``"int8"`` (quantize-dequantize in float: integer
      kernels may round an activation differently at a tie, one step at most);
      ``"float16"`` (float16 weights in float32 arithmetic: the result on CPU rounds some
      activations to float16 too); ``"int4"`` (4-bit weights dequantized, and where the
      kernel quantizes its input to int8 per block, that too: the same ties as int8);
      ``"int4-float"`` (4-bit weights dequantized where no kernel of the result rounds an
      activation: every layer at accuracy_level 0, so no tie can flip and no row may pass
      by the int8 row rule).
    - ``description``: what the twin is, for the report ("the input with 96 FFN units
      zeroed and the repaired weights in place").
    - ``checkpoints``: names of float tensors, present in the result, the twin and the
      float model they approximate, where the approximation starts (the activations an
      int8 or int4 layer quantizes at run time; those a pruned or factorized layer's block
      reads, none a cut narrows). Where integer rounding at ties (or a narrower layer's
      other summation order) cascades through a deep model past the end-to-end tolerance,
      the result is checked segment by
      segment instead: each segment between checkpoints is fed the twin's values and held
      to the twin at the same tolerance (``Verifier.check_twin``).
    - ``layer_outputs``: (activation, output) names of the quantized MatMul, Gemm and Conv layers,
      held under those names by the result and the twin: each layer is also run alone (on probe rows
      no kernel rounds; a Conv on its real input) and must compute its twin's weights to float32
      rounding (``optimizer.layer_probe``).
    - ``source``: the float model the twin approximates, where that is not the pass's
      input (SmoothQuant rescaled it first, or a quantizer wrote its Gemms in its kernels'
      form); the pipeline holds it to the input as an exact rewrite. None means the pass's input.
    - ``deployed``: the model as the result computes where its float16 ops run as float16
      kernels (a GPU): the result in float32 with every value it stores as float16 rounded
      to float16 (infinite past 65504), or the twin with those activations rounded. ONNX
      Runtime's CPU EP runs most float16 ops as float32 kernels, so the result checked on
      CPU never overflows where the deployed model does: this model is held to the accuracy
      budget beside the result.
    - ``unrounded``: for an ``"int4"`` twin whose kernels round their inputs (accuracy_level
      4), what builds the same twin without that rounding (``"int4-float"``; built only when
      needed: a twin holds the weights in float32): what the result computes
      where ONNX Runtime runs its MatMulNBits on float inputs instead (no int8 kernel for
      that block size or CPU). The verifier holds the result to it only where the result
      as written computes exactly what it does at level 0 (``Verifier.check_twin``).
    """

    model: ir.Model
    kind: str
    description: str
    checkpoints: tuple[str, ...] = ()
    source: ir.Model | None = None
    layer_outputs: tuple[tuple[str, str], ...] = ()
    unrounded: Callable[[], Twin] | None = None
    deployed: ir.Model | None = None

    def __post_init__(self) -> None:
        if self.kind not in TWIN_KINDS:
            raise ValueError(f"twin kind {self.kind!r}: expected one of {', '.join(TWIN_KINDS)}")


@dataclass(frozen=True)
class PassContext:
    """What a pass factory may know about the run: the options, the bound input dims, the sample inputs."""

    options: Options = field(default_factory=Options)
    dims: Mapping[str, int] = field(default_factory=dict)
    samples: Mapping[str, np.ndarray] | None = None
    # True when ``samples`` were generated (random tokens), not the user's data: passes
    # must not fit anything to them (pruning ranks by magnitude and does not repair).
    samples_generated: bool = False
    # The model the pipeline started from (``run_pipeline`` sets it): the accuracy budget bounds the whole model
    # against it, so a search after an earlier approximate pass (pruning) holds its points to it too.
    original: ir.Model | None = None
    # The names of the run's passes in order (``run_pipeline`` sets it): a pass that steps aside for a later one reads
    # it, however that one was asked for (``--quantize int4``, or ``quantize-int4`` named in ``--passes``).
    pipeline: tuple[str, ...] = ()

    @property
    def target(self) -> str:
        return self.options.target

    @property
    def budget(self) -> AccuracyBudget | None:
        return self.options.budget


@dataclass(frozen=True)
class Request:
    """The option that asks for a pass: ``Request("quantize", "dynamic")`` or ``Request("prune_ffn")`` (any value)."""

    option: str
    value: Any = None

    def asked(self, options: Options) -> bool:
        current = getattr(options, self.option)
        if self.value is None:
            return current is not None and current is not False
        return current == self.value

    def describe(self) -> str:
        """The flag a user gives: ``--quantize dynamic``, ``--prune-ffn R``, ``--fp16``."""
        flag = flag_of(self.option)
        if self.value is True:
            return flag
        if self.value is None:
            metavar = metavar_of(self.option)
            return f"{flag} {metavar}" if metavar else flag
        return f"{flag} {self.value}"


@dataclass(frozen=True)
class PassSpec:
    """One registered pass: ``factory(context)`` builds a fresh onnx-ir pass instance.

    - ``default_for``: targets whose default pipeline runs it; ``targets``: the only
      targets it may run on at all (``target_reason`` says why).
    - ``specializes_shapes``: the result accepts only the bound input shapes
      (``--static-shapes`` runs these first; verification then uses one binding).
    - ``approximate``: changes numerics on purpose (quantization, pruning, float16);
      verified against the accuracy budget instead of float32 closeness.
    - ``requested_by``: the option that adds the pass to the pipeline (``--quantize
      dynamic``); ``needs``: an option that must be set when the pass runs (a pruning
      ratio); ``reads``: the other options it reads (an option set while no pass in the
      pipeline reads it is an error, not ignored).
    - ``excludes``: passes it does not combine with; ``after``: passes that must run
      before it when both are in the pipeline.
    - ``times_kernels``: it times kernels on this machine at ``Options.threads``: True
      always (low-rank's ranks), ``"budget"`` only under an accuracy budget (the
      quantization budget's layers); ``kernels_timed`` says whether it does for given options.
    """

    name: str
    factory: Callable[[PassContext], ir.passes.PassBase]
    summary: str
    default_for: frozenset[str] = frozenset()
    specializes_shapes: bool = False
    approximate: bool = False
    requested_by: Request | None = None
    needs: str | None = None
    reads: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    targets: tuple[str, ...] = TARGETS
    target_reason: str = ""
    times_kernels: bool | str = False

    def __post_init__(self) -> None:
        unknown = (set(self.default_for) | set(self.targets)) - set(TARGETS)
        if unknown:
            raise ValueError(f"pass {self.name!r}: unknown targets {sorted(unknown)}")
        fields = {f.name for f in dataclasses.fields(Options)}
        named = set(self.reads) | {self.needs} - {None}
        if self.requested_by is not None:
            named.add(self.requested_by.option)
        if named - fields:
            raise ValueError(f"pass {self.name!r}: unknown options {sorted(named - fields)}")

    @property
    def options_read(self) -> frozenset[str]:
        """Every option this pass reads: ``reads``, its request and need, and the budget if approximate."""
        names = set(self.reads) | ({self.needs} if self.needs else set())
        if self.requested_by is not None:
            names.add(self.requested_by.option)
        if self.approximate:
            names.update(BUDGET_OPTIONS)
        return frozenset(names)

    def kernels_timed(self, options: Options) -> bool:
        """Whether this pass times kernels (at ``options.threads``) in a run with ``options``."""
        if self.times_kernels == "budget":
            return options.budget is not None
        return bool(self.times_kernels)

    def how_to_ask(self) -> str:
        """How a user adds this pass: its flag if an option asks for it, else ``--passes +NAME``."""
        return self.requested_by.describe() if self.requested_by is not None else f"--passes +{self.name}"
