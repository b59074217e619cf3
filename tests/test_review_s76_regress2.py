"""Review s76 regress2: session 76's late changes (the table-end set's attention bound, ids moved or offset held as
ids, rotary caches and quantized tables as tables, budgets scoring an output less the input it mostly is) on real
models, 479cc98 against 6132607: no pass, layer or figure moved on the example encoder, MiniLM, PP-OCR and 8 fixtures,
default and budgeted (docs/benchmarks.md). One finding in the residual scoring read beside those runs:

- ``with_residuals`` measured how far an output lies from an input over every position, the ones padding zeroed in
  both runs included (``optimizer.padding.unpadded``), though it scores those positions as adding 0: on a padded
  sample the input's values there put the output past 10 % of it, the part was not found on that run, and a part
  some run lacks is scored on none, so one padded sample left a rewrite that drops what the model adds to its input
  unscored (scored on its input's cosine alone).
"""

from __future__ import annotations

import numpy as np

from optimizer.accuracy import paired_drift, residual_key, with_residuals


def _padded_residual_runs():
    """Two samples of ``y = x + d`` (d 3 % of x), the second half padded: y zeroed there in both runs, as
    ``unpadded`` leaves them. The rewrite returns x alone (it dropped d)."""
    rng = np.random.default_rng(0)
    runs = []
    for padded in (0, 6):
        x = rng.standard_normal((1, 8, 16)).astype(np.float32)
        y = x + 0.03 * rng.standard_normal(x.shape).astype(np.float32)
        dropped = x.copy()
        if padded:
            y[:, -padded:], dropped[:, -padded:] = 0.0, 0.0
        mask = np.ones((1, 8), np.int64)
        mask[:, 8 - padded :] = 0
        runs.append(({"x": x, "attention_mask": mask}, {"y": y}, {"y": dropped}))
    return runs


def test_padded_positions_do_not_hide_what_an_output_adds_to_its_input():
    runs = _padded_residual_runs()
    added = [with_residuals(batch, before, after) for batch, before, after in runs]
    assert all(residual_key("y", "x") in before for before, _ in added), "the part y adds to x, on every sample"
    drift = paired_drift(added)
    assert drift.scored_less == (("y", "x"),)
    assert drift.cosine < 0.5, "a rewrite dropping what y adds to x is scored on that part, not on x's cosine"
