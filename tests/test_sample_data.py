"""Calibration and evaluation data the way users hold it: .npz, folders, iterables, data readers;
lossless casts, zero-filled token type ids, and the input skeleton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

from optimizer.api import optimize_with_report
from optimizer.cli import EXAMPLE_MODEL, main
from optimizer.compare.comparison import CompareSettings, compare
from optimizer.errors import InputSpecError
from optimizer.input_skeleton import write_input_skeleton
from optimizer.inputs import check_inputs, load_inputs, make_inputs, zero_fillable
from optimizer.samples import hold_out, open_samples, split_samples

QUICK = CompareSettings(time_budget=1.0, iterations=5, warmup=1, threads=1)


@pytest.fixture(scope="module")
def model() -> ir.Model:
    return ir.load(EXAMPLE_MODEL)


@pytest.fixture(scope="module")
def samples(model) -> dict[str, np.ndarray]:
    return make_inputs(model, {"batch": 20, "sequence": 12}, seed=5)


def _npz_folder(folder: Path, samples, rows: int = 3, drop=(), dtype=None) -> Path:
    folder.mkdir()
    count = len(samples["input_ids"])
    for index, start in enumerate(range(0, count, rows)):
        arrays = {k: v[start : start + rows] for k, v in samples.items() if k not in drop}
        if dtype is not None:
            arrays = {k: v.astype(dtype) for k, v in arrays.items()}
        np.savez(folder / f"part{index:03d}.npz", **arrays)
    return folder


def _all(batches) -> dict[str, np.ndarray]:
    batches = list(batches)
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def test_a_folder_of_npz_files_is_read_file_by_file_and_regrouped_into_batches(tmp_path, model, samples):
    data = open_samples(_npz_folder(tmp_path / "cal", samples), model)
    assert data.count == 20 and not data.in_memory
    assert "20 samples in 7 files" in data.describe()
    batches = split_samples(data, 8)
    assert len(batches) == 3 and [len(b["input_ids"]) for b in batches] == [8, 8, 4]
    # the same samples, in order, on every iteration
    for _ in range(2):
        for name, array in _all(batches).items():
            np.testing.assert_array_equal(array, samples[name])


def test_chunks_of_another_sequence_length_start_a_new_batch(tmp_path, model, samples):
    folder = tmp_path / "mixed"
    folder.mkdir()
    np.savez(folder / "a.npz", **{k: v[:5] for k, v in samples.items()})
    np.savez(folder / "b.npz", **{k: v[5:10, :7] for k, v in samples.items()})
    batches = split_samples(open_samples(folder, model), 4)
    shapes = [b["input_ids"].shape for b in batches]
    assert shapes == [(4, 12), (1, 12), (4, 7), (1, 7)]
    assert len(batches) == len(shapes)


def test_a_folder_with_one_npy_per_input_is_memory_mapped_and_read_in_chunks(tmp_path, model, samples, monkeypatch):
    from optimizer import samples as samples_module

    monkeypatch.setattr(samples_module, "_NPY_CHUNK", 6)
    folder = tmp_path / "npy"
    folder.mkdir()
    for name, array in samples.items():
        np.save(folder / f"{name}.npy", array)
    data = open_samples(folder, model)
    assert data.count == 20 and len(data._plan) == 4
    read = [chunk["input_ids"].shape[0] for chunk in data.chunks()]
    assert read == [6, 6, 6, 2]  # never the whole file at once
    for name, array in _all(split_samples(data, 16)).items():
        np.testing.assert_array_equal(array, samples[name])
    # the same folder is one verification input set
    loaded = load_inputs(folder, model)
    np.testing.assert_array_equal(loaded["attention_mask"], samples["attention_mask"])


def test_iterables_and_data_readers_are_read_once_and_replayed_from_disk(model, samples):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{k: v[i : i + 5] for k, v in samples.items()} for i in range(0, 20, 5)])
            self.calls = 0

        def get_next(self):
            self.calls += 1
            return next(self.items, None)

    reader = Reader()
    generated = ({k: v[i : i + 4] for k, v in samples.items()} for i in range(0, 20, 4))
    for data in (open_samples(reader, model), open_samples(generated, model)):
        assert data.count == 20
        first, second = _all(split_samples(data, 16)), _all(split_samples(data, 16))
        for name in samples:
            np.testing.assert_array_equal(first[name], samples[name])
            np.testing.assert_array_equal(second[name], samples[name])
    assert reader.calls == 5  # four feed dicts and the None that ends them, read once
    listed = open_samples([{k: v[:2] for k, v in samples.items()}] * 3, model)
    assert listed.count == 6 and "feed dicts" in listed.describe()


def test_integer_arrays_are_cast_where_no_value_changes(model, samples):
    notes: list[str] = []
    narrow = {k: v.astype(np.int32) for k, v in samples.items()}
    checked = check_inputs(narrow, model, "--calibration x", notes)
    assert all(array.dtype == np.int64 for array in checked.values())
    assert "'input_ids' int32 cast to int64 (every value kept)" in notes
    # booleans are 0 and 1; floats are never cast (float64 data for a float32 input loses digits)
    booleans = {**samples, "attention_mask": samples["attention_mask"] > 0}
    assert check_inputs(booleans, model, "x", [])["attention_mask"].dtype == np.int64
    with pytest.raises(InputSpecError, match="'input_ids' is float64, the model expects int64$"):
        check_inputs({**samples, "input_ids": samples["input_ids"].astype(np.float64)}, model, "x", [])
    # without a list for the notes nothing is mended: the API of old callers is unchanged
    with pytest.raises(InputSpecError, match="'input_ids' is int32, the model expects int64$"):
        check_inputs(narrow, model, "--inputs x")


def test_a_cast_that_would_change_a_value_is_one_line(model, samples):
    ids = samples["input_ids"].astype(np.uint64)
    ids[0, 0] = 2**63  # past int64
    with pytest.raises(InputSpecError) as error:
        check_inputs({**samples, "input_ids": ids}, model, "--calibration x", [])
    message = str(error.value)
    assert "\n" not in message and "9223372036854775808 does not fit in int64" in message
    assert message.startswith("--calibration x: 'input_ids' is uint64, the model expects int64, and 9223")
    assert message.endswith("convert it yourself (.astype(int64)) if that is what you mean")


def test_only_token_type_ids_are_filled_with_zeros(model, samples):
    notes: list[str] = []
    given = {k: v for k, v in samples.items() if k != "token_type_ids"}
    checked = check_inputs(given, model, "x", notes)
    assert checked["token_type_ids"].shape == samples["input_ids"].shape and not checked["token_type_ids"].any()
    assert any("'token_type_ids' missing: filled with zeros" in note for note in notes)
    assert [v.name for v in model.graph.inputs if zero_fillable(v)] == ["token_type_ids"]
    # a missing mask is not: zeros would hide every token
    with pytest.raises(InputSpecError, match="no array for graph input 'attention_mask'"):
        check_inputs({k: v for k, v in samples.items() if k != "attention_mask"}, model, "x", [])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda folder: None, "holds no .npz or .npy files"),
        (lambda folder: (np.save(folder / "a.npy", np.ones(2)), np.savez(folder / "b.npz", a=np.ones(2))), "mixes"),
    ],
)
def test_folders_that_are_not_sample_data_are_one_line(tmp_path, model, make, message):
    folder = tmp_path / "data"
    folder.mkdir()
    make(folder)
    with pytest.raises(InputSpecError, match=message):
        open_samples(folder, model)


def test_a_bad_chunk_is_refused_before_any_work(tmp_path, model, samples):
    folder = _npz_folder(tmp_path / "cal", samples)
    np.savez(folder / "zz_last.npz", input_ids=samples["input_ids"][:2])  # no mask
    with pytest.raises(InputSpecError, match=r"cal: zz_last.npz: no array for graph input 'attention_mask'"):
        open_samples(folder, model)


def test_a_folder_of_npz_files_is_not_one_verification_set(tmp_path, model, samples):
    with pytest.raises(InputSpecError, match="a folder of .npz files is many input sets"):
        load_inputs(_npz_folder(tmp_path / "cal", samples), model)


def test_optimize_calibrates_on_a_folder_and_reports_what_it_mended(tmp_path, samples):
    # quantize-static alone (here and below: the data's reading is the point, not the fusions before it; the
    # default pipeline and the quantizer together are tests/test_quantization_pipeline.py's).
    folder = _npz_folder(tmp_path / "cal", samples, rows=4, drop=("token_type_ids",), dtype=np.int32)
    _, report = optimize_with_report(
        EXAMPLE_MODEL, ["quantize-static"], output=tmp_path / "int8.onnx", calibration=folder
    )
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert record.status == "applied", record.detail
    assert any("on 20 samples" in note for note in record.notes), record.notes
    assert any("int32 cast to int64" in warning for warning in report.warnings)
    assert any("'token_type_ids' missing: filled with zeros" in warning for warning in report.warnings)


def test_cli_takes_a_calibration_folder(tmp_path, samples, capsys):
    folder = _npz_folder(tmp_path / "cal", samples, rows=5)
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "o.onnx"), "--quantize", "static"]
    command += ["--passes", "quantize-static"]  # the quantizer alone, as above
    assert main([*command, "--calibration", str(folder)]) == 0
    assert "applied" in capsys.readouterr().out


def test_skeleton_round_trip(tmp_path, model):
    path = tmp_path / "inputs.npz"
    summary = write_input_skeleton(EXAMPLE_MODEL, path, {"batch": 2, "sequence": 16})
    assert "\n" not in summary and str(path) in summary
    assert "attention_mask int64[2, 16] ones" in summary and "token_type_ids int64[2, 16] zeros" in summary
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    assert sorted(arrays) == sorted(v.name for v in model.graph.inputs)
    assert (arrays["attention_mask"] == 1).all() and not arrays["token_type_ids"].any()
    vocabulary = model.graph.initializers[
        next(n.inputs[0].name for n in model.graph if n.op_type == "Gather" and n.inputs[1].name == "input_ids")
    ].shape[0]
    assert 0 <= arrays["input_ids"].min() and arrays["input_ids"].max() < vocabulary
    # optimize verifies and calibrates on it (the quantizer alone, as above), and compare measures on it
    output = tmp_path / "int8.onnx"
    _, report = optimize_with_report(EXAMPLE_MODEL, ["quantize-dynamic"], output=output, inputs=path, calibration=path)
    assert report.input_sets[0] == f"--inputs {path}"
    assert next(r for r in report.passes if r.name == "quantize-dynamic").status == "applied"
    comparison = compare(EXAMPLE_MODEL, output, settings=QUICK, inputs=path)
    assert comparison.providers[0].accuracy


def test_skeleton_defaults_bind_every_symbolic_dim(tmp_path):
    summary = write_input_skeleton(EXAMPLE_MODEL, tmp_path / "s.npz", None)
    assert "(batch=1, sequence=128)" in summary


def test_optimize_compare_measures_accuracy_on_the_calibration_folder(tmp_path, samples, capsys):
    folder = _npz_folder(tmp_path / "cal", samples, rows=5)
    report = tmp_path / "comparison.json"
    command = ["optimize", str(EXAMPLE_MODEL), "-o", str(tmp_path / "o.onnx"), "--quantize", "dynamic"]
    command += ["--passes", "quantize-dynamic"]  # the quantizer alone, as above
    command += ["--calibration", str(folder), "--compare", "--threads", "1", "--time-budget", "0.5"]
    command += ["--iterations", "5", "--warmup", "1", "--json", str(report)]
    assert main(command) == 0
    import json

    provider = json.loads(report.read_text())["providers"][0]
    assert "(20 samples in 4 files)" in provider["accuracy_data"]
    assert provider["accuracy"][0]["samples"] == 20
    # The console wraps its lines where a warning (a noisy machine's) moves the text: read it as one line.
    assert "the samples the approximate passes were fitted to" in " ".join(capsys.readouterr().out.split())


def test_batches_index_and_slice_like_a_list(model, samples):
    batches = split_samples(open_samples([samples, samples], model), 8)
    listed = list(batches)
    assert len(batches) == len(listed) == 5
    np.testing.assert_array_equal(batches[-1]["input_ids"], listed[-1]["input_ids"])
    assert [b["input_ids"].shape[0] for b in batches[1:3]] == [8, 8]
    with pytest.raises(IndexError):
        batches[5]


def test_a_skeleton_holds_strings_as_unicode_not_pickles(tmp_path):
    import onnx

    from tests.helpers import parse_model

    model = parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (string[batch, 3] words, float[batch, 2] x) => (string[batch, 3] same, float[batch, 2] y)
        { same = Identity(words)  y = Identity(x) }
        """
    )
    path = tmp_path / "m.onnx"
    onnx.save(ir.to_proto(model), path)
    summary = write_input_skeleton(path, tmp_path / "s.npz", {"batch": 2})
    assert "words string[2, 3] words; x float32[2, 2] zeros" in summary
    loaded = load_inputs(tmp_path / "s.npz", model)  # refuses pickled object arrays
    assert loaded["words"].dtype.kind == "U" and loaded["x"].shape == (2, 2)


def test_a_large_npz_is_memory_mapped_and_read_in_chunks(tmp_path, model, samples, monkeypatch):
    from optimizer import samples as samples_module

    monkeypatch.setattr(samples_module, "_STREAM_ABOVE", 0)  # every file counts as large
    monkeypatch.setattr(samples_module, "_NPY_CHUNK", 8)
    path = tmp_path / "cal.npz"
    np.savez(path, **samples)
    data = open_samples(path, model)
    assert not data.in_memory and data.count == 20
    chunks = list(data.chunks())
    assert [len(c["input_ids"]) for c in chunks] == [8, 8, 4]
    for name, array in _all(split_samples(data, 16)).items():
        np.testing.assert_array_equal(array, samples[name])
    # numpy.savez_compressed's members cannot be mapped: the file is loaded as before
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **samples)
    assert open_samples(compressed, model).in_memory
    # and the passes calibrate on the mapped file like on any other
    _, report = optimize_with_report(
        EXAMPLE_MODEL, ["quantize-static"], output=tmp_path / "int8.onnx", calibration=path
    )
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert record.status == "applied" and any("on 20 samples" in note for note in record.notes), record.notes


def test_the_api_calibrates_on_a_generator_of_feed_dicts(tmp_path, samples):
    feeds = ({k: v[i : i + 5] for k, v in samples.items()} for i in range(0, 20, 5))
    _, report = optimize_with_report(
        EXAMPLE_MODEL, ["quantize-static"], output=tmp_path / "int8.onnx", calibration=feeds
    )
    record = next(r for r in report.passes if r.name == "quantize-static")
    assert record.status == "applied" and any("on 20 samples" in note for note in record.notes), record.notes


def test_the_verifier_streams_sample_data_and_measures_the_same_drift(tmp_path, model, samples):
    from optimizer.verify import Verifier

    output = tmp_path / "int8.onnx"
    # An int8 candidate to check: quantize-dynamic alone makes one without the fusions' verified runs.
    optimize_with_report(EXAMPLE_MODEL, ["quantize-dynamic"], output=output, calibration=samples)
    candidate = ir.load(output)
    first = {k: v[:2] for k, v in samples.items()}
    folder = _npz_folder(tmp_path / "cal", samples, rows=3)
    in_memory = Verifier(model, [first], samples=samples).check_approximation(candidate)
    streamed_verifier = Verifier(model, [first], samples=open_samples(folder, model))
    streamed = streamed_verifier.check_approximation(candidate)
    assert streamed.ok and in_memory.ok
    assert streamed.drift.cosine == pytest.approx(in_memory.drift.cosine, abs=1e-9)
    assert streamed.drift.max_error == pytest.approx(in_memory.drift.max_error, abs=1e-9)
    assert streamed_verifier._sample_references is None  # nothing of the original's outputs kept


def test_hold_out_keeps_every_fifth_sample_whole_and_apart(tmp_path, model, samples):
    """One sample in five is held out (counted over all batches), whole, from a list or a folder read from disk;
    with fewer than five nothing is held out; a model with a fixed batch dim gives whole batches."""
    tagged = dict(samples, input_ids=samples["input_ids"].copy())
    tagged["input_ids"][:, 0] = np.arange(20)  # sample i starts with token i
    for batches in (
        split_samples(tagged, 6),
        open_samples(_npz_folder(tmp_path / "f", tagged, rows=7), model).batches(6),
    ):
        fitted, held = hold_out(batches)
        assert [int(i) for b in held for i in b["input_ids"][:, 0]] == [4, 9, 14, 19]
        assert sorted(int(i) for b in fitted for i in b["input_ids"][:, 0]) == [i for i in range(20) if i % 5 != 4]
        assert len(held) == len(list(held)) and all(b["attention_mask"].shape == b["input_ids"].shape for b in held)
    fitted, held = hold_out(split_samples({k: v[:4] for k, v in tagged.items()}, 2))
    assert [b["input_ids"][:, 0].tolist() for b in held] == [[3]] and sum(len(b["input_ids"]) for b in fitted) == 3
    fitted, held = hold_out(split_samples({k: v[:1] for k, v in tagged.items()}, 2))
    assert len(held) == 0 and sum(len(b["input_ids"]) for b in fitted) == 1
    fixed = model.clone()
    for value in fixed.graph.inputs:
        value.shape = ir.Shape([2, *list(value.shape)[1:]])
    fitted, held = hold_out(split_samples(tagged, model=fixed), fixed)
    assert [b["input_ids"][:, 0].tolist() for b in held] == [[8, 9], [18, 19]]  # batches 4 and 9 of 10
    assert len(fitted) == 8


def test_hold_out_cuts_only_the_inputs_that_hold_samples():
    """An input that is not batched along axis 0 (a table [S, K] broadcast over the batch) goes whole with
    every part, however long it is; the batch dim is the one named like it, else the most common first dim."""
    from onnx import TensorProto, helper

    from optimizer.samples import sample_inputs

    def model_with(first: str) -> ir.Model:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [first, "S", 4])
        t = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["S", 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [first, "S", 4])
        graph = helper.make_graph([helper.make_node("Add", ["x", "t"], ["y"])], "g", [x, t], [y])
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    for first in ("batch", "B", "N"):
        model = model_with(first)
        assert sample_inputs(model) == frozenset({"x"})
        for length in (12, 16):  # shorter than the batch, or just as long
            x = np.arange(16 * 12 * 4, dtype=np.float32).reshape(16, 12, 4)[:, :length]
            data = {"x": x, "t": np.ones((length, 4), np.float32)}
            fitted, held = hold_out(split_samples(data, 16), model)
            assert [b["x"].shape[0] for b in held] == [3] and [b["x"].shape[0] for b in fitted] == [13]
            assert all(b["t"].shape == (length, 4) for b in [*held, *fitted])


def test_split_samples_and_sample_inputs_find_the_batch_however_it_is_spelled():
    """Every symbolic first dim is a batch dim unless it is a later dim of some input (a table [S, K]),
    however each input spells it; a table beside the samples is never cut, with more samples than one
    batch holds."""
    from onnx import TensorProto, helper

    from optimizer.samples import sample_inputs

    def model_with(inputs: list[tuple[str, list]]) -> ir.Model:
        infos = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims) for name, dims in inputs]
        nodes = [helper.make_node("Identity", [inputs[0][0]], ["y"])]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        graph = helper.make_graph(nodes, "g", infos, [y])
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    assert sample_inputs(model_with([("x", ["batch", "S", 4]), ("e", ["batch_size", "S", 4])])) == {"x", "e"}
    assert sample_inputs(model_with([("t", ["S", 4]), ("x", ["s0", "S", 4])])) == {"x"}
    # One batch spelled per input (the legacy exporter's list-form dynamic axes, tf2onnx's unk__N): all cut.
    spelled = [("input_ids", ["input_ids_dynamic_axes_1", "s"]), ("mask", ["mask_dynamic_axes_1", "s"])]
    assert sample_inputs(model_with(spelled)) == {"input_ids", "mask"}
    model = model_with(spelled)
    ids = {"input_ids": np.zeros((20, 3), np.int64), "mask": np.ones((20, 3), np.int64)}
    assert [(len(b["input_ids"]), len(b["mask"])) for b in split_samples(ids, 16, model)] == [(16, 16), (4, 4)]
    assert sample_inputs(model_with([("x", [4, "S", 8]), ("t", ["S", 8])])) is None  # a fixed batch
    model = model_with([("x", ["B", "S", 4]), ("t", ["S", 4])])
    data = {
        "x": np.random.default_rng(0).standard_normal((40, 20, 4)).astype(np.float32),
        "t": np.ones((20, 4), np.float32),
    }
    batches = split_samples(data, 16, model)
    assert [len(b["x"]) for b in batches] == [16, 16, 8] and all(b["t"].shape == (20, 4) for b in batches)
    fitted, held = hold_out(batches, model)
    assert sum(len(b["x"]) for b in held) == 8 and sum(len(b["x"]) for b in fitted) == 32
