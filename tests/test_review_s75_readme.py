"""Review s75 (readme): a new user's walk through README.md's commands and claims on the command line (install, the
two commands, ``optimize``/``compare``/``make-inputs``/``passes``/``demo``, their flags, exit codes and misuse: a
typo'd flag, a value out of range, a bad model or output path, wrong calibration data, Ctrl-C).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer import exit_codes
from tests._cli_models import run_cli, save_matmul_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_matmul_model(tmp_path_factory.mktemp("readme") / "m.onnx")


@pytest.mark.parametrize(
    ("command", "typo", "flag"),
    [
        ("optimize", "--pases", "--passes"),
        ("compare", "--itrations", "--iterations"),
        ("make-inputs", "--dims", "--dim"),
        ("passes", "--taget", "--target"),
    ],
)
def test_a_typod_flag_names_the_commands_help_and_the_nearest_flag(model, tmp_path, capsys, command, typo, flag):
    """A mistyped flag reached argparse's top parser, which answered "see graphopt --help": a help that lists the
    commands and none of their flags, so the user was sent to the one page that does not have the flag."""
    argv = {
        "optimize": ["optimize", model, "-o", tmp_path / "o.onnx"],
        "compare": ["compare", model, model],
        "make-inputs": ["make-inputs", model, "-o", tmp_path / "i.npz"],
        "passes": ["passes"],
    }[command]
    with pytest.raises(SystemExit) as stop:
        run_cli([*argv, typo, "1"], capsys)
    out, err = capsys.readouterr()
    assert stop.value.code == exit_codes.USAGE and out == ""
    assert err.count("\n") == 1 and err.startswith("graphopt: error: unrecognized arguments: ")
    assert f"(see graphopt {command} --help)" in err
    assert f"did you mean {flag}?" in err
    assert list(tmp_path.iterdir()) == []


def test_a_path_byte_that_is_not_utf8_is_shown_as_the_byte(model, tmp_path, capsys):
    """README: a character that is not printable in a message is written as its Python escape. A path's byte that is
    not UTF-8 (``b\\xffd.onnx``, as ``ls -b`` shows it) reaches Python as a lone surrogate, and was shown as
    ``b\\udcffd.onnx``, a name no tool shows and not the one ``--print-config`` gave for the same file."""
    missing = tmp_path / "b\udcffd.onnx"  # the byte 0xff, as Python decodes a command line's bytes
    code, out, err = run_cli(["optimize", missing, "-o", tmp_path / "o.onnx"], capsys)
    assert code == exit_codes.USAGE and out == ""
    assert "b\\xffd.onnx: no such file" in err and "udcff" not in err


def test_a_dim_size_given_as_text_is_named_as_text(model):
    """README's API: ``dims=`` takes sizes as in ``--dim``. ``dims={"batch": "2"}`` (a size read from a config or an
    environment variable, still text) was refused as ``--dim batch=2: expected a positive integer size``, which names
    a valid size; the text is shown quoted."""
    import optimizer
    from optimizer.errors import OptionError

    with pytest.raises(OptionError, match=r"^--dim batch='2': expected a positive integer size"):
        optimizer.optimize(str(model), output=str(model.with_name("o.onnx")), dims={"batch": "2"})
    assert not model.with_name("o.onnx").exists()


@pytest.mark.parametrize(("batch", "words"), [(1, "on cpu, one row at a time"), (4, "on cpu, up to 4 rows at a time")])
def test_the_language_model_table_counts_its_rows_in_words(batch, words):
    """``compare --generate`` on a decoder that takes one row at a time titled its table "up to 1 rows at a time"."""
    from optimizer.compare.comparison import ProviderResult
    from optimizer.compare.report import _llm_accuracy_table
    from optimizer.llm_accuracy import LLMAccuracy

    figures = LLMAccuracy("random token ids", False, 4, 22, 1.0, 2.0, 2.0, 0.0, 4, 8, 4, 1.0, 1.0, batch=batch)
    table = _llm_accuracy_table(ProviderResult(ep="cpu", available=True, llm_accuracy=figures))
    assert table.title.endswith(words)


def test_a_weight_of_256_bytes_stays_in_the_model_file_as_the_readme_says(tmp_path):
    """README said tensors *under* 256 bytes stay in the model file; onnx-ir's ``save`` keeps those of up to 256 bytes
    (it moves a tensor out when ``nbytes > 256``): an 8×8 float32 weight, exactly 256 bytes, stays in ``OUT.onnx``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import optimizer

    weights = {"W": np.ones((8, 8), np.float32), "B": np.ones((65,), np.float32)}  # 256 and 260 bytes
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0)]
        + [helper.make_node("Mul", ["B", "s"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [65])],
        initializer=[numpy_helper.from_array(array, name) for name, array in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    optimizer.optimize(str(tmp_path / "m.onnx"), output=str(tmp_path / "o.onnx"), passes=["remove-unused"])
    written = onnx.load(tmp_path / "o.onnx", load_external_data=False)
    external = {tensor.name for tensor in written.graph.initializer if tensor.data_location == TensorProto.EXTERNAL}
    assert external == {"B"}  # W's 256 bytes in the model file, B's 260 beside it
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    assert "tensors of up to 256 bytes (an 8×8 float32 weight) stay in the model file" in readme
