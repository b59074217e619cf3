"""``--passes -NAME``: the default pipeline less one pass, from the command line, a config file and the API."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import main
from optimizer.errors import PassSelectionError
from optimizer.options import Options
from optimizer.registry import resolve
from tests.helpers import FIXTURES

LLAMA = FIXTURES / "llama_legacy.onnx"


def _names(names, **options):
    return [spec.name for spec in resolve(names, Options(**options))]


def test_a_removal_is_the_default_pipeline_less_that_pass_in_the_same_order():
    default = _names(None)
    assert "fuse-rotary-embedding" in default
    assert _names(["-fuse-rotary-embedding"]) == [name for name in default if name != "fuse-rotary-embedding"]
    both = _names(["+fuse-gelu", "-fuse-attention"])
    assert "fuse-gelu" in both and "fuse-attention" not in both
    assert both == [name for name in _names(["+fuse-gelu"]) if name != "fuse-attention"]
    cuda = _names(["-merge-matmul-nbits"], target="cuda")
    assert cuda == [name for name in _names(None, target="cuda") if name != "merge-matmul-nbits"]


@pytest.mark.parametrize(
    ("names", "options", "message"),
    [
        (["-fuse-gelu"], {}, "--passes -fuse-gelu: fuse-gelu is not in the default pipeline for --target cpu"),
        (["-fuse-group-query-attention"], {"target": "cuda"}, "is not in the default pipeline for --target cuda"),
        (["-quantize-dynamic"], {"quantize": "dynamic"}, "--quantize dynamic asks for quantize-dynamic; drop one"),
        (["fold-constants", "-fuse-attention"], {}, "either list every pass, or only +NAME/-NAME changes"),
        (["+fuse-attention", "-fuse-attention"], {}, "--passes names fuse-attention twice"),
        (["-no-such-pass"], {}, "unknown pass 'no-such-pass'"),
    ],
)
def test_removals_that_contradict_or_name_nothing_are_refused(names, options, message):
    with pytest.raises(PassSelectionError, match=message.replace("+", r"\+")):
        _names(names, **options)


def test_the_pass_left_out_does_not_run_and_the_rest_still_fuse():
    _, report = optimize_with_report(ir.load(LLAMA), ["-fuse-rotary-embedding"])
    ran = [record.name for record in report.passes]
    assert "fuse-rotary-embedding" not in ran
    assert next(r for r in report.passes if r.name == "fuse-attention").status == "applied"


def test_the_command_line_takes_a_removal_after_a_space_and_still_refuses_a_missing_value(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    command = ["optimize", str(LLAMA), "-o", str(out), "-q", "--pipeline-json", str(report)]
    assert main([*command, "--passes", "-fuse-rotary-embedding,-fuse-rms-norm"]) == 0
    text = report.read_text()
    assert '"fuse-rotary-embedding"' not in text and '"fuse-rms-norm"' not in text and '"fuse-attention"' in text
    with pytest.raises(SystemExit) as exit:
        main([*command, "--passes", "-v"])
    assert exit.value.code == 2
    assert "argument --passes: expected one argument" in capsys.readouterr().err


def test_a_config_file_removes_a_pass_and_strict_does_not_count_it(tmp_path):
    config = tmp_path / "graphopt.toml"
    config.write_text('passes = ["-fuse-attention"]\n')
    report = tmp_path / "report.json"
    code = main(
        ["optimize", str(LLAMA), "-o", str(tmp_path / "out.onnx"), "--config", str(config), "--strict", "-q"]
        + ["--pipeline-json", str(report)]
    )
    assert code == 0
    assert '"fuse-attention"' not in report.read_text()


def test_a_misspelt_removal_is_named_as_an_unknown_pass(tmp_path, capsys):
    command = ["optimize", str(LLAMA), "-o", str(tmp_path / "out.onnx"), "-q", "--passes", "-fuse-atention"]
    assert main(command) == 2
    assert "unknown pass 'fuse-atention'" in capsys.readouterr().err


def test_leaving_every_pass_out_is_refused():
    with pytest.raises(PassSelectionError, match="every pass is left out"):
        _names([f"-{name}" for name in _names(None)])
