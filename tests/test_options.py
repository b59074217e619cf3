"""Typed options and the composition rules declared on the passes: the API and the CLI refuse alike."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import EXAMPLE_MODEL, build_parser, main, options_from_args
from optimizer.errors import OptionError, PassSelectionError
from optimizer.options import Options, flag_of
from optimizer.protocol import PassSpec
from optimizer.registry import all_passes, resolve
from tests.helpers import FIXTURES

TINY = FIXTURES / "bert_legacy.onnx"


def test_an_unknown_option_is_an_error_with_a_suggestion():
    with pytest.raises(OptionError, match=r"unknown option 'per_chanel' \(did you mean 'per_channel'\?\)"):
        optimize_with_report(ir.load(TINY), per_chanel=False)
    with pytest.raises(OptionError, match="unknown option 'settings'"):
        optimize_with_report(ir.load(TINY), settings={"per_channel": False})
    with pytest.raises(OptionError, match="unknown option 'smoth'"):
        Options.build({"smoth": 0.5})


def test_options_come_as_keywords_a_mapping_or_a_value_and_keywords_win():
    base = Options(quantize="dynamic", smooth=0.5)
    assert Options.build(base, smooth=0.25) == Options(quantize="dynamic", smooth=0.25)
    assert Options.build({"quantize": "static"}).quantize == "static"
    assert Options.build(None, exclude="*attention*").exclude == ("*attention*",)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prune_ffn": 1.5}, "--prune-ffn 1.5: expected a fraction"),
        ({"prune_heads": True}, "--prune-heads True: expected a fraction"),
        ({"smooth": 2.0}, "--smooth 2.0: expected a migration strength"),
        ({"min_cosine": 1.5}, "--min-cosine 1.5: a cosine similarity is between -1 and 1"),
        ({"max_error": -1.0}, "--max-error -1.0: expected a non-negative error"),
        ({"quantize": "int2"}, "--quantize int2: expected one of dynamic, static, int4"),
        ({"target": "tpu"}, "--target tpu: expected one of cpu, cuda"),
        ({"max_sequence": 0}, "--max-sequence 0: expected a positive number of tokens"),
        ({"calibration_method": "kl"}, "--calibration-method kl: expected one of minmax, percentile, entropy"),
        ({"dims": {"batch": 0}}, "--dim batch=0: expected a positive integer size"),
    ],
)
def test_values_out_of_range_are_refused_where_options_are_built(values, message):
    with pytest.raises(OptionError, match=message):
        Options(**values)


# Each case: API keywords, the CLI flags asking for the same thing, the shared message.
CONFLICTS = [
    ({"fp16": True}, ["--fp16"], "--fp16 is for --target cuda (ONNX Runtime's CPU kernels are float32)"),
    (
        {"fp16": True, "target": "cuda", "quantize": "static"},
        ["--fp16", "--target", "cuda", "--quantize", "static"],
        "--quantize static and --fp16 do not combine: choose one",
    ),
    (
        {"target": "cuda", "quantize": "dynamic"},
        ["--target", "cuda", "--quantize", "dynamic"],
        "--quantize dynamic is for --target cpu (ONNX Runtime's DynamicQuantizeMatMul and MatMulIntegerToFloat "
        "have CPU kernels only; --quantize static or int4 run on CUDA)",
    ),
    ({"smooth": 0.5}, ["--smooth", "0.5"], "--smooth 0.5 (smooth=0.5) needs --quantize dynamic or --quantize static"),
    (
        {"exclude": ("*attn*",)},
        ["--exclude", "*attn*"],
        "--exclude *attn* (exclude=('*attn*',)) needs --prune-channels R or --lowrank R or --quantize dynamic or "
        "--quantize static",
    ),
    (
        {"importance": "magnitude"},
        ["--importance", "magnitude"],
        # (the end of the message: the pruning passes' list grows)
        "or --prune-channels R or --lowrank R",
    ),
    (
        {"per_channel": False},
        ["--per-tensor"],
        "--per-tensor (per_channel=False) needs --quantize dynamic or --quantize static",
    ),
    ({"keep_io_types": False}, ["--no-keep-io-types"], "--no-keep-io-types (keep_io_types=False) needs --fp16"),
    ({"min_cosine": 0.99}, ["--min-cosine", "0.99"], "--min-cosine 0.99 (min_cosine=0.99) needs --prune-ffn R or"),
    ({"calibration_method": "entropy"}, ["--calibration-method", "entropy"], "needs --quantize static"),
]


@pytest.mark.parametrize(("keywords", "flags", "message"), CONFLICTS)
def test_the_api_and_the_cli_refuse_the_same_things_with_the_same_words(keywords, flags, message, tmp_path, capsys):
    with pytest.raises(PassSelectionError) as refused:
        optimize_with_report(ir.load(EXAMPLE_MODEL), **keywords)
    assert message in str(refused.value)
    code = main(["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "out.onnx"), *flags])
    error = capsys.readouterr().err
    assert code == 2 and error == f"graphopt: error: {refused.value}\n"


def test_a_pass_listed_without_its_ratio_is_refused_by_name():
    with pytest.raises(PassSelectionError, match=r"prune-ffn needs its ratio: --prune-ffn R \(prune_ffn=R\)"):
        resolve(["prune-ffn"], Options())


def test_calibration_without_an_approximate_pass_is_refused(tmp_path):
    with pytest.raises(PassSelectionError, match="--calibration needs --prune-ffn R or"):
        optimize_with_report(ir.load(EXAMPLE_MODEL), calibration={"input_ids": None})


def test_an_option_asks_for_its_pass_in_the_default_pipeline_or_after_a_list():
    default = [spec.name for spec in resolve(None, Options(quantize="dynamic", prune_ffn=0.3))]
    assert default.index("fuse-attention") < default.index("prune-ffn") < default.index("quantize-dynamic")
    assert default.index("quantize-dynamic") < default.index("remove-unused")
    listed = [spec.name for spec in resolve(["fold-constants", "fuse-attention"], Options(quantize="static"))]
    assert listed == ["fold-constants", "fuse-attention", "quantize-static"]
    # Named and asked for by its option: it runs once.
    once = [spec.name for spec in resolve(["+prune-ffn"], Options(prune_ffn=0.2))]
    assert once.count("prune-ffn") == 1


def test_passes_run_after_the_passes_they_build_on():
    with pytest.raises(PassSelectionError, match="quantize-dynamic must run after prune-ffn: list prune-ffn first"):
        resolve(["quantize-dynamic", "prune-ffn"], Options(prune_ffn=0.2))
    with pytest.raises(PassSelectionError, match="fuse-bias-gelu must run after fuse-gelu"):
        resolve(["fuse-bias-gelu", "fuse-gelu"], Options())


def test_every_option_a_pass_reads_exists_and_every_cli_flag_is_an_option():
    fields = {field.name for field in dataclasses.fields(Options)}
    for spec in all_passes():
        assert spec.options_read <= fields, spec.name
    args = build_parser().parse_args(["optimize", "in.onnx", "-o", "out.onnx"])
    assert options_from_args(args) == Options()
    for name in fields - {"raise_errors"}:
        assert flag_of(name).startswith("--"), name


def test_a_spec_naming_an_unknown_option_or_target_is_a_bug():
    with pytest.raises(ValueError, match="unknown options"):
        PassSpec("x", lambda c: None, "test", reads=("per_chanel",))
    with pytest.raises(ValueError, match="unknown targets"):
        PassSpec("x", lambda c: None, "test", default_for=frozenset({"tpu"}))


def test_cli_flags_build_the_same_options_as_keywords():
    args = build_parser().parse_args(
        ["optimize", "in.onnx", "-o", "o.onnx", "--quantize", "static", "--per-tensor", "--full-range-weights"]
        + ["--exclude", "a*", "--exclude", "b*", "--smooth", "0.5", "--min-cosine", "0.99", "--dim", "batch=2"]
        + ["--prune-heads", "0.25", "--global-ranking", "--no-repair", "--max-sequence", "512", "--no-verify"]
    )
    assert options_from_args(args) == Options(
        quantize="static",
        per_channel=False,
        full_range_weights=True,
        exclude=("a*", "b*"),
        smooth=0.5,
        min_cosine=0.99,
        dims={"batch": 2},
        prune_heads=0.25,
        global_ranking=True,
        repair=False,
        max_sequence=512,
        verify=False,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fp16": "no"}, "--fp16 (fp16='no'): expected True or False"),
        ({"static_shapes": "no"}, "--static-shapes (static_shapes='no'): expected True or False"),
        ({"keep_io_types": None}, "--no-keep-io-types (keep_io_types=None): expected True or False"),
        ({"repair": 1}, "--no-repair (repair=1): expected True, False or None"),
        ({"tolerances": {"float": (1e-3, 1e-3)}}, "--tolerance float: expected one of float64, float32"),
        ({"tolerances": {"float32": 1}}, r"--tolerance float32=1: expected \(rtol, atol\)"),
        ({"tolerances": {"float32": (1e-3, 1e-3)}, "verify": False}, "--tolerance does nothing with --no-verify"),
    ],
)
def test_types_are_checked_too(values, message):
    with pytest.raises(OptionError) as refused:
        Options(**values)
    assert str(refused.value).startswith(message.replace("\\", ""))


def test_numpy_numbers_are_numbers_and_tolerances_merge_over_the_defaults():
    import numpy as np

    options = Options(prune_ffn=np.float32(0.25), smooth=np.float64(0.5), dims={"batch": np.int64(2)})
    assert (options.prune_ffn, options.smooth, options.dims) == (0.25, 0.5, {"batch": 2})
    assert type(options.dims["batch"]) is int and Options(max_sequence=np.int32(64)).max_sequence == 64
    tolerances = Options(tolerances={"float32": (1e-3, 1e-4)}).tolerances
    assert (tolerances["float32"].rtol, tolerances["float32"].atol) == (1e-3, 1e-4)
    assert tolerances["float16"].rtol == 1e-2  # the defaults stay for the other dtypes


@pytest.mark.parametrize(
    ("keyword", "hint"),
    [
        ("calibration_data", "did you mean 'calibration'?"),
        ("outputs", "did you mean 'output'?"),
        ("budget", "the accuracy budget is min_cosine=..., min_worst_cosine=... or max_error=..."),
        ("strict", "raise_errors=True re-raises"),
    ],
)
def test_unknown_keywords_point_at_what_the_user_meant(keyword, hint):
    with pytest.raises(OptionError, match=f"unknown option '{keyword}' \\({hint}"):
        optimize_with_report(ir.load(TINY), **{keyword: 1})


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"options": "x"}, "options: expected an Options or a mapping of option names, not str"),
        ({"options": {"passes": ["fold-constants"]}}, "'passes' is an argument of its own, not an option"),
        ({"dims": "batch=2"}, "--dim: expected a mapping of dim names to sizes"),
        ({"passes": [None]}, "passes: expected pass names"),
        ({"passes": " , "}, "--passes: no pass names given"),
        ({"passes": ["++fuse-gelu"]}, "unknown pass '\\+fuse-gelu'"),
    ],
)
def test_wrong_types_are_one_line_errors(keywords, message):
    with pytest.raises((OptionError, PassSelectionError), match=message):
        optimize_with_report(ir.load(TINY), **keywords)


def test_an_empty_pass_list_runs_nothing_and_a_string_is_a_comma_separated_list():
    model = ir.load(TINY)
    _, report = optimize_with_report(model, [], verify=False)
    assert report.passes == []
    _, report = optimize_with_report(model, "fold-constants, remove-unused", verify=False)
    assert [record.name for record in report.passes] == ["fold-constants", "remove-unused"]


@pytest.mark.parametrize(
    ("names", "options", "message"),
    [
        (["fold-constants", "fold-constants"], Options(), "--passes names fold-constants twice"),
        (["+prune-ffn", "+prune-ffn"], Options(prune_ffn=0.3), "--passes names prune-ffn twice"),
        (["+quantize-dynamic"], Options(quantize="static"), "quantize-dynamic and --quantize static do not combine"),
        (
            ["fold-constants", "convert-float16", "prune-ffn"],
            Options(target="cuda", fp16=True, prune_ffn=0.3),
            "convert-float16 must run after prune-ffn",
        ),
    ],
)
def test_passes_that_would_undo_or_repeat_each_other_are_refused(names, options, message):
    with pytest.raises(PassSelectionError, match=message):
        resolve(names, options)


def test_verification_inputs_without_verification_are_refused():
    with pytest.raises(OptionError, match="--inputs are verification inputs: they do nothing with --no-verify"):
        optimize_with_report(ir.load(TINY), inputs={}, verify=False)


def test_repair_true_is_described_by_its_keyword():
    assert Options(repair=True).describe("repair") == "repair=True"
    with pytest.raises(PassSelectionError, match="^repair=True needs --prune-ffn R"):
        resolve(None, Options(repair=True))


def test_activation_scale_is_a_checked_choice_that_needs_dynamic_int8():
    with pytest.raises(OptionError, match="--activation-scale"):
        Options(activation_scale="column")
    with pytest.raises(PassSelectionError, match="needs --quantize dynamic"):
        optimize_with_report(ir.load(FIXTURES / "gpt2_legacy.onnx"), activation_scale="row")
