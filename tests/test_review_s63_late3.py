"""Review s63 (late, 3): the embedding table probe where the indices come through a Cast with no recorded type."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from tests.test_review_s63_approx import _embedding_model, _last_row_scale_doubled

ROWS, WIDTH = 16384, 64


def _cast_ids_embedding_model() -> ir.Model:
    """int32 ids -> Cast(int64) (no value_info) -> Gather of a [16384, 64] table -> MatMuls."""
    return _embedding_model(ROWS, cast_ids=True)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_an_embedding_read_through_a_cast_of_the_ids_is_still_probed(monkeypatch, mode):
    # The table probe needed the indices' recorded type: a Cast(input_ids) output without value_info (ids.dtype None)
    # skipped the lookup, and a row the inputs never look up with its scale doubled shipped "applied".
    import optimizer
    from optimizer.report import STATUS_APPLIED, STATUS_ROLLED_BACK
    from tests.test_review_approximate import _with_fault

    name = "quantize-embeddings" if mode == "int8" else "quantize-int4"
    options = {"quantize_embeddings": True} if mode == "int8" else {"quantize": "int4", "quantize_outputs": True}
    data = {
        "inputs": {"ids": np.random.default_rng(1).integers(0, ROWS - 1, (1, 32)).astype(np.int32)},
        "calibration": {"ids": np.random.default_rng(2).integers(0, ROWS - 1, (4, 32)).astype(np.int32)},
    }
    _, report = optimizer.optimize_with_report(_cast_ids_embedding_model(), passes=[name], **data, **options)
    assert report.passes[-1].status == STATUS_APPLIED, report.passes[-1].detail
    _with_fault(monkeypatch, name, _last_row_scale_doubled)
    _, report = optimizer.optimize_with_report(_cast_ids_embedding_model(), passes=[name], **data, **options)
    record = report.passes[-1]
    assert record.status == STATUS_ROLLED_BACK, record.detail
    assert f"row {ROWS - 1} differs by 1 of its largest value" in record.detail


def test_a_table_onnx_runtime_refuses_to_probe_leaves_the_next_checked(monkeypatch):
    # A refusal on one table's rows stopped the whole check: every table after it went unchecked (a review).
    from onnx import TensorProto, helper, numpy_helper

    from optimizer import layer_probe
    from optimizer.errors import RuntimeRefusedError

    def model(scale: float | None):
        """Two [4, 2] tables looked up by ``ids``; each lookup times a scale (the second ``scale``), or none."""
        tables = [numpy_helper.from_array(np.full((4, 2), i + 1.0, np.float32), f"t{i}") for i in range(2)]
        if scale is None:  # the twin: the rows as they are
            nodes = [helper.make_node("Gather", [f"t{i}", "ids"], [f"out{i}"]) for i in range(2)]
        else:
            nodes = [helper.make_node("Gather", [f"t{i}", "ids"], [f"raw{i}"]) for i in range(2)]
            nodes += [helper.make_node("Mul", [f"raw{i}", f"k{i}"], [f"out{i}"]) for i in range(2)]
            tables += [numpy_helper.from_array(np.array(scale if i else 1.0, np.float32), f"k{i}") for i in range(2)]
        graph = helper.make_graph(
            nodes,
            "tables",
            [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
            [helper.make_tensor_value_info(f"out{i}", TensorProto.FLOAT, ["n", 2]) for i in range(2)],
            tables,
        )
        return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))

    real = layer_probe._rows_failure

    def refuse_the_first(candidate, twin, ids, output, table, index_type):
        if output.name == "out0":
            raise RuntimeRefusedError("run the probe", "refused")
        return real(candidate, twin, ids, output, table, index_type)

    monkeypatch.setattr(layer_probe, "_rows_failure", refuse_the_first)
    failure, probed = layer_probe.table_probe_failure(model(3.0), model(None))
    assert probed == 1 and "'out1'" in failure, failure
    assert layer_probe.table_probe_failure(model(1.0), model(None)) == ("", 1)
