"""Review s61 (compare, the user's side): what the Python API's compare entry point takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from optimizer.compare import CompareSettings, compare
from optimizer.errors import GraphoptError

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def no_memory_probe(monkeypatch):
    """compare without its memory probes (a child process each, seconds on a busy machine): not what these test."""
    from optimizer.compare import comparison
    from optimizer.compare.memory import MemoryUsage

    monkeypatch.setattr(comparison, "measure_session_memory", lambda *args: MemoryUsage(0, 0, 0))


@pytest.mark.parametrize(
    "dims", [{"batch": 0}, {"sequence": -5}, {"sequence": 2.5}, {"sequence": "8"}, {"batch": True}]
)
def test_compare_refuses_a_dim_that_is_no_positive_integer_in_one_line(dims):
    # The CLI's --dim is checked when parsed; the API's dims= reached the input generator unchecked: batch=0 was a
    # ZeroDivisionError, sequence=-5 numpy's "negative dimensions are not allowed" (tracebacks, not user mistakes).
    model = FIXTURES / "bert_legacy.onnx"
    with pytest.raises(GraphoptError, match="--dim .*expected a positive integer size"):
        compare(model, model, settings=CompareSettings(iterations=1, time_budget=0.1, warmup=0), dims=dims)


def _decoder_with_hidden_output(path: Path, *, infinite: bool) -> Path:
    """The Llama cache fixture with one more output, the hidden state its lm_head reads; with ``infinite``, that
    output turned +Inf in one column (what no generation figure reads: the logits stay exact)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(FIXTURES / "llama_kv_legacy.onnx")
    hidden = next(node for node in model.graph.node if "logits" in node.output).input[0]
    if infinite:
        column = np.zeros(64, np.float32)
        column[0] = np.inf
        model.graph.initializer.append(numpy_helper.from_array(column, "infinite_column"))
        model.graph.node.append(helper.make_node("Add", [hidden, "infinite_column"], ["hidden"]))
    else:
        model.graph.node.append(helper.make_node("Identity", [hidden], ["hidden"]))
    shape = ["batch", "sequence", 64]
    model.graph.output.append(helper.make_tensor_value_info("hidden", onnx.TensorProto.FLOAT, shape))
    onnx.save(model, path)
    return path


def test_the_generation_verdict_names_an_output_that_turned_infinite(tmp_path, no_memory_probe):
    # With --generate the HTML verdict read only the language-model figures and the outputs' cosines (taken over the
    # values both left finite): an output that turned Inf failed --min-cosine and read grey "logits cosine 1.0000".
    from optimizer.compare.html import render_html, verdict
    from optimizer.gates import accuracy_failures

    before = _decoder_with_hidden_output(tmp_path / "before.onnx", infinite=False)
    after = _decoder_with_hidden_output(tmp_path / "after.onnx", infinite=True)
    settings = CompareSettings(iterations=1, time_budget=0.1, warmup=0, generate=True, prompt_length=4, new_tokens=2)
    report = compare(before, after, settings=settings)
    assert any("'hidden' differs without bound" in line for line in accuracy_failures(report, 0.99))
    assert "'hidden' differ: NaN/Inf" in verdict(report)
    assert "<span class='seg bad'>&#x27;hidden&#x27; differ" in render_html(report)


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        ({"eps": ("cpu", "cpu")}, "--ep cpu,cpu: cpu is named twice"),
        ({"eps": "cpu,cpu"}, "--ep cpu,cpu: cpu is named twice"),
        ({"batches": (1, 2, 1)}, "--batch 1,2,1: batch size 1 is named twice"),
    ],
)
def test_compare_settings_refuse_what_the_command_line_refuses(settings, said):
    # `graphopt compare --ep cpu,cpu` and `--batch 1,1` are refused (timed twice, each on half the budget's share,
    # nothing new measured); CompareSettings took them, and the report held the provider or batch twice.
    from optimizer.errors import OptionError

    with pytest.raises(OptionError, match=said):
        CompareSettings(**settings)


def test_generated_inputs_tiled_to_a_batch_are_not_said_to_be_that_many_samples(no_memory_probe):
    # Inputs are generated at batch 1 and tiled to each --batch: at --batch 4 the accuracy compared four copies of
    # one sample, and its caption said "generated inputs (4 samples, one run)".
    model = FIXTURES / "bert_legacy.onnx"
    report = compare(model, model, settings=CompareSettings(batches=(4,), iterations=1, time_budget=0.1, warmup=0))
    assert report.providers[0].accuracy_data.startswith("generated inputs (1 sample tiled to batch 4, one run)")


def _decoder_clipping_its_past(path: Path, bound: float) -> Path:
    """The Llama cache fixture reading each past clipped to [-bound, bound]: exact on every cache the model builds
    (its values stay under 1), as a KV cache quantized to its calibrated range is, and not on N(0, 1) numbers."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(FIXTURES / "llama_kv_legacy.onnx")
    pasts = [value.name for value in model.graph.input if value.name.startswith("past_key_values")]
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            if name in pasts:
                node.input[index] = f"{name}_clipped"
    model.graph.initializer.extend(
        [numpy_helper.from_array(np.float32(-bound), "low"), numpy_helper.from_array(np.float32(bound), "high")]
    )
    nodes = [helper.make_node("Clip", [name, "low", "high"], [f"{name}_clipped"]) for name in pasts]
    nodes += list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, path)
    return path


def test_compare_feeds_a_decoder_the_cache_it_builds_as_verification_does(tmp_path, no_memory_probe):
    # README: without --inputs, compare generates inputs "as verification generates them", and verification feeds a
    # decoder's past as the cache the model builds over a prefill (an N(0, 1) cache it could never produce makes a
    # deep decoder amplify rounding tenfold). compare fed N(0, 1) numbers: a rewrite exact on every cache the model
    # makes failed --min-cosine on values up to 4 its own cache never holds.
    from optimizer.gates import accuracy_failures

    before = FIXTURES / "llama_kv_legacy.onnx"
    after = _decoder_clipping_its_past(tmp_path / "clipped.onnx", bound=2.0)
    report = compare(before, after, settings=CompareSettings(iterations=1, time_budget=0.1, warmup=0))
    assert accuracy_failures(report, 0.999999) == []
    assert all(output.max_abs_error == 0 for output in report.providers[0].accuracy)


def _decoder_with_last_logits_only(path: Path) -> Path:
    """The Llama cache fixture returning the last position's logits only ([batch, 1, vocabulary]), as an export
    for serving does: a generation loop reads no others."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(FIXTURES / "llama_kv_legacy.onnx")
    for node in model.graph.node:
        for index, name in enumerate(node.output):
            if name == "logits":
                node.output[index] = "every_logit"
    model.graph.initializer.extend(
        numpy_helper.from_array(np.array([value], np.int64), name)
        for name, value in (("start", -1), ("end", 2**62), ("axis", 1))
    )
    model.graph.node.append(helper.make_node("Slice", ["every_logit", "start", "end", "axis"], ["logits"]))
    next(v for v in model.graph.output if v.name == "logits").type.tensor_type.shape.dim[1].dim_param = "last"
    onnx.save(model, path)
    return path


def test_a_decoder_returning_the_last_positions_logits_only_is_compared_as_a_language_model(tmp_path, no_memory_probe):
    # compare --generate timed such a model generating, then refused it (exit 2): "the logits hold 1 positions for
    # 6 tokens: teacher-forced accuracy needs the logits of every position". Stepped one token at a time over its
    # cache, it gives every position's logits: the same figures as the model that returns them all.
    last = _decoder_with_last_logits_only(tmp_path / "last.onnx")
    whole = FIXTURES / "llama_kv_legacy.onnx"
    settings = CompareSettings(
        iterations=1, time_budget=0.1, warmup=0, generate=True, prompt_length=6, new_tokens=3, batches=(3,)
    )
    stepped = compare(last, last, settings=settings).providers[0].llm_accuracy
    expected = compare(whole, whole, settings=settings).providers[0].llm_accuracy
    assert stepped.scored_tokens == expected.scored_tokens > 0
    assert stepped.perplexity_before == pytest.approx(expected.perplexity_before, rel=1e-5)
    assert stepped.top1_agreement == 1.0 and stepped.logits_cosine == pytest.approx(1.0)
