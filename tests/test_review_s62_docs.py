"""Review s62 (docs): what README.md and docs/benchmarks.md say, held to what the code does.

- README's conformance command, ``python -m tests.conformance.run_corpus [--mode verified|passes-alone|generated]``,
  was refused for two of its three modes: the script took the runs' display names (``"passes alone"``,
  ``"generated inputs"``) as its choices.
- README (*Comparing before and after*) and ``optimize --help`` said ``--threads`` sets only the kernel timings of
  ``--lowrank`` and a ``--quantize`` budget besides ``--compare``, and is refused without them; the CPU default's
  ``split-conv-padding`` times kernels at ``--threads`` too, so ``optimize --threads 2`` alone runs on the CPU.
- docs/benchmarks.md said "today's pipeline gives 200 nodes" of cleanup on the example encoder; it gives 190.
- ``make-inputs`` past the 4 GiB input limit told the user to give ``--inputs`` or ``--no-verify``, flags it refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimizer.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BENCHMARKS = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
EXAMPLE = ROOT / "examples" / "encoder.onnx"


def _readme_corpus_modes() -> list[str]:
    match = re.search(r"python -m tests\.conformance\.run_corpus \[--mode ([a-z|-]+)\]", README)
    assert match, "README names the conformance command with its modes"
    return match.group(1).split("|")


@pytest.mark.parametrize("mode", _readme_corpus_modes())
def test_each_conformance_mode_the_readme_names_is_accepted(mode):
    from tests.conformance.run_corpus import MODE_FLAGS, MODES
    from tests.conformance.run_corpus import build_parser as corpus_parser

    args = corpus_parser().parse_args(["--mode", mode])
    assert MODE_FLAGS[args.mode[0]] in MODES


def test_the_readme_names_every_conformance_mode():
    from tests.conformance.run_corpus import MODE_FLAGS

    assert sorted(_readme_corpus_modes()) == sorted(MODE_FLAGS)


def _timed_by_default() -> list[str]:
    """The passes a target's default pipeline runs that time kernels at ``--threads`` whatever the flags."""
    from optimizer.registry import all_passes

    return [spec.name for spec in all_passes() if spec.times_kernels is True and spec.default_for]


def test_optimize_threads_help_names_the_default_passes_that_time_kernels():
    optimize = build_parser().commands["optimize"]
    (threads,) = [action for action in optimize._actions if "--threads" in action.option_strings]
    assert _timed_by_default(), "split-conv-padding times kernels in the CPU default pipeline"
    for name in _timed_by_default():
        assert name in threads.help


def test_readme_compare_section_names_the_default_passes_that_time_kernels():
    start = README.index("On `optimize`,\n  `--threads` also sets")
    paragraph = README[start : README.index("\n- **Throughput**", start)]
    for name in _timed_by_default():
        assert name in paragraph


def test_threads_alone_runs_on_the_cpu_and_is_refused_on_cuda(tmp_path):
    from optimizer.api import optimize
    from optimizer.errors import GraphoptError

    out = tmp_path / "out.onnx"
    optimize(str(EXAMPLE), output=str(out), threads=1, verify=False)
    assert out.exists()
    with pytest.raises(GraphoptError, match="does nothing here"):
        optimize(str(EXAMPLE), output=str(out), threads=1, verify=False, target="cuda")


def _node_count(passes: list[str]) -> int:
    import onnx_ir as ir

    from optimizer.api import optimize

    return len(list(optimize(ir.load(EXAMPLE), passes=passes, verify=False).graph))


def test_benchmarks_cleanup_node_count_on_the_example_is_todays():
    from optimizer.registry import default_pass_names

    match = re.search(r"today's cleanup passes, the default pipeline without[^)]*?give (\d+) nodes", BENCHMARKS)
    assert match, "docs/benchmarks.md states today's cleanup node count on the example"
    fusion = ("fuse-", "split-", "pack-qkv", "merge-matmul-nbits")
    cleanup = [name for name in default_pass_names("cpu") if not name.startswith(fusion)]
    assert _node_count(cleanup) == int(match.group(1))


def test_readme_demo_node_counts_are_the_default_pipelines():
    from optimizer.registry import default_pass_names

    match = re.search(r"the default pipeline takes the graph from (\d+)\nto (\d+) nodes", README)
    assert match, "README states the demo's node counts"
    import onnx_ir as ir

    assert len(list(ir.load(EXAMPLE).graph)) == int(match.group(1))
    assert _node_count(default_pass_names("cpu")) == int(match.group(2))


def test_make_inputs_past_the_memory_limit_names_only_flags_make_inputs_takes(tmp_path, capsys):
    from optimizer import cli

    out = tmp_path / "inputs.npz"
    code = cli.main(["make-inputs", str(EXAMPLE), "-o", str(out), "--dim", "sequence=100000000000"])
    err = capsys.readouterr().err
    assert code == 2 and "4 GiB" in err and "--dim" in err
    make_inputs = build_parser().commands["make-inputs"]
    taken = {option for action in make_inputs._actions for option in action.option_strings}
    assert set(re.findall(r"--[a-z][a-z-]*", err)) <= taken
    assert not out.exists()
