"""Review of generated index inputs through arithmetic (2973638, 1c84fc3, 8179eee): ``_index_bounds``,
``_then_affine``, ``_affine_interval``, ``_integer_constant``, ``_last_dim`` and ``_vary_ambiguous_indices`` in
``optimizer/inputs.py``.

Findings (strict xfails when found; all fixed since, worst first):
- The widest-axis retry (``_vary_ambiguous_indices``) runs after the dims are bound and after a decoder's positions
  are moved past its cache. (a) ``longest_cache`` still reads the narrow bound (``_index_range`` without
  ``widest``): the batch axis of 1 caps the cache, so a KV decoder whose position component is unprovable is
  generated with one new token and no past at all (S=1, past=0) although the retry would accept 0..511. (b) Where the
  past is bound (``--dim past_sequence_length=64``) the retried positions are drawn from 0 again (0..7 beside a
  64-token past), not 64..71: ``_offset_positions_past_the_cache`` is not applied to them.
- ``_index_bounds`` returns one least value for the whole input (``max(lows)``) while its highs are per
  ``GatherND`` component: a tuple ``idx - [0, 1]`` into a [1, 64, 4] table gets low 1 from component 1, so component
  0 (the batch axis of 1) is drawn as 1 and the input model fails on its own inputs. Each component's interval is
  also computed from every (scale, offset) pair of the aligned constant, not its own.
- ``_shape_dims`` binds only a graph input's symbolic dims: torch's flat ``table[arange(B)[:, None], ids]`` whose
  ``Range`` count is read from ``Shape`` of an intermediate (recorded ``[batch, S]`` by shape inference) is not
  followed, and at ``--dim batch=2`` positions 0..127 plus the second row's 64 leave the 128-row table.
- Not from these commits: a ``Gather`` table that is itself a graph input (a cache reordered by ``beam_idx``)
  has its symbolic dims taken as unknown by ``_table_shape`` although ``dims`` binds them: ``beam_idx`` is drawn
  from {0, 1}, 1 at batch 1 (the input model fails), all 1 at batch 3.
- (Fixed since: torch's ``Where(Less(i, 0), Add(i, n), i)`` is read as ``i`` for ``i`` drawn non-negative; ``Slice``
  and ``Tile`` are followed as index-preserving, ``Div`` by a scalar >= 1 and ``Max``/``Min`` with one >= 0 as
  contracting; the four findings above too.) Not from these commits but on the paths the brief names: ``*position*``
  inputs whose path to a table passes an op the walk does not follow (``Slice``, ``Div``, ``Max``, and torch's
  negative-index normalisation ``Where(Less(i, 0), Add(i, n), i)``) are drawn 0..S-1 unbounded (no table found:
  taken as rotary positions), so the input model fails on its own inputs (``graphopt optimize`` stops: "ONNX Runtime
  cannot run the input model on generated inputs"). A plain integer input on the same paths is drawn in {0, 1}
  (``_DEFAULT_INT_HIGH``): it runs, but only two token ids.

Fixes tried in a worktree (applied since): ``longest_cache`` reading ``_index_range``/``_index_low`` with
``widest=True``; ``_vary_ambiguous_indices`` calling ``_offset_positions_past_the_cache`` (given ``widest``) on the
widened inputs; ``_shape_dims`` binding every value's named dims, not only graph inputs'. The three xfails pass
with them, and so do tests/test_inputs*.py and tests/test_review_reliability3.py. Per-component lows need
``_index_bounds`` to keep a least value per component, as it keeps the highs.

Design note, not a finding: ``_affine_interval`` falls back to ONNX's [-size, size) whenever [0, size) leaves one
value, for positive scales too: ``Sub(position_ids, [[0], [7]])`` on 8 rows draws 0..7, so row 1 reads -7..0 from
the end (the docstring's reason, "a model that negates an index", does not apply to an offset).

What held (2026-12-02, onnxruntime on CPU):
- Every fixture's generated inputs (gpt2/llama KV legacy, dynamo, optimum, genai; bert, gpt2, llama, gptneo, mvp
  legacy) are byte-identical to 2973638^ (compared array by array); KV fixtures' position_ids vary (64..127,
  128..255). So a wrong fusion caught before is caught now; on llama_kv_legacy an off-by-one position (a wrong
  rotary rewrite) changes the outputs on the generated inputs (test below).
- Arithmetic: ``Cast`` to int32 then ``Add(-1)`` (ids 1..16 on 16 rows), ``Mul`` by 1000 (only 0 fits: 0),
  int32 ``ids * 2^30 - 2^30`` and int64 ``ids * 2^62 - 2^62`` (Python-int interval, ids = 1, no overflow),
  ``Neg`` (ids 0..8 read from the end by design), ``Mul`` by 0 everywhere (unbounded, runs), ``Reshape`` then a
  per-column offset, ``S - 1 - position_ids`` through ``Gather(Shape(position_ids), 1)`` (64..127 on 64 rows at
  S=128), ``Add`` inside an ``If`` branch (0..5 on 16 rows, offset 10), ``Min``/``Mod``/``Clip`` (run).
- The CLI prints the repeated-value note at default verbosity ("warning: generated 'position_ids': one value
  repeated ... (pass real inputs with --inputs FILE.npz)") on the [4, 1, 8] Min-batch fixture.
- Cost: make_inputs on every fixture <= 0.02 s. ``_index_bounds`` walks paths, not values, so it is exponential
  only in contrived diamonds (14 nested Add/Add/Concat diamonds with power-of-two offsets: 2.2 s; 8: 0.05 s). The
  retry costs one extra full run of the input model, only where an input is ambiguous.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from optimizer.inputs import make_inputs
from tests.helpers import index_model as _model
from tests.helpers import refusal as _refusal
from tests.helpers import run
from tests.test_inputs_index_arithmetic import LEGACY_FLAT_INDEX

FIXTURES = Path(__file__).parent / "fixtures"


def _decoder(table: tuple[int, ...]) -> ir.Model:
    """A KV decoder whose position_ids are component 1 of a GatherND tuple after a Min-computed batch (a width no
    shape proves): the widest-axis retry's case."""
    return _model(
        "(int64[1, S] input_ids, int64[1, total] attention_mask, int64[1, S] position_ids,"
        " float[1, 2, past_sequence_length, 4] past_key) => (float y, float[1, 2, ?, 4] present_key,"
        " float[1, S, 4] e, int64[1, total] m)",
        """
        column = Unsqueeze(position_ids, last)
        batch = Min(zero, column)
        index = Concat<axis = -1>(batch, column)
        y = GatherND(T, index)
        e = Gather(W, input_ids)
        m = Identity(attention_mask)
        present_key = Concat<axis = 2>(past_key, past_key)
        """,
        {"T": table, "W": (100, 4)},
        {"last": [-1], "zero": [[[0]]]},
    )


def test_an_unprovable_position_component_does_not_cut_a_decoder_to_one_token():
    model = _decoder((1, 512, 4))
    inputs = make_inputs(model)
    assert _refusal(model, inputs) is None
    # The retry accepts positions 0..511 on this table (with explicit dims it draws 0..7): 128 new tokens after a
    # 128-token past fit, as they do where the batch component's width is provable (Mul instead of Min).
    shapes = {name: array.shape for name, array in inputs.items()}
    assert shapes["position_ids"][-1] > 1 and shapes["past_key"][2] > 0, shapes


def test_widened_positions_count_on_from_the_past():
    model = _decoder((1, 512, 4))
    inputs = make_inputs(model, {"past_sequence_length": 64, "S": 8})
    assert _refusal(model, inputs) is None
    assert inputs["past_key"].shape[2] == 64
    np.testing.assert_array_equal(inputs["position_ids"], [np.arange(64, 72)])  # today 0..7


def test_per_component_offsets_keep_each_component_in_its_axis():
    # idx[..., 1] - 1 indexes the 64 rows (drawn from 1), idx[..., 0] - 0 the batch axis of 1 (only 0 fits).
    model = _model(
        "(int64[3, 2] idx) => (float[3, 4] y)",
        "i = Sub(idx, off)\ny = GatherND(T, i)",
        {"T": (1, 64, 4)},
        {"off": [0, 1]},
    )
    inputs = make_inputs(model)
    assert not inputs["idx"][:, 0].any(), inputs["idx"]
    assert _refusal(model, inputs) is None


def test_the_legacy_flat_index_with_its_batch_read_from_an_intermediate_stays_in_the_table():
    # LEGACY_FLAT_INDEX with Shape of an Identity of position_ids (shape inference records it [batch, S]).
    intermediate = "h = Identity(position_ids)\n      shape = Shape(h)"
    source = LEGACY_FLAT_INDEX.replace("shape = Shape(position_ids)", intermediate)
    proto = onnx.shape_inference.infer_shapes(onnx.parser.parse_model(source))
    model = ir.from_proto(proto)
    assert [str(d) for d in model.graph.node(0).outputs[0].shape] == ["batch", "S"]
    inputs = make_inputs(model, {"batch": 2})
    assert _refusal(model, inputs) is None
    assert inputs["position_ids"].max() == 63


_UNFOLLOWED = {
    "slice": ("s = Slice(position_ids, st, en, ax)\ni = Add(s, one)", {"st": [1], "en": [1 << 20], "ax": [1]}),
    "div": ("i = Div(position_ids, three)", {}),
    "max": ("i = Max(position_ids, three)", {}),
    "where-negative-normalisation": (
        "neg = Less(position_ids, zero)\nw = Add(position_ids, n)\ni = Where(neg, w, position_ids)",
        {},
    ),
}


@pytest.mark.parametrize("case", list(_UNFOLLOWED))
def test_positions_through_an_unfollowed_op_stay_in_their_table(case):
    body, constants = _UNFOLLOWED[case]
    model = _model(
        "(int64[1, S] position_ids) => (float[1, ?, 4] y)",
        f"{body}\ny = Gather(E, i)",
        {"E": (16, 4)},
        {"one": 1, "three": 3, "zero": 0, "n": 16, **constants},
    )
    inputs = make_inputs(model)
    assert _refusal(model, inputs) is None


def test_a_beam_index_into_a_cache_input_stays_in_its_batch():
    # Reordering a cache by beam (Gather(past, beam_idx, axis=0)): the table's batch is bound like the input's, so
    # beam_idx must stay under it; at batch 1 it is drawn 1 and the input model fails on its own inputs.
    model = _model(
        "(int64[batch] beam_idx, float[batch, 2, past, 4] past_kv) => (float[batch, 2, past, 4] y)",
        "y = Gather<axis = 0>(past_kv, beam_idx)",
        {},
    )
    inputs = make_inputs(model)
    assert _refusal(model, inputs) is None


def test_an_off_by_one_position_rewrite_changes_llama_kv_legacy_on_generated_inputs():
    # What held: a rotary rewrite reading position + 1 is visible on the generated inputs (positions 128..255).
    model = ir.load(FIXTURES / "llama_kv_legacy.onnx")
    inputs = make_inputs(model)
    positions = inputs["position_ids"]
    assert len(np.unique(positions)) == positions.size > 1
    shifted = dict(inputs, position_ids=positions + 1)
    before, after = run(model, inputs), run(model, shifted)
    name = next(iter(before))
    assert np.abs(before[name] - after[name]).max() > 1e-3


def test_a_where_that_is_not_the_negative_index_normalisation_bounds_nothing_through_it():
    # Near-miss: Where(Less(i, 5), i + 16, i) is not torch's normalisation (i in 0..4 reads i + 16): the Where is
    # not followed, so the table bounds nothing and plain ids are drawn from {0, 1}, which fit it (and, since review
    # s71, from each side of the threshold 5 they are compared with, which fit it too).
    model = _model(
        "(int64[1, 8] ids) => (float[1, 8, 4] y)",
        "neg = Less(ids, five)\nw = Add(ids, n)\ni = Where(neg, w, ids)\ny = Gather(E, i)",
        {"E": (64, 4)},
        {"five": 5, "n": 16},
    )
    inputs = make_inputs(model)
    assert set(inputs["ids"].ravel().tolist()) <= {0, 1, 4, 5, 6}
    run(model, inputs)
