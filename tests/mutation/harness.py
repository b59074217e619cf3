"""Running the mutants: each model optimized once by the default pipeline, each mutant added as one more pass.

A *case* is one mutant on one optimized model under one way of verifying:

- ``generated``: no ``inputs=`` (generated inputs at two bindings, as by default);
- ``given``: real-looking user inputs (batch 2, 24 tokens, one padded row: on the right
  for encoders, on the left for decoders, as their tokenizers pad), as an ``.npz`` path
  for legacy exports and a dict otherwise;
- for mutants that mishandle padding, also the flags that leave verification without
  a padded row unless it adds one: ``given-unpadded`` (user inputs, no padding),
  ``all-dims`` (``dims=`` for every symbolic dim) and ``static-shapes``.

The default pipeline runs once per model (cached in the harness's folder); a case then
optimizes that result with no passes of its own and the mutant's ``PassSpec`` appended
by a wrapped ``optimizer.api.resolve``, through ``optimize_with_report(path,
output=..., inputs=...)``, so every verification feature (bindings, padded copies,
twins) applies. The reference outputs are the optimized model's, which the pipeline
verified against the export.

A mutant is *killed* when its pass ends "rolled back" with a ``detail`` that says why
(the mutant's ``reason`` pattern). Anything else is reported: ``survived`` (applied),
``wrong reason`` (rolled back, but the detail does not say what went wrong), ``broken``
(the mutant raised or found nothing to change: a harness bug), ``crashed`` (the
pipeline itself raised: a traceback where a named rollback was due).
"""

from __future__ import annotations

import re
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import onnx_ir as ir

import optimizer.api as api
from optimizer import registry
from optimizer.report import STATUS_APPLIED, STATUS_FAILED, STATUS_ROLLED_BACK, STATUS_UNCHANGED
from tests.helpers import FIXTURES
from tests.mutation.mutants import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Harness model key -> (exported file, passes added to the default pipeline).
MODELS: dict[str, tuple[Path, tuple[str, ...]]] = {
    **{
        f"{name}_{exporter}": (FIXTURES / f"{name}_{exporter}.onnx", ())
        for name in ("bert", "distilbert", "gpt2", "llama", "vit", "resnet")
        for exporter in ("legacy", "dynamo")
    },
    # SkipLayerNormalization and its RMS form are opt-in fusions: add them to have the op to mutate.
    "bert_dynamo+skip": (FIXTURES / "bert_dynamo.onnx", ("+fuse-layer-norm", "+fuse-skip-layer-norm")),
    "llama_legacy+skip": (FIXTURES / "llama_legacy.onnx", ("+fuse-skip-rms-norm",)),
    "encoder": (ROOT / "examples" / "encoder.onnx", ()),
    "mistral_window16": (HERE / "fixtures" / "mistral_window16_dynamo.onnx", ()),
    "mistral_window160": (HERE / "fixtures" / "mistral_window160_dynamo.onnx", ()),
}
DECODERS = ("gpt2", "llama", "mistral")

# The fused ops each optimized model must have for its mutants to mean what they say.
FUSED: dict[str, tuple[str, ...]] = {
    "bert_legacy": ("Attention", "LayerNormalization"),
    "bert_dynamo": ("Attention", "LayerNormalization"),
    "distilbert_legacy": ("Attention",),
    "distilbert_dynamo": ("Attention",),
    "gpt2_legacy": ("Attention", "LayerNormalization"),
    "gpt2_dynamo": ("Attention", "LayerNormalization"),
    "llama_legacy": ("MultiHeadAttention", "RotaryEmbedding", "SimplifiedLayerNormalization"),
    "llama_dynamo": ("MultiHeadAttention", "RotaryEmbedding", "SimplifiedLayerNormalization"),
    "vit_legacy": ("Attention", "LayerNormalization"),
    "vit_dynamo": ("Attention", "LayerNormalization"),
    "resnet_legacy": ("Conv",),
    "resnet_dynamo": ("Conv",),
    "bert_dynamo+skip": ("Attention", "SkipLayerNormalization"),
    "llama_legacy+skip": ("MultiHeadAttention", "SkipSimplifiedLayerNormalization"),
    "encoder": ("Attention", "LayerNormalization"),
    "mistral_window16": ("MultiHeadAttention", "RotaryEmbedding"),
    "mistral_window160": ("MultiHeadAttention", "RotaryEmbedding"),
}

MODES = ("generated", "given")
PADDING_MODES = ("given-unpadded", "all-dims", "static-shapes")

# Real-looking user inputs.
_BATCH, _SEQUENCE, _PADDED, _VOCAB = 2, 24, 6, 1000
# The flags that leave every row unpadded unless verification pads one itself.
_ALL_DIMS = {"batch": 2, "sequence": 16}
_STATIC_DIMS = {"batch": 1, "sequence": 16}

KILLED, SURVIVED, WRONG_REASON, BROKEN, CRASHED = "killed", "survived", "wrong reason", "broken", "crashed"


@dataclass(frozen=True)
class Case:
    mutant: Mutant
    model: str
    mode: str

    @property
    def id(self) -> str:
        return f"{self.mutant.name}-{self.model}-{self.mode}"


def all_cases() -> list[Case]:
    """Every mutant on every model it applies to, under every mode it is run in."""
    cases = []
    for mutant in MUTANTS:
        modes = MODES + (PADDING_MODES if mutant.padding else ())
        cases.extend(Case(mutant, model, mode) for model in mutant.models for mode in modes)
    return cases


@dataclass
class Outcome:
    case: Case
    verdict: str
    status: str = ""
    detail: str = ""
    input_sets: list[str] = field(default_factory=list)
    seconds: float = 0.0
    twin: str = ""

    def describe(self) -> str:
        where = "; ".join(self.input_sets)
        twin = f"; twin: {self.twin}" if self.twin else ""
        status = f"status {self.status!r}, detail {self.detail!r}{twin}"
        return f"{self.case.id}: {self.verdict} ({status}; input sets: {where})"


def real_inputs(key: str, model: ir.Model, *, padded: bool = True) -> dict[str, np.ndarray]:
    """Inputs a user would pass: token ids, segments and a padded mask, or image-like pixels."""
    rng = np.random.default_rng(11)
    names = [value.name for value in model.graph.inputs]
    if names == ["pixel_values"]:
        return {"pixel_values": rng.standard_normal((_BATCH, 3, 32, 32)).astype(np.float32)}
    mask = np.ones((_BATCH, _SEQUENCE), np.int64)
    if padded:
        # Decoders' tokenizers pad on the left for batched generation; encoders' on the right.
        if key.split("_")[0] in DECODERS:
            mask[1, :_PADDED] = 0
        else:
            mask[1, -_PADDED:] = 0
    ids = rng.integers(1, _VOCAB, (_BATCH, _SEQUENCE)).astype(np.int64) * mask
    segments = np.zeros((_BATCH, _SEQUENCE), np.int64)
    segments[:, _SEQUENCE // 2 :] = 1
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments * mask}
    return {name: arrays[name] for name in names}


class Harness:
    """Optimizes each model once, runs each case once, and keeps the outcomes for the kill-rate summary."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._optimized: dict[str, Path] = {}
        self.outcomes: dict[str, Outcome] = {}

    def optimized(self, key: str) -> Path:
        """``key``'s model after the default pipeline (plus its extra passes), written once."""
        if key not in self._optimized:
            source, extra = MODELS[key]
            path = self.folder / f"{key}.optimized.onnx"
            api.optimize_with_report(source, list(extra) or None, output=path)
            self._optimized[key] = path
        return self._optimized[key]

    def run(self, case: Case) -> Outcome:
        """The case's outcome (computed on first use)."""
        if case.id not in self.outcomes:
            started = time.perf_counter()
            outcome = self._run(case)
            outcome.seconds = time.perf_counter() - started
            self.outcomes[case.id] = outcome
        return self.outcomes[case.id]

    def _run(self, case: Case) -> Outcome:
        path = self.optimized(case.model)
        keywords = self._keywords(case, path)
        spec = case.mutant.spec()

        def resolve_with_mutant(names, options):
            return [*registry.resolve(names, options), spec]

        try:
            with mock.patch.object(api, "resolve", resolve_with_mutant):
                _, report = api.optimize_with_report(path, [], output=self.folder / "mutated.onnx", **keywords)
        except Exception:  # a traceback where a named rollback was due: record it, the test shows it
            return Outcome(case, CRASHED, detail=traceback.format_exc(limit=-3))
        record = report.passes[-1]
        outcome = Outcome(case, BROKEN, record.status, record.detail, list(report.input_sets), twin=record.twin or "")
        if record.name != spec.name or record.status in (STATUS_UNCHANGED, STATUS_FAILED):
            return outcome
        if record.status == STATUS_APPLIED:
            outcome.verdict = SURVIVED
        elif record.status == STATUS_ROLLED_BACK:
            meaningful = bool(record.detail.strip()) and re.search(case.mutant.reason, record.detail)
            outcome.verdict = KILLED if meaningful else WRONG_REASON
        return outcome

    def _keywords(self, case: Case, path: Path) -> dict:
        if case.mode == "generated":
            return {}
        if case.mode == "all-dims":
            return {"dims": dict(_ALL_DIMS)}
        if case.mode == "static-shapes":
            return {"dims": dict(_STATIC_DIMS), "static_shapes": True}
        inputs = real_inputs(case.model, ir.load(path), padded=case.mode == "given")
        if case.mode == "given" and case.model.endswith("_legacy"):
            npz = self.folder / f"{case.model}.inputs.npz"
            np.savez(npz, **inputs)
            return {"inputs": npz}
        return {"inputs": inputs}

    def summary(self) -> str:
        """The kill rate, per mutant and overall, and every case that was not killed."""
        if not self.outcomes:
            return "mutation harness: no case ran"
        by_mutant: dict[str, Counter] = {}
        for outcome in self.outcomes.values():
            by_mutant.setdefault(outcome.case.mutant.name, Counter())[outcome.verdict] += 1
        width = max(len(name) for name in by_mutant)
        lines = ["mutation harness: kill rate by mutant"]
        for mutant in MUTANTS:
            counts = by_mutant.get(mutant.name)
            if counts is None:
                continue
            total = sum(counts.values())
            others = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if verdict != KILLED)
            hole = f" [hole {mutant.hole}]" if mutant.hole else ""
            lines.append(
                f"  {mutant.name:<{width}} {counts[KILLED]:>3}/{total:<3} killed{hole}"
                + (f"  ({others})" if others else "")
            )
        killed = sum(1 for outcome in self.outcomes.values() if outcome.verdict == KILLED)
        total = len(self.outcomes)
        seconds = sum(outcome.seconds for outcome in self.outcomes.values())
        lines.append(f"  kill rate: {killed}/{total} = {100.0 * killed / total:.1f}% ({seconds:.0f}s of cases)")
        for outcome in self.outcomes.values():
            if outcome.verdict != KILLED:
                lines.append(f"  not killed: {outcome.describe()}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The kill rate and every case's outcome, JSON-ready."""
        return {
            "kill_rate": self.kill_rate(),
            "cases": [
                {
                    "mutant": outcome.case.mutant.name,
                    "model": outcome.case.model,
                    "mode": outcome.case.mode,
                    "hole": outcome.case.mutant.hole,
                    "verdict": outcome.verdict,
                    "status": outcome.status,
                    "detail": outcome.detail,
                    "twin": outcome.twin,
                    "input_sets": outcome.input_sets,
                    "seconds": round(outcome.seconds, 3),
                }
                for outcome in self.outcomes.values()
            ],
        }

    def kill_rate(self) -> float:
        killed = sum(1 for outcome in self.outcomes.values() if outcome.verdict == KILLED)
        return killed / len(self.outcomes) if self.outcomes else 0.0
