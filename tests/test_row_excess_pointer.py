"""A segment check that fails the int8 row rule names an output past the rule, not the largest difference.

Found on a real ResNet-50 (open_nsfw) with one DequantizeLinear scale 2 % off: the check failed, rightly, but
named the segment ending at ``Relu_27:0`` (a tie cascade well within the rule, the largest difference) for every
one of ten tampered cuts, wherever the tampering was."""

from __future__ import annotations

import numpy as np

from optimizer.verify import (
    DEFAULT_TOLERANCES,
    INT8_ROW_EXCESS,
    VerificationResult,
    _within_row_excess,
    compare_outputs,
    int8_row_excess,
)


def _outputs():
    rng = np.random.default_rng(0)
    before = {name: rng.standard_normal((2, 16, 64)).astype(np.float32) for name in ("cascade", "scaled")}
    # The cascade: the result's rounding errors as large as its twin's, but elsewhere (ties flipped the other way).
    cascade_twin = rng.standard_normal((2, 16, 64)).astype(np.float32) * 0.5
    cascade_result = rng.permutation(cascade_twin.reshape(-1)).reshape(cascade_twin.shape)
    # The broken one: a hundredth of the difference, but the result three times its twin's distance from the input.
    small = rng.standard_normal((2, 16, 64)).astype(np.float32) * 0.005
    twin = {"cascade": before["cascade"] + cascade_twin, "scaled": before["scaled"] + small}
    result = {"cascade": before["cascade"] + cascade_result, "scaled": before["scaled"] + 3 * small}
    return twin, result, before


def test_the_output_past_the_row_rule_is_named():
    twin, result, before = _outputs()
    assert int8_row_excess(twin, result, before, ["cascade"]) <= INT8_ROW_EXCESS
    assert int8_row_excess(twin, result, before, ["scaled"]) > INT8_ROW_EXCESS
    compared = compare_outputs(twin, result, DEFAULT_TOLERANCES)
    assert {check.name for check in compared.checks if not check.ok} == {"cascade", "scaled"}
    assert compared.first_failure.startswith("output 'cascade'")  # the largest difference
    verdict = _within_row_excess(compared, twin, result, before, VerificationResult(twin_error=0.0))
    assert not verdict.ok
    assert verdict.first_failure.startswith("output 'scaled'"), verdict.first_failure


def test_outputs_all_within_the_rule_pass_and_record_the_excess():
    twin, result, before = _outputs()
    result["scaled"] = twin["scaled"]
    compared = compare_outputs(twin, result, DEFAULT_TOLERANCES)
    worst = VerificationResult(twin_error=0.0)
    assert _within_row_excess(compared, twin, result, before, worst).ok
    assert worst.twin_row_excess == int8_row_excess(twin, result, before, ["cascade"])
