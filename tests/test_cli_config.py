"""``--config FILE.toml`` and ``--print-config``: every flag as a key, round trips, unknown keys refused."""

from __future__ import annotations

import pytest

from optimizer import exit_codes
from optimizer.cli import build_parser, options_from_args
from optimizer.config import dump_config, load_config
from tests._cli_models import run_cli, save_matmul_model

COMMAND_LINES = [
    ["optimize", "m.onnx", "-o", "out.onnx"],
    [
        "optimize", "m.onnx", "-o", "out.onnx", "--quantize", "dynamic", "--min-cosine", "0.99", "--per-tensor",
        "--exclude", "*head*", "--exclude", "lm_*", "--dim", "batch=2", "--dim", "sequence=16",
        "--tolerance", "float32=0.001,0.0001", "--smooth", "0.5", "--activation-scale", "row",
        "--calibration", "c.npz", "--inputs", "i.npz", "--passes", "+fuse-gelu", "--strict",
        "--pipeline-json", "r.json",
    ],
    ["optimize", "m.onnx", "-o", "o.onnx", "--fp16", "--no-keep-io-types", "--target", "cuda", "--no-verify"],
    ["optimize", "m.onnx", "-o", "o.onnx", "--prune-ffn", "0.3", "--no-repair", "--importance", "magnitude"],
    [
        "optimize", "m.onnx", "-o", "o.onnx", "--compare", "--ep", "cpu,cuda", "--batch", "1,8",
        "--time-budget", "5", "--max-ratio", "1.05", "--compare-min-cosine", "0.999", "--compare-json", "c.json",
        "--html", "c.html", "--generate", "--prompt-length", "16",
    ],
    ["compare", "a.onnx", "b.onnx", "--inputs", "i.npz", "--min-cosine", "0.99", "--json", "c.json", "--profile"],
]  # fmt: skip


def _parse(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    return args, parser.commands[argv[0]]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda argv: " ".join(argv[3:8]))
def test_print_config_round_trips(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, printed, err = run_cli([*argv, "--print-config"], capsys)
    assert code == exit_codes.OK, err
    (tmp_path / "recipe.toml").write_text(printed)
    code, again, err = run_cli([argv[0], "--config", "recipe.toml", "--print-config"], capsys)
    assert code == exit_codes.OK, err
    assert again == printed
    # The file gives the same argparse values, hence the same options, as the command line.
    args, parser = _parse(argv)
    loaded = load_config(tmp_path / "recipe.toml", parser)
    for dest, value in loaded.items():
        assert getattr(args, dest) == value, dest
    if argv[0] == "optimize":
        from_file, _ = _parse(["optimize"])
        for dest, value in loaded.items():
            setattr(from_file, dest, value)
        assert options_from_args(from_file) == options_from_args(args)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["optimize", "m.onnx", "-o", "o.onnx", "--dim", "batch=1", "--dim", "batch=2"], "--dim batch given twice"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--time-budget", "20"], "do nothing without --compare"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--calibration-method", "percentile"], "does nothing here"),
        (["compare", "a.onnx", "b.onnx", "--ep", "tpu"], "--ep tpu: unknown execution provider"),
        # A review's: refused by the run on flags alone, printed by --print-config.
        (["optimize", "m.onnx", "-o", "-"], "-o -: graphopt writes this to a file"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--inputs", "i.npz", "--no-verify"], "do nothing with --no-verify"),
        (["optimize", "m.onnx", "-o", "o.onnx", "--calibration", "c.npz"], "--calibration needs"),
        (
            ["optimize", "m.onnx", "-o", "o.onnx", "--prune-ffn", "0.5", "--importance", "activation"],
            "needs --calibration",
        ),
        (["compare", "a.onnx", "b.onnx", "--json", "-"], "--json -: graphopt writes this to a file"),
    ],
)
def test_print_config_refuses_what_the_command_line_would(argv, message, capsys):
    # It printed a recipe of the refused line (the second --dim, or the flag dropped) that then ran.
    code, printed, err = run_cli([*argv, "--print-config"], capsys)
    assert code == exit_codes.USAGE and printed == ""
    assert message in err
    assert run_cli(argv, capsys)[0] == exit_codes.USAGE


def test_printed_config_is_readable(capsys):
    code, printed, _ = run_cli(
        ["optimize", "m.onnx", "-o", "o.onnx", "--dim", "batch=2", "--passes", "fold-constants,fuse-gelu",
         "--quantize", "dynamic", "--per-tensor", "--print-config"],
        capsys,
    )  # fmt: skip
    assert code == exit_codes.OK
    assert 'passes = ["fold-constants", "fuse-gelu"]' in printed
    assert "dim = { batch = 2 }" in printed
    assert "per-tensor = true" in printed and 'quantize = "dynamic"' in printed
    assert "target" not in printed  # defaults are left out


def test_config_runs_and_the_command_line_overrides_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_matmul_model(tmp_path / "m.onnx")
    (tmp_path / "recipe.toml").write_text(
        'model = "m.onnx"\noutput = "from-file.onnx"\npasses = ["remove-identity", "fold-constants"]\n'
        "dim = { batch = 3 }\n"
        'pipeline-json = "report.json"\n'
    )
    code, _, err = run_cli(["optimize", "--config", "recipe.toml", "-o", "from-flag.onnx"], capsys)
    assert code == exit_codes.OK, err
    assert (tmp_path / "from-flag.onnx").exists() and not (tmp_path / "from-file.onnx").exists()
    assert (tmp_path / "report.json").exists()
    code, printed, _ = run_cli(["optimize", "--config", "recipe.toml", "--dim", "batch=5", "--print-config"], capsys)
    assert "dim = { batch = 5 }" in printed and 'output = "from-file.onnx"' in printed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('quantise = "dynamic"\n', "unknown key 'quantise', a key no flag sets (did you mean 'quantize'?)"),
        ("[options]\ntarget = 'cpu'\n", "recipe.toml: unknown key 'options', a table no flag sets"),
        ("verbose = 1\n", "recipe.toml: 'verbose' is about one run, not a setting of the recipe"),
        ('min-cosine = "high"\n', 'recipe.toml: min-cosine = "high": expected a number'),
        ('quantize = "int3"\n', "expected one of dynamic, static, int4"),
        ("fp16 = 1\n", "recipe.toml: fp16 = 1: expected true or false"),
        ("dim = { batch = 1.5 }\n", "expected integer sizes"),
        ("per-tensor = true\nper-channel = true\n", "'per-tensor' and 'per-channel' set the same option: keep one"),
        ("quantize = \n", "recipe.toml: not valid TOML"),
        ('ep = "cuda"\n', "--ep: comparison flags do nothing without --compare"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, capsys, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    save_matmul_model(tmp_path / "m.onnx")
    (tmp_path / "recipe.toml").write_text(text)
    code, out, err = run_cli(["optimize", "m.onnx", "-o", "o.onnx", "--config", "recipe.toml"], capsys)
    assert code == exit_codes.USAGE, err
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o.onnx").exists()


def test_missing_config_and_missing_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["optimize", "--config", "absent.toml"], capsys)
    assert code == exit_codes.USAGE and "--config absent.toml: no such file" in err
    (tmp_path / "recipe.toml").write_text('quantize = "dynamic"\noutput = "o.onnx"\n')
    with pytest.raises(SystemExit) as stop:  # as argparse refuses a missing argument
        run_cli(["optimize", "--config", "recipe.toml"], capsys)
    assert stop.value.code == exit_codes.USAGE
    err = capsys.readouterr().err
    assert "graphopt: error: the following arguments are required: model (or `model = ...` in --config)" in err


def test_every_optimize_flag_is_a_config_key():
    from optimizer.config import config_keys

    parser = build_parser().commands["optimize"]
    keys = config_keys(parser)
    flags = {flag[2:] for action in parser._actions for flag in action.option_strings if flag.startswith("--")}
    invocation = {"help", "config", "print-config", "verbose", "quiet", "report", "json", "per-channel", "per-tensor"}
    negatives = {flag for flag in flags if flag.startswith("no-") and flag[3:] in keys}  # --no-keep-io-types
    assert flags - set(keys) - negatives <= invocation
    assert {"per-channel", "per-tensor", "keep-io-types", "no-verify", "model", "output"} <= set(keys)
    assert dump_config(parser.parse_args([]), parser).startswith("# graphopt optimize --config FILE")
