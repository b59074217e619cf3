"""The twin check end to end and segment by segment on one model: how far an int8 result
strays from its twin through the whole model, and through each segment between its
quantized layers' inputs (``optimizer.protocol.Twin.checkpoints``).

Usage::

    python benchmarks/twin_segments.py MODEL.onnx --calibration CAL.npz [--activation-scale tensor|row]
        [--smooth 0.5] [--full-range-weights]

Verification inputs are what ``graphopt optimize`` generates first (random tokens; a
decoder's random N(0, 1) cache) and, for a decoder, the same with the cache the model
builds from a prefill of random tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optimizer.generation import with_model_cache  # noqa: E402
from optimizer.inputs import make_inputs  # noqa: E402
from optimizer.verify import Verifier  # noqa: E402
from passes.quantization.dynamic import DynamicQuantizationPass  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--calibration", required=True)
    parser.add_argument("--activation-scale", choices=("tensor", "row"), default="tensor")
    parser.add_argument("--smooth", type=float)
    parser.add_argument("--full-range-weights", action="store_true")
    args = parser.parse_args()
    model = ir.load(args.model)
    calibration = dict(np.load(args.calibration))
    started = time.perf_counter()
    quantize = DynamicQuantizationPass(
        samples=calibration,
        activation_scale=args.activation_scale,
        smooth_alpha=args.smooth,
        reduce_range=not args.full_range_weights,
    )
    result = quantize(model.clone())
    print(f"quantized in {time.perf_counter() - started:.0f} s", flush=True)
    generated = make_inputs(model, seed=0)
    sets, labels = [generated], ["generated, random cache"]
    own = with_model_cache(model, generated)
    if own is not None:
        sets.append(own)
        labels.append("generated, the model's own cache")
    verifier = Verifier(model, sets, labels=labels)
    for label, inputs in zip(labels, sets):
        single = Verifier(model, [inputs], labels=[label])
        started = time.perf_counter()
        verdict = single.check_twin(result.model, result.twin)
        how = (
            f"segment by segment ({verdict.twin_segments} segments; end to end it {verdict.twin_end_to_end})"
            if verdict.twin_segments
            else "end to end"
        )
        print(
            f"{label}: {'verified' if verdict.ok else 'FAILED ' + verdict.first_failure}, {how}, "
            f"worst {verdict.twin_error}, row excess {verdict.twin_row_excess}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    started = time.perf_counter()
    forced = verifier._check_twin_by_segment(result.model, result.twin, "(forced)")
    print(
        f"all sets, segment by segment regardless: {'verified' if forced.ok else 'FAILED ' + forced.first_failure}, "
        f"{forced.twin_segments} segments, worst {forced.twin_error}, {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
