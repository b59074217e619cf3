"""Session 59's own fixes beyond the reviews: a known fill value beside logits of moderate size, and a timing cache
that cannot be written."""

from __future__ import annotations

import numpy as np


def test_a_float16_lowest_fill_beside_gpt2_sized_logits_lends_them_no_tolerance():
    # -65504 is 655x logits of RMS 100, under the 1,000x ratio: counted in the RMS, one fill per row of 64 let a
    # rewrite scaling every other logit by 1.005 verify. It is a fill by its exact value.
    from optimizer.verify import DEFAULT_TOLERANCES, compare_outputs

    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((4, 64)) * 10 - 100).astype(np.float32)  # GPT-2-like: around -100
    logits[:, 7] = -65504.0
    scaled = logits.copy()
    scaled[:, [i for i in range(64) if i != 7]] *= np.float32(1.005)
    tolerances = {"float32": DEFAULT_TOLERANCES["float32"]}
    assert not compare_outputs({"y": logits}, {"y": scaled}, tolerances).ok
    assert compare_outputs({"y": logits}, {"y": logits.copy()}, tolerances).ok


def test_a_timing_cache_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    import json

    from passes._kernel_timing import TimingCache

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    cache = TimingCache(tmp_path / "timings.json")
    cache.put("k", 1.5)
    assert cache.get("k") == 1.5 and not list(tmp_path.iterdir())
