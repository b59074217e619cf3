"""Twin tolerance for int8: how close each legit int8 result comes to its twin, and how far wrong ones land.

For each model: the default (fusion) pipeline, then quantize-dynamic and quantize-static
run directly on it (generated calibration samples, no budget), so each returns its
twin. The result runs at ORT_ENABLE_ALL (the integer kernels), the twin as written
(ORT_DISABLE_ALL), on the verifier's generated input sets (default dims, then the
alternate binding; ``--extra-sets`` adds more at default dims). Per output:
``need = max |result - twin| / max(|twin|, RMS(twin))`` elementwise, the smallest rtol
(with atol 0) that the verifier's check ``|Δ| <= atol + rtol * max(|twin|, RMS(twin))``
passes at. The row keeps the worst output.

Then wrong realizations of the same results, each on a few layers (first, middle,
last, evenly spread): one layer's weight scale doubled; one layer's int8 weight rows
rolled by one (a transposed or permuted weight); and full-range (127) weights
(``reduce_range=False``), which only breaks on CPUs whose u8s8 kernels saturate
(without AVX512-VNNI/AVX-VNNI): on VNNI it is exact, and then it is legit. For the
corruptions the row shows each measure's *smallest* value over the layers tried: the
corruption that is hardest to see. Usage::

    python benchmarks/twin_tolerance.py [--models encoder,minilm,bert_legacy,...] [--layers 4] [--json out.json]
    python benchmarks/twin_tolerance.py --float16 [--models ...]

Besides ``need``, each cell shows measures that tell one activation rounded the other
way at a tie (which can cascade through later layers: legit) from a systematic error:
``rms-ratio`` RMS(Δ)/RMS(twin); ``spread`` RMS(result - twin)/RMS(twin - float), the
difference against the int8 error the twin claims; ``excess`` RMS(result - float)/RMS(twin
- float); and the share of elements beyond rtol 1e-3 ... 3e-2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx_ir as ir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizer.api import optimize  # noqa: E402
from optimizer.inputs import alternate_binding, batch_dims, make_inputs, symbolic_dims  # noqa: E402
from optimizer.runtime import inference_session, run_session  # noqa: E402
from passes.quantization.dynamic import DynamicQuantizationPass  # noqa: E402
from passes.quantization.static import StaticQuantizationPass  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
# Candidate rules for kind "int8" (a cell fails the check when the rule says so).
RULES = {
    "elementwise rtol 2e-2": lambda g: g["need"] > 2e-2,
    "elementwise rtol 0.3": lambda g: g["need"] > 0.3,
    "spread > 0.5": lambda g: g["spread"] > 0.5,
    "elementwise rtol 2e-2 and spread > 0.5": lambda g: g["need"] > 2e-2 and g["spread"] > 0.5,
    "excess > 1.08": lambda g: g["excess"] > 1.08,
}
# rtols at which the share of elements beyond ``rtol * max(|twin|, RMS(twin))`` is reported.
THRESHOLDS = (1e-3, 3e-3, 1e-2, 3e-2)
MODELS = {
    "encoder": ROOT / "examples" / "encoder.onnx",
    # The real sentence encoder (trained weights), where it is on this machine.
    "minilm": Path("/work/models/paraphrase-MiniLM-L3-v2.onnx"),
    **{
        f"{name}_{exporter}": FIXTURES / f"{name}_{exporter}.onnx"
        for name in ("bert", "gpt2", "llama", "resnet", "vit")
        for exporter in ("legacy", "dynamo")
    },
}


def _inputs(model: ir.Model, batch: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    dims = {name: batch if name in batch_dims(model) else sequence for name in symbolic_dims(model)}
    return make_inputs(model, dims, seed=seed)


def _verification_sets(model: ir.Model, extra: int) -> list[dict[str, np.ndarray]]:
    """The verifier's generated sets (default dims, then the alternate binding) and ``extra`` more at default dims."""
    sets = [make_inputs(model)]
    if (alternate := alternate_binding(model)) is not None:
        sets.append(make_inputs(model, alternate, seed=1))
    return sets + [make_inputs(model, seed=seed) for seed in range(2, 2 + extra)]


def _run(model: ir.Model, level: str, input_sets) -> list[dict[str, np.ndarray]]:
    with inference_session(model, optimization_level=level) as session:
        return [run_session(session, inputs) for inputs in input_sets]


def gap(results, twins, floats) -> dict:
    """How far ``results`` are from ``twins`` (and from the float model's ``floats``), worst over outputs and sets.

    - ``need``: max |Δ| / max(|twin|, RMS(twin)) elementwise, the rtol the verifier's check needs
      (with ``max_abs``, ``rms`` and ``output`` of that output);
    - ``beyond``: the largest share of elements beyond each rtol in ``THRESHOLDS``;
    - ``rms_ratio``: RMS(Δ) / RMS(twin);
    - ``spread``: RMS(result - twin) / RMS(twin - float): the difference against the int8 error the twin claims;
    - ``excess``: RMS(result - float) / RMS(twin - float): is the result worse than it claims?
    """
    worst = {"need": 0.0, "max_abs": 0.0, "rms": 0.0, "output": ""}
    totals = {"rms_ratio": 0.0, "spread": 0.0, "excess": 0.0}
    beyond = dict.fromkeys(THRESHOLDS, 0.0)
    for result, twin, reference in zip(results, twins, floats):
        for name, expected in twin.items():
            e = np.asarray(expected, dtype=np.float64)
            if e.size == 0 or not np.issubdtype(e.dtype, np.floating):
                continue
            r, f = np.asarray(result[name], dtype=np.float64), np.asarray(reference[name], dtype=np.float64)
            diff = np.abs(r - e)
            rms = float(np.sqrt(np.mean(e**2)))
            claimed = max(float(np.sqrt(np.mean((e - f) ** 2))), 1e-30)
            need = float(np.max(diff / np.maximum(np.maximum(np.abs(e), rms), 1e-30)))
            totals["rms_ratio"] = max(totals["rms_ratio"], float(np.sqrt(np.mean(diff**2))) / max(rms, 1e-30))
            totals["spread"] = max(totals["spread"], float(np.sqrt(np.mean(diff**2))) / claimed)
            totals["excess"] = max(totals["excess"], float(np.sqrt(np.mean((r - f) ** 2))) / claimed)
            for t in THRESHOLDS:
                beyond[t] = max(beyond[t], float(np.mean(diff > t * np.maximum(np.abs(e), rms))))
            if need >= worst["need"]:
                worst = {"need": need, "max_abs": float(diff.max()), "rms": rms, "output": name}
    return {**worst, **totals, "beyond": {f"{t:g}": share for t, share in beyond.items()}}


def _spread(names: list[str], count: int) -> list[str]:
    if len(names) <= count:
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)]


def _least(found: list[dict]) -> dict:
    """Each measure's smallest value over the corrupted layers (the corruption hardest to see by that measure)."""
    least = dict(min(found, key=lambda g: g["need"]))
    for key in ("rms_ratio", "spread", "excess"):
        least[key] = min(g[key] for g in found)
    least["beyond"] = {t: min(g["beyond"][t] for g in found) for t in found[0]["beyond"]}
    return least


def _corrupted(model: ir.Model, layer: str, how: str) -> ir.Model | None:
    broken = model.clone()
    suffix = ".weight_scale" if how == "scale x2" else ".weight_int8"
    value = broken.graph.initializers.get(f"{layer}{suffix}")
    if value is None:
        return None
    array = value.const_value.numpy()
    array = array * np.float32(2.0) if how == "scale x2" else np.roll(array, 1, axis=0)
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=value.name)
    return broken


def measure(name: str, path: Path, layers: int, extra: int) -> list[dict]:
    source = ir.load(path)
    fused = optimize(source, verify=False)
    samples = _inputs(fused, 16, 12, seed=3)
    input_sets = _verification_sets(fused, extra)
    rows = []
    for mode, cls in (("dynamic", DynamicQuantizationPass), ("static", StaticQuantizationPass)):
        for full_range in (False, True):
            quantization = cls(samples=samples, reduce_range=not full_range)
            result = quantization(fused.clone())
            label = f"{name} {mode}" + (" full-range" if full_range else "")
            if not result.modified:
                rows.append({"case": label, "legit": None, "note": "nothing quantized"})
                continue
            twins = _run(result.twin.model, "disable_all", input_sets)
            floats = _run(fused, "disable_all", input_sets)
            row = {"case": label, "layers": len(quantization.quantized)}
            row["legit"] = gap(_run(result.model, "all", input_sets), twins, floats)
            if not full_range:
                for how in ("scale x2", "rows rolled"):
                    found = []
                    for layer in _spread(quantization.quantized, layers):
                        broken = _corrupted(result.model, layer, how)
                        if broken is not None:
                            found.append({**gap(_run(broken, "all", input_sets), twins, floats), "layer": layer})
                    row[how] = _least(found) if found else None
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def measure_float16(name: str, path: Path) -> list[dict]:
    """convert-float16 (after the cuda pipeline) against its twin: the result at ORT_ENABLE_ALL and at
    ORT_DISABLE_ALL (on CPU, ORT computes float16 ops it has no kernel for in float32 between Casts,
    so activations are rounded to float16 between ops; at ENABLE_ALL it drops cast pairs)."""
    from passes.quantization.float16 import Float16Pass

    fused = optimize(ir.load(path), target="cuda", verify=False)
    input_sets = _verification_sets(fused, 0)
    floats = _run(fused, "disable_all", input_sets)
    rows = []
    for keep_io_types in (True, False):
        result = Float16Pass(keep_io_types=keep_io_types)(fused)
        twins = _run(result.twin.model, "disable_all", input_sets)
        row = {"case": f"{name} float16" + ("" if keep_io_types else " float16 I/O")}
        row["as deployed"] = gap(_run(result.model, "all", input_sets), twins, floats)
        row["ops rounded"] = gap(_run(result.model, "disable_all", input_sets), twins, floats)
        rows.append(row)
        print(_line(row, ("as deployed", "ops rounded")), flush=True)
    return rows


def _line(row: dict, keys=("legit", "scale x2", "rows rolled")) -> str:
    def cell(key):
        g = row.get(key)
        if not g:
            return ""
        shares = " ".join(f"{t}:{share:.1e}" for t, share in g["beyond"].items())
        return (
            f"{key}: need {g['need']:.2e} (max|Δ| {g['max_abs']:.2e}, RMS {g['rms']:.2e}) "
            f"rms-ratio {g['rms_ratio']:.2e} spread {g['spread']:.2f} excess {g['excess']:.2f} beyond [{shares}]"
        )

    parts = [row["case"], f"{row['layers']} layers" if "layers" in row else "", *(cell(key) for key in keys)]
    return " | ".join(p for p in parts if p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names: " + ", ".join(MODELS))
    parser.add_argument("--layers", type=int, default=4, help="layers corrupted per case (spread evenly)")
    parser.add_argument("--float16", action="store_true", help="measure convert-float16 against its twin instead")
    parser.add_argument("--extra-sets", type=int, default=0, help="input sets at default dims besides the verifier's")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        if not MODELS[name].exists():
            print(f"{name}: {MODELS[name]} not found, skipped")
            continue
        if args.float16:
            rows += measure_float16(name, MODELS[name])
        else:
            rows += measure(name, MODELS[name], args.layers, args.extra_sets)
    if args.float16:
        worst = max(r[key]["need"] for r in rows for key in ("as deployed", "ops rounded"))
        print(f"float16 need: worst {worst:.2e}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
        return
    for measure_name in ("need", "rms_ratio", "spread", "excess"):
        legit = [r["legit"][measure_name] for r in rows if r.get("legit")]
        caught = [r[k][measure_name] for r in rows for k in ("scale x2", "rows rolled") if r.get(k)]
        print(f"{measure_name}: legit worst {max(legit):.2e}; corruptions' least {min(caught):.2e}")
    for label, fails in RULES.items():
        legit = [r["legit"] for r in rows if r.get("legit")]
        caught = [r[k] for r in rows for k in ("scale x2", "rows rolled") if r.get(k)]
        passed = sum(not fails(g) for g in legit)
        failed = sum(fails(g) for g in caught)
        print(f"{label}: {passed} of {len(legit)} legit pass, {failed} of {len(caught)} corruptions fail")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
