"""A review of graphopt as a new user meets it (s66): the CLI, config files and the Python API."""

from __future__ import annotations

import json

import onnx
import pytest

import optimizer
from optimizer import exit_codes
from optimizer.errors import ModelFileError, OptionError, OutputPathError
from tests._cli_models import run_cli, save_matmul_model


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return save_matmul_model(tmp_path / "m.onnx")


def test_the_api_refuses_dims_that_nothing_reads_under_verify_false_as_the_cli_does(model, capsys):
    # `graphopt optimize --no-verify --dim batch=2` is refused ("--dim does nothing with --no-verify"), while
    # optimize(dims=..., verify=False) dropped the sizes without a word.
    code, _, err = run_cli(["optimize", model, "-o", "out.onnx", "--no-verify", "--dim", "batch=2"], capsys)
    assert code == exit_codes.USAGE and "--dim does nothing with --no-verify" in err
    with pytest.raises(OptionError, match="--dim does nothing with --no-verify"):
        optimizer.optimize(onnx.load(model), verify=False, dims={"batch": 2})


def test_dims_under_verify_false_still_size_a_pass_that_reads_them(model):
    fixed = optimizer.optimize(onnx.load(model), verify=False, dims={"batch": 2}, static_shapes=True)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_compare_no_verify_still_draws_its_inputs_at_the_dims(model, capsys):
    # The pipeline's options drop the dims only the comparison reads; the comparison still draws at them.
    argv = ["optimize", model, "-o", "out.onnx", "--no-verify", "--dim", "batch=2", "--compare", "--batch", "2"]
    argv += ["--time-budget", "0.01", "--iterations", "1", "--warmup", "0", "--compare-json", "c.json", "-q"]
    code, _, err = run_cli(argv, capsys)
    assert code == exit_codes.OK, err
    with open("c.json", encoding="utf-8") as handle:
        assert json.load(handle)["providers"][0]["accuracy"][0]["shape"] == [2, 8]


@pytest.mark.parametrize("key", ["verbose = 1", "quiet = true", 'config = "other.toml"', "print-config = true"])
def test_a_config_key_of_a_flag_about_one_run_is_named_as_such(model, capsys, key):
    # It said "unknown key 'verbose', a key no flag sets (`graphopt optimize --help` lists them)", and --help
    # lists --verbose.
    with open("recipe.toml", "w", encoding="utf-8") as handle:
        handle.write(f'model = "m.onnx"\noutput = "out.onnx"\n{key}\n')
    code, _, err = run_cli(["optimize", "--config", "recipe.toml"], capsys)
    name = key.split(" =")[0]
    assert code == exit_codes.USAGE
    assert f"'{name}' is about one run" in err and f"give --{name} on the command line" in err
    assert "no flag sets" not in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["optimize", "", "-o", "out.onnx"], "the input model ''"),
        (["optimize", "m.onnx", "-o", ""], "-o ''"),
        (["optimize", "m.onnx", "-o", "out.onnx", "--pipeline-json", ""], "--pipeline-json ''"),
        (["compare", "", "m.onnx"], "the BEFORE model ''"),
        (["compare", "m.onnx", "m.onnx", "--json", ""], "--json ''"),
        (["make-inputs", "", "-o", "inputs.npz"], "the model ''"),
        (["make-inputs", "m.onnx", "-o", ""], "-o ''"),
    ],
)
def test_an_empty_path_is_named_as_empty_not_as_the_current_folder(model, capsys, argv, named):
    # `graphopt optimize "$MODEL" -o "$OUT"` with a variable unset said ".: not a file" or ".: is a folder" (a path
    # the user never gave), and `make-inputs "" -o inputs.npz` that the output "would write into the model, which
    # reads every .npz/.npy file there".
    code, _, err = run_cli(argv, capsys)
    assert code == exit_codes.USAGE
    assert f"graphopt: error: {named}: an empty path" in err, err


def test_the_api_names_an_empty_model_or_output_path_as_empty(model):
    with pytest.raises(ModelFileError, match="an empty path"):
        optimizer.optimize("", output="out.onnx")
    with pytest.raises(OutputPathError, match="an empty path"):
        optimizer.optimize(model, output="")


def test_compare_given_a_dict_of_settings_is_an_option_error(model):
    # optimize() takes options= as a dict; compare(settings={...}) failed with an AttributeError's traceback.
    from optimizer.compare import compare

    with pytest.raises(OptionError, match="expected optimizer.compare.CompareSettings"):
        compare(model, model, settings={"time_budget": 1})


def test_a_huge_tolerance_allows_any_difference_without_a_numpy_warning():
    # `--tolerance float32=1e308,0` (accepted: finite) printed numpy's "RuntimeWarning: overflow encountered in
    # multiply" and its source line on stderr, under -q too.
    import warnings

    import numpy as np

    from optimizer.verify import Tolerance, compare_outputs

    before = {"y": np.array([3.0, -2.0], np.float32)}
    after = {"y": np.array([5.0, -2.0], np.float32)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare_outputs(before, after, {"float32": Tolerance(rtol=1e308, atol=0.0)})
    assert result.ok
