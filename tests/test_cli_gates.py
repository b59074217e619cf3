"""The gates' verdicts on made-up comparisons (optimizer.gates): which figure each one reads, and when it fails."""

from __future__ import annotations

from types import SimpleNamespace

from optimizer.compare.stats import RatioEstimate
from optimizer.gates import accuracy_failures, slower_failures


def _ratio(ratio: float, low: float, high: float) -> RatioEstimate:
    return RatioEstimate(ratio, low, high, 0.95, True)


def _report(*providers) -> SimpleNamespace:
    return SimpleNamespace(providers=list(providers), warnings=[])


def _provider(ep="cpu", available=True, batches=(), generation=(), accuracy=(), reason="") -> SimpleNamespace:
    return SimpleNamespace(
        ep=ep,
        available=available,
        batches=list(batches),
        generation=list(generation),
        accuracy=list(accuracy),
        reason=reason,
    )


def test_max_ratio_reads_the_upper_end_of_the_interval():
    batch = SimpleNamespace(batch=1, ratio=_ratio(0.9, 0.8, 1.02), after=SimpleNamespace(runs=50))
    report = _report(_provider(batches=[batch]))
    assert slower_failures(report, 1.05) == []
    (line,) = slower_failures(report, 1.0)  # the median is faster, the interval is not
    assert "cpu batch 1: AFTER takes 0.90x BEFORE's time (95 % interval up to 1.02x)" in line


def test_max_ratio_on_generation_reads_first_token_and_decode_time():
    timed = SimpleNamespace(
        batch=2,
        ttft_ratio=_ratio(0.8, 0.7, 0.9),
        tokens_per_s_ratio=_ratio(1.1, 0.8, 1.3),
        ttft_after=SimpleNamespace(runs=50),
        decode_after=SimpleNamespace(runs=50),
    )
    report = _report(_provider(generation=[timed]))
    # tokens/s could be as low as 0.8x: a decode step up to 1.25x as long.
    (line,) = slower_failures(report, 1.2)
    assert "generation batch 2, decode step time: AFTER 0.91x BEFORE (95 % interval up to 1.25x)" in line
    assert slower_failures(report, 1.3) == []


def test_a_gate_with_nothing_measured_fails():
    skipped = _report(_provider(ep="cuda", available=False))
    assert "no latency was measured" in slower_failures(skipped, 2.0)[0]
    assert "no accuracy was measured" in accuracy_failures(skipped, 0.9)[0]


def test_an_execution_provider_asked_for_and_skipped_fails_the_gates_judged_on_the_others():
    # --ep cuda,cpu on a machine without a GPU: the gates judged the CPU alone and exited 0.
    batch = SimpleNamespace(batch=1, ratio=_ratio(0.5, 0.4, 0.6), after=SimpleNamespace(runs=50))
    good = SimpleNamespace(name="y", dtype="float32", cosine=1.0, exact=True, max_abs_error=0.0, norm_ratio=1.0)
    report = _report(
        _provider(ep="cuda", available=False, reason="onnxruntime-gpu is not installed"),
        _provider(batches=[batch], accuracy=[good]),
    )
    (slow,) = slower_failures(report, 1.0)
    assert slow.startswith("--max-ratio 1: cuda was skipped (onnxruntime-gpu is not installed): its latency")
    (accurate,) = accuracy_failures(report, 0.99)
    assert accurate.startswith("--min-cosine 0.99: cuda was skipped (onnxruntime-gpu is not installed)")
    measured_alone = _report(_provider(batches=[batch], accuracy=[good]))
    assert slower_failures(measured_alone, 1.0) == [] and accuracy_failures(measured_alone, 0.99) == []


def test_min_cosine_reads_float_outputs_and_needs_other_outputs_equal():
    outputs = [
        SimpleNamespace(name="logits", dtype="float32", cosine=0.995, exact=False, max_abs_error=0.01),
        SimpleNamespace(name="ids", dtype="int64", cosine=None, exact=True, max_abs_error=0.0),
    ]
    report = _report(_provider(accuracy=outputs))
    assert accuracy_failures(report, 0.99) == []
    (line,) = accuracy_failures(report, 0.999)
    assert "output 'logits' has cosine 0.995000" in line
    outputs[1].exact = False  # another dtype, the same values: equal in value, as the report says
    assert accuracy_failures(report, 0.99) == []
    outputs[1].max_abs_error = 1.0
    assert any("'ids' (int64) differs" in line for line in accuracy_failures(report, 0.99))
    outputs[0].cosine = float("nan")
    assert len(accuracy_failures(report, 0.99)) == 2


def _relu_model(tmp_path) -> str:
    """A fixed-shape ``y = Relu(x)`` saved in ``tmp_path``; its path."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def test_static_shapes_counts_for_strict(tmp_path):
    """bind-dims is asked for by --static-shapes: on a model whose dims are already fixed it changes nothing,
    which --strict reports (exit 3) as for any pass asked for."""
    from optimizer.cli import main

    path = _relu_model(tmp_path)
    assert main(["-q", "optimize", path, "-o", str(tmp_path / "o.onnx"), "--static-shapes", "--strict"]) == 3


def test_an_execution_provider_named_twice_is_refused(tmp_path, capsys):
    from optimizer.cli import main

    path = _relu_model(tmp_path)
    assert main(["-q", "compare", path, path, "--ep", "cpu,cpu"]) == 2
    assert "named twice" in capsys.readouterr().err
